"""ETH payouts on a real chain (anvil): paid once, replaced when stuck, re-broadcast when dropped,
gaps filled, deposits swept.

The group key is held locally (child secret = group secret + BIP32 tweak, exactly the key the
threshold network signs with at that path) and signs through ``signer/ethereum``; eth-account
recovers the sender of every signed transaction, and the chain's own balances and receipts say who
was paid and how often. The ledger's clock is a counter the test advances: no wall-clock bounds.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from coincurve import PrivateKey
from eth_account import Account
from fp_guards import HANG_GUARD
from web3 import Web3
from web3.exceptions import Web3RPCError

from fusion_prime.bridge.chains.evm.adapter import connect
from fusion_prime.bridge.chains.evm.anvil import AnvilProcess
from fusion_prime.bridge.custody import CustodyAddress, custody_address
from fusion_prime.bridge.derivation import deposit_address
from fusion_prime.bridge.evm_payouts import (
    GAP_FILL,
    DepositAccount,
    EvmBurn,
    EvmPayoutParams,
    FeeQuote,
    FillGap,
    GapFillProposal,
    NonceManager,
    PayoutProposal,
    Rebroadcast,
    Replace,
    Settled,
    SweepProposal,
    check_eth_payout,
    check_gap_fill,
    check_sweep,
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

CHAIN_ID = 31337
CHAIN = f"eip155:{CHAIN_ID}"
DESTINATION_CHAIN = "eip155:31338"
GWEI = 10**9
ETHER = 10**18
PARAMS = EvmPayoutParams(chain_id=CHAIN_ID, withdrawal_fee=21_000 * 100 * GWEI, max_fee_per_gas=100 * GWEI,
                         stuck_after=300)


class GroupKey:
    """The group key in one place (tests only): signs at a path with group secret + tweak."""

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


@pytest.fixture(scope="module")
def chain() -> Iterator[Web3]:
    anvil = AnvilProcess(chain_id=CHAIN_ID).start(timeout=HANG_GUARD)
    try:
        yield connect(anvil.url)
    finally:
        anvil.stop()


def rpc(w3: Web3, method: str, *params: object) -> object:
    answer = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in answer, answer
    return answer["result"]


def own_estimate(w3: Web3) -> FeeQuote:
    base = int(w3.eth.get_block("latest")["baseFeePerGas"])
    return FeeQuote(2 * base + GWEI, GWEI)


def fresh_address() -> bytes:
    return secrets.token_bytes(20)


@dataclass
class Participant:
    """One co-signer's view over the chain plus the records the integrator keeps for it."""

    w3: Web3
    custody: CustodyAddress
    burns: dict[bytes, EvmBurn] = field(default_factory=dict)
    burn_nonce: dict[bytes, int] = field(default_factory=dict)
    at_nonce: dict[tuple[bytes, int], str] = field(default_factory=dict)
    deposits: dict[bytes, tuple[int, ...]] = field(default_factory=dict)

    def burn(self, burn_id: bytes) -> EvmBurn | None:
        return self.burns.get(burn_id)

    def has_code(self, address: bytes) -> bool:
        return len(self.w3.eth.get_code(Web3.to_checksum_address(address))) > 0

    def fee_estimate(self) -> FeeQuote:
        return own_estimate(self.w3)

    def confirmed_nonce(self, account: bytes) -> int:
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(account), "latest"))

    def transaction_at_nonce(self, account: bytes, nonce: int) -> Eip1559Transaction | None:
        return None  # these tests never move a burn to another nonce

    def cosigned_payout_nonce(self, burn_id: bytes) -> int | None:
        return self.burn_nonce.get(burn_id)

    def cosigned_at_nonce(self, account: bytes, nonce: int) -> str | None:
        return self.at_nonce.get((account, nonce))

    def has_later_transaction(self, account: bytes, nonce: int) -> bool:
        return any(a == account and n > nonce for a, n in self.at_nonce)

    def deposit_account(self, address: bytes) -> DepositAccount | None:
        path = self.deposits.get(address)
        if path is None:
            return None
        return DepositAccount(address, path, int(self.w3.eth.get_balance(Web3.to_checksum_address(address))))

    # what the authorize hook does: check, and on ok record atomically with the co-signature
    def cosign_payout(self, burn: EvmBurn, tx: Eip1559Transaction) -> None:
        verdict = check_eth_payout(PayoutProposal(burn.burn_id, tx, self.custody.path_str, tx.signing_hash()),
                                   self, PARAMS, self.custody)
        assert verdict.ok, verdict
        self.burn_nonce[burn.burn_id] = tx.nonce
        self.at_nonce[(address_bytes(self.custody.address), tx.nonce)] = payout_purpose(burn.burn_id)

    def cosign_gap_fill(self, tx: Eip1559Transaction) -> None:
        verdict = check_gap_fill(GapFillProposal(tx, self.custody.path_str, tx.signing_hash()), self, PARAMS,
                                 self.custody)
        assert verdict.ok, verdict
        self.at_nonce[(address_bytes(self.custody.address), tx.nonce)] = GAP_FILL


class Bridge:
    """A coordinator in miniature: one group key, its custody address, the ledger, one co-signer."""

    def __init__(self, w3: Web3, seed: bytes) -> None:
        self.w3 = w3
        self.key = GroupKey(seed)
        self.custody = custody_address(self.key.public, self.key.chain_code, CHAIN)
        rpc(w3, "anvil_setBalance", self.custody.address, hex(10 * ETHER))
        self.ledger = NonceManager(self.custody.address, self.count("latest"))
        self.participant = Participant(w3, self.custody)
        self.now = 1_000

    def count(self, block: str) -> int:
        return int(self.w3.eth.get_transaction_count(self.custody.address, block))  # type: ignore[arg-type]

    def balance(self, address: bytes | str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def sign(self, tx: Eip1559Transaction, path: str, expected_sender: str) -> bytes:
        signed = sign_transaction(tx, self.key, path)
        assert Account.recover_transaction(signed.raw) == expected_sender  # eth-account, not our decoder
        return signed.raw

    def burn(self, amount: int) -> EvmBurn:
        burn = EvmBurn(secrets.token_bytes(32), amount, fresh_address())
        self.participant.burns[burn.burn_id] = burn
        return burn

    def payout(self, burn: EvmBurn) -> tuple[int, bytes]:
        """Assign, build, have it co-signed, sign, archive: the signed payout of ``burn``."""
        nonce = self.ledger.assign(payout_purpose(burn.burn_id))
        tx = plan_eth_payout(burn, nonce, own_estimate(self.w3), PARAMS, self.custody,
                             destination_has_code=self.participant.has_code(burn.destination))
        self.participant.cosign_payout(burn, tx)
        raw = self.sign(tx, self.custody.path_str, self.custody.address)
        self.ledger.record_signed(nonce, payout_purpose(burn.burn_id), raw, self.now)
        return nonce, raw

    def send(self, raw: bytes) -> bytes:
        return bytes(self.w3.eth.send_raw_transaction(raw))

    def receipt(self, tx_hash: bytes) -> dict | None:
        answer = self.w3.provider.make_request("eth_getTransactionReceipt", ["0x" + tx_hash.hex()])
        return answer.get("result")

    def observe(self) -> tuple:
        # anvil's blocks are final at once here: the latest count is the final-depth count
        return self.ledger.observe(self.count("latest"), self.count("pending"), self.now,
                                   stuck_after=PARAMS.stuck_after)


@pytest.fixture
def manual_mining(chain: Web3) -> Iterator[None]:
    rpc(chain, "evm_setAutomine", False)
    try:
        yield
    finally:
        rpc(chain, "evm_setAutomine", True)


def test_a_payout_pays_the_burn_minus_the_fee_from_custody(chain: Web3) -> None:
    bridge = Bridge(chain, b"payout")
    burn = bridge.burn(ETHER)
    before = bridge.balance(bridge.custody.address)
    nonce, raw = bridge.payout(burn)
    receipt = chain.eth.wait_for_transaction_receipt(bridge.send(raw), timeout=HANG_GUARD, poll_latency=0.05)
    assert receipt["status"] == 1 and receipt["from"] == bridge.custody.address
    assert bridge.balance(burn.destination) == ETHER - PARAMS.withdrawal_fee
    gas_paid = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert gas_paid <= PARAMS.withdrawal_fee  # custody keeps what gas did not use
    assert bridge.balance(bridge.custody.address) == before - (ETHER - PARAMS.withdrawal_fee) - gas_paid
    assert bridge.observe() == (Settled(nonce, payout_purpose(burn.burn_id), (bytes(receipt["transactionHash"]),)),)


def test_a_stuck_payout_is_replaced_and_exactly_one_is_mined(chain: Web3, manual_mining: None) -> None:
    bridge = Bridge(chain, b"stuck")
    burn = bridge.burn(2 * ETHER)
    nonce, original = bridge.payout(burn)
    original_hash = bridge.send(original)
    bridge.now += PARAMS.stuck_after
    actions = bridge.observe()
    replace = [a for a in actions if isinstance(a, Replace)]
    assert [(a.nonce, a.owner) for a in replace] == [(nonce, payout_purpose(burn.burn_id))]
    bumped = plan_replacement(replace[0].current, own_estimate(chain), PARAMS)
    bridge.participant.cosign_payout(burn, bumped)  # same burn, same nonce: a replacement is co-signed
    replacement = bridge.sign(bumped, bridge.custody.path_str, bridge.custody.address)
    bridge.ledger.record_signed(nonce, payout_purpose(burn.burn_id), replacement, bridge.now)
    replacement_hash = bridge.send(replacement)
    with pytest.raises(Web3RPCError):  # the pool keeps the higher fee; the original cannot come back
        bridge.send(original)
    rpc(chain, "evm_mine")
    rpc(chain, "evm_mine")
    mined = [h for h in (original_hash, replacement_hash) if bridge.receipt(h) is not None]
    assert mined == [replacement_hash]
    assert bridge.balance(burn.destination) == 2 * ETHER - PARAMS.withdrawal_fee  # paid once
    assert bridge.count("latest") == nonce + 1
    with pytest.raises(Web3RPCError):  # nonce too low: the original is dead for good
        bridge.send(original)
    rpc(chain, "evm_mine")
    assert bridge.balance(burn.destination) == 2 * ETHER - PARAMS.withdrawal_fee
    (settled,) = bridge.observe()
    assert isinstance(settled, Settled) and set(settled.tx_hashes) == {original_hash, replacement_hash}


def test_a_dropped_payout_is_rebroadcast_and_a_cancelled_nonce_filled(chain: Web3, manual_mining: None) -> None:
    bridge = Bridge(chain, b"gaps")
    first, refunded, last = bridge.burn(ETHER), bridge.burn(ETHER), bridge.burn(3 * ETHER)
    first_nonce, first_raw = bridge.payout(first)
    refunded_nonce = bridge.ledger.assign(payout_purpose(refunded.burn_id))
    last_nonce, last_raw = bridge.payout(last)
    assert (first_nonce + 1, refunded_nonce + 1) == (refunded_nonce, last_nonce)
    first_hash, last_hash = bridge.send(first_raw), bridge.send(last_raw)
    # the refunded burn's nonce will never be signed for it; the first payout falls out of the mempool
    bridge.ledger.cancel(payout_purpose(refunded.burn_id))
    rpc(chain, "anvil_dropTransaction", "0x" + first_hash.hex())
    before = bridge.balance(bridge.custody.address)
    start_count = bridge.count("latest")
    rpc(chain, "evm_mine")
    assert bridge.count("latest") == start_count  # nothing can confirm: two holes below the last payout

    actions = bridge.observe()
    assert Rebroadcast(first_nonce, payout_purpose(first.burn_id), first_raw) in actions
    assert FillGap(refunded_nonce) in actions
    bridge.send(first_raw)
    filler = plan_gap_fill(refunded_nonce, own_estimate(chain), PARAMS, bridge.custody)
    bridge.participant.cosign_gap_fill(filler)
    filler_raw = bridge.sign(filler, bridge.custody.path_str, bridge.custody.address)
    bridge.ledger.record_signed(refunded_nonce, GAP_FILL, filler_raw, bridge.now)
    filler_hash = bridge.send(filler_raw)
    rpc(chain, "evm_mine")

    assert bridge.count("latest") == last_nonce + 1
    receipts = [bridge.receipt(h) for h in (first_hash, filler_hash, last_hash)]
    assert all(r is not None and int(r["status"], 16) == 1 for r in receipts)
    assert bridge.balance(first.destination) == ETHER - PARAMS.withdrawal_fee
    assert bridge.balance(last.destination) == 3 * ETHER - PARAMS.withdrawal_fee
    assert bridge.balance(refunded.destination) == 0
    gas = sum(int(r["gasUsed"], 16) * int(r["effectiveGasPrice"], 16) for r in receipts)
    assert bridge.balance(bridge.custody.address) == before - (4 * ETHER - 2 * PARAMS.withdrawal_fee) - gas
    settled = bridge.observe()
    assert [(s.nonce, s.owner) for s in settled] == [(first_nonce, payout_purpose(first.burn_id)),
                                                    (refunded_nonce, GAP_FILL),
                                                    (last_nonce, payout_purpose(last.burn_id))]


def test_a_deposit_address_is_swept_into_custody(chain: Web3) -> None:
    bridge = Bridge(chain, b"sweep")
    deposit = deposit_address(bridge.key.public, bridge.key.chain_code, CHAIN, DESTINATION_CHAIN, fresh_address())
    raw_deposit = address_bytes(deposit.address)
    funder = chain.eth.accounts[0]
    funding = chain.eth.send_transaction({"from": funder, "to": deposit.address, "value": ETHER // 2})
    chain.eth.wait_for_transaction_receipt(funding, timeout=HANG_GUARD, poll_latency=0.05)
    balance = bridge.balance(raw_deposit)
    assert balance == ETHER // 2
    custody_before = bridge.balance(bridge.custody.address)

    sweeps = NonceManager(deposit.address, int(chain.eth.get_transaction_count(deposit.address)))
    nonce = sweeps.assign("sweep:1")
    tx = plan_sweep(deposit.address, balance, nonce, own_estimate(chain), PARAMS, bridge.custody)
    bridge.participant.deposits[raw_deposit] = deposit.path
    verdict = check_sweep(SweepProposal(raw_deposit, tx, deposit.path_str, tx.signing_hash()), bridge.participant,
                          PARAMS, bridge.custody)
    assert verdict.ok, verdict
    raw = bridge.sign(tx, deposit.path_str, deposit.address)  # the deposit key signs, not custody's
    sweeps.record_signed(nonce, "sweep:1", raw, bridge.now)
    receipt = chain.eth.wait_for_transaction_receipt(bridge.send(raw), timeout=HANG_GUARD, poll_latency=0.05)
    assert receipt["status"] == 1
    assert bridge.balance(bridge.custody.address) == custody_before + tx.value
    left = bridge.balance(raw_deposit)
    assert left == balance - tx.value - receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert 0 <= left < PARAMS.gas_limit * tx.max_fee_per_gas  # only unused worst-case gas stays behind
