"""ETH payouts through the EVM withdrawal side on a real chain (anvil) and real SQLite bridge databases.

Two nodes, each with its own database and its own :class:`EvmPayoutSide` over the same anvil: node1
coordinates, node2 co-signs. The group key is held locally (child secret = group secret + BIP32
tweak, the key the threshold network signs with at that path); the ``sign`` callable behaves like
``Node.sign``: it runs the coordinator's own authorize hook and then node2's on a real
``SessionProposal`` (phase "sign", digest, path, client_request) and signs only if both accept, so
every payout, gap filler and sweep here went through the participant's checks. eth-account (not
our decoder) recovers each sender and reads each signed transaction; anvil's balances and receipts
say who was paid and how often. Clocks are counters; no wall-clock bounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rlp
import trio
from coincurve import PrivateKey
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from fp_guards import HANG_GUARD
from hexbytes import HexBytes
from web3 import Web3

from fusion_prime.bridge import withdrawal_runtime
from fusion_prime.bridge.chains.evm.adapter import connect
from fusion_prime.bridge.chains.evm.anvil import AnvilProcess
from fusion_prime.bridge.config import SourceChain, WithdrawalSettings
from fusion_prime.bridge.custody import custody_address
from fusion_prime.bridge.db import BridgeDB, open_database
from fusion_prime.bridge.derivation import deposit_address
from fusion_prime.bridge.evm_payouts import (
    GAP_FILL,
    SECP256K1_N,
    EvmBurn,
    EvmPayoutError,
    FeeQuote,
    NonceError,
    NonceManager,
    payout_purpose,
    plan_eth_payout,
)
from fusion_prime.bridge.evm_withdrawal import (
    KIND_GAP_FILL,
    KIND_PAYOUT,
    KIND_SWEEP,
    PAYOUT_COSIGNED,
    PAYOUT_REFUSED,
    EvmPayoutSide,
    EvmProposal,
    EvmProposalError,
    EvmWithdrawalError,
    assemble_signed,
    decode_unsigned_transaction,
    estimate_fees,
    evm_payout_params,
    route_authorize,
)
from fusion_prime.bridge.orders import EVM_NATIVE_VOUT, ChainParams, address_bytes, chain_key
from fusion_prime.bridge.requests import EvmPayoutRequest, decode, encode
from fusion_prime.bridge.watchers import MintedOutput
from fusion_prime.bridge.withdrawals import BuildPayout, Burn, PayoutFailed, PayoutSigned, payout_id_of
from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.curve import Point, Q
from fusion_prime.protocol.ecdsa import Signature
from fusion_prime.protocol.hd import derive
from fusion_prime.signer.ethereum import Eip1559Transaction

CHAIN_ID = 31337
CHAIN = f"eip155:{CHAIN_ID}"
DESTINATION_CHAIN = "eip155:31338"
ASSET = "0x" + "ab" * 20  # the fpETH token on the destination chain (only its spelling matters here)
GWEI = 10**9
ETHER = 10**18
CAP = 100 * GWEI
FEE = 21_000 * CAP  # the withdrawal fee covers a transfer at the cap
SETTINGS = WithdrawalSettings(withdrawal_fee=FEE, max_fee_rate=CAP, fallback_fee_rate=2 * GWEI,
                              stuck_after_seconds=300)
SOURCE = SourceChain(caip2=CHAIN, rpc="unused", symbol="ETH", asset=ASSET,
                     params=ChainParams(min_confirmations=1, value_per_block=ETHER, max_confirmations=1),
                     withdrawals=SETTINGS)


class GroupKey:
    """The group key in one place (tests only): signs at a path with group secret + tweak."""

    def __init__(self, seed: bytes) -> None:
        digest = hashlib.sha512(seed).digest()
        self._secret = int.from_bytes(digest[:32], "big") % Q
        self.chain_code = digest[32:]
        self.public = Point.base_mul(self._secret)

    def sign(self, digest: bytes, path: tuple[int, ...]) -> Signature:
        child = derive(self.public, self.chain_code, path)
        secret = (self._secret + child.tweak) % Q
        sig = PrivateKey(secret.to_bytes(32, "big")).sign_recoverable(digest, hasher=None)
        return Signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64],
                         child.public_key)


@dataclass
class Outcome:
    """What ``Node.sign`` returns, as far as the side reads it."""

    status: str
    output: Any = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "done"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Network:
    """node1 (coordinator) and node2 (co-signer) over one anvil, each with its own database."""

    w3: Web3
    key: GroupKey
    node1: EvmPayoutSide
    node2: EvmPayoutSide
    db1: BridgeDB
    db2: BridgeDB
    clock: Clock
    sessions: list[EvmProposal] = field(default_factory=list)
    high_s: bool = False

    @property
    def custody(self) -> str:
        return self.node1.custody.address

    def balance(self, address: bytes | str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def hooks(self) -> list[EvmPayoutSide]:
        return [self.node1, self.node2]


def make_side(net_w3: Web3, key: GroupKey, db: BridgeDB, node_id: str, sign: Any, clock: Clock) -> EvmPayoutSide:
    return EvmPayoutSide(chain=SOURCE, asset=ASSET, w3=net_w3, db=db, params=evm_payout_params(SOURCE),
                         custody=custody_address(key.public, key.chain_code, CHAIN), group_key=key.public,
                         chain_code=key.chain_code, destination_chain=DESTINATION_CHAIN, key_id=b"\x01" * 32,
                         sign=sign, node_id=node_id, clock=clock)


def session_proposal(digest: bytes, path: tuple[int, ...], client_request: bytes) -> peer_pb2.SessionProposal:
    return peer_pb2.SessionProposal(session_id=secrets.token_bytes(32), phase="sign", coordinator="node1",
                                    participants=["node1", "node2"],
                                    sign=peer_pb2.SignParams(key_id=b"\x01" * 32, digest=digest, path=list(path),
                                                             client_request=client_request))


def ask(side: EvmPayoutSide, tx: Eip1559Transaction, path: tuple[int, ...], proposal: EvmProposal,
        digest: bytes | None = None) -> tuple[bool, str]:
    """node ``side``'s authorize hook on a session signing ``tx`` with ``proposal`` as its request."""
    request = encode(EvmPayoutRequest(proposal.to_bytes()))
    pb = session_proposal(digest if digest is not None else tx.signing_hash(), path, request)
    decoded = decode(pb.sign.client_request)
    assert isinstance(decoded, EvmPayoutRequest)
    return side.authorize(pb, decoded)


@pytest.fixture(scope="module")
def chain() -> Iterator[Web3]:
    anvil = AnvilProcess(chain_id=CHAIN_ID).start(timeout=HANG_GUARD)
    try:
        yield connect(anvil.url)
    finally:
        anvil.stop()


def rpc(w3: Web3, method: str, *params: object) -> Any:
    answer = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in answer, answer
    return answer["result"]


@pytest.fixture
def manual_mining(chain: Web3) -> Iterator[None]:
    rpc(chain, "evm_setAutomine", False)
    try:
        yield
    finally:
        rpc(chain, "evm_setAutomine", True)


@contextlib.contextmanager
def network(w3: Web3, url1: str, url2: str) -> Iterator[Network]:
    """node1 on ``url1``, node2 on ``url2``, a fresh group key (so a fresh custody account)."""
    key = GroupKey(secrets.token_bytes(16))
    db1, db2 = open_database(url1), open_database(url2)
    clock = Clock()
    holder: dict[str, Network] = {}

    async def sign(key_id: bytes, digest: bytes, path: tuple[int, ...], *, client_request: bytes) -> Outcome:
        net = holder["net"]
        request = decode(client_request)
        assert isinstance(request, EvmPayoutRequest)
        net.sessions.append(EvmProposal.from_bytes(request.proposal))
        pb = session_proposal(digest, path, client_request)
        for node in net.hooks():  # the coordinator's own hook first, as Node.sign does
            ok, why = await trio.to_thread.run_sync(node.authorize, pb, request)
            if not ok:
                return Outcome("refused", reason=f"{node.node_id}: {why}")
        sig = net.key.sign(digest, path)
        if net.high_s:  # the same signature in its other form: the side must normalise it
            sig = Signature(sig.r, SECP256K1_N - sig.s, sig.recovery_id ^ 1, sig.public_key)
        return Outcome("done", output=sig)

    net = Network(w3, key, make_side(w3, key, db1, "node1", sign, clock), make_side(w3, key, db2, "node2", sign, clock),
                  db1, db2, clock)
    holder["net"] = net
    rpc(w3, "anvil_setBalance", net.custody, hex(10 * ETHER))
    try:
        yield net
    finally:
        db1.close()
        db2.close()


@pytest.fixture
def net(chain: Web3, tmp_path: Path) -> Iterator[Network]:
    with network(chain, f"sqlite:///{tmp_path / 'node1.sqlite3'}", f"sqlite:///{tmp_path / 'node2.sqlite3'}") as n:
        yield n


@pytest.fixture
def pg_net(chain: Web3, tmp_path: Path, pg_url: str) -> Iterator[Network]:
    """node1's database on PostgreSQL (row locks instead of SQLite's one writer)."""
    with network(chain, pg_url, f"sqlite:///{tmp_path / 'node2.sqlite3'}") as n:
        yield n


_nonces = iter(range(1, 10**9))


def new_burn(net: Network, amount: int, *, destination: bytes | None = None, nodes: tuple[BridgeDB, ...] | None = None
             ) -> Burn:
    """A burn at depth, as both nodes' burn followers recorded it in their ``withdrawals`` tables."""
    nonce = next(_nonces)
    burn = Burn(burn_id="0x" + secrets.token_hex(32), nonce=nonce, asset=ASSET, burner="0x" + "cd" * 20,
                amount=amount, destination=destination if destination is not None else secrets.token_bytes(20),
                block=10 + nonce, tx_hash="0x" + secrets.token_hex(32))
    for db in nodes if nodes is not None else (net.db1, net.db2):
        with db.transaction() as tx:
            tx.put_withdrawal(dict(burn_id=bytes.fromhex(burn.burn_id[2:]), asset=ASSET, source_chain=CHAIN,
                                   burn_nonce=burn.nonce, burner=burn.burner, amount=burn.amount,
                                   destination=burn.destination.hex(), burn_block=burn.block, burn_tx=burn.tx_hash,
                                   state="signing", payout_id=payout_id_of((burn.burn_id,)), txid=None,
                                   confirmations=0, required_confirmations=1, refund_tx=None, reason=""))
    return burn


def build(side: EvmPayoutSide, burn: Burn, replaces: str | None = None) -> PayoutSigned | PayoutFailed:
    action = BuildPayout(payout_id_of((burn.burn_id,)), (burn.burn_id,), replaces)

    async def run() -> PayoutSigned | PayoutFailed:
        with trio.fail_after(HANG_GUARD):
            return await side.build(action, burn)

    return trio.run(run)


def run(fn: Any) -> Any:
    async def main() -> Any:
        with trio.fail_after(HANG_GUARD):
            return await fn()

    return trio.run(main)


def signed_fields(raw_hex: str) -> dict[str, Any]:
    """eth-account's reading of a signed transaction (independent of our decoder)."""
    fields = dict(TypedTransaction.from_bytes(HexBytes(raw_hex)).as_dict())
    fields["sender"] = Account.recover_transaction(raw_hex)
    return fields


def events(db: BridgeDB, burn_id: str | None, name: str) -> list[dict[str, Any]]:
    with db.read() as r:
        found = r.events(bytes.fromhex(burn_id[2:]) if burn_id else None)
    return [dict(e.detail) for e in found if e.event == name]


def archive(db: BridgeDB) -> list[dict[str, Any]]:
    with db.read() as r:
        return r.archived_payouts(CHAIN)


def wait_mined(w3: Web3, txid: str) -> Any:
    return w3.eth.wait_for_transaction_receipt(txid, timeout=HANG_GUARD, poll_latency=0.05)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- payouts


def test_an_fpeth_burn_is_paid_in_eth_from_custody(net: Network) -> None:
    burn = new_burn(net, ETHER)
    custody_before = net.balance(net.custody)
    signed = build(net.node1, burn)
    assert isinstance(signed, PayoutSigned), signed
    fields = signed_fields(signed.raw)
    assert fields["sender"] == net.custody
    assert address_bytes(fields["to"]) == burn.destination
    assert fields["value"] == ETHER - FEE
    assert fields["chainId"] == CHAIN_ID and fields["maxFeePerGas"] <= CAP
    assert signed.txid == Web3.keccak(hexstr=signed.raw).to_0x_hex()
    assert signed.fee == 21_000 * fields["maxFeePerGas"] and signed.fee_rate == fields["maxFeePerGas"]

    # both nodes decided on the same proposal and recorded it with the decision
    (proposal,) = net.sessions
    assert proposal.kind == KIND_PAYOUT and proposal.burn_id == bytes.fromhex(burn.burn_id[2:])
    for db in (net.db1, net.db2):
        (cosigned,) = events(db, burn.burn_id, PAYOUT_COSIGNED)
        assert cosigned["nonce"] == fields["nonce"] and cosigned["coordinator"] == "node1"
        assert [r["role"] for r in archive(db) if burn.burn_id in r["burn_ids"]] == (
            ["cosigned", "coordinator"] if db is net.db1 else ["cosigned"])
    (row,) = [r for r in archive(net.db1) if r["role"] == "coordinator"]
    assert row["txid"] == signed.txid and row["inputs"] == [f"{net.custody}:{fields['nonce']}"]
    assert row["raw"] == signed.raw

    assert net.node1.broadcast(signed.raw) == (True, "")
    receipt = wait_mined(net.w3, signed.txid)
    assert receipt["status"] == 1
    assert net.node1.depths([signed.txid]) == [1]
    assert net.node1.broadcast(signed.raw) == (True, "")  # "nonce too low" for this very mined tx: accepted
    assert net.node1.depths(["0x" + "11" * 32, "sighash:0x" + "22" * 32, "nonsense"]) == [None, None, None]
    assert net.balance(burn.destination) == ETHER - FEE
    gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert net.balance(net.custody) == custody_before - (ETHER - FEE) - gas

    # the co-signer learns the payout from the chain: found, archived, matched to the burn
    found = net.node2.found_payouts([burn])
    assert [(f.txid, f.burn_ids, f.confirmations) for f in found] == [(signed.txid, (burn.burn_id,), 1)]
    assert net.node2.found_payouts([burn]) == []  # once
    # a retry of the same BuildPayout (a lost PayoutSigned) returns the signed variant, no new session
    again = build(net.node1, burn)
    assert isinstance(again, PayoutSigned) and again.raw == signed.raw and len(net.sessions) == 1


def test_a_high_s_answer_is_normalised(net: Network) -> None:
    net.high_s = True
    burn = new_burn(net, 2 * ETHER)
    signed = build(net.node1, burn)
    assert isinstance(signed, PayoutSigned), signed
    assert signed_fields(signed.raw)["sender"] == net.custody
    assert signed_fields(signed.raw)["s"] <= SECP256K1_N // 2
    assert net.node1.broadcast(signed.raw) == (True, "")
    assert wait_mined(net.w3, signed.txid)["status"] == 1


def test_a_stuck_payout_is_replaced_and_exactly_one_is_mined(net: Network, manual_mining: None) -> None:
    burn = new_burn(net, 3 * ETHER)
    original = build(net.node1, burn)
    assert isinstance(original, PayoutSigned), original
    assert net.node1.broadcast(original.raw) == (True, "")
    assert net.node1.depths([original.txid]) == [0]  # in the pool, not mined (automine is off)
    net.clock.now += SETTINGS.stuck_after_seconds
    bumped = build(net.node1, burn, replaces=original.txid)
    assert isinstance(bumped, PayoutSigned), bumped
    first, second = signed_fields(original.raw), signed_fields(bumped.raw)
    assert second["sender"] == net.custody and second["nonce"] == first["nonce"]
    assert (second["to"], second["value"]) == (first["to"], first["value"])
    assert second["maxFeePerGas"] >= first["maxFeePerGas"] * 11 // 10 > first["maxFeePerGas"]
    assert second["maxPriorityFeePerGas"] > first["maxPriorityFeePerGas"]
    assert bumped.replaces == original.txid and bumped.txid != original.txid
    assert net.node1.broadcast(bumped.raw) == (True, "")
    ok, _ = net.node1.broadcast(original.raw)
    assert not ok  # the pool keeps the higher fee

    rpc(net.w3, "evm_mine")
    rpc(net.w3, "evm_mine")
    assert net.node1.depths([original.txid, bumped.txid]) == [None, 2]
    assert net.balance(burn.destination) == 3 * ETHER - FEE  # paid once
    ok, _ = net.node1.broadcast(original.raw)
    assert not ok  # nonce too low, and not because the original is mined
    rpc(net.w3, "evm_mine")
    assert net.balance(burn.destination) == 3 * ETHER - FEE
    # node2 co-signed both variants, at one nonce
    nonces = {e["nonce"] for e in events(net.db2, burn.burn_id, PAYOUT_COSIGNED)}
    assert len(events(net.db2, burn.burn_id, PAYOUT_COSIGNED)) == 2 and nonces == {first["nonce"]}


# ------------------------------------------------------------------------- the participant


def test_a_cosigner_refuses_a_payout_that_would_leave_custody_short(net: Network, manual_mining: None) -> None:
    calls: list[tuple[int, int]] = []

    def short(burned: int, spent: int, _reader: object) -> str | None:
        calls.append((burned, spent))
        return "custody 1 wei below liabilities"

    def fine(burned: int, spent: int, _reader: object) -> str | None:
        calls.append((burned, spent))
        return None

    burn = new_burn(net, 4 * ETHER)
    net.node2.solvency = short
    failed = build(net.node1, burn)
    assert isinstance(failed, PayoutFailed) and "node2: bridge: insolvent: custody 1 wei below" in failed.reason
    net.node2.solvency = fine
    signed = build(net.node1, burn)
    assert isinstance(signed, PayoutSigned), signed
    fields = signed_fields(signed.raw)
    assert calls == [(4 * ETHER, 4 * ETHER - FEE + 21_000 * fields["maxFeePerGas"])] * 2
    # a bump at the same nonce moves no more than the fee cap allows: not a new spend to check
    net.node2.solvency = short
    assert net.node1.broadcast(signed.raw) == (True, "")
    bumped = build(net.node1, burn, replaces=signed.txid)
    assert isinstance(bumped, PayoutSigned), bumped
    assert len(calls) == 2
    assert [e["code"] for e in events(net.db2, burn.burn_id, PAYOUT_REFUSED)] == ["insolvent"]




def test_the_participant_refuses_what_it_cannot_rebuild(net: Network) -> None:
    burn = new_burn(net, ETHER)
    signed = build(net.node1, burn)  # node2 co-signs the honest payout first
    assert isinstance(signed, PayoutSigned), signed
    honest = net.sessions[-1].tx
    burn_raw = bytes.fromhex(burn.burn_id[2:])
    path = net.node1.custody.path
    other = secrets.token_bytes(20)
    cases = {
        "rebuilt_different: to": dataclasses.replace(honest, to=other),
        "rebuilt_different: value": dataclasses.replace(honest, value=honest.value + 1),
        "second_payout": dataclasses.replace(honest, nonce=honest.nonce + 1),
        "fee_above_cap": dataclasses.replace(honest, max_fee_per_gas=CAP + 1),
    }
    for expected, tx in cases.items():
        ok, why = ask(net.node2, tx, path, EvmProposal(KIND_PAYOUT, tx, burn_id=burn_raw))
        code = expected.split(":")[0]
        assert not ok and why.startswith(f"bridge: {code}:"), (expected, why)
    # the session's digest and path are what count, not the proposal's story
    ok, why = ask(net.node2, honest, path, EvmProposal(KIND_PAYOUT, honest, burn_id=burn_raw),
                  digest=dataclasses.replace(honest, value=1).signing_hash())
    assert not ok and "digest_mismatch" in why
    ok, why = ask(net.node2, honest, (*path[:-1], 7), EvmProposal(KIND_PAYOUT, honest, burn_id=burn_raw))
    assert not ok and "wrong_sender" in why
    pb = session_proposal(honest.signing_hash(), path, b"")
    ok, why = net.node2.authorize(pb, EvmPayoutRequest(b"\x01\x01" + b"\x00" * 40))
    assert not ok and why.startswith("bridge: malformed: EVM proposal does not decode: ")
    refused = [e["code"] for e in events(net.db2, burn.burn_id, PAYOUT_REFUSED)]
    assert refused == ["rebuilt_different", "rebuilt_different", "second_payout", "fee_above_cap",
                       "digest_mismatch", "wrong_sender"]
    # ... and it still co-signs the honest transaction (a retry at the burn's own nonce)
    assert ask(net.node2, honest, path, EvmProposal(KIND_PAYOUT, honest, burn_id=burn_raw)) == (True, "")


def test_a_payout_the_cosigner_refuses_is_not_signed_and_keeps_its_nonce(net: Network) -> None:
    unknown = new_burn(net, ETHER, nodes=(net.db1,))  # node2's follower has not seen it
    failed = build(net.node1, unknown)
    assert isinstance(failed, PayoutFailed) and "node2: bridge: unknown_burn" in failed.reason
    ledger = net.node1.ledger()
    assert ledger is not None
    held = ledger.nonce_of(payout_purpose(bytes.fromhex(unknown.burn_id[2:])))
    assert held is not None and not ledger.slot(held).signed
    assert events(net.db2, unknown.burn_id, PAYOUT_REFUSED)[0]["code"] == "unknown_burn"
    # a burn that is below the fee or pays a contract never takes a nonce
    small = new_burn(net, FEE)
    assert isinstance(build(net.node1, small), PayoutFailed)
    assert net.node1.ledger().next_nonce == held + 1  # type: ignore[union-attr]


def test_a_released_nonce_is_filled_so_later_payouts_confirm(net: Network, manual_mining: None) -> None:
    refunded = new_burn(net, ETHER)
    # node1 stopped after taking the burn's nonce and before proposing it (the durable step is
    # done, the session never started): nonce n is held, unsigned, and nobody accepted anything there
    action = BuildPayout(payout_id_of((refunded.burn_id,)), (refunded.burn_id,))
    tx, held = trio.run(trio.to_thread.run_sync, net.node1._prepare_payout, action, refunded)
    assert net.sessions == [] and tx.nonce == held
    paid = new_burn(net, 2 * ETHER)
    signed = build(net.node1, paid)  # nonce n + 1
    assert isinstance(signed, PayoutSigned), signed
    assert signed_fields(signed.raw)["nonce"] == held + 1
    assert net.node1.broadcast(signed.raw) == (True, "")
    rpc(net.w3, "evm_mine")
    assert net.node1.depths([signed.txid]) == [0]  # queued behind the hole at n
    run(net.node1.maintain)
    assert len(net.sessions) == 1  # no gap yet: n belongs to a burn that may still be paid
    assert net.node1.release(refunded.burn_id) == held  # the burn is refunded instead
    run(lambda: net.node1.maintain(coordinating=False))
    assert len(net.sessions) == 1  # only the coordinator fills gaps
    run(net.node1.maintain)
    gap_fills = [p for p in net.sessions if p.kind == KIND_GAP_FILL]
    assert [p.tx.nonce for p in gap_fills] == [held]
    assert gap_fills[0].tx.to == address_bytes(net.custody) and gap_fills[0].tx.value == 0
    rpc(net.w3, "evm_mine")
    assert net.node1.depths([signed.txid]) == [1]
    assert net.balance(paid.destination) == 2 * ETHER - FEE
    assert net.balance(refunded.destination) == 0
    (gap_event,) = [e for e in events(net.db2, None, PAYOUT_COSIGNED) if e.get("kind") == "gap-fill"]
    assert gap_event["nonce"] == held
    run(net.node1.maintain)  # settles both
    ledger = net.node1.ledger()
    assert ledger is not None and ledger.slots() == () and ledger.confirmed_count == held + 2
    assert net.node1.status()["next_nonce"] == held + 2
    # node2 finds both on chain: the payout is reported, the gap filler only archived
    found = net.node2.found_payouts([paid])
    assert [(f.txid, f.burn_ids) for f in found] == [(signed.txid, (paid.burn_id,))]
    assert sorted(r["payout_id"] for r in archive(net.db2) if r["role"] == "found") == sorted(
        [f"gap-fill:{held}", payout_id_of((paid.burn_id,))])
    assert ledger.nonce_of(payout_purpose(bytes.fromhex(refunded.burn_id[2:]))) is None
    with pytest.raises(NonceError):  # a released burn never gets a nonce again
        ledger.assign(payout_purpose(bytes.fromhex(refunded.burn_id[2:])))


def test_a_cosigner_whose_endpoint_is_down_refuses_and_says_so(net: Network) -> None:
    burn = new_burn(net, ETHER)
    dead = Web3(Web3.HTTPProvider("http://127.0.0.1:9", request_kwargs={"timeout": 5}))
    blind = make_side(dead, net.key, net.db2, "node2", net.node2.sign_fn, net.clock)
    tx = plan_eth_payout(EvmBurn(bytes.fromhex(burn.burn_id[2:]), burn.amount, burn.destination), 0,
                         FeeQuote(3 * GWEI, GWEI), evm_payout_params(SOURCE), net.node1.custody,
                         destination_has_code=False)
    ok, why = ask(blind, tx, net.node1.custody.path, EvmProposal(KIND_PAYOUT, tx, burn_id=bytes.fromhex(
        burn.burn_id[2:])))
    assert not ok and why.startswith("bridge: view_unavailable: ")
    assert [e["code"] for e in events(net.db2, burn.burn_id, PAYOUT_REFUSED)] == ["view_unavailable"]
    assert events(net.db2, burn.burn_id, PAYOUT_COSIGNED) == []
    assert blind.depths([burn.tx_hash]) == [None]
    assert blind.broadcast("0x02") == (False, "not a signed payout: not a type-2 (EIP-1559) signed transaction")
    assert blind.broadcast("zz") == (False, "raw transaction is not hex")


def test_a_proposed_nonce_is_never_released(net: Network) -> None:
    refused = new_burn(net, ETHER, nodes=(net.db1,))
    assert isinstance(build(net.node1, refused), PayoutFailed)  # node1's own hook accepted it at n
    assert net.node1.release(refused.burn_id) is None
    ledger = net.node1.ledger()
    assert ledger is not None and ledger.nonce_of(payout_purpose(bytes.fromhex(refused.burn_id[2:]))) is not None
    assert net.node1.release("0x" + "77" * 32) is None  # a burn that holds nothing


# ------------------------------------------------------------------------------- sweeps


def test_a_minted_deposit_address_is_swept_into_custody(net: Network) -> None:
    recipient = secrets.token_bytes(20)
    deposit = deposit_address(net.key.public, net.key.chain_code, CHAIN, DESTINATION_CHAIN, recipient)
    funder = net.w3.eth.accounts[0]
    funding = net.w3.eth.send_transaction({"from": funder, "to": deposit.address, "value": ETHER // 2})
    wait_mined(net.w3, funding.to_0x_hex())
    run(net.node1.sweep_due)
    assert net.sessions == []  # not minted yet: not ours to sweep
    minted = MintedOutput(chain_key=chain_key(CHAIN), txid=funding.hex().removeprefix("0x"), vout=EVM_NATIVE_VOUT,
                          recipient=Web3.to_checksum_address(recipient), amount=ETHER // 2)
    assert net.node1.note_minted(minted) and net.node2.note_minted(minted)
    assert not net.node1.note_minted(minted)  # once
    custody_before = net.balance(net.custody)
    assert net.node1.custody_total() == custody_before + ETHER // 2

    run(net.node1.sweep_due)
    (sweep,) = net.sessions
    assert sweep.kind == KIND_SWEEP and sweep.deposit_address == address_bytes(deposit.address)
    assert sweep.tx.to == address_bytes(net.custody)
    # gas is kept back at the cap, so a replacement at any fee up to the cap still fits
    assert sweep.tx.value == ETHER // 2 - 21_000 * CAP
    sweeps = NonceManager.from_dict(net.node1.ledger(address_bytes(deposit.address)).to_dict())  # type: ignore[union-attr]
    (slot,) = sweeps.slots()
    raw = slot.latest.raw  # type: ignore[union-attr]
    assert Account.recover_transaction(raw) == deposit.address  # signed by the deposit key, not custody's
    receipt = wait_mined(net.w3, Web3.keccak(raw).to_0x_hex())
    assert receipt["status"] == 1
    assert net.balance(net.custody) == custody_before + sweep.tx.value
    left = net.balance(deposit.address)
    assert left == ETHER // 2 - sweep.tx.value - receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert net.node1.custody_total() == net.balance(net.custody) + left
    (cosigned,) = [e for e in events(net.db2, None, PAYOUT_COSIGNED) if e.get("kind") == "sweep"]
    assert cosigned["deposit_address"] == deposit.address
    run(net.node1.maintain)
    run(net.node1.sweep_due)
    assert len(net.sessions) == 1  # what is left is not worth a sweep


def test_the_participant_refuses_a_sweep_of_an_address_it_does_not_know(net: Network) -> None:
    recipient = secrets.token_bytes(20)
    deposit = deposit_address(net.key.public, net.key.chain_code, CHAIN, DESTINATION_CHAIN, recipient)
    rpc(net.w3, "anvil_setBalance", deposit.address, hex(ETHER))
    minted = MintedOutput(chain_key=chain_key(CHAIN), txid=secrets.token_hex(32), vout=EVM_NATIVE_VOUT,
                          recipient=Web3.to_checksum_address(recipient), amount=ETHER)
    assert net.node1.note_minted(minted)  # node2 has not seen the Minted log
    run(net.node1.sweep_due)
    assert [p.kind for p in net.sessions] == [KIND_SWEEP]
    (refusal,) = [e for e in events(net.db2, None, PAYOUT_REFUSED) if e.get("kind") == "sweep"]
    assert refusal["code"] == "unknown_deposit_address"
    assert net.balance(deposit.address) == ETHER


# ------------------------------------------------------------------------------- restarts


def check_restart(net: Network) -> None:
    first = new_burn(net, ETHER)
    a = build(net.node1, first)
    assert isinstance(a, PayoutSigned), a
    # a restart: a new side over the same database (and a signer that is the same network)
    restarted = make_side(net.w3, net.key, net.db1, "node1", net.node1.sign_fn, net.clock)
    net.node1 = restarted
    second = new_burn(net, 2 * ETHER)
    b = build(restarted, second)
    assert isinstance(b, PayoutSigned), b
    n1, n2 = signed_fields(a.raw)["nonce"], signed_fields(b.raw)["nonce"]
    assert n2 == n1 + 1
    sessions = len(net.sessions)
    again = build(restarted, first)  # the machine re-plans a payout it was building when it stopped
    assert isinstance(again, PayoutSigned) and again.raw == a.raw and len(net.sessions) == sessions
    # no nonce went to two burns, in either node's records
    for db in (net.db1, net.db2):
        by_nonce: dict[str, set[str]] = {}
        for row in archive(db):
            for spent in row["inputs"]:
                by_nonce.setdefault(spent, set()).update(row["burn_ids"])
        assert all(len(ids) == 1 for ids in by_nonce.values()), by_nonce
    for raw in (a.raw, b.raw):
        assert restarted.broadcast(raw) == (True, "")
    wait_mined(net.w3, b.txid)
    assert net.node1.depths([a.txid, b.txid]) == [2, 1]  # automine: one block each, in nonce order


def test_the_nonce_ledger_survives_a_restart(net: Network) -> None:
    check_restart(net)


def test_the_nonce_ledger_survives_a_restart_on_postgresql(pg_net: Network) -> None:
    check_restart(pg_net)


def test_concurrent_builders_of_one_ledger_take_distinct_nonces_on_postgresql(pg_net: Network) -> None:
    """Two side objects over one PostgreSQL database (each with its own in-process lock) take
    nonces at once: the ledger row's lock - from its very first write - serialises them."""
    burns = [new_burn(pg_net, ETHER) for _ in range(8)]
    other = make_side(pg_net.w3, pg_net.key, pg_net.db1, "node1", pg_net.node1.sign_fn, pg_net.clock)
    nonces: list[int] = []

    async def main() -> None:
        async def take(side: EvmPayoutSide, burn: Burn) -> None:
            action = BuildPayout(payout_id_of((burn.burn_id,)), (burn.burn_id,))
            _tx, nonce = await trio.to_thread.run_sync(side._prepare_payout, action, burn)
            nonces.append(nonce)

        with trio.fail_after(HANG_GUARD):
            async with trio.open_nursery() as nursery:
                for i, burn in enumerate(burns):
                    nursery.start_soon(take, (pg_net.node1, other)[i % 2], burn)

    trio.run(main)
    assert sorted(nonces) == list(range(min(nonces), min(nonces) + len(burns)))
    ledger = pg_net.node1.ledger()
    assert ledger is not None and ledger.next_nonce == min(nonces) + len(burns)


# ------------------------------------------------------------------------- refund rule


def test_classify_names_what_is_refunded(net: Network, chain: Web3) -> None:
    contract = secrets.token_bytes(20)
    rpc(chain, "anvil_setCode", Web3.to_checksum_address(contract), "0x6000")
    side = net.node1

    def burn(amount: int, destination: bytes) -> Burn:
        return Burn(burn_id="0x" + secrets.token_hex(32), nonce=1, asset=ASSET, burner="0x" + "cd" * 20,
                    amount=amount, destination=destination, block=1, tx_hash="0x" + "00" * 32)

    eoa = secrets.token_bytes(20)
    assert side.classify(burn(FEE + 1, eoa)) is None
    assert side.classify(burn(FEE, eoa)).startswith("below_minimum:")  # type: ignore[union-attr]
    for destination in (eoa[:19], eoa + b"\x00", (0xFFFF).to_bytes(20, "big"), address_bytes(side.custody.address),
                        contract, b"bc1qsomebitcoinaddress"):
        assert side.classify(burn(ETHER, destination)).startswith("unpayable:"), destination  # type: ignore[union-attr]
    # a contract destination is refused when building too, before a nonce is taken
    paying_contract = new_burn(net, ETHER, destination=contract)
    failed = build(side, paying_contract)
    assert isinstance(failed, PayoutFailed) and "contract code" in failed.reason and net.sessions == []
    assert side.ledger() is None or side.ledger().next_nonce == side.ledger().confirmed_count  # type: ignore[union-attr]


# ---------------------------------------------------------------------- encodings and params


def _tx(**changes: Any) -> Eip1559Transaction:
    base = dict(chain_id=CHAIN_ID, nonce=5, max_priority_fee_per_gas=GWEI, max_fee_per_gas=3 * GWEI, gas=21_000,
                to=b"\x22" * 20, value=ETHER)
    return Eip1559Transaction.create(**{**base, **changes})


def test_the_proposal_encoding_is_canonical_and_strict() -> None:
    burn_id, deposit = secrets.token_bytes(32), secrets.token_bytes(20)
    for p in (EvmProposal(KIND_PAYOUT, _tx(), burn_id=burn_id), EvmProposal(KIND_GAP_FILL, _tx(value=0)),
              EvmProposal(KIND_SWEEP, _tx(), deposit_address=deposit)):
        raw = p.to_bytes()
        assert EvmProposal.from_bytes(raw) == p
        assert raw[:2] == bytes([1, p.kind])
        assert raw.endswith(p.tx.signing_payload())
        for bad in (raw + b"\x00", raw[:-1], bytes([2]) + raw[1:], raw[:1] + b"\x09" + raw[2:]):
            with pytest.raises(EvmProposalError):
                EvmProposal.from_bytes(bad)
    good = EvmProposal(KIND_PAYOUT, _tx(), burn_id=burn_id).to_bytes()
    payload = _tx().signing_payload()
    assert decode_unsigned_transaction(b"\x02" + _reencode(payload, {})) == _tx()
    with pytest.raises(EvmProposalError, match="minimal"):  # nonce 5 written as 0x0005
        decode_unsigned_transaction(b"\x02" + _reencode(payload, {1: b"\x00\x05"}))
    with pytest.raises(EvmProposalError, match="contract"):
        decode_unsigned_transaction(b"\x02" + _reencode(payload, {5: b""}))
    with pytest.raises(EvmProposalError):
        EvmProposal(KIND_PAYOUT, _tx())  # a payout names its burn
    with pytest.raises(EvmProposalError):
        EvmProposal(KIND_GAP_FILL, _tx(), burn_id=burn_id)
    assert decode(encode(EvmPayoutRequest(good))) == EvmPayoutRequest(good)


def _reencode(payload: bytes, changes: dict[int, bytes]) -> bytes:
    items = rlp.decode(payload[1:])
    for index, value in changes.items():
        items[index] = value
    return rlp.encode(items)


def test_the_router_sends_each_chain_to_its_side(net: Network) -> None:
    hook = route_authorize([net.node2])
    pb = session_proposal(b"\x00" * 32, net.node2.custody.path, b"")
    other_chain = EvmProposal(KIND_GAP_FILL, _tx(chain_id=1, value=0)).to_bytes()
    assert hook(pb, EvmPayoutRequest(other_chain)) == (False, "bridge: unknown_chain: this node pays nothing on "
                                                              "chain 1")
    ok, why = hook(pb, EvmPayoutRequest(b"\x01"))
    assert not ok and "malformed" in why


def test_payout_params_and_fees_from_the_settings() -> None:
    params = evm_payout_params(SOURCE)
    assert (params.chain_id, params.withdrawal_fee, params.max_fee_per_gas, params.stuck_after) == (
        CHAIN_ID, FEE, CAP, 300)
    assert params.fee_band == 2
    band = dataclasses.replace(SOURCE, withdrawals=dataclasses.replace(SETTINGS, fee_band=1.5))
    assert evm_payout_params(band).fee_band * 2 == 3
    too_high = dataclasses.replace(SOURCE, withdrawals=dataclasses.replace(SETTINGS, max_fee_rate=CAP + 1))
    with pytest.raises(EvmWithdrawalError, match="other users' coins"):
        evm_payout_params(too_high)
    with pytest.raises(EvmWithdrawalError, match="not enabled"):
        evm_payout_params(dataclasses.replace(SOURCE, withdrawals=None))

    class NoHistory:
        class eth:  # noqa: N801 - mimics web3's attribute
            @staticmethod
            def fee_history(*_: Any) -> Any:
                raise ValueError("the method eth_feeHistory does not exist")

    assert estimate_fees(NoHistory(), 2 * GWEI) == FeeQuote(2 * GWEI, GWEI)  # type: ignore[arg-type]
    assert estimate_fees(NoHistory(), GWEI // 2) == FeeQuote(GWEI // 2, GWEI // 2)  # type: ignore[arg-type]


def test_assemble_signed_accepts_only_the_custody_signature(chain: Web3) -> None:
    key = GroupKey(b"assemble")
    custody = custody_address(key.public, key.chain_code, CHAIN)
    tx = _tx()
    sig = key.sign(tx.signing_hash(), custody.path)
    sender = address_bytes(custody.address)
    raw = assemble_signed(tx, sig, sender)
    assert Account.recover_transaction(raw) == custody.address
    flipped = Signature(sig.r, SECP256K1_N - sig.s, sig.recovery_id ^ 1, sig.public_key)
    assert assemble_signed(tx, flipped, sender) == raw  # the high-S form is the same signature
    with pytest.raises(EvmPayoutError, match="recovers to"):
        assemble_signed(tx, sig, secrets.token_bytes(20))
    with pytest.raises(EvmPayoutError, match="recovers to"):  # a signature over another transaction
        assemble_signed(dataclasses.replace(tx, value=1), sig, sender)
    with pytest.raises(EvmPayoutError, match=r"R\.x"):
        assemble_signed(tx, Signature(sig.r, sig.s, 2, sig.public_key), sender)
    with pytest.raises(EvmPayoutError, match="not a signature"):
        assemble_signed(tx, object(), sender)


def test_the_event_names_match_the_bitcoin_side() -> None:
    assert (PAYOUT_COSIGNED, PAYOUT_REFUSED) == (withdrawal_runtime.PAYOUT_COSIGNED, withdrawal_runtime.PAYOUT_REFUSED)
    assert GAP_FILL == "gap-fill"


def test_plan_is_what_the_participant_rebuilds(net: Network) -> None:
    """The coordinator's transaction is the pure builder's, at the nonce it took and its own fees."""
    burn = new_burn(net, 5 * ETHER)
    signed = build(net.node1, burn)
    assert isinstance(signed, PayoutSigned), signed
    fields = signed_fields(signed.raw)
    rebuilt = plan_eth_payout(EvmBurn(bytes.fromhex(burn.burn_id[2:]), burn.amount, burn.destination),
                              fields["nonce"], FeeQuote(fields["maxFeePerGas"], fields["maxPriorityFeePerGas"]),
                              evm_payout_params(SOURCE), net.node2.custody, destination_has_code=False)
    assert net.sessions[-1].tx == rebuilt
