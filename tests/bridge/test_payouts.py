"""BTC payouts (bridge/payouts.py): the plan every node rebuilds, the fee bump, the participant's check.

Independent references: destination addresses are encoded by bitcoinlib (its own bech32, bech32m
and Base58Check) and by the BIP173/BIP350 test vectors; dust thresholds are Bitcoin Core's
published values; keys come from the group secret plus the BIP32 tweak and every signature is made
and checked with coincurve (libsecp256k1). That the transactions are valid and standard on a real
chain is shown by tests/bridge/test_payouts_devnet.py (libbitcoinkernel's script checks).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

import pytest
from bitcoinlib.encoding import pubkeyhash_to_addr_base58, pubkeyhash_to_addr_bech32
from coincurve import PrivateKey, PublicKey

from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from fusion_prime.bridge.payouts import (
    BelowMinimum,
    BtcPayoutParams,
    BurnFacts,
    CannotBump,
    CustodyCoin,
    FeeAboveCap,
    InsufficientCustody,
    PayoutBurn,
    PayoutError,
    PayoutPlan,
    PayoutProposal,
    SignatureRejected,
    TooManyBurns,
    TooManyInputs,
    UnpayableAmount,
    UnpayableDestination,
    bump_payout,
    check_payout,
    check_payout_input,
    decode_destination,
    finalize_payout,
    minimum_bump_rate,
    payout_value,
    plan_payout,
    round_fee_rate,
)
from fusion_prime.protocol.addresses import bech32_segwit
from fusion_prime.protocol.curve import Point, Q
from fusion_prime.protocol.hd import derive
from fusion_prime.signer.bitcoin import HALF_ORDER, p2wpkh_script

GROUP_SECRET = int.from_bytes(hashlib.sha256(b"payout tests: group secret").digest(), "big") % Q
GROUP_KEY = Point.base_mul(GROUP_SECRET)
CHAIN_CODE = hashlib.sha256(b"payout tests: chain code").digest()
DEPOSIT_PURPOSE, CUSTODY_PURPOSE = 0x46504272, 0x46504375

PARAMS = BtcPayoutParams(network="regtest", withdrawal_fee=5_000, max_fee_rate=Decimal(50), fee_band=Decimal(2),
                         min_input_confirmations=2, max_batch=10, max_inputs=20, incremental_relay_fee=Decimal(1))
VIEW_HEIGHT = 200
RATE = Decimal(10)


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def block_hash(height: int) -> str:
    return digest(f"block {height}").hex()


def key_at(path: tuple[int, ...]) -> tuple[bytes, int]:
    """(compressed public key, private key) of the group's child at ``path``: x + tweak."""
    child = derive(GROUP_KEY, CHAIN_CODE, path)
    return child.public_key.to_bytes(), (GROUP_SECRET + child.tweak) % Q


CUSTODY_KEY, _ = key_at((CUSTODY_PURPOSE, 0))
CUSTODY_SCRIPT = p2wpkh_script(CUSTODY_KEY)


def coin(label: str, value: int, height: int | None, index: int = 0) -> CustodyCoin:
    path = (DEPOSIT_PURPOSE, index, 7)
    public_key, _ = key_at(path)
    return CustodyCoin(digest(f"coin {label}").hex(), index % 3, value, p2wpkh_script(public_key), path, public_key,
                       height)


def destination(kind: str, seed: str) -> tuple[bytes, bytes]:
    """(raw Burned.destination, the scriptPubKey it must pay), encoded by bitcoinlib for regtest."""
    h32 = digest(f"destination {seed}")
    h20 = h32[:20]
    if kind == "p2wpkh":
        return pubkeyhash_to_addr_bech32(h20, prefix="bcrt", witver=0).encode(), bytes([0x00, 20]) + h20
    if kind == "p2wsh":
        return pubkeyhash_to_addr_bech32(h32, prefix="bcrt", witver=0).encode(), bytes([0x00, 32]) + h32
    if kind == "p2tr":
        return pubkeyhash_to_addr_bech32(h32, prefix="bcrt", witver=1).encode(), bytes([0x51, 32]) + h32
    if kind == "p2pkh":
        return (pubkeyhash_to_addr_base58(h20, prefix=b"\x6f").encode(),
                bytes([0x76, 0xA9, 20]) + h20 + bytes([0x88, 0xAC]))
    if kind == "p2sh":
        return pubkeyhash_to_addr_base58(h20, prefix=b"\xc4").encode(), bytes([0xA9, 20]) + h20 + bytes([0x87])
    raise AssertionError(kind)


KINDS = ("p2wpkh", "p2wsh", "p2tr", "p2pkh", "p2sh")
#: Bitcoin Core's dust thresholds at the default 3 sat/vB dust relay fee.
CORE_DUST = {"p2wpkh": 294, "p2wsh": 330, "p2tr": 330, "p2pkh": 546, "p2sh": 540}
AMOUNTS = (120_000, 80_000, 230_000, 60_000, 150_000)


def burn(nonce: int, amount: int, kind: str = "p2wpkh", seed: str | None = None) -> PayoutBurn:
    raw, _ = destination(kind, seed or f"burn {nonce}")
    return PayoutBurn(digest(f"burn id {nonce}"), nonce, amount, raw)


def five_burns() -> list[PayoutBurn]:
    return [burn(i + 1, amount, kind) for i, (amount, kind) in enumerate(zip(AMOUNTS, KINDS, strict=True))]


def custody_coins() -> list[CustodyCoin]:
    return [
        coin("a", 500_000, 150, 1),
        coin("b", 400_000, 120, 2),
        coin("c", 250_000, 199, 3),  # two confirmations at the view height: eligible
        coin("d", 2_000_000, 200, 4),  # one confirmation: not yet
        coin("e", 3_000_000, None, 5),  # unconfirmed: never
        coin("f", 50_000, 100, 6),
    ]


def honest_plan() -> PayoutPlan:
    return plan_payout(five_burns(), custody_coins(), RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)


def sign_all(plan: PayoutPlan, *, high_s: bool = False) -> list[tuple[int, int]]:
    """Signatures by the coins' own keys (coincurve): private key = group secret + tweak."""
    out = []
    for c, sighash in zip(plan.inputs, plan.sighashes, strict=True):
        public_key, secret = key_at(c.path)
        assert public_key == c.public_key
        compact = PrivateKey(secret.to_bytes(32, "big")).sign_recoverable(sighash, hasher=None)
        r, s = int.from_bytes(compact[:32], "big"), int.from_bytes(compact[32:64], "big")
        s = min(s, Q - s)
        out.append((r, Q - s if high_s else s))
    return out


# ------------------------------------------------------------------------------- the fake view


@dataclass
class FakeView:
    """A participant's own view, as the integrator implements it over its chain and database."""

    tip: int = VIEW_HEIGHT + 3
    hashes: dict[int, str] = field(default_factory=lambda: {h: block_hash(h) for h in range(VIEW_HEIGHT + 4)})
    burns: dict[bytes, BurnFacts] = field(default_factory=dict)
    coins: list[CustodyCoin] = field(default_factory=custody_coins)
    reserved: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    estimate: Decimal | None = RATE
    change: bytes = CUSTODY_SCRIPT
    archive: dict[str, PayoutPlan] = field(default_factory=dict)

    @classmethod
    def knowing(cls, burns: Sequence[PayoutBurn]) -> FakeView:
        view = cls()
        for b in burns:
            view.burns[b.burn_id] = BurnFacts(b.nonce, b.amount, b.destination, final=True, refunded=False)
        return view

    def record(self, plan: PayoutPlan) -> None:
        """What the integrator does when this node co-signs a payout: archive it, reserve its
        coins, mark its burns pending in it."""
        self.archive[plan.txid] = plan
        self.reserved[plan.txid] = {(c.txid, c.vout) for c in plan.inputs}
        for b in plan.burns:
            self.burns[b.burn_id] = replace(self.burns[b.burn_id], paid_or_pending_in=plan.txid)

    def tip_height(self) -> int:
        return self.tip

    def block_hash(self, height: int) -> str | None:
        return self.hashes.get(height)

    def burn(self, burn_id: bytes) -> BurnFacts | None:
        return self.burns.get(burn_id)

    def custody_coins(self, view_height: int, exclude_reserved_except: str | None) -> list[CustodyCoin]:
        held = set().union(*(v for k, v in self.reserved.items() if k != exclude_reserved_except))
        return [c for c in self.coins
                if (c.height is None or c.height <= view_height) and (c.txid, c.vout) not in held]

    def fee_estimate(self) -> Decimal | None:
        return self.estimate

    def change_script(self) -> bytes:
        return self.change

    def payout(self, txid: str) -> PayoutPlan | None:
        return self.archive.get(txid)


def proposal_of(plan: PayoutPlan) -> PayoutProposal:
    return PayoutProposal.of(plan, block_hash(plan.view_height))


def mutated(plan: PayoutPlan, edit: Callable[[Tx], object]) -> PayoutProposal:
    tx = plan.tx
    edit(tx)
    return PayoutProposal(tx.serialize(), plan.burn_ids, plan.view_height, block_hash(plan.view_height),
                          plan.fee_rate, plan.replaces)


# ---------------------------------------------------------------------------------- destinations


@pytest.mark.parametrize("kind", KINDS)
def test_every_destination_type_decodes_to_its_script(kind: str) -> None:
    raw, script = destination(kind, kind)
    assert decode_destination(raw, "regtest") == script
    if kind in ("p2wpkh", "p2wsh", "p2tr"):  # bech32 may be written in upper case (one case only)
        assert decode_destination(raw.upper(), "regtest") == script


@pytest.mark.parametrize(("address", "network", "script"), [
    # BIP173 / BIP350 valid vectors
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "mainnet", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "testnet",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0", "mainnet",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
    ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c", "testnet",
     "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "mainnet", "76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "mainnet", "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87"),
])
def test_published_vectors(address: str, network: str, script: str) -> None:
    assert decode_destination(address.encode(), network).hex() == script


@pytest.mark.parametrize(("address", "network"), [
    # BIP350 addresses that are valid but not one of the payable types
    ("BC1SW50QGDZ25J", "mainnet"),  # v16, 2 bytes
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "mainnet"),  # v2, 16 bytes
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y", "mainnet"),  # v1, 40 bytes
    # BIP350 invalid addresses
    ("tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut", "testnet"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "mainnet"),  # v1 with bech32
    ("tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "testnet"),
    ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "mainnet"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "mainnet"),  # v0 with bech32m
    ("tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "testnet"),
    ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "mainnet"),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "mainnet"),
    ("bc1pw5dgrnzv", "mainnet"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav", "mainnet"),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "mainnet"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "testnet"),  # mixed case
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "mainnet"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "testnet"),
    ("bc1gmk9yu", "mainnet"),
])
def test_published_invalid_or_unpayable_vectors_are_refused(address: str, network: str) -> None:
    with pytest.raises(UnpayableDestination):
        decode_destination(address.encode(), network)


def _malformed() -> list[tuple[str, bytes, str]]:
    good_p2pkh, _ = destination("p2pkh", "m")
    good_bech, _ = destination("p2wpkh", "m")
    flipped = bytearray(good_p2pkh)
    flipped[5] = ord("A") if flipped[5] != ord("A") else ord("B")
    return [
        ("empty", b"", "empty"),
        ("not ascii", "bcrt1qé".encode(), "ASCII"),
        ("whitespace", b" " + good_bech, "letters and digits"),
        ("trailing newline", good_bech + b"\n", "letters and digits"),
        ("raw 20-byte EVM address", bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"), "ASCII"),
        ("too long", b"bcrt1q" + b"q" * 90, "90"),
        ("mainnet bech32", b"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "mainnet address"),
        ("testnet bech32", b"tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "testnet address"),
        ("mainnet base58", b"1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "mainnet address"),
        ("base58 checksum", bytes(flipped), "checksum"),
        ("unknown base58 version", pubkeyhash_to_addr_base58(bytes(20), prefix=b"\x30").encode(), "version byte"),
        ("base58 payload of 22 bytes", pubkeyhash_to_addr_base58(bytes(21), prefix=b"\x6f").encode(), "22 bytes"),
        ("bech32 checksum", good_bech[:-1] + (b"q" if good_bech[-1:] != b"q" else b"p"), "checksum"),
        ("mixed case bech32", good_bech[:8] + good_bech[8:].upper(), "case"),
        ("v0 of 16 bytes", bech32_segwit("bcrt", 0, bytes(16)).encode(), "length"),
        ("v2 program", bech32_segwit("bcrt", 2, bytes(32)).encode(), "witness v2"),
        ("v1 of 20 bytes", bech32_segwit("bcrt", 1, bytes(20)).encode(), "witness v1"),
        ("hex text", b"00" * 20, "neither"),
    ]


@pytest.mark.parametrize(("raw", "why"), [(raw, why) for _, raw, why in _malformed()],
                         ids=[name for name, _, _ in _malformed()])
def test_malformed_destinations_are_unpayable_with_a_reason(raw: bytes, why: str) -> None:
    for _ in range(2):  # decoding is cached: the second answer is the same refusal
        with pytest.raises(UnpayableDestination) as err:
            decode_destination(raw, "regtest")
        assert why in str(err.value)


def test_destination_must_be_bytes_and_network_known() -> None:
    with pytest.raises(UnpayableDestination):
        decode_destination("bcrt1q", "regtest")  # type: ignore[arg-type]
    with pytest.raises(PayoutError):
        decode_destination(destination("p2wpkh", "x")[0], "litecoin")


@pytest.mark.parametrize("kind", KINDS)
def test_minimum_is_withdrawal_fee_plus_core_dust(kind: str) -> None:
    raw, _ = destination(kind, "min")
    minimum = PARAMS.withdrawal_fee + CORE_DUST[kind]
    assert payout_value(PayoutBurn(digest("x"), 1, minimum, raw), PARAMS) == CORE_DUST[kind]
    with pytest.raises(BelowMinimum) as err:
        payout_value(PayoutBurn(digest("x"), 1, minimum - 1, raw), PARAMS)
    assert str(minimum) in str(err.value)
    with pytest.raises(BelowMinimum):
        payout_value(PayoutBurn(digest("x"), 1, 0, raw), PARAMS)


def test_amount_above_money_supply_is_unpayable() -> None:
    raw, _ = destination("p2wpkh", "big")
    with pytest.raises(UnpayableAmount):
        payout_value(PayoutBurn(digest("x"), 1, 21_000_000 * 10**8 + 1, raw), PARAMS)


# ------------------------------------------------------------------------------------ planning


def test_plan_structure() -> None:
    burns = five_burns()
    plan = honest_plan()
    tx = plan.tx
    assert tx.version == 2 and tx.locktime == VIEW_HEIGHT
    assert all(i.sequence == 0xFFFFFFFD and i.script_sig == b"" and not i.witness for i in tx.vin)
    # one output per burn in nonce order paying amount − withdrawal fee to the destination, change last
    expected = [(b.amount - PARAMS.withdrawal_fee, destination(kind, f"burn {b.nonce}")[1])
                for b, kind in zip(burns, KINDS, strict=True)]
    assert [(o.value, o.script_pubkey) for o in tx.vout[:5]] == expected
    assert len(tx.vout) == 6 and tx.vout[5].script_pubkey == CUSTODY_SCRIPT
    # the largest eligible coins first: "d" (1 confirmation) and "e" (unconfirmed) are skipped
    assert [c.txid for c in plan.inputs] == [coin("a", 1, 1).txid, coin("b", 1, 1).txid]
    assert [str(i.prevout) for i in tx.vin] == [f"{c.txid}:{c.vout}" for c in plan.inputs]
    total_in = sum(c.value for c in plan.inputs)
    assert plan.fee == total_in - sum(o.value for o in tx.vout) > 0
    assert plan.fee <= 5 * PARAMS.withdrawal_fee
    assert plan.txid == tx.txid_hex and plan.burn_ids == tuple(b.burn_id for b in burns)


def test_signed_size_never_exceeds_the_estimate_so_the_rate_is_met() -> None:
    plan = honest_plan()
    signed = finalize_payout(plan, sign_all(plan))
    assert signed.vsize <= plan.vsize
    assert Decimal(plan.fee) / signed.vsize >= RATE
    assert signed.txid_hex == plan.txid  # witnesses do not change the txid


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    reference = honest_plan().unsigned_tx
    rng = random.Random(15)
    for _ in range(10):
        burns, coins = five_burns(), custody_coins()
        rng.shuffle(burns)
        rng.shuffle(coins)
        plan = plan_payout(burns, coins, RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
        assert plan.unsigned_tx == reference
    # and it depends on what it should: the view height is the locktime, the rate the fee
    assert honest_plan().tx.locktime != plan_payout(five_burns(), custody_coins(), RATE, CUSTODY_SCRIPT, PARAMS,
                                                    view_height=VIEW_HEIGHT + 1).tx.locktime
    assert plan_payout(five_burns(), custody_coins(), RATE + 1, CUSTODY_SCRIPT, PARAMS,
                       view_height=VIEW_HEIGHT).fee > honest_plan().fee


def test_equal_values_are_ordered_by_outpoint() -> None:
    coins = [coin(f"tie {i}", 300_000, 10, i) for i in range(4)]
    plan = plan_payout([burn(1, 350_000)], coins, RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    assert [(c.txid, c.vout) for c in plan.inputs] == sorted((c.txid, c.vout) for c in coins)[:2]


def test_confirmations_are_counted_at_the_view_height() -> None:
    young = coin("young", 1_000_000, VIEW_HEIGHT - 1, 1)
    with pytest.raises(InsufficientCustody):
        plan_payout([burn(1, 100_000)], [young], RATE, CUSTODY_SCRIPT, replace(PARAMS, min_input_confirmations=3),
                    view_height=VIEW_HEIGHT)
    plan = plan_payout([burn(1, 100_000)], [young], RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    assert plan.inputs == (young,)


def test_dust_change_is_dropped_into_the_fee() -> None:
    """Sweep the coin value across the point where the change becomes dust: with change the fee is
    the rate's; without it, the whole remainder (less than the change's dust threshold + its cost)."""
    b = burn(1, 100_000)
    payout = 100_000 - PARAMS.withdrawal_fee
    with_change = without_change = 0
    for value in range(payout + 1_410, payout + 3_000, 23):  # 1410 sat: 10 sat/vB × 141 vB with change
        plan = plan_payout([b], [coin("sweep", value, 10)], RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
        signed = finalize_payout(plan, sign_all(plan))
        assert Decimal(plan.fee) / signed.vsize >= RATE
        if plan.change is None:
            without_change += 1
            assert len(plan.tx.vout) == 1 and plan.fee == value - payout
            # keeping change would have left less than its dust threshold (294 sat for P2WPKH)
            fee_with_change_output = -(-RATE * (plan.vsize + 31) // 1)
            assert value - payout - fee_with_change_output < 294
        else:
            with_change += 1
            assert plan.change.value >= 294 and plan.change.script_pubkey == CUSTODY_SCRIPT
            assert plan.fee == -(-RATE * plan.vsize // 1)
    assert with_change and without_change


def test_dust_change_over_the_rate_cap_takes_one_more_coin() -> None:
    params = replace(PARAMS, max_fee_rate=RATE)  # at the maximum rate, dropping change would overpay
    payout = 100_000 - params.withdrawal_fee
    first = coin("first", payout + 1_500, 10, 1)  # leaves dust change at 10 sat/vB
    plan = plan_payout([burn(1, 100_000)], [first], RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    assert plan.change is None  # under the normal cap the dust goes to the fee
    with pytest.raises(FeeAboveCap):
        plan_payout([burn(1, 100_000)], [first], RATE, CUSTODY_SCRIPT, params, view_height=VIEW_HEIGHT)
    second = coin("second", 20_000, 10, 2)
    plan = plan_payout([burn(1, 100_000)], [first, second], RATE, CUSTODY_SCRIPT, params, view_height=VIEW_HEIGHT)
    assert plan.inputs == (first, second) and plan.change is not None


def test_fee_cap_by_rate() -> None:
    with pytest.raises(FeeAboveCap) as err:
        plan_payout(five_burns(), custody_coins(), PARAMS.max_fee_rate + Decimal("0.001"), CUSTODY_SCRIPT, PARAMS,
                    view_height=VIEW_HEIGHT)
    assert "maximum" in str(err.value)
    at_max = plan_payout(five_burns(), custody_coins(), PARAMS.max_fee_rate, CUSTODY_SCRIPT, PARAMS,
                         view_height=VIEW_HEIGHT)
    assert at_max.fee_rate == PARAMS.max_fee_rate


def test_fee_cap_by_withdrawal_fees_keeps_custody_solvent() -> None:
    """Custody loses payouts + fee and its liabilities fall by the burned amounts: the fee may not
    exceed the withdrawal fees of the batch, however many small coins it takes."""
    params = replace(PARAMS, withdrawal_fee=1_000)
    small = [coin(f"small {i}", 30_000, 10, i) for i in range(10)]
    with pytest.raises(FeeAboveCap) as err:
        plan_payout([burn(1, 100_000)], small, 5, CUSTODY_SCRIPT, params, view_height=VIEW_HEIGHT)
    assert "1 burns × 1000 sat" in str(err.value)
    plan = plan_payout([burn(1, 100_000)], [*small, coin("big", 200_000, 10)], 5, CUSTODY_SCRIPT, params,
                       view_height=VIEW_HEIGHT)
    assert len(plan.inputs) == 1 and plan.fee <= params.withdrawal_fee
    assert sum(c.value for c in plan.inputs) - sum(o.value for o in plan.tx.vout) == plan.fee
    # the custody balance after the payout covers what is still owed: it lost payouts + fee ≤ the burned amount
    assert plan.fee + sum(o.value for o in plan.payout_outputs) <= 100_000


def test_insufficient_custody_and_too_many_inputs() -> None:
    with pytest.raises(InsufficientCustody) as err:
        plan_payout([burn(1, 2_000_000)], custody_coins(), RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    assert "1200000 sat" in str(err.value)  # the eligible coins: a, b, c, f
    with pytest.raises(TooManyInputs):
        plan_payout([burn(1, 1_000_000)], custody_coins(), RATE, CUSTODY_SCRIPT, replace(PARAMS, max_inputs=2),
                    view_height=VIEW_HEIGHT)
    with pytest.raises(InsufficientCustody):
        plan_payout([burn(1, 100_000)], [], RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)


def test_bad_batches_are_refused() -> None:
    with pytest.raises(TooManyBurns):
        plan_payout([burn(i, 100_000) for i in range(1, 12)], custody_coins(), RATE, CUSTODY_SCRIPT, PARAMS,
                    view_height=VIEW_HEIGHT)
    with pytest.raises(PayoutError):
        plan_payout([burn(1, 100_000), burn(1, 100_000)], custody_coins(), RATE, CUSTODY_SCRIPT, PARAMS,
                    view_height=VIEW_HEIGHT)
    with pytest.raises(PayoutError):
        plan_payout([], custody_coins(), RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    with pytest.raises(PayoutError):
        plan_payout(five_burns(), [*custody_coins(), custody_coins()[0]], RATE, CUSTODY_SCRIPT, PARAMS,
                    view_height=VIEW_HEIGHT)
    with pytest.raises(PayoutError):  # a locktime above this is a Unix time, not a height
        plan_payout(five_burns(), custody_coins(), RATE, CUSTODY_SCRIPT, PARAMS, view_height=500_000_000)
    with pytest.raises(UnpayableDestination):  # a refundable burn must be left out of the batch
        plan_payout([burn(1, 100_000), PayoutBurn(digest("bad"), 2, 100_000, b"nonsense")], custody_coins(), RATE,
                    CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    for rate in (0, -1, "abc", Decimal("1.0001"), True, float("nan")):
        with pytest.raises(PayoutError):
            plan_payout(five_burns(), custody_coins(), rate, CUSTODY_SCRIPT, PARAMS,  # type: ignore[arg-type]
                        view_height=VIEW_HEIGHT)


def test_estimates_round_up_to_a_rate_plans_accept() -> None:
    assert round_fee_rate(Decimal("1.2341")) == Decimal("1.235")
    assert round_fee_rate(2.5) == Decimal("2.5")
    assert round_fee_rate("0.00001") == Decimal("0.001")
    assert round_fee_rate(Decimal("0.00123") * 100_000) == Decimal(123)  # estimatesmartfee's BTC/kvB
    plan_payout(five_burns(), custody_coins(), round_fee_rate(7.0004), CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    for bad in (0, -1, "x", float("inf"), None, True):
        with pytest.raises(PayoutError):
            round_fee_rate(bad)  # type: ignore[arg-type]


def test_params_and_coins_are_validated() -> None:
    for bad in ({"network": "litecoin"}, {"withdrawal_fee": 0}, {"fee_band": Decimal("0.5")},
                {"min_input_confirmations": 0}, {"max_batch": 0}, {"max_fee_rate": 0}):
        with pytest.raises(PayoutError):
            replace(PARAMS, **bad)
    good = coin("v", 1_000, 1)
    other_key, _ = key_at((1, 2))
    for bad_coin in ({"txid": "AB" * 32}, {"value": 0}, {"public_key": other_key}, {"path": (2**31,)},
                     {"script_pubkey": bytes(22)}):
        with pytest.raises(PayoutError):
            replace(good, **bad_coin)


def test_plan_constructor_refuses_inconsistent_plans() -> None:
    plan = honest_plan()
    tx = plan.tx
    tx.locktime = 7
    with pytest.raises(PayoutError):
        PayoutPlan(plan.burns, plan.inputs, tx.serialize(), plan.fee_rate, plan.view_height)
    with pytest.raises(PayoutError):
        PayoutPlan(plan.burns, plan.inputs[::-1], plan.unsigned_tx, plan.fee_rate, plan.view_height)
    with pytest.raises(PayoutError):
        PayoutPlan(plan.burns[::-1], plan.inputs, plan.unsigned_tx, plan.fee_rate, plan.view_height)
    with pytest.raises(PayoutError):
        PayoutPlan(plan.burns[:3], plan.inputs, plan.unsigned_tx, plan.fee_rate, plan.view_height)


# ------------------------------------------------------------------------------------- bumping


def test_bump_keeps_inputs_and_payouts_and_pays_the_bip125_increment() -> None:
    plan = honest_plan()
    bump = bump_payout(plan, RATE + 5, PARAMS)
    old, new = plan.tx, bump.tx
    assert [(i.prevout, i.sequence) for i in new.vin] == [(i.prevout, i.sequence) for i in old.vin]
    assert bump.inputs == plan.inputs and bump.burns == plan.burns
    assert [(o.value, o.script_pubkey) for o in new.vout[:5]] == [(o.value, o.script_pubkey) for o in old.vout[:5]]
    assert new.locktime == old.locktime and new.version == old.version
    assert new.vout[5].script_pubkey == CUSTODY_SCRIPT
    assert new.vout[5].value == old.vout[5].value - (bump.fee - plan.fee)
    assert bump.fee >= plan.fee + bump.vsize * 1  # BIP125 rule 4 at 1 sat/vB
    assert bump.replaces == plan.txid and bump.txid != plan.txid
    # a bump of a bump is a bump of the same inputs again
    again = bump_payout(bump, RATE + 10, PARAMS)
    assert again.inputs == plan.inputs and again.replaces == bump.txid and again.fee > bump.fee


def test_bump_below_the_bip125_minimum_is_refused() -> None:
    plan = honest_plan()
    least = minimum_bump_rate(plan, PARAMS)
    assert least > plan.fee_rate
    bump = bump_payout(plan, least, PARAMS)
    assert bump.fee >= plan.fee + bump.vsize
    assert Decimal(bump.fee) / bump.vsize > Decimal(plan.fee) / plan.vsize
    with pytest.raises(CannotBump) as err:
        bump_payout(plan, least - Decimal("0.001"), PARAMS)
    assert str(least) in str(err.value)
    with pytest.raises(CannotBump):
        bump_payout(plan, plan.fee_rate, PARAMS)


def test_bump_drops_change_below_dust_and_respects_the_cap() -> None:
    b = burn(1, 100_000)
    payout = 100_000 - PARAMS.withdrawal_fee
    plan = plan_payout([b], [coin("tight", payout + 2_500, 10)], 2, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    assert plan.change is not None and plan.change.value < 2_500
    bump = bump_payout(plan, 16, PARAMS)  # 16 sat/vB × 141 vB leaves less than 294 sat of change
    assert bump.change is None and bump.fee == payout + 2_500 - payout
    assert bump.tx.vout[0].value == payout and bump.inputs == plan.inputs
    with pytest.raises(CannotBump):  # nothing left to take a higher fee from
        bump_payout(bump, 20, PARAMS)
    with pytest.raises(FeeAboveCap):
        bump_payout(plan, 15, replace(PARAMS, withdrawal_fee=2_000))
    with pytest.raises(FeeAboveCap):  # more than the change holds
        bump_payout(plan, 40, PARAMS)


# ------------------------------------------------------------------------------- serialisation


def test_plan_and_proposal_round_trip_and_refuse_corruption() -> None:
    plan = bump_payout(honest_plan(), 12, PARAMS)
    proposal = proposal_of(plan)
    for value, cls in ((plan, PayoutPlan), (proposal, PayoutProposal)):
        data = value.to_bytes()
        assert cls.from_bytes(data) == value
        with pytest.raises(PayoutError):
            cls.from_bytes(data + b"\x00")
        with pytest.raises(PayoutError):
            cls.from_bytes(data[:-1])
        rng = random.Random(len(data))
        for _ in range(300):
            corrupt = bytearray(data)
            corrupt[rng.randrange(len(corrupt))] ^= 1 << rng.randrange(8)
            try:
                decoded = cls.from_bytes(bytes(corrupt))
            except PayoutError:
                continue
            assert decoded.to_bytes() == bytes(corrupt) and decoded != value  # canonical, and a different value
    assert PayoutProposal.from_bytes(proposal.to_bytes()).txid == plan.txid


def test_reprs_are_short_and_name_the_payout() -> None:
    plan = honest_plan()
    assert plan.txid in repr(plan) and len(repr(plan)) < 300
    assert plan.txid in repr(proposal_of(plan))


# -------------------------------------------------------------------------------- signatures


def test_finalize_places_verified_low_s_signatures() -> None:
    plan = honest_plan()
    signed = finalize_payout(plan, sign_all(plan))
    for i, (c, sighash) in enumerate(zip(plan.inputs, plan.sighashes, strict=True)):
        sig, key = signed.vin[i].witness
        assert key == c.public_key and sig[-1] == 0x01  # SIGHASH_ALL
        assert PublicKey(key).verify(sig[:-1], sighash, hasher=None)


def test_finalize_refuses_bad_signatures_naming_the_input() -> None:
    plan = honest_plan()
    good = sign_all(plan)
    with pytest.raises(SignatureRejected, match="input 1"):
        finalize_payout(plan, [good[0], good[0]])  # input 0's signature on input 1
    with pytest.raises(SignatureRejected, match=r"input 0.*high-S"):
        finalize_payout(plan, sign_all(plan, high_s=True))
    with pytest.raises(SignatureRejected, match="2 inputs"):
        finalize_payout(plan, good[:1])
    with pytest.raises(SignatureRejected, match="out of range"):
        finalize_payout(plan, [good[0], (0, 1)])
    with pytest.raises(SignatureRejected, match="not an"):
        finalize_payout(plan, [good[0], "sig"])  # type: ignore[list-item]
    assert all(s <= HALF_ORDER for _, s in good)


# ---------------------------------------------------------------------------- the participant


def test_honest_proposal_is_accepted() -> None:
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    verdict = check_payout(proposal_of(plan), view, PARAMS)
    assert verdict.ok and verdict.code == "ok", verdict.reason
    assert verdict.plan is not None and verdict.plan.unsigned_tx == plan.unsigned_tx
    assert verdict.plan.sighashes == plan.sighashes


def test_each_input_is_signed_only_for_its_own_sighash_and_path() -> None:
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    proposal = proposal_of(plan)
    fresh = PayoutPlan.from_bytes(plan.to_bytes())  # nothing computed yet: sighash(i) alone
    for i, c in enumerate(plan.inputs):
        assert fresh.sighash(i) == plan.sighashes[i]
        assert check_payout_input(proposal, i, plan.sighashes[i], c.path, view, PARAMS).ok
        assert plan.input_index(plan.sighashes[i], c.path) == i
    assert len(set(plan.sighashes)) == len(plan.inputs)
    with pytest.raises(PayoutError):
        plan.sighash(len(plan.inputs))
    assert check_payout_input(proposal, 0, plan.sighashes[1], plan.inputs[0].path, view, PARAMS).code == "wrong_digest"
    assert check_payout_input(proposal, 0, plan.sighashes[0], plan.inputs[1].path, view, PARAMS).code == "wrong_path"
    assert check_payout_input(proposal, 2, plan.sighashes[0], plan.inputs[0].path, view, PARAMS).code == "wrong_input"
    assert plan.input_index(digest("other"), plan.inputs[0].path) is None


def _other_script() -> bytes:
    return destination("p2wpkh", "attacker")[1]


def _raise_first_payout(tx: Tx) -> None:
    tx.vout[1].value += 10_000
    tx.vout[-1].value -= 10_000


def _change_elsewhere(tx: Tx) -> None:
    tx.vout[-1].script_pubkey = _other_script()


def _pay_another_address(tx: Tx) -> None:
    tx.vout[0].script_pubkey = _other_script()


def _fatter_fee(tx: Tx) -> None:
    tx.vout[-1].value -= 20_000


def _extra_output(tx: Tx) -> None:
    tx.vout[-1].value -= 20_000
    tx.vout.append(TxOut(19_000, _other_script()))


def _drop_change(tx: Tx) -> None:
    tx.vout.pop()


def _other_input(tx: Tx) -> None:
    tx.vin[1] = TxIn(coin("f", 1, 1, 6).outpoint, sequence=0xFFFFFFFD)


def _foreign_input(tx: Tx) -> None:
    tx.vin.append(TxIn(OutPoint(digest("not ours"), 0), sequence=0xFFFFFFFD))


def _swap_inputs(tx: Tx) -> None:
    tx.vin.reverse()


def _final_sequence(tx: Tx) -> None:
    tx.vin[0].sequence = 0xFFFFFFFF


def _locktime(tx: Tx) -> None:
    tx.locktime -= 1


def _version(tx: Tx) -> None:
    tx.version = 1


@pytest.mark.parametrize(("edit", "part"), [
    (_pay_another_address, "payout outputs: output 0"),
    (_raise_first_payout, "payout outputs: output 1"),
    (_change_elsewhere, "change: goes to"),
    (_fatter_fee, "fee: the proposal pays"),
    (_extra_output, "change: the proposal has 2 outputs"),
    (_drop_change, "change: the proposal has no change output"),
    (_other_input, "inputs"),
    (_foreign_input, "inputs"),
    (_swap_inputs, "inputs: same coins in another order"),
    (_final_sequence, "inputs"),
    (_locktime, "locktime"),
    (_version, "version"),
], ids=lambda v: getattr(v, "__name__", None) or v)
def test_a_changed_transaction_is_refused_naming_what_differs(edit: Callable[[Tx], None], part: str) -> None:
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    verdict = check_payout(mutated(plan, edit), view, PARAMS)
    assert (verdict.ok, verdict.code) == (False, "rebuilt_different")
    assert verdict.reason.startswith(part.split(":")[0]) and part in verdict.reason, verdict.reason
    assert verdict.plan is None


def test_view_refusals() -> None:
    plan = honest_plan()
    proposal = proposal_of(plan)
    view = FakeView.knowing(plan.burns)
    view.tip = VIEW_HEIGHT - 1
    assert check_payout(proposal, view, PARAMS).code == "behind"
    view = FakeView.knowing(plan.burns)
    view.hashes[VIEW_HEIGHT] = block_hash(-1)
    verdict = check_payout(proposal, view, PARAMS)
    assert verdict.code == "different_view" and block_hash(VIEW_HEIGHT) in verdict.reason


@pytest.mark.parametrize(("change", "code"), [
    (lambda facts: None, "unknown_burn"),
    (lambda facts: replace(facts, final=False), "burn_not_final"),
    (lambda facts: replace(facts, refunded=True), "burn_refunded"),
    (lambda facts: replace(facts, paid_or_pending_in="ab" * 32), "burn_already_paid"),
    (lambda facts: replace(facts, destination=b"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"), "unpayable"),
    (lambda facts: replace(facts, amount=PARAMS.withdrawal_fee + 293), "below_minimum"),
    (lambda facts: replace(facts, amount=facts.amount + 1), "rebuilt_different"),  # a different burn amount
])
def test_burn_refusals(change: Callable[[BurnFacts], BurnFacts | None], code: str) -> None:
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    target = plan.burns[2].burn_id
    changed = change(view.burns[target])
    if changed is None:
        del view.burns[target]
    else:
        view.burns[target] = changed
    verdict = check_payout(proposal_of(plan), view, PARAMS)
    assert (verdict.ok, verdict.code) == (False, code), verdict.reason
    if code != "rebuilt_different":
        assert target.hex() in verdict.reason


def test_batch_shape_refusals() -> None:
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    twice = PayoutProposal(plan.unsigned_tx, (*plan.burn_ids, plan.burn_ids[0]), VIEW_HEIGHT,
                           block_hash(VIEW_HEIGHT), plan.fee_rate)
    assert check_payout(twice, view, PARAMS).code == "burn_already_paid"
    many = PayoutProposal(plan.unsigned_tx, tuple(digest(f"b{i}") for i in range(11)), VIEW_HEIGHT,
                          block_hash(VIEW_HEIGHT), plan.fee_rate)
    assert check_payout(many, view, PARAMS).code == "too_many_burns"
    reordered = PayoutProposal(plan.unsigned_tx, plan.burn_ids[::-1], VIEW_HEIGHT, block_hash(VIEW_HEIGHT),
                               plan.fee_rate)
    verdict = check_payout(reordered, view, PARAMS)
    assert verdict.code == "rebuilt_different" and "nonce order" in verdict.reason
    fewer = PayoutProposal(plan.unsigned_tx, plan.burn_ids[:4], VIEW_HEIGHT, block_hash(VIEW_HEIGHT), plan.fee_rate)
    assert check_payout(fewer, view, PARAMS).code == "rebuilt_different"
    assert check_payout("not a proposal", view, PARAMS).code == "malformed"  # type: ignore[arg-type]


@pytest.mark.parametrize(("estimate", "rate", "code"), [
    (Decimal(25), RATE, "fee_out_of_band"),  # 10 < 25 / 2
    (Decimal(4), RATE, "fee_out_of_band"),  # 10 > 4 × 2
    (Decimal(5), RATE, "ok"),  # the band's edges are inside
    (Decimal(20), RATE, "ok"),
    (None, RATE, "no_fee_estimate"),
    (Decimal("NaN"), RATE, "no_fee_estimate"),
    (Decimal(60), Decimal(60), "fee_above_cap"),  # above max_fee_rate, whatever the estimate
])
def test_fee_rate_refusals(estimate: Decimal | None, rate: Decimal, code: str) -> None:
    lenient = replace(PARAMS, max_fee_rate=Decimal(100))  # the coordinator's own rules may differ
    plan = plan_payout(five_burns(), custody_coins(), rate, CUSTODY_SCRIPT, lenient, view_height=VIEW_HEIGHT)
    view = FakeView.knowing(plan.burns)
    view.estimate = estimate
    verdict = check_payout(proposal_of(plan), view, PARAMS)
    assert verdict.code == code, verdict.reason


def test_fee_above_the_withdrawal_fee_cap_is_refused() -> None:
    plan = plan_payout(five_burns(), custody_coins(), 40, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    view = FakeView.knowing(plan.burns)
    view.estimate = Decimal(40)
    stricter = replace(PARAMS, withdrawal_fee=2_000)  # 5 × 2000 sat is less than this payout's fee
    assert plan.fee > 5 * 2_000
    verdict = check_payout(proposal_of(plan), view, stricter)
    assert verdict.code == "fee_above_cap" and "5 burns × 2000 sat" in verdict.reason


def test_coins_this_node_lacks_or_has_reserved_change_the_rebuild() -> None:
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    view.reserved["cd" * 32] = {(plan.inputs[0].txid, plan.inputs[0].vout)}  # pending in another payout here
    verdict = check_payout(proposal_of(plan), view, PARAMS)
    assert verdict.code == "rebuilt_different" and verdict.reason.startswith("inputs")
    view = FakeView.knowing(plan.burns)
    view.coins = [c for c in view.coins if c.txid != plan.inputs[1].txid]  # a coin this node never saw
    assert check_payout(proposal_of(plan), view, PARAMS).code == "rebuilt_different"
    view.coins = []
    assert check_payout(proposal_of(plan), view, PARAMS).code == "insufficient_custody"


def test_an_identical_resignature_is_accepted_after_the_node_recorded_it() -> None:
    """A session that failed after this node authorised it: the burns are pending in this very
    payout and its coins reserved by it — the identical transaction is co-signed again."""
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    view.record(plan)
    verdict = check_payout(proposal_of(plan), view, PARAMS)
    assert verdict.ok, verdict.reason


def test_a_second_payout_for_one_burn_is_refused() -> None:
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    view.record(plan)
    # the coordinator "reschedules" the same burns on the coins this node has not reserved
    other_coins = [c for c in custody_coins() if (c.txid, c.vout) not in view.reserved[plan.txid]]
    other_coins.append(coin("g", 800_000, 50, 7))
    second = plan_payout(five_burns(), other_coins, RATE, CUSTODY_SCRIPT, PARAMS, view_height=VIEW_HEIGHT)
    assert not {c.txid for c in second.inputs} & {c.txid for c in plan.inputs}
    verdict = check_payout(proposal_of(second), view, PARAMS)
    assert verdict.code == "burn_already_paid" and plan.txid in verdict.reason
    # and calling it a bump of the original does not help: a bump spends the original's inputs
    fake_bump = PayoutProposal(second.unsigned_tx, second.burn_ids, VIEW_HEIGHT, block_hash(VIEW_HEIGHT),
                               Decimal(12), replaces=plan.txid)
    view.estimate = Decimal(12)
    verdict = check_payout(fake_bump, view, PARAMS)
    assert verdict.code == "rebuilt_different" and verdict.reason.startswith("inputs")


def test_an_honest_bump_is_accepted_and_a_dishonest_one_refused() -> None:
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    view.record(plan)
    view.estimate = Decimal(15)
    bump = bump_payout(plan, 15, PARAMS)
    verdict = check_payout(proposal_of(bump), view, PARAMS)
    assert verdict.ok and verdict.plan is not None and verdict.plan.unsigned_tx == bump.unsigned_tx, verdict.reason
    # the bump of the bump: the burns are still recorded as pending in the first variant
    view.archive[bump.txid] = bump
    again = bump_payout(bump, 20, PARAMS)
    view.estimate = Decimal(20)
    assert check_payout(proposal_of(again), view, PARAMS).ok
    # a "bump" that also raises a payout, or moves the change, is not the bump
    view.estimate = Decimal(15)
    for edit, part in ((_raise_first_payout, "payout outputs"), (_change_elsewhere, "change"),
                       (_fatter_fee, "fee"), (_other_input, "inputs")):
        verdict = check_payout(mutated(bump, edit), view, PARAMS)
        assert verdict.code == "rebuilt_different" and verdict.reason.startswith(part), verdict.reason


def test_bump_refusals() -> None:
    plan = honest_plan()
    view = FakeView.knowing(plan.burns)
    bump = bump_payout(plan, 15, PARAMS)
    view.estimate = Decimal(15)
    assert check_payout(proposal_of(bump), view, PARAMS).code == "replaces_unknown"  # never saw the original
    view.record(plan)
    too_small = PayoutProposal(plan.unsigned_tx, plan.burn_ids, VIEW_HEIGHT, block_hash(VIEW_HEIGHT),
                               plan.fee_rate, replaces=plan.txid)
    view.estimate = plan.fee_rate
    assert check_payout(too_small, view, PARAMS).code == "cannot_bump"
    other_burns = PayoutProposal(bump.unsigned_tx, bump.burn_ids[:4], VIEW_HEIGHT, block_hash(VIEW_HEIGHT),
                                 bump.fee_rate, replaces=plan.txid)
    view.estimate = Decimal(15)
    assert check_payout(other_burns, view, PARAMS).code == "rebuilt_different"
    other_height = PayoutProposal(bump.unsigned_tx, bump.burn_ids, VIEW_HEIGHT + 1, block_hash(VIEW_HEIGHT + 1),
                                  bump.fee_rate, replaces=plan.txid)
    verdict = check_payout(other_height, view, PARAMS)
    assert verdict.code == "rebuilt_different" and verdict.reason.startswith("locktime")
    view.burns[plan.burn_ids[0]] = replace(view.burns[plan.burn_ids[0]], refunded=True)
    assert check_payout(proposal_of(bump), view, PARAMS).code == "burn_refunded"
