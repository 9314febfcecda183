"""Withdrawals from settlement accounts paid through the bridge's payout machinery (issue 16,
``bridge/settlement/payouts_link.py``), without chains.

Two kinds of tests. The first drive the ``WithdrawalMachine`` alone with account withdrawals mixed
with Gateway burns. The others run two or three "nodes", each with its own bridge database (SQLite),
its own ledger replica (the same batches applied at each), its own withdrawal machine and its own
participant hook (``WithdrawalAuthorizer.payout_input``, the one the signer calls before
co-signing a payout input) over a Bitcoin view whose chain answers are fixed: the coordinator plans
a payout from its machine's ``BuildPayout``, every co-signer judges it with its own records and
replica, and what the ledger is told (``finished``) every node verifies with its own (``verify``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from coincurve import PrivateKey
from fp_guards import HANG_GUARD
from web3 import Web3

from fusion_prime.bridge.chains.bitcoin.encoding import COIN, REGTEST, parse_hash_hex, script_to_address
from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer
from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from fusion_prime.bridge.chains.evm.adapter import connect
from fusion_prime.bridge.chains.evm.anvil import AnvilProcess
from fusion_prime.bridge.config import SourceChain, WithdrawalSettings
from fusion_prime.bridge.custody import custody_address
from fusion_prime.bridge.db import BridgeDB, open_database
from fusion_prime.bridge.evm_withdrawal import EvmPayoutSide, evm_payout_params, route_authorize
from fusion_prime.bridge.orders import ChainParams
from fusion_prime.bridge.payouts import (
    CustodyCoin,
    PayoutBurn,
    PayoutPlan,
    PayoutProposal,
    finalize_payout,
    plan_payout,
    round_fee_rate,
)
from fusion_prime.bridge.requests import EvmPayoutRequest, PayoutInputRequest, decode
from fusion_prime.bridge.settlement.batch import GENESIS_HASH, Batch, Credit, Entry, WithdrawalPaid, WithdrawalReturned
from fusion_prime.bridge.settlement.instructions import OPEN_ACCOUNT, WITHDRAW, InstructionBody, sign_instruction
from fusion_prime.bridge.settlement.ledger import Applied, BatchRefused, Ledger, LedgerParams
from fusion_prime.bridge.settlement.payouts_link import AccountWithdrawals
from fusion_prime.bridge.withdrawal_runtime import (
    AssetSide,
    BtcPayoutView,
    StepWrite,
    WithdrawalAuthorizer,
    attach_evm_solvency,
    btc_params,
    classify_burn,
)
from fusion_prime.bridge.withdrawals import (
    ACCOUNT_NONCE_BASE,
    CONFIRMED,
    REFUNDING,
    RETURNED,
    RETURNING,
    AccountClosed,
    Action,
    BuildPayout,
    Burn,
    BurnSeen,
    PayoutBroadcast,
    PayoutDepth,
    PayoutFailed,
    PayoutFound,
    PayoutSigned,
    ProposeRefund,
    RescanBurns,
    Tick,
    WithdrawalConfig,
    WithdrawalMachine,
    account_burn_id,
    account_nonce,
    burn_key,
    payout_id_of,
)
from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.curve import Point, Q
from fusion_prime.protocol.ecdsa import Signature
from fusion_prime.protocol.hd import derive
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.bitcoin import p2wpkh_script

BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"  # regtest
FPBTC = "0x" + "ab" * 20
GATEWAY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
GROUP_KEY = Point.from_bytes(PrivateKey(hashlib.sha256(b"payouts link group").digest()).public_key.format())
CHAIN_CODE = hashlib.sha256(b"payouts link chain code").digest()
CUSTODY = custody_address(GROUP_KEY, CHAIN_CODE, BTC)
FEE = 20_000
CHAIN = SourceChain(caip2=BTC, rpc="http://127.0.0.1:9", symbol="BTC", asset=FPBTC,
                    params=ChainParams(min_confirmations=1, value_per_block=50 * 10**8, max_confirmations=6,
                                       dust_limit=294, sweep_cost=1_000),
                    withdrawals=WithdrawalSettings(withdrawal_fee=FEE, max_fee_rate=50, fallback_fee_rate=2,
                                                   max_batch=10, batch_wait_seconds=30, payout_confirmations=2))
PARAMS = btc_params(CHAIN, "regtest")
LEDGER = LedgerParams(assets=("BTC", "ETH"))
ALICE, BOB = (PartyIdentity.from_secret(bytes([i]) * 32) for i in (7, 8))
TIP = 300
T0 = 1_700_000_000


def address(seed: str) -> str:
    key = PrivateKey(hashlib.sha256(seed.encode()).digest()).public_key.format()
    out = script_to_address(p2wpkh_script(key), REGTEST)
    assert out is not None
    return out


def coins(*values: int) -> list[CustodyCoin]:
    return [CustodyCoin(txid=hashlib.sha256(b"coin %d" % i).hexdigest(), vout=0, value=v,
                        script_pubkey=p2wpkh_script(CUSTODY.public_key), path=CUSTODY.path,
                        public_key=CUSTODY.public_key, height=100 + i) for i, v in enumerate(values)]


def gateway_burn(nonce: int, amount: int = 100_000, destination: str | None = None) -> Burn:
    return Burn(burn_id="0x" + hashlib.sha256(b"gateway burn %d" % nonce).hexdigest(), nonce=nonce, asset=FPBTC,
                burner="0x" + "11" * 20, amount=amount, destination=(destination or address(f"burn {nonce}")).encode(),
                block=5, tx_hash="0x" + "ee" * 32)


def account_burn(wid: bytes, amount: int = 300_000, destination: str | None = None) -> Burn:
    bid = account_burn_id(wid)
    return Burn(burn_id=bid, nonce=account_nonce(bid), asset=FPBTC, burner=ALICE.public_key.hex(), amount=amount,
                destination=(destination or address("alice")).encode(), block=0, tx_hash="",
                account_withdrawal="0x" + wid.hex())


# ------------------------------------------------------------------------------ the machine alone


def _classify(burn: Burn) -> str | None:
    return "unpayable: not an address" if burn.destination.startswith(b"bad") else None


def _machine() -> WithdrawalMachine:
    m = WithdrawalMachine(WithdrawalConfig(asset=FPBTC, source_chain=BTC, classify=_classify, max_batch=10,
                                           batch_wait=30))
    m.coordinating = True
    return m


def _only(actions: Sequence[Action], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def test_an_account_withdrawal_has_a_burn_id_no_gateway_burn_has_and_sorts_after_every_burn() -> None:
    wid = hashlib.sha256(b"w").digest()
    bid = account_burn_id(wid)
    assert bid == "0x" + hashlib.sha256(b"fusion-prime/bridge/account-withdrawal/v1" + wid).hexdigest()
    assert bid != "0x" + wid.hex()  # not the ledger's id itself: its own domain
    assert account_nonce(bid) >= ACCOUNT_NONCE_BASE > 2**64
    assert account_nonce(account_burn_id(hashlib.sha256(b"v").digest())) != account_nonce(bid)
    with pytest.raises(ValueError, match="derived from its withdrawal id"):
        Burn(burn_id=bid, nonce=7, asset=FPBTC, burner="x", amount=1, destination=b"", block=0, tx_hash="",
             account_withdrawal="0x" + wid.hex())
    with pytest.raises(ValueError, match="derived from its withdrawal id"):
        Burn(burn_id=gateway_burn(1).burn_id, nonce=account_nonce(bid), asset=FPBTC, burner="x", amount=1,
             destination=b"", block=0, tx_hash="", account_withdrawal="0x" + wid.hex())


def test_the_machine_batches_account_withdrawals_with_burns_in_one_payout() -> None:
    m = _machine()
    wid = hashlib.sha256(b"alice withdraws").digest()
    acts = m.handle(BurnSeen(account_burn(wid)), 1000)
    assert not _only(acts, RescanBurns)  # no Gateway nonce: nothing missing
    assert m.next_nonce == 1
    m.handle(BurnSeen(gateway_burn(2)), 1001)
    m.handle(BurnSeen(gateway_burn(1)), 1002)
    assert m.in_flight() == 200_000  # the ledger owes the account withdrawal, not the Gateway
    (build,) = _only(m.handle(Tick(), 1030), BuildPayout)
    assert build.burn_ids == (gateway_burn(1).burn_id, gateway_burn(2).burn_id, account_burn_id(wid))
    assert build.payout_id == payout_id_of(build.burn_ids)
    again = WithdrawalMachine.from_dict(json.loads(json.dumps(m.to_dict())), m.config)
    assert again.get(account_burn_id(wid)).burn == account_burn(wid)
    assert "account_withdrawal" not in again.to_dict()["withdrawals"][gateway_burn(1).burn_id]["burn"]


def test_an_unpayable_account_withdrawal_is_returned_never_refunded() -> None:
    m = _machine()
    wid = hashlib.sha256(b"to nowhere").digest()
    acts = m.handle(BurnSeen(account_burn(wid, destination="bad1")), 1000)
    acts += m.handle(BurnSeen(gateway_burn(1, destination="bad2")), 1000)
    for t in range(1000, 1200, 10):
        acts += m.handle(Tick(), t)
    assert m.get(account_burn_id(wid)).state == RETURNING
    assert m.get(gateway_burn(1).burn_id).state == REFUNDING  # a Gateway burn is refunded as before
    assert {a.burn_id for a in _only(acts, ProposeRefund)} == {gateway_burn(1).burn_id}
    assert not _only(acts, BuildPayout)
    m.handle(AccountClosed(account_burn_id(wid), "returned", detail="unpayable"), 1300)
    assert m.get(account_burn_id(wid)).state == RETURNED


def test_what_the_ledger_ended_is_never_paid() -> None:
    m = _machine()
    paid, returned = hashlib.sha256(b"paid").digest(), hashlib.sha256(b"returned").digest()
    m.handle(BurnSeen(account_burn(paid)), 1000)
    m.handle(BurnSeen(account_burn(returned)), 1000)
    m.handle(AccountClosed(account_burn_id(paid), "paid", txid="aa" * 32), 1001)
    m.handle(AccountClosed(account_burn_id(returned), "returned"), 1001)
    assert not _only(m.handle(Tick(), 2000), BuildPayout)
    assert m.get(account_burn_id(paid)).state == CONFIRMED and m.get(account_burn_id(paid)).txid == "aa" * 32
    assert m.get(account_burn_id(returned)).state == RETURNED


# ------------------------------------------------------------------------------ nodes


class FakeView(BtcPayoutView):
    """This node's own Bitcoin view with fixed chain answers; archive and withdrawals from its DB."""

    def __init__(self, db: BridgeDB, custody_coins: list[CustodyCoin]) -> None:
        super().__init__(chain=CHAIN, asset=FPBTC, rpc=None, db=db, params=PARAMS, custody=CUSTODY)  # type: ignore[arg-type]
        self.coins = custody_coins

    def tip_height(self) -> int:
        return TIP

    def block_hash(self, height: int) -> str | None:
        return hashlib.sha256(b"block %d" % height).hexdigest()

    def custody_coins(self, view_height: int, exclude_reserved_except: str | None) -> Sequence[CustodyCoin]:
        with self.db.read() as r:
            reserved = {i for p in r.archived_payouts(BTC) if p["txid"] != exclude_reserved_except
                        for i in p["inputs"]}
        return [c for c in self.coins if str(c) not in reserved and (c.height or 0) <= view_height]

    def fee_estimate(self) -> Decimal | None:
        return Decimal(2)

    def unspent_total(self) -> int:
        return sum(c.value for c in self.coins)


class _Call:
    def __init__(self, value: Any) -> None:
        self.value = value

    def call(self, **_: Any) -> Any:
        return self.value


class FakeGateway:
    """The destination chain's Gateway as the participant hook reads it: not paused, no supply."""

    def __init__(self) -> None:
        self.functions = self

    def paused(self) -> _Call:
        return _Call(False)

    def assetState(self, asset: str) -> _Call:  # the contract's name
        return _Call((0, 0, 0, 0))


class Node:
    """One node: its database, replica, machine, payout view and participant hook; it is the
    ``runtime`` the link is attached to (``sides``, ``machines``, ``authorizer``, ``post``)."""

    def __init__(self, base: Path, name: str, side_of: Callable[[BridgeDB], AssetSide], *, max_batch: int = 10,
                 batch_wait: int = 30) -> None:
        self.name = name
        self.db = open_database(f"sqlite:///{base / (name + '.sqlite3')}")
        self.replica = Ledger(LEDGER)
        side = side_of(self.db)
        self.asset, self.side, self.view = side.asset, side, side.view
        self.sides = {side.asset: side}
        self.authorizer = WithdrawalAuthorizer(db=self.db, sides=self.sides, gateway=FakeGateway(),
                                               destination_chain_id=31338, gateway_address=GATEWAY, signer_path=(),
                                               node_id=name, max_deadline_ahead=600, clock=lambda: T0)
        self.authorizer.minted_through = self.authorizer.burned_through = 10**6
        self.authorizer.set_ledger_liabilities(
            lambda: {a: bal + pending for a, (bal, pending) in self.replica.liabilities().items()})
        attach_evm_solvency(self.sides, self.authorizer)
        settings = side.chain.withdrawals
        assert settings is not None
        self.machine = WithdrawalMachine(WithdrawalConfig(
            asset=side.asset, source_chain=side.chain.caip2, classify=side.classify,
            payout_confirmations=settings.payout_confirmations, max_batch=max_batch, batch_wait=batch_wait))
        self.machines = {side.asset: self.machine}
        self.inbox: list[tuple[str, Any]] = []
        self.hints: list[tuple[str, str]] = []
        self.accounts: Any = None
        self.link = AccountWithdrawals(self.db, self)
        self.link.pending(self.replica.withdrawals.get)

    # the runtime's part
    def post(self, asset: str, obs: Any) -> None:
        self.inbox.append((asset, obs))

    def hint_payout(self, asset: str, txid: str) -> None:
        self.hints.append((asset, txid))

    def feed(self, obs: Any, now: int) -> list[Action]:
        actions = self.machine.handle(obs, now)
        with self.db.transaction() as tx:
            StepWrite.of(self.machine, self.asset, actions).write(tx)
        return actions

    def step(self, now: int) -> list[Action]:
        """What ``WithdrawalRuntime.step`` does with the link: reconcile, drain, tick."""
        self.link.reconcile()
        posted, self.inbox = self.inbox, []
        out: list[Action] = []
        for _, obs in posted:
            out += self.feed(obs, now)
        return out + self.feed(Tick(), now)

    # the settlement runtime's part
    def apply(self, batch: Batch) -> Applied:
        applied = self.replica.apply(batch, verify=self._verify)
        self.link.observe([self.replica.withdrawals[w] for w in sorted(applied.withdrawals)])
        return applied

    def _verify(self, entry: Any) -> str | None:
        """The settlement runtime's dispatch: credits are the funding side's (not tested here)."""
        return self.link.verify(entry) if isinstance(entry, WithdrawalPaid | WithdrawalReturned) else None

    # the participant
    def cosign(self, plan: PayoutPlan) -> list[tuple[bool, str]]:
        assert self.view is not None
        proposal = PayoutProposal.of(plan, self.view.block_hash(plan.view_height) or "").to_bytes()
        out = []
        for i in range(len(plan.inputs)):
            pb = peer_pb2.SessionProposal(session_id=b"s" * 32, coordinator="n1",
                                          sign=peer_pb2.SignParams(digest=plan.sighash(i),
                                                                   path=list(plan.inputs[i].path)))
            out.append(self.authorizer.payout_input(pb, PayoutInputRequest(i, proposal)))
        return out

    def close(self) -> None:
        self.db.close()


class Net:
    """The settlement coordinator's batches, applied by every node; the payout coordinator is n1."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.seq, self.head, self.now_ms = 0, GENESIS_HASH, T0 * 1000
        self._keys = itertools.count(1)
        self._deposits = itertools.count(1)

    def batch(self, *entries: Entry, only: Sequence[Node] | None = None) -> Batch:
        batch = Batch(self.seq + 1, self.head, self.now_ms, "n1", tuple(entries))
        for n in only if only is not None else self.nodes:
            n.apply(batch)
        self.seq, self.head, self.now_ms = batch.seq, batch.hash, self.now_ms + 1000
        return batch

    def ins(self, who: PartyIdentity, kind: str, **fields: Any) -> Any:
        body = InstructionBody(kind=kind, client=who.public_key, key=f"key-{next(self._keys)}",
                               issued_at_ms=self.now_ms, **fields)
        return sign_instruction(who, body)

    def fund(self, who: PartyIdentity, amount: int, asset: str = "BTC") -> None:
        self.batch(self.ins(who, OPEN_ACCOUNT, label=who.public_key.hex()[:8]),
                   Credit(hashlib.sha256(b"deposit %d" % next(self._deposits)).digest(), who.public_key, asset,
                          amount))

    def withdraw(self, who: PartyIdentity, amount: int, destination: str, *, asset: str = "BTC",
                 chain: str = BTC, only: Sequence[Node] | None = None) -> bytes:
        ins = self.ins(who, WITHDRAW, asset=asset, amount=amount, destination_chain=chain, destination=destination)
        applied = self.batch(ins, only=only)
        assert applied.entries[0] == ins
        wid = ins.body.withdrawal_id
        assert all(n.replica.withdrawals[wid].status == "pending" for n in (only or self.nodes))
        return wid


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    custody = coins(1_000_000, 800_000, 600_000)

    def btc_side(db: BridgeDB) -> AssetSide:
        return AssetSide(chain=CHAIN, asset=FPBTC, params=PARAMS, view=FakeView(db, custody),
                         classify=classify_burn(CHAIN, PARAMS))

    nodes = [Node(tmp_path, f"n{i}", btc_side) for i in (1, 2, 3)]
    try:
        yield Net(nodes)
    finally:
        for n in nodes:
            n.close()


def _plan(node: Node, build: BuildPayout, *, amounts: dict[str, int] | None = None,
          destinations: dict[str, bytes] | None = None, custody: Sequence[CustodyCoin] | None = None) -> PayoutPlan:
    """The coordinator's plan of ``build`` from its machine (``_fresh_plan``), with a lying
    coordinator's changes to amounts or destinations of some burns."""
    burns = []
    for bid in build.burn_ids:
        w = node.machine.get(bid)
        assert w is not None
        burns.append(PayoutBurn(burn_key(bid), w.burn.nonce, (amounts or {}).get(bid, w.burn.amount),
                                (destinations or {}).get(bid, w.burn.destination)))
    assert node.view is not None
    return plan_payout(burns, custody if custody is not None else node.view.custody_coins(TIP, None), Decimal(2),
                       node.view.change_script(), PARAMS, view_height=TIP)


def _queued(net: Net, *burns: Burn) -> BuildPayout:
    """Every node sees ``burns`` from the Gateway and the withdrawals the ledger handed it; n1's
    batch is due after the batch wait."""
    for n in net.nodes:
        for b in burns:
            n.feed(BurnSeen(b), T0)
        n.step(T0)
    n1 = net.nodes[0]
    n1.machine.coordinating = True
    (build,) = _only(n1.step(T0 + 30), BuildPayout)
    return build


def _ok(verdicts: list[tuple[bool, str]]) -> bool:
    return all(ok for ok, _ in verdicts)


def _refusal(verdicts: list[tuple[bool, str]]) -> str:
    bad = [why for ok, why in verdicts if not ok]
    assert bad, "co-signed"
    return bad[0]


def _pay(node: Node, build: BuildPayout, plan: PayoutPlan, confirmations: int) -> str:
    """The coordinator signed, broadcast and watched ``plan`` to ``confirmations``."""
    node.feed(PayoutSigned(build.payout_id, plan.txid, "00", plan.fee, 2000), T0 + 40)
    node.feed(PayoutBroadcast(build.payout_id, plan.txid, True), T0 + 41)
    node.feed(PayoutDepth(plan.txid, confirmations), T0 + 42)
    return plan.txid


def test_an_account_withdrawal_is_paid_with_burns_in_one_payout_fee_kept_and_reported_back(net: Net) -> None:
    n1, n2, n3 = net.nodes
    net.fund(ALICE, 1_000_000)
    destination = address("alice's own wallet")
    wid = net.withdraw(ALICE, 300_000, destination)
    assert net.nodes[0].replica.available(ALICE.public_key, "BTC") == 700_000
    key = account_burn_id(wid)
    build = _queued(net, gateway_burn(1), gateway_burn(2))
    assert build.burn_ids == (gateway_burn(1).burn_id, gateway_burn(2).burn_id, key)

    plan = _plan(n1, build)
    out = plan.tx.vout[2]
    assert out.script_pubkey == p2wpkh_script(
        PrivateKey(hashlib.sha256(b"alice's own wallet").digest()).public_key.format())
    assert out.value == 300_000 - FEE  # the withdrawal fee is kept, as for a burn
    assert [o.value for o in plan.tx.vout[:2]] == [100_000 - FEE] * 2
    assert _ok(n2.cosign(plan)) and _ok(n3.cosign(plan))

    # the payout reaches its depth at n1; n2 has it in its archive but not at depth yet
    txid = _pay(n1, build, plan, 2)
    assert n1.machine.get(key).state == CONFIRMED
    # custody dropped by the payout; the ledger owes it until WithdrawalPaid: solvency counts neither
    assert n1.link.leaving_custody("BTC") == 300_000
    assert n1.authorizer.solvency_inputs(n1.side).ledger == 1_000_000 - 300_000
    (entry,) = n1.link.finished()
    assert entry == WithdrawalPaid(wid, txid)
    why = n2.link.verify(entry)
    assert why is not None and why.startswith("retry:")
    with pytest.raises(BatchRefused) as refused:
        n2.replica.apply(Batch(net.seq + 1, net.head, net.now_ms, "n1", (entry,)), verify=n2._verify)
    assert refused.value.retry
    for n in (n2, n3):  # their own watchers: the co-signed payout, found at depth
        n.feed(PayoutFound(build.payout_id, build.burn_ids, txid, "", 2), T0 + 50)
        assert n.link.verify(entry) is None
    net.batch(entry)
    n1.link.reported([wid])
    assert all(n.replica.withdrawals[wid].status == "paid" and n.replica.withdrawals[wid].txid == txid
               for n in net.nodes)
    assert n1.link.finished() == []
    for n in net.nodes:
        n.step(T0 + 60)
        assert n.link.leaving_custody("BTC") == 0
        n.replica.check_invariants()
    assert n1.replica.balance(ALICE.public_key, "BTC") == 700_000


def test_a_cosigner_judges_by_its_own_replica_never_the_coordinators_word(net: Net) -> None:
    n1, n2, n3 = net.nodes
    net.fund(ALICE, 1_000_000)
    # n3 never applied the batch with the withdrawal: its replica has no such withdrawal
    wid = net.withdraw(ALICE, 300_000, address("a"), only=[n1, n2])
    build = _queued(net)
    plan = _plan(n1, build)
    assert "unknown_burn" in _refusal(n3.cosign(plan))  # nothing observed, nothing recorded
    n3.link.observe([n1.replica.withdrawals[wid]])  # the coordinator's record handed to n3 directly...
    assert "account_withdrawal_unknown" in _refusal(n3.cosign(plan))  # ...is not its replica's word
    assert _ok(n2.cosign(plan))

    # the replica returned it meanwhile: nothing is co-signed for it any more
    n2.replica.withdrawals[wid].status = "returned"
    assert "account_withdrawal_not_pending" in _refusal(n2.cosign(plan))
    n2.replica.withdrawals[wid].status = "pending"

    # the node's record edited behind its back: it no longer agrees with the replica
    with n2.db.transaction() as tx:
        tx.conn.exec_driver_sql("UPDATE account_withdrawals SET amount = '900000'")
    assert "account_withdrawal_terms" in _refusal(n2.cosign(plan))


def test_a_cosigner_refuses_another_amount_or_destination(net: Net) -> None:
    n1, n2, _ = net.nodes
    net.fund(ALICE, 1_000_000)
    wid = net.withdraw(ALICE, 300_000, address("a"))
    key = account_burn_id(wid)
    build = _queued(net, gateway_burn(1))
    more = _plan(n1, build, amounts={key: 400_000})
    assert "rebuilt_different" in _refusal(n2.cosign(more)) and "pays 380000 sat" in _refusal(n2.cosign(more))
    elsewhere = _plan(n1, build, destinations={key: address("mallory").encode()})
    assert "rebuilt_different" in _refusal(n2.cosign(elsewhere))
    assert _ok(n2.cosign(_plan(n1, build)))


def test_a_second_payout_of_a_withdrawal_is_refused(net: Net) -> None:
    n1, n2, _ = net.nodes
    net.fund(ALICE, 1_000_000)
    wid = net.withdraw(ALICE, 300_000, address("a"))
    build = _queued(net)
    first = _plan(n1, build)
    assert _ok(n2.cosign(first))
    # another payout of it, on other coins (as a second coordinator would build once the first's
    # inputs are reserved): refused by the node that co-signed the first
    assert isinstance(n1.view, FakeView)
    others = [c for c in n1.view.coins if c not in first.inputs]
    second = _plan(n1, build, custody=others)
    assert set(second.inputs).isdisjoint(first.inputs)
    assert "burn_already_paid" in _refusal(n2.cosign(second))
    # and once the first is paid per the ledger, by every node
    txid = _pay(n1, build, first, 2)
    for n in net.nodes[1:]:
        n.feed(PayoutFound(build.payout_id, build.burn_ids, txid, "", 2), T0 + 50)
    net.batch(WithdrawalPaid(wid, txid))
    assert "account_withdrawal_not_pending" in _refusal(net.nodes[2].cosign(second))


def test_unpayable_withdrawals_are_returned_to_the_account_never_refunded(net: Net) -> None:
    n1, n2, _ = net.nodes
    net.fund(ALICE, 1_000_000)
    net.fund(BOB, 10**18, "ETH")
    mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"  # a mainnet address: not payable on regtest
    wrong_network = net.withdraw(ALICE, 100_000, mainnet)
    below_minimum = net.withdraw(ALICE, FEE + 100, address("dust"))
    other_chain = net.withdraw(ALICE, 100_000, address("x"), chain="eip155:1")
    no_side = net.withdraw(BOB, 10**17, "0x" + "22" * 20, asset="ETH", chain="eip155:1")
    payable = net.withdraw(ALICE, 100_000, address("fine"))
    acts: list[Action] = []
    n1.machine.coordinating = True  # n2 and n3 follow; n1 would refund a burn, if there were one
    for t in range(T0, T0 + 200, 10):
        for n in net.nodes:
            acts += n.step(t)
    assert not _only(acts, ProposeRefund)  # no Gateway refund exists for an account withdrawal
    assert n1.machine.get(account_burn_id(wrong_network)).state == RETURNING
    assert n1.machine.get(account_burn_id(below_minimum)).state == RETURNING
    entries = n1.link.finished()
    assert {e.withdrawal_id for e in entries} == {wrong_network, below_minimum, other_chain, no_side}
    assert all(isinstance(e, WithdrawalReturned) for e in entries)
    assert "mainnet" in next(e.reason for e in entries if e.withdrawal_id == wrong_network)
    for e in entries:
        assert n2.link.verify(e) is None
    # a return of a payable withdrawal is refused by every node's own rules
    bogus = WithdrawalReturned(payable, "unpayable: says who")
    assert "payable by this node's rules" in (n2.link.verify(bogus) or "")
    before = n1.replica.balance(ALICE.public_key, "BTC")
    net.batch(*entries)
    n1.link.reported([e.withdrawal_id for e in entries])
    assert n1.replica.balance(ALICE.public_key, "BTC") == before + 100_000 + FEE + 100 + 100_000
    assert n1.replica.balance(BOB.public_key, "ETH") == 10**18
    assert n1.link.finished() == []
    for n in net.nodes:
        n.step(T0 + 300)
        assert n.machine.get(account_burn_id(wrong_network)).state == RETURNED
        with n.db.read() as r:
            row = r.account_withdrawal_by_id(no_side)
        assert row is not None and (row["state"], row["ledger_status"]) == (RETURNED, "returned")


def test_verify_refuses_a_paid_entry_its_records_contradict(net: Net) -> None:
    n1, n2, _ = net.nodes
    net.fund(ALICE, 1_000_000)
    wid = net.withdraw(ALICE, 300_000, address("a"))
    bad = net.withdraw(ALICE, 100_000, "bcrt1notanaddress")
    build = _queued(net)
    plan = _plan(n1, build)
    txid = _pay(n1, build, plan, 2)
    n2.feed(PayoutFound(build.payout_id, build.burn_ids, txid, "", 2), T0 + 50)
    assert "not by" in (n2.link.verify(WithdrawalPaid(wid, "ff" * 32)) or "")
    assert "cannot be paid" in (n2.link.verify(WithdrawalPaid(bad, txid)) or "")
    assert (n2.link.verify(WithdrawalPaid(hashlib.sha256(b"nobody").digest(), txid)) or "").startswith("retry:")
    assert "is in payout" in (n2.link.verify(WithdrawalReturned(wid, "no")) or "")


def test_observing_again_changes_nothing_and_a_restart_resumes(net: Net, tmp_path: Path) -> None:
    n1 = net.nodes[0]
    net.fund(ALICE, 1_000_000)
    wid = net.withdraw(ALICE, 300_000, address("a"))
    build = _queued(net)
    assert n1.machine.get(account_burn_id(wid)).state == "signing"
    n1.link.observe([n1.replica.withdrawals[wid]] * 2)
    n1.step(T0 + 31)
    assert n1.machine.get(account_burn_id(wid)).state == "signing"
    with n1.db.read() as r:
        events = [e.event for e in r.events(bytes.fromhex(account_burn_id(wid)[2:]))]
    assert events.count("account-withdrawal-observed") == 1
    # a restart: a new link over the same database, the machine from its snapshot
    again = AccountWithdrawals(n1.db, n1)
    again.pending(n1.replica.withdrawals.get)
    again.observe([w for w in n1.replica.withdrawals.values() if w.status == "pending"])
    assert not _only(n1.step(T0 + 32), BuildPayout)
    assert n1.machine.get(account_burn_id(wid)).payout_id == build.payout_id
    with n1.db.read() as r:
        assert r.account_withdrawal_by_id(wid)["state"] == "signing"
    assert n1.link.finished() == []  # nothing final yet


# ------------------------------------------------------------------------------ ETH, on anvil

EVM_CHAIN_ID = 31337
EVM = f"eip155:{EVM_CHAIN_ID}"
FPETH = "0x" + "cd" * 20
GWEI, ETHER = 10**9, 10**18
CAP = 100 * GWEI
EVM_FEE = 21_000 * CAP
EVM_SOURCE = SourceChain(caip2=EVM, rpc="unused", symbol="ETH", asset=FPETH,
                         params=ChainParams(min_confirmations=1, value_per_block=ETHER, max_confirmations=1),
                         withdrawals=WithdrawalSettings(withdrawal_fee=EVM_FEE, max_fee_rate=CAP,
                                                        fallback_fee_rate=2 * GWEI))


class GroupKey:
    """The group key in one place (tests only): signs at a path with group secret + BIP32 tweak."""

    def __init__(self, seed: bytes) -> None:
        digest = hashlib.sha512(seed).digest()
        self._secret = int.from_bytes(digest[:32], "big") % Q
        self.chain_code = digest[32:]
        self.public = Point.base_mul(self._secret)

    def sign(self, digest: bytes, path: tuple[int, ...]) -> Signature:
        child = derive(self.public, self.chain_code, path)
        sig = PrivateKey(((self._secret + child.tweak) % Q).to_bytes(32, "big")).sign_recoverable(digest, hasher=None)
        return Signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64],
                         child.public_key)


@dataclasses.dataclass
class SignOutcome:
    """What ``Node.sign`` returns, as far as the EVM side reads it."""

    status: str
    output: Any = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "done"


@pytest.fixture(scope="module")
def anvil() -> Iterator[Web3]:
    process = AnvilProcess(chain_id=EVM_CHAIN_ID).start(timeout=HANG_GUARD)
    try:
        yield connect(process.url)
    finally:
        process.stop()


@pytest.fixture
def evm_net(anvil: Web3, tmp_path: Path) -> Iterator[Net]:
    """Two nodes paying fpETH in ETH from one custody address on anvil; ``sign`` runs every node's
    gated EVM hook (the account check, then the EVM checks with solvency) like ``Node.sign``."""
    key = GroupKey(secrets.token_bytes(16))
    nodes: list[Node] = []

    async def sign(key_id: bytes, digest: bytes, path: tuple[int, ...], *, client_request: bytes) -> SignOutcome:
        request = decode(client_request)
        assert isinstance(request, EvmPayoutRequest)
        pb = peer_pb2.SessionProposal(session_id=secrets.token_bytes(32), phase="sign", coordinator="n1",
                                      participants=[n.name for n in nodes],
                                      sign=peer_pb2.SignParams(key_id=key_id, digest=digest, path=list(path),
                                                               client_request=client_request))
        for n in nodes:
            ok, why = await trio.to_thread.run_sync(n.evm_hook, pb, request)
            if not ok:
                return SignOutcome("refused", reason=f"{n.name}: {why}")
        return SignOutcome("done", output=key.sign(digest, path))

    def evm_side(db: BridgeDB, name: str) -> AssetSide:
        side = EvmPayoutSide(chain=EVM_SOURCE, asset=FPETH, w3=anvil, db=db, params=evm_payout_params(EVM_SOURCE),
                             custody=custody_address(key.public, key.chain_code, EVM), group_key=key.public,
                             chain_code=key.chain_code, destination_chain="eip155:31338", key_id=b"\x01" * 32,
                             sign=sign, node_id=name)
        return AssetSide(chain=EVM_SOURCE, asset=FPETH, params=None, view=None, classify=side.classify, evm=side)

    for name in ("n1", "n2"):
        node = Node(tmp_path, name, lambda db, name=name: evm_side(db, name), max_batch=1, batch_wait=0)
        node.evm_hook = node.authorizer.gate_evm(route_authorize([node.side.evm]))  # type: ignore[attr-defined]
        nodes.append(node)
    custody = nodes[0].side.evm.custody.address
    anvil.provider.make_request("anvil_setBalance", [custody, hex(10 * ETHER)])  # type: ignore[arg-type]
    try:
        yield Net(nodes)
    finally:
        for n in nodes:
            n.close()


def _trio(fn: Any) -> Any:
    async def main() -> Any:
        with trio.fail_after(HANG_GUARD):
            return await fn()

    return trio.run(main)


def _build_all(node: Node, now: int) -> dict[str, Any]:
    """The coordinator builds what its machine asks (one payout at a time; ETH pays one withdrawal
    per transaction) and feeds each result back: burn id -> PayoutSigned | PayoutFailed."""
    results: dict[str, Any] = {}
    todo = _only(node.step(now), BuildPayout)
    while todo:
        build = todo.pop(0)
        burn = node.machine.get(build.burn_ids[0]).burn
        results[burn.burn_id] = _trio(lambda build=build, burn=burn: node.side.evm.build(build, burn))
        todo += _only(node.feed(results[burn.burn_id], now), BuildPayout)
    return results


def test_an_account_withdrawal_of_eth_is_paid_from_custody_and_reported(evm_net: Net, anvil: Web3) -> None:
    n1, n2 = evm_net.nodes
    evm_net.fund(ALICE, 5 * ETHER, "ETH")
    fresh = Web3.to_checksum_address(secrets.token_bytes(20))
    wid = evm_net.withdraw(ALICE, ETHER, fresh, asset="ETH", chain=EVM)
    key = account_burn_id(wid)
    for n in evm_net.nodes:
        n.step(T0)
        n.authorizer.solvency_inputs(n.side)  # the periodic solvency check's read of the ledger
    n1.machine.coordinating = True
    signed = _build_all(n1, T0 + 1)[key]
    assert isinstance(signed, PayoutSigned), signed
    assert n1.side.evm.broadcast(signed.raw) == (True, "")
    n1.feed(PayoutBroadcast(signed.payout_id, signed.txid, True), T0 + 3)
    assert anvil.eth.wait_for_transaction_receipt(signed.txid, timeout=HANG_GUARD)["status"] == 1  # type: ignore[arg-type]
    assert int(anvil.eth.get_balance(fresh)) == ETHER - EVM_FEE  # the withdrawal fee is kept
    n1.feed(PayoutDepth(signed.txid, n1.side.evm.depths([signed.txid])[0]), T0 + 4)
    assert n1.machine.get(key).state == CONFIRMED
    (entry,) = n1.link.finished()
    assert entry == WithdrawalPaid(wid, signed.txid)
    assert (n2.link.verify(entry) or "").startswith("retry:")
    # n2 never saw that payout: it is told to look the transaction up on its own chain
    assert n2.hints == [(FPETH, signed.txid)]
    found = n2.side.evm.found_payout(signed.txid, [w.burn for w in n2.machine.withdrawals.values()])
    assert found is not None and found.burn_ids == (key,)
    n2.feed(found, T0 + 5)
    assert n2.link.verify(entry) is None
    evm_net.batch(entry)
    assert all(n.replica.withdrawals[wid].status == "paid" for n in evm_net.nodes)

    # a co-signer whose replica no longer has a withdrawal pending signs nothing for it
    refused = evm_net.withdraw(ALICE, ETHER, Web3.to_checksum_address(secrets.token_bytes(20)), asset="ETH",
                               chain=EVM)
    n2.step(T0 + 10)
    n2.replica.withdrawals[refused].status = "returned"
    failed = _build_all(n1, T0 + 10)[account_burn_id(refused)]
    assert isinstance(failed, PayoutFailed) and "n2: bridge: account_withdrawal_not_pending" in failed.reason
    assert n1.machine.get(account_burn_id(refused)).state == "queued"  # retried later, never signed by n2


# ------------------------------------------------------------------------------ BTC, on the devnet


@pytest.fixture
def btc_devnet(tmp_path: Path) -> Iterator[tuple[str, BitcoinRPC]]:
    node = RegtestNode(tmp_path / "btc")
    server = BitcoinRPCServer(node, user="link", password="devnet").start()
    rpc = BitcoinRPC(server.url, "link", "devnet")
    try:
        yield server.url, rpc
    finally:
        rpc.close()
        server.stop()
        node.close()


def test_an_account_withdrawal_is_paid_with_a_burn_on_the_bitcoin_devnet(btc_devnet: tuple[str, BitcoinRPC],
                                                                          tmp_path: Path) -> None:
    """Real views (each node's own RPC client, its database's custody coins), real signatures by the
    group key at the custody path, the devnet's validation engine accepting the payout."""
    url, rpc = btc_devnet
    key = GroupKey(b"payouts link devnet")
    custody = custody_address(key.public, key.chain_code, BTC)
    miner = PrivateKey((0x5EED).to_bytes(32, "big"))
    miner_script = p2wpkh_script(miner.public_key.format())
    miner_address = script_to_address(miner_script, REGTEST)
    coinbase = rpc.getblock(rpc.generatetoaddress(101, miner_address)[0], 2)["tx"][0]
    value = int(Decimal(str(coinbase["vout"][0]["value"])) * COIN)
    custody_script = p2wpkh_script(custody.public_key)
    funding = Tx(2, [TxIn(OutPoint(parse_hash_hex(coinbase["txid"]), 0), sequence=0xFFFFFFFD)],
                 [TxOut(1_000_000, custody_script), TxOut(2_000_000, custody_script),
                  TxOut(value - 3_000_000 - 10_000, miner_script)])
    sign_p2wpkh(funding, 0, miner.secret, value)
    funding_txid = rpc.sendrawtransaction(funding.serialize().hex())
    rpc.generatetoaddress(2, miner_address)

    clients: list[BitcoinRPC] = []

    def btc_side(db: BridgeDB) -> AssetSide:
        client = BitcoinRPC(url, "link", "devnet")
        clients.append(client)
        with db.transaction() as tx:  # the custody coins every node knows (minted deposits, change)
            for vout, amount in ((0, 1_000_000), (1, 2_000_000)):
                tx.add_custody_coin(chain=BTC, txid=funding_txid, vout=vout, value=amount, path=list(custody.path),
                                    public_key=custody.public_key.hex(), origin="change")
        view = BtcPayoutView(chain=CHAIN, asset=FPBTC, rpc=client, db=db, params=PARAMS, custody=custody)
        return AssetSide(chain=CHAIN, asset=FPBTC, params=PARAMS, view=view, classify=classify_burn(CHAIN, PARAMS))

    nodes = [Node(tmp_path, name, btc_side) for name in ("n1", "n2")]
    try:
        net = Net(nodes)
        n1, n2 = nodes
        net.fund(ALICE, 2_000_000)
        destination = address("alice on the devnet")
        wid = net.withdraw(ALICE, 1_500_000, destination)
        build = _queued(net, gateway_burn(1, amount=500_000))
        assert build.burn_ids[-1] == account_burn_id(wid)

        view = n1.view
        assert view is not None
        tip = view.tip_height()
        burns = [PayoutBurn(burn_key(b), w.burn.nonce, w.burn.amount, w.burn.destination)
                 for b in build.burn_ids if (w := n1.machine.get(b)) is not None]
        plan = plan_payout(burns, view.custody_coins(tip, None), round_fee_rate(view.fee_estimate() or 2),
                           view.change_script(), PARAMS, view_height=tip)
        assert _ok(n1.cosign(plan)) and _ok(n2.cosign(plan))  # the coordinator's own hook, then n2's
        signatures = []
        for i, coin in enumerate(plan.inputs):
            sig = key.sign(plan.sighash(i), coin.path)
            signatures.append((sig.r, min(sig.s, Q - sig.s)))
        raw = finalize_payout(plan, signatures).serialize().hex()
        assert rpc.sendrawtransaction(raw) == plan.txid
        n1.feed(PayoutSigned(build.payout_id, plan.txid, raw, plan.fee, 2000), T0 + 40)
        n1.feed(PayoutBroadcast(build.payout_id, plan.txid, True), T0 + 41)
        rpc.generatetoaddress(2, miner_address)
        confirmations = int(rpc.getrawtransaction(plan.txid, True)["confirmations"])
        n1.feed(PayoutDepth(plan.txid, confirmations), T0 + 42)
        assert n1.machine.get(account_burn_id(wid)).state == CONFIRMED

        paid = rpc.gettxout(plan.txid, 1, False)  # the account withdrawal's output, after the burn's
        assert int(Decimal(str(paid["value"])) * COIN) == 1_500_000 - FEE
        assert paid["scriptPubKey"]["hex"] == p2wpkh_script(
            PrivateKey(hashlib.sha256(b"alice on the devnet").digest()).public_key.format()).hex()

        (entry,) = n1.link.finished()
        assert entry == WithdrawalPaid(wid, plan.txid)
        assert (n2.link.verify(entry) or "").startswith("retry:")
        # n2 co-signed it: its runtime learns the payout from its own archive and its own chain
        n2.feed(PayoutFound(build.payout_id, build.burn_ids, plan.txid, raw, confirmations), T0 + 50)
        assert n2.link.verify(entry) is None
        net.batch(entry)
        assert [n.replica.withdrawals[wid].status for n in nodes] == ["paid", "paid"]
        assert n1.replica.balance(ALICE.public_key, "BTC") == 500_000
    finally:
        for c in clients:
            c.close()
        for n in nodes:
            n.close()
