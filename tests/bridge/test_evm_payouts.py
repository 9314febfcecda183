"""ETH payouts without a chain: the nonce ledger, the transactions, and what a participant co-signs.

Signed transactions are made with a local stand-in for the group key (child secret = group secret +
BIP32 tweak, as the threshold network signs) and checked independently with eth-account: it must
recover the custody address and decode the fields these tests expect from the burn's facts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from hexbytes import HexBytes

from fusion_prime.bridge.custody import CustodyAddress, custody_address
from fusion_prime.bridge.derivation import deposit_address
from fusion_prime.bridge.evm_payouts import (
    GAP_FILL,
    BelowMinimum,
    DepositAccount,
    EvmBurn,
    EvmPayoutError,
    EvmPayoutParams,
    FeeCapReached,
    FeeQuote,
    FillGap,
    GapFillProposal,
    NonceError,
    NonceManager,
    NothingToSweep,
    PayoutProposal,
    Rebroadcast,
    Replace,
    Settled,
    SweepProposal,
    UnpayableDestination,
    check_eth_payout,
    check_gap_fill,
    check_sweep,
    decode_signed_transaction,
    minimum_bump,
    payout_purpose,
    plan_eth_payout,
    plan_gap_fill,
    plan_replacement,
    plan_sweep,
)
from fusion_prime.bridge.orders import address_bytes
from fusion_prime.protocol.curve import Point, Q
from fusion_prime.protocol.ecdsa import Signature
from fusion_prime.protocol.hd import derive
from fusion_prime.signer.ethereum import Eip1559Transaction, sign_transaction

CHAIN = "eip155:31337"
DESTINATION_CHAIN = "eip155:31338"
GWEI = 10**9
ETHER = 10**18


class GroupKey:
    """The group key held in one place, for tests only: signs at a path with secret + tweak."""

    def __init__(self, seed: bytes) -> None:
        digest = hashlib.sha512(seed).digest()
        self._secret = int.from_bytes(digest[:32], "big") % Q
        self.chain_code = digest[32:]
        self.public = Point.base_mul(self._secret)

    def public_key(self, path: str) -> Point:
        return derive(self.public, self.chain_code, path).public_key

    def sign_digest(self, digest: bytes, path: str) -> Signature:
        child = (self._secret + derive(self.public, self.chain_code, path).tweak) % Q
        sig = PrivateKey(child.to_bytes(32, "big")).sign_recoverable(digest, hasher=None)
        return Signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64],
                         self.public_key(path))


KEY = GroupKey(b"evm payouts unit tests")
CUSTODY = custody_address(KEY.public, KEY.chain_code, CHAIN)
CUSTODY_BYTES = address_bytes(CUSTODY.address)
PARAMS = EvmPayoutParams(chain_id=31337, withdrawal_fee=21_000 * 100 * GWEI, max_fee_per_gas=100 * GWEI,
                         fee_band=Fraction(2), stuck_after=300)
ESTIMATE = FeeQuote(max_fee_per_gas=20 * GWEI, max_priority_fee_per_gas=1 * GWEI)
ALICE = bytes.fromhex("a1" * 20)
BOB = bytes.fromhex("b0" * 20)


def burn_id(n: int) -> bytes:
    return hashlib.sha256(b"burn %d" % n).digest()


def a_burn(n: int = 1, amount: int = ETHER, destination: bytes = ALICE, **flags: bool) -> EvmBurn:
    return EvmBurn(burn_id(n), amount, destination, **flags)


def signed_raw(tx: Eip1559Transaction, path: str = CUSTODY.path_str) -> bytes:
    return sign_transaction(tx, KEY, path).raw


@dataclass
class RecordingView:
    """A participant's view: chain facts set by the test, co-signing records kept like the integrator must."""

    burns: dict[bytes, EvmBurn] = field(default_factory=dict)
    code: set[bytes] = field(default_factory=set)
    estimate: FeeQuote = ESTIMATE
    counts: dict[bytes, int] = field(default_factory=dict)
    mined: dict[tuple[bytes, int], Eip1559Transaction] = field(default_factory=dict)
    burn_nonce: dict[bytes, int] = field(default_factory=dict)
    at_nonce: dict[tuple[bytes, int], str] = field(default_factory=dict)
    deposits: dict[bytes, DepositAccount] = field(default_factory=dict)
    mempool_later: set[tuple[bytes, int]] = field(default_factory=set)

    def burn(self, burn_id: bytes) -> EvmBurn | None:
        return self.burns.get(burn_id)

    def has_code(self, address: bytes) -> bool:
        return address in self.code

    def fee_estimate(self) -> FeeQuote:
        return self.estimate

    def confirmed_nonce(self, account: bytes) -> int:
        return self.counts.get(account, 0)

    def transaction_at_nonce(self, account: bytes, nonce: int) -> Eip1559Transaction | None:
        return self.mined.get((account, nonce))

    def cosigned_payout_nonce(self, burn_id: bytes) -> int | None:
        return self.burn_nonce.get(burn_id)

    def cosigned_at_nonce(self, account: bytes, nonce: int) -> str | None:
        return self.at_nonce.get((account, nonce))

    def has_later_transaction(self, account: bytes, nonce: int) -> bool:
        return any(a == account and n > nonce for a, n in self.at_nonce) or any(
            a == account and n > nonce for a, n in self.mempool_later)

    def deposit_account(self, address: bytes) -> DepositAccount | None:
        return self.deposits.get(address)

    def cosign_payout(self, proposal: PayoutProposal):
        verdict = check_eth_payout(proposal, self, PARAMS, CUSTODY)
        if verdict.ok:
            self.burn_nonce[proposal.burn_id] = proposal.tx.nonce
            self.at_nonce[(CUSTODY_BYTES, proposal.tx.nonce)] = payout_purpose(proposal.burn_id)
        return verdict

    def cosign_gap_fill(self, proposal: GapFillProposal):
        verdict = check_gap_fill(proposal, self, PARAMS, CUSTODY)
        if verdict.ok:
            self.at_nonce[(CUSTODY_BYTES, proposal.tx.nonce)] = GAP_FILL
        return verdict


def payout_proposal(burn: EvmBurn, tx: Eip1559Transaction, path: str = CUSTODY.path_str) -> PayoutProposal:
    return PayoutProposal(burn.burn_id, tx, path, tx.signing_hash())


def view_with(*burns: EvmBurn, count: int = 0) -> RecordingView:
    return RecordingView(burns={b.burn_id: b for b in burns}, counts={CUSTODY_BYTES: count})


def honest_payout(burn: EvmBurn, nonce: int, fees: FeeQuote = ESTIMATE) -> Eip1559Transaction:
    return plan_eth_payout(burn, nonce, fees, PARAMS, CUSTODY, destination_has_code=False)


def eth_fields(raw: bytes) -> dict:
    """The transaction's fields as eth-account decodes them (an implementation independent of ours)."""
    return TypedTransaction.from_bytes(HexBytes(raw)).as_dict()


def restart(manager: NonceManager) -> NonceManager:
    """What a crash does to the ledger: only what was stored (as JSON) survives."""
    return NonceManager.from_dict(json.loads(json.dumps(manager.to_dict())))


# ------------------------------------------------------------------------------ the nonce ledger


def test_assignment_is_idempotent_and_gap_free_across_restarts() -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=7)
    first = [manager.assign(f"burn:{i}") for i in range(5)]
    assert first == list(range(7, 12))  # consecutive from the confirmed count: no gap
    assert [manager.assign(f"burn:{i}") for i in range(5)] == first
    revived = restart(manager)
    assert revived.to_dict() == manager.to_dict()
    assert [revived.assign(f"burn:{i}") for i in reversed(range(5))] == list(reversed(first))
    assert revived.assign("burn:new") == 12


def test_a_nonce_is_never_handed_out_twice_whatever_happens() -> None:
    """Random assignments, cancellations, signatures, observations and restarts: no nonce ever serves
    two purposes, and a purpose's nonce never changes once signed."""
    rng = random.Random(1559)
    manager = NonceManager(CUSTODY.address, confirmed_count=3)
    owner_of: dict[int, str] = {}
    signed_at: dict[str, int] = {}
    now = 1_000
    for step in range(400):
        now += rng.randint(0, 200)
        op = rng.random()
        purpose = f"burn:{rng.randint(0, 60)}"
        if op < 0.45:
            try:
                nonce = manager.assign(purpose)
            except NonceError:
                continue  # a cancelled purpose never gets a nonce again
            assert owner_of.setdefault(nonce, purpose) == purpose, f"nonce {nonce} handed out twice"
            if purpose in signed_at:
                assert nonce == signed_at[purpose]
        elif op < 0.55:
            live = [s for s in manager.slots() if s.owner != GAP_FILL and not s.signed]
            if live:
                manager.cancel(rng.choice(live).owner)
        elif op < 0.75:
            live = [s for s in manager.slots() if s.owner != GAP_FILL]
            if live:
                slot = rng.choice(live)
                tx = honest_payout(a_burn(), slot.nonce, FeeQuote((10 + step) * GWEI, GWEI))
                manager.record_signed(slot.nonce, slot.owner, signed_raw(tx), now)
                signed_at.setdefault(slot.owner, slot.nonce)
        elif op < 0.9:
            count = min(manager.next_nonce, manager.confirmed_count + rng.randint(0, 2))
            manager.observe(count, count + rng.randint(0, 2), now, stuck_after=PARAMS.stuck_after)
        else:
            manager = restart(manager)
        for slot in manager.slots():
            if slot.owner != GAP_FILL:
                assert manager.nonce_of(slot.owner) == slot.nonce
    assert len(owner_of) > 30  # the walk did hand out many nonces


def test_a_cancelled_purpose_leaves_a_gap_that_a_filler_takes() -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=0)
    refunded, later = manager.assign("burn:refunded"), manager.assign("burn:later")
    manager.record_signed(later, "burn:later", signed_raw(honest_payout(a_burn(2), later)), now=10)
    assert manager.cancel("burn:refunded") == refunded
    actions = manager.observe(0, 0, now=11, stuck_after=PARAMS.stuck_after)
    assert FillGap(refunded) in actions
    with pytest.raises(NonceError, match="cancelled"):
        manager.assign("burn:refunded")
    assert manager.assign("burn:next") not in (refunded, later)
    # the gap belongs to a filler, nothing else
    with pytest.raises(NonceError):
        manager.record_signed(refunded, "burn:next", signed_raw(honest_payout(a_burn(3), refunded)), now=12)
    filler = plan_gap_fill(refunded, ESTIMATE, PARAMS, CUSTODY)
    manager.record_signed(refunded, GAP_FILL, signed_raw(filler), now=12)
    assert not any(isinstance(a, FillGap) for a in manager.observe(0, 3, now=13, stuck_after=PARAMS.stuck_after))
    decoded = eth_fields(signed_raw(filler))
    assert decoded["value"] == 0 and bytes(decoded["to"]) == CUSTODY_BYTES


def test_a_signed_purpose_cannot_be_cancelled() -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=0)
    nonce = manager.assign("burn:1")
    manager.record_signed(nonce, "burn:1", signed_raw(honest_payout(a_burn(), nonce)), now=1)
    with pytest.raises(NonceError, match="replace it"):
        manager.cancel("burn:1")


def test_the_archive_takes_only_this_accounts_variants_of_the_same_payment() -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=0)
    nonce = manager.assign("burn:1")
    payout = honest_payout(a_burn(), nonce)
    other_path = "m/1/2/3"
    with pytest.raises(NonceError, match="not 0x"):
        manager.record_signed(nonce, "burn:1", signed_raw(payout, other_path), now=1)
    with pytest.raises(NonceError, match="has nonce"):
        manager.record_signed(nonce, "burn:1", signed_raw(dataclasses.replace(payout, nonce=nonce + 1)), now=1)
    manager.record_signed(nonce, "burn:1", signed_raw(payout), now=1)
    with pytest.raises(NonceError, match="something else"):
        manager.record_signed(nonce, "burn:1", signed_raw(dataclasses.replace(payout, to=BOB)), now=2)
    bumped = plan_replacement(payout, ESTIMATE, PARAMS)
    manager.record_signed(nonce, "burn:1", signed_raw(bumped), now=2)
    assert manager.latest_transaction(nonce) == bumped
    assert len(restart(manager).slot(nonce).signed) == 2  # every variant archived


def test_a_stuck_payout_is_replaced_at_the_same_nonce_with_bumped_fees() -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=4)
    nonce = manager.assign("burn:1")
    payout = honest_payout(a_burn(), nonce, FeeQuote(10 * GWEI, 2 * GWEI))
    manager.record_signed(nonce, "burn:1", signed_raw(payout), now=1_000)
    in_pool = nonce + 1
    assert manager.observe(4, in_pool, now=1_000 + PARAMS.stuck_after - 1, stuck_after=PARAMS.stuck_after) == ()
    actions = manager.observe(4, in_pool, now=1_000 + PARAMS.stuck_after, stuck_after=PARAMS.stuck_after)
    assert actions == (Replace(nonce, "burn:1", payout),)
    # fees fell meanwhile: the bump still applies (geth: both fees ≥ old × 110 / 100 and strictly higher)
    replacement = plan_replacement(payout, FeeQuote(5 * GWEI, 1 * GWEI), PARAMS)
    assert replacement.nonce == payout.nonce
    assert (replacement.to, replacement.value, replacement.data) == (payout.to, payout.value, payout.data)
    assert replacement.max_fee_per_gas * 100 >= payout.max_fee_per_gas * 110
    assert replacement.max_priority_fee_per_gas * 100 >= payout.max_priority_fee_per_gas * 110
    assert replacement.max_fee_per_gas > payout.max_fee_per_gas
    assert replacement.max_priority_fee_per_gas > payout.max_priority_fee_per_gas
    # a higher own estimate wins over the minimum bump
    assert plan_replacement(payout, FeeQuote(50 * GWEI, 3 * GWEI), PARAMS).max_fee_per_gas == 50 * GWEI
    # signing the replacement restarts the clock
    manager.record_signed(nonce, "burn:1", signed_raw(replacement), now=1_400)
    assert manager.observe(4, in_pool, now=1_500, stuck_after=PARAMS.stuck_after) == ()


def test_replacements_stop_at_the_cap() -> None:
    near_cap = honest_payout(a_burn(), 0, FeeQuote(85 * GWEI, 2 * GWEI))
    capped = plan_replacement(near_cap, FeeQuote(300 * GWEI, 2 * GWEI), PARAMS)
    assert capped.max_fee_per_gas == PARAMS.max_fee_per_gas  # the estimate is lowered to the cap
    too_near = honest_payout(a_burn(), 0, FeeQuote(95 * GWEI, 2 * GWEI))
    with pytest.raises(FeeCapReached):  # 95 × 1.1 > 100
        plan_replacement(too_near, FeeQuote(300 * GWEI, 2 * GWEI), PARAMS)
    at_cap = honest_payout(a_burn(), 0, FeeQuote(PARAMS.max_fee_per_gas, 2 * GWEI))
    with pytest.raises(FeeCapReached):
        plan_replacement(at_cap, ESTIMATE, PARAMS)
    all_priority = honest_payout(a_burn(), 0, FeeQuote(60 * GWEI, 60 * GWEI))
    bumped = plan_replacement(all_priority, FeeQuote(300 * GWEI, 300 * GWEI), PARAMS)
    assert bumped.max_priority_fee_per_gas <= bumped.max_fee_per_gas == PARAMS.max_fee_per_gas


def test_a_zero_priority_fee_is_still_raised() -> None:
    bump = minimum_bump(FeeQuote(1, 0), PARAMS)
    assert bump.max_fee_per_gas > 1 and bump.max_priority_fee_per_gas > 0


def test_observe_rebroadcasts_what_left_the_mempool_and_settles_what_is_final() -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=0)
    txs = {}
    for i in range(3):
        nonce = manager.assign(f"burn:{i}")
        txs[nonce] = signed_raw(honest_payout(a_burn(i), nonce))
        manager.record_signed(nonce, f"burn:{i}", txs[nonce], now=0)
    # nonce 0 is final, 1 is in the mempool, 2 is not (dropped)
    actions = manager.observe(1, 2, now=10, stuck_after=PARAMS.stuck_after)
    assert actions == (Settled(0, "burn:0", (decode_signed_transaction(txs[0]).hash,)),
                       Rebroadcast(2, "burn:2", txs[2]))
    assert manager.assign("burn:0") == 0  # still the same nonce once final
    with pytest.raises(NonceError, match="went down"):
        manager.observe(0, 2, now=11, stuck_after=PARAMS.stuck_after)
    # nonces used by transactions this ledger never saw are never handed out
    manager.observe(9, 9, now=12, stuck_after=PARAMS.stuck_after)
    assert manager.assign("burn:fresh") == 9


def test_nothing_behind_a_gap_is_bumped() -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=0)
    gap, waiting = manager.assign("burn:a"), manager.assign("burn:b")
    manager.record_signed(waiting, "burn:b", signed_raw(honest_payout(a_burn(2), waiting)), now=0)
    manager.cancel("burn:a")
    actions = manager.observe(0, 0, now=10 * PARAMS.stuck_after, stuck_after=PARAMS.stuck_after)
    assert FillGap(gap) in actions
    assert not any(isinstance(a, Replace) for a in actions)


def test_adopting_another_coordinators_nonce() -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=0)
    mine = manager.assign("burn:mine")  # 0, never proposed
    assert manager.adopt("burn:theirs", mine) == "burn:mine"
    assert manager.nonce_of("burn:theirs") == mine
    assert manager.assign("burn:mine") == 1
    manager.adopt("burn:far", 4)  # 2 and 3 become gaps to fill
    assert {a.nonce for a in manager.observe(0, 0, 1, stuck_after=300) if isinstance(a, FillGap)} == {2, 3}
    assert manager.assign("burn:next") == 5
    manager.record_signed(1, "burn:mine", signed_raw(honest_payout(a_burn(), 1)), now=1)
    with pytest.raises(NonceError):
        manager.adopt("burn:other", 1)  # signed here: this node would have refused that proposal
    with pytest.raises(NonceError):
        manager.adopt("burn:mine", 6)  # a signed purpose never moves


def test_reassign_only_after_the_nonce_was_consumed() -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=0)
    nonce = manager.assign("burn:1")
    with pytest.raises(NonceError):
        manager.reassign("burn:1")
    manager.observe(1, 1, now=1, stuck_after=300)
    fresh = manager.reassign("burn:1")
    assert fresh != nonce and manager.nonce_of("burn:1") == fresh == manager.next_nonce - 1


@pytest.mark.parametrize("corrupt", ["drop_slot", "two_nonces", "tampered_raw", "next_below", "not_a_mapping"])
def test_a_corrupt_stored_ledger_is_refused(corrupt: str) -> None:
    manager = NonceManager(CUSTODY.address, confirmed_count=0)
    for i in range(3):
        manager.assign(f"burn:{i}")
    manager.record_signed(1, "burn:1", signed_raw(honest_payout(a_burn(), 1)), now=5)
    stored = json.loads(json.dumps(manager.to_dict()))
    if corrupt == "drop_slot":
        del stored["slots"][0]
    elif corrupt == "two_nonces":
        stored["slots"][2]["owner"] = "burn:0"
    elif corrupt == "tampered_raw":
        raw = stored["slots"][1]["signed"][0]["raw"]
        stored["slots"][1]["signed"][0]["raw"] = raw[:-2] + ("00" if raw[-2:] != "00" else "01")
    elif corrupt == "next_below":
        stored["confirmed_count"] = 5
    else:
        stored["slots"][0] = "nonsense"
    with pytest.raises(NonceError):
        NonceManager.from_dict(stored)


# --------------------------------------------------------------------------------- the builders


def test_the_payout_pays_amount_minus_fee_from_custody_as_eth_account_reads_it() -> None:
    burn = a_burn(amount=3 * ETHER)
    raw = signed_raw(honest_payout(burn, 17))
    assert Account.recover_transaction(raw) == CUSTODY.address
    fields = eth_fields(raw)
    assert bytes(fields["to"]) == ALICE
    assert fields["value"] == 3 * ETHER - PARAMS.withdrawal_fee
    assert fields["nonce"] == 17 and fields["chainId"] == 31337 and fields["gas"] == 21_000
    assert fields["data"] in (b"", "0x") and not fields["accessList"]
    decoded = decode_signed_transaction(raw)
    assert decoded.sender == CUSTODY_BYTES and decoded.tx == honest_payout(burn, 17)


def test_a_payout_costs_custody_no_more_than_the_withdrawal_fee() -> None:
    with pytest.raises(EvmPayoutError, match="exceeds the withdrawal fee"):
        EvmPayoutParams(chain_id=1, withdrawal_fee=21_000 * 10 * GWEI - 1, max_fee_per_gas=10 * GWEI)
    expensive = honest_payout(a_burn(), 0, FeeQuote(10**6 * GWEI, 10**6 * GWEI))
    assert expensive.gas * expensive.max_fee_per_gas <= PARAMS.withdrawal_fee


def test_below_minimum_and_unpayable_destinations() -> None:
    with pytest.raises(BelowMinimum):
        honest_payout(a_burn(amount=PARAMS.withdrawal_fee), 0)
    for destination, why in [(bytes(20), "precompile"), ((0xFFFF).to_bytes(20, "big"), "precompile"),
                             (ALICE + b"\x00", "21 bytes"), (b"\x01" * 19, "19 bytes"), (CUSTODY_BYTES, "custody")]:
        with pytest.raises(UnpayableDestination, match=why):
            honest_payout(a_burn(destination=destination), 0)
    with pytest.raises(UnpayableDestination, match="code"):
        plan_eth_payout(a_burn(), 0, ESTIMATE, PARAMS, CUSTODY, destination_has_code=True)
    assert honest_payout(a_burn(destination=(0x10000).to_bytes(20, "big")), 0).to == (0x10000).to_bytes(20, "big")


def test_sweep_leaves_the_worst_case_gas_and_refuses_dust() -> None:
    deposit = deposit_address(KEY.public, KEY.chain_code, CHAIN, DESTINATION_CHAIN, ALICE)
    balance = ETHER // 2
    tx = plan_sweep(deposit.address, balance, 0, ESTIMATE, PARAMS, CUSTODY)
    assert tx.to == CUSTODY_BYTES and tx.value + tx.gas * tx.max_fee_per_gas == balance
    assert Account.recover_transaction(signed_raw(tx, deposit.path_str)) == deposit.address
    with pytest.raises(NothingToSweep):
        plan_sweep(deposit.address, 21_000 * ESTIMATE.max_fee_per_gas, 0, ESTIMATE, PARAMS, CUSTODY)


def test_custody_on_another_chain_is_refused() -> None:
    elsewhere = custody_address(KEY.public, KEY.chain_code, "eip155:1")
    with pytest.raises(EvmPayoutError, match="chain"):
        plan_gap_fill(0, ESTIMATE, PARAMS, elsewhere)


def test_decoding_refuses_high_s_and_trailing_bytes() -> None:
    tx = honest_payout(a_burn(), 0)
    good = sign_transaction(tx, KEY, CUSTODY.path_str)
    high_s = tx.encode_signed(good.y_parity ^ 1, good.r, Q - good.s)
    with pytest.raises(EvmPayoutError, match="low-S"):
        decode_signed_transaction(high_s)
    with pytest.raises(EvmPayoutError):
        decode_signed_transaction(good.raw + b"\x00")


# ---------------------------------------------------------------------- what a participant signs


def test_the_honest_payout_and_its_replacement_are_co_signed() -> None:
    burn = a_burn()
    view = view_with(burn, count=5)
    payout = honest_payout(burn, 5)
    assert view.cosign_payout(payout_proposal(burn, payout)).ok
    assert view.cosign_payout(payout_proposal(burn, payout)).ok  # a retry re-signs the identical tx
    view.estimate = FeeQuote(30 * GWEI, 2 * GWEI)
    replacement = plan_replacement(payout, view.estimate, PARAMS)
    assert replacement.nonce == payout.nonce
    assert view.cosign_payout(payout_proposal(burn, replacement)).ok


@pytest.mark.parametrize(("change", "code", "mentions"), [
    (dict(to=BOB), "rebuilt_different", "to is"),
    (dict(value=ETHER), "rebuilt_different", "value is"),
    (dict(data=b"\x01"), "rebuilt_different", "data is"),
    (dict(gas=50_000), "rebuilt_different", "gas is"),
    (dict(chain_id=1), "rebuilt_different", "chain_id is"),
    (dict(max_fee_per_gas=41 * GWEI), "fee_out_of_band", "outside"),
    (dict(max_fee_per_gas=9 * GWEI), "fee_out_of_band", "outside"),
    (dict(max_fee_per_gas=101 * GWEI), "fee_above_cap", "cap"),
    (dict(nonce=4), "stale_nonce", "below"),
    (dict(nonce=5 + PARAMS.max_nonce_ahead), "nonce_too_far", "above"),
])
def test_a_payout_differing_from_the_rebuilt_one_is_refused(change: dict, code: str, mentions: str) -> None:
    burn = a_burn()
    view = view_with(burn, count=5)
    tx = dataclasses.replace(honest_payout(burn, 5), **change)
    verdict = view.cosign_payout(payout_proposal(burn, tx))
    assert (verdict.ok, verdict.code) == (False, code)
    assert mentions in verdict.reason
    assert burn.burn_id not in view.burn_nonce


def test_paying_at_the_cap_is_accepted_when_the_market_is_above_it() -> None:
    burn = a_burn()
    view = view_with(burn)
    view.estimate = FeeQuote(500 * GWEI, 2 * GWEI)
    assert view.cosign_payout(payout_proposal(burn, honest_payout(burn, 0, view.estimate))).ok


def test_a_second_payout_of_one_burn_at_another_nonce_is_refused() -> None:
    burn = a_burn()
    view = view_with(burn, count=0)
    assert view.cosign_payout(payout_proposal(burn, honest_payout(burn, 0))).ok
    verdict = view.cosign_payout(payout_proposal(burn, honest_payout(burn, 1)))
    assert (verdict.ok, verdict.code) == (False, "second_payout")
    # still refused once nonce 0 is consumed but nothing at final depth shows by what
    view.counts[CUSTODY_BYTES] = 1
    assert view.cosign_payout(payout_proposal(burn, honest_payout(burn, 1))).code == "second_payout"


def test_a_burn_moves_nonce_only_when_its_nonce_was_consumed_by_something_else() -> None:
    burn = a_burn()
    view = view_with(burn, count=0)
    assert view.cosign_payout(payout_proposal(burn, honest_payout(burn, 0))).ok
    view.counts[CUSTODY_BYTES] = 1
    view.mined[(CUSTODY_BYTES, 0)] = plan_gap_fill(0, ESTIMATE, PARAMS, CUSTODY)
    assert view.cosign_payout(payout_proposal(burn, honest_payout(burn, 1))).ok
    # but if the consumed nonce carried this burn's payout, it is paid
    other = a_burn(2, destination=BOB)
    view2 = view_with(other, count=0)
    assert view2.cosign_payout(payout_proposal(other, honest_payout(other, 0))).ok
    view2.counts[CUSTODY_BYTES] = 1
    view2.mined[(CUSTODY_BYTES, 0)] = plan_replacement(honest_payout(other, 0), ESTIMATE, PARAMS)
    verdict = view2.cosign_payout(payout_proposal(other, honest_payout(other, 1)))
    assert (verdict.ok, verdict.code) == (False, "burn_already_paid")


def test_a_nonce_is_never_reused_for_another_burn() -> None:
    first, second = a_burn(1), a_burn(2, destination=BOB)
    view = view_with(first, second, count=0)
    assert view.cosign_payout(payout_proposal(first, honest_payout(first, 0))).ok
    verdict = view.cosign_payout(payout_proposal(second, honest_payout(second, 0)))
    assert (verdict.ok, verdict.code) == (False, "nonce_in_use")
    assert view.cosign_payout(payout_proposal(second, honest_payout(second, 1))).ok
    # and a nonce co-signed for a burn never takes a gap filler
    filler = plan_gap_fill(0, ESTIMATE, PARAMS, CUSTODY)
    assert view.cosign_gap_fill(GapFillProposal(filler, CUSTODY.path_str, filler.signing_hash())).code == \
        "nonce_in_use"


@pytest.mark.parametrize(("burn", "code"), [
    (a_burn(final=False), "burn_not_final"),
    (a_burn(refunded=True), "burn_refunded"),
    (a_burn(payout_confirmed=True), "burn_already_paid"),
    (a_burn(amount=PARAMS.withdrawal_fee), "below_minimum"),
    (a_burn(destination=(0x0001).to_bytes(20, "big")), "unpayable"),
    (a_burn(destination=ALICE + b"\x00"), "unpayable"),
])
def test_burn_facts_that_forbid_a_payout(burn: EvmBurn, code: str) -> None:
    view = view_with(burn)
    tx = Eip1559Transaction.create(chain_id=31337, nonce=0, max_priority_fee_per_gas=GWEI,
                                   max_fee_per_gas=20 * GWEI, gas=21_000, to=ALICE, value=ETHER - PARAMS.withdrawal_fee)
    verdict = view.cosign_payout(payout_proposal(burn, tx))
    assert (verdict.ok, verdict.code) == (False, code)


def test_unknown_burn_contract_destination_digest_and_path() -> None:
    burn = a_burn()
    tx = honest_payout(burn, 0)
    assert view_with().cosign_payout(payout_proposal(burn, tx)).code == "unknown_burn"
    view = view_with(burn)
    view.code.add(ALICE)
    assert view.cosign_payout(payout_proposal(burn, tx)).code == "unpayable"
    view = view_with(burn)
    wrong_digest = PayoutProposal(burn.burn_id, tx, CUSTODY.path_str, honest_payout(burn, 1).signing_hash())
    assert view.cosign_payout(wrong_digest).code == "digest_mismatch"
    deposit = deposit_address(KEY.public, KEY.chain_code, CHAIN, DESTINATION_CHAIN, ALICE)
    assert view.cosign_payout(payout_proposal(burn, tx, deposit.path_str)).code == "wrong_sender"
    assert view.cosign_payout(payout_proposal(burn, tx, "m/0'")).code == "wrong_sender"
    assert view.cosign_payout("not a proposal").code == "malformed"  # type: ignore[arg-type]


def test_gap_fillers_are_co_signed_only_at_gaps() -> None:
    first = a_burn(1)
    view = view_with(first, count=0)
    filler = plan_gap_fill(0, ESTIMATE, PARAMS, CUSTODY)
    proposal = GapFillProposal(filler, CUSTODY.path_str, filler.signing_hash())
    assert view.cosign_gap_fill(proposal).code == "not_a_gap"  # nothing waits on nonce 0
    assert view.cosign_payout(payout_proposal(first, honest_payout(first, 1))).ok
    assert view.cosign_gap_fill(proposal).ok
    second = a_burn(2, destination=BOB)
    view.burns[second.burn_id] = second
    assert view.cosign_payout(payout_proposal(second, honest_payout(second, 0))).code == "nonce_in_use"
    bumped = plan_replacement(filler, ESTIMATE, PARAMS)
    assert view.cosign_gap_fill(GapFillProposal(bumped, CUSTODY.path_str, bumped.signing_hash())).ok
    for change in (dict(value=1), dict(to=BOB), dict(data=b"\x00")):
        bad = dataclasses.replace(filler, **change)
        verdict = view.cosign_gap_fill(GapFillProposal(bad, CUSTODY.path_str, bad.signing_hash()))
        assert verdict.code == "rebuilt_different"
    view.counts[CUSTODY_BYTES] = 1
    assert view.cosign_gap_fill(proposal).code == "stale_nonce"


def test_sweeps_go_to_custody_within_the_balance() -> None:
    deposit = deposit_address(KEY.public, KEY.chain_code, CHAIN, DESTINATION_CHAIN, ALICE)
    raw_address = address_bytes(deposit.address)
    balance = ETHER
    view = view_with()
    tx = plan_sweep(deposit.address, balance, 0, ESTIMATE, PARAMS, CUSTODY)

    def check(candidate: Eip1559Transaction, path: str = deposit.path_str, address: bytes = raw_address):
        return check_sweep(SweepProposal(address, candidate, path, candidate.signing_hash()), view, PARAMS, CUSTODY)

    assert check(tx).code == "unknown_deposit_address"
    view.deposits[raw_address] = DepositAccount(raw_address, deposit.path, balance)
    assert check(tx).ok
    assert check(dataclasses.replace(tx, value=tx.value // 2)).ok  # sweeping less leaves coins in custody
    assert check(dataclasses.replace(tx, value=tx.value + 1)).code == "sweep_exceeds_balance"
    assert check(dataclasses.replace(tx, to=BOB)).code == "rebuilt_different"
    assert check(dataclasses.replace(tx, data=b"\x01")).code == "rebuilt_different"
    assert check(tx, path=CUSTODY.path_str).code == "wrong_sender"
    view.counts[raw_address] = 1
    assert check(tx).code == "stale_nonce"


def test_params_refuse_inexact_or_unsafe_settings() -> None:
    for bad in (dict(min_bump=1.1), dict(min_bump=Fraction(21, 20)), dict(fee_band=Fraction(1, 2)),
                dict(gas_limit=20_000), dict(stuck_after=0), dict(chain_id=0)):
        with pytest.raises(EvmPayoutError):
            dataclasses.replace(PARAMS, **bad)
    assert dataclasses.replace(PARAMS, min_bump="1.125").min_bump == Fraction(9, 8)


def test_custody_fixture_is_the_derived_custody_address() -> None:
    # guards the tests themselves: signing at CUSTODY.path_str must be the custody key
    assert isinstance(CUSTODY, CustodyAddress)
    assert Account.recover_transaction(signed_raw(plan_gap_fill(0, ESTIMATE, PARAMS, CUSTODY))) == CUSTODY.address
