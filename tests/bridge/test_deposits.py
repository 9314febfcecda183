"""The deposit state machine, driven by observations only (no chain): confirmations, dust,
duplicates, reorgs before and after the mint, signing retries, expiry, persistence."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_utils import keccak, to_checksum_address
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fusion_prime.bridge.deposits import (
    CONFIRMED,
    CONFIRMING,
    DUST,
    ERRATUM,
    MINTED,
    REORGED,
    SEEN,
    SIGNED,
    SIGNING,
    Alert,
    BlockConnected,
    BlockDisconnected,
    ChainTip,
    DepositConfig,
    DepositMachine,
    DepositOutput,
    MintQueuedSeen,
    MintSeen,
    OrderSigned,
    PauseChain,
    ProposeMint,
    Record,
    Relay,
    ReportDust,
    Rescan,
    Resume,
    Route,
    SigningFailed,
    Tick,
)
from fusion_prime.bridge.derivation import deposit_address
from fusion_prime.bridge.orders import ChainParams, MintOrder, deposit_id, encode_signature, evm_chain_id
from fusion_prime.protocol.curve import Point

BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
DEST = "eip155:31338"
ASSET = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
GATEWAY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BOB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
SUBSIDY = 50_0000_0000
PARAMS = ChainParams(min_confirmations=3, value_per_block=SUBSIDY, max_confirmations=6, dust_limit=294,
                     sweep_cost=1_000)
GROUP_SECRET = PrivateKey(hashlib.sha256(b"deposits test group").digest())
GROUP_KEY = Point.from_bytes(GROUP_SECRET.public_key.format())
CHAIN_CODE = hashlib.sha256(b"deposits test chain code").digest()
GROUP_ADDRESS = to_checksum_address(keccak(GROUP_SECRET.public_key.format(compressed=False)[1:])[-20:])
T0 = 1_700_000_000


def config(**kw: Any) -> DepositConfig:
    base: dict[str, Any] = {"source_chain": BTC, "params": PARAMS, "routes": (Route(DEST, ASSET, GATEWAY),),
                            "order_lifetime": 600, "expiry_grace": 60, "header_window": 100,
                            "group_key": GROUP_KEY, "chain_code": CHAIN_CODE, "signer": GROUP_ADDRESS}
    base.update(kw)
    return DepositConfig(**base)


def addr(recipient: str = ALICE) -> str:
    return deposit_address(GROUP_KEY, CHAIN_CODE, BTC, DEST, recipient).address


def out(txid: str = "aa" * 32, vout: int = 0, amount: int = 1_0000_0000, recipient: str = ALICE) -> DepositOutput:
    return DepositOutput(txid, vout, addr(recipient), amount, DEST, recipient)


def bh(height: int, fork: str = "") -> str:
    return hashlib.sha256(f"{fork}{height}".encode()).hexdigest()


def block(height: int, *outputs: DepositOutput, fork: str = "", parent_fork: str | None = None) -> BlockConnected:
    pf = fork if parent_fork is None else parent_fork
    return BlockConnected(height, bh(height, fork), bh(height - 1, pf), tuple(outputs))


def sign(order: MintOrder) -> bytes:
    raw = GROUP_SECRET.sign_recoverable(order.digest(GATEWAY, evm_chain_id(DEST)), hasher=None)
    return encode_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64])


def did(txid: str = "aa" * 32, vout: int = 0) -> str:
    return "0x" + deposit_id(BTC, txid, vout).hex()


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


class Driver:
    """Runs a machine, checking after every step that a restore from its JSON state is identical."""

    def __init__(self, cfg: DepositConfig | None = None) -> None:
        self.cfg = cfg or config()
        self.m = DepositMachine(self.cfg)
        self.now = T0
        self.log: list[Any] = []

    def __call__(self, obs: Any, dt: int = 0) -> list[Any]:
        self.now += dt
        state = json.dumps(self.m.to_dict(), sort_keys=True)
        twin = DepositMachine.from_dict(json.loads(state), self.cfg)
        actions = self.m.handle(obs, self.now)
        assert twin.handle(obs, self.now) == actions  # a restored machine acts identically
        assert json.dumps(twin.to_dict(), sort_keys=True) == json.dumps(self.m.to_dict(), sort_keys=True)
        self.log.extend(actions)
        return actions

    def chain(self, start: int, end: int, fork: str = "", **outputs_at: Any) -> list[Any]:
        acts: list[Any] = []
        for h in range(start, end + 1):
            acts += self(block(h, *outputs_at.get(f"h{h}", ()), fork=fork), dt=10)
        return acts

    def state(self, deposit: str | None = None) -> str:
        return self.m.deposits[deposit or did()].state


def test_happy_path_confirms_proposes_relays_and_mints() -> None:
    d = Driver()
    d.chain(1, 9)
    acts = d(block(10, out()), dt=10)
    assert [(r.old_state, r.new_state) for r in of(acts, Record)] == [(None, SEEN), (SEEN, CONFIRMING)]
    acts = d(block(11), dt=10)
    assert of(acts, Record)[0].detail == "2 of 3 confirmations" and not of(acts, ProposeMint)
    acts = d(block(12), dt=10)
    (proposal,) = of(acts, ProposeMint)
    order = proposal.order
    assert (order.asset, order.source_chain, order.source_txid, order.vout, order.recipient, order.amount) == (
        ASSET, BTC, "aa" * 32, 0, ALICE, 1_0000_0000)
    assert order.nonce == 1 and order.deadline == d.now + 600 and order.signer_epoch == 0
    assert d.state() == SIGNING
    acts = d(OrderSigned(did(), order, sign(order)), dt=5)
    assert of(acts, Relay) == [Relay(did(), order, sign(order))] and d.state() == SIGNED
    assert d(OrderSigned(did(), order, sign(order))) == []  # reported twice: nothing
    acts = d(MintSeen(did(), "0x" + "cd" * 32, 77, "0x" + order.digest(GATEWAY, 31338).hex()), dt=5)
    assert d.state() == MINTED and not of(acts, Alert)
    d.chain(13, 30)
    assert len(of(d.log, ProposeMint)) == 1
    states = [r.new_state for r in of(d.log, Record)]
    assert states == [SEEN, CONFIRMING, CONFIRMING, CONFIRMED, SIGNING, SIGNED, MINTED]


def test_confirmations_are_value_aware() -> None:
    d = Driver()
    big = out(amount=5 * SUBSIDY + 1)  # worth more than 5 blocks: 6 confirmations (the cap)
    d.chain(1, 1, h1=[big])
    d.chain(2, 5)
    assert d.state() == CONFIRMING
    acts = d.chain(6, 6)
    assert of(acts, ProposeMint) and d.m.deposits[did()].required == 6
    huge = out(txid="bb" * 32, amount=1_000 * SUBSIDY)
    assert DepositMachine(config()).handle(block(1, huge), T0) and PARAMS.max_confirmations == 6


def test_dust_is_reported_and_never_minted() -> None:
    d = Driver()
    acts = d(block(1, out(amount=1_000)), dt=1)
    assert of(acts, ReportDust) == [ReportDust(did(), "aa" * 32, 0, addr(), 1_000, 1_001)]
    assert d.state() == DUST
    d.chain(2, 20)
    d(block(1, out(amount=1_000)))  # the same block again
    assert not of(d.log, ProposeMint) and len(of(d.log, ReportDust)) == 1


def test_duplicate_observations_make_one_deposit_and_one_order() -> None:
    d = Driver()
    o = out()
    d(block(1, o, o), dt=1)  # reported twice in one block
    d(block(1, o), dt=1)  # the block delivered twice
    d(ChainTip(1))
    d.chain(2, 3)
    d(block(3, o))  # redelivered tip block with a stale report
    assert len(of(d.log, ProposeMint)) == 1 and len(d.m.deposits) == 1


def test_two_outputs_in_one_transaction_are_two_deposits() -> None:
    d = Driver()
    d.chain(1, 3, h1=[out(vout=0), out(vout=1, recipient=BOB)])
    ids = {p.deposit_id for p in of(d.log, ProposeMint)}
    assert ids == {did(vout=0), did(vout=1)}
    assert {p.order.nonce for p in of(d.log, ProposeMint)} == {1, 2}


def test_conflicting_facts_and_foreign_addresses_are_refused() -> None:
    d = Driver()
    d(block(1, out()), dt=1)
    acts = d(block(1, DepositOutput("aa" * 32, 0, addr(), 2_0000_0000, DEST, ALICE)))
    assert of(acts, Alert)[0].severity == "critical"
    assert d.m.deposits[did()].amount == 1_0000_0000
    # an output the edge attributes to ALICE but paying BOB's address: not credited to anyone
    acts = d(block(2, DepositOutput("bb" * 32, 0, addr(BOB), 5_0000, DEST, ALICE)), dt=1)
    assert of(acts, Alert) and did("bb" * 32) not in d.m.deposits
    acts = d(block(3, DepositOutput("cc" * 32, 0, addr(), 5_0000, "eip155:1", ALICE)), dt=1)
    assert of(acts, Alert) and did("cc" * 32) not in d.m.deposits


def test_reorg_before_depth_forgets_and_re_inclusion_re_confirms() -> None:
    d = Driver()
    d.chain(1, 1)
    d.chain(2, 3, h2=[out()])
    assert d.state() == CONFIRMING
    d(BlockDisconnected(3, bh(3)))
    acts = d(BlockDisconnected(2, bh(2)))
    assert [(r.old_state, r.new_state) for r in of(acts, Record)] == [(CONFIRMING, REORGED)]
    d.chain(2, 10, fork="x")  # the competing chain does not contain it
    assert d.state() == REORGED and not of(d.log, ProposeMint)
    # the transaction is mined again later
    d(block(11, out(), fork="x"), dt=10)
    assert d.state() == CONFIRMING
    d.chain(12, 13, fork="x")
    assert d.state() == SIGNING and len(of(d.log, ProposeMint)) == 1


def test_unreported_reorg_is_detected_from_heights_and_parents() -> None:
    d = Driver()
    d.chain(1, 3, h3=[out()])
    # a competing block 3 arrives without a disconnect report: block 3 is replaced
    acts = d(block(3, fork="y", parent_fork=""))
    assert d.state() == REORGED and any(r.new_state == REORGED for r in of(acts, Record))
    # a block whose parent is not ours: rescan from below
    acts = d(block(4, fork="z"))
    assert of(acts, Rescan) == [Rescan(3)] and 3 not in d.m.headers
    acts = d(block(5))
    assert of(acts, Rescan) == [Rescan(3)]  # a gap above our highest block


def test_reorg_while_signing_keeps_the_order_and_reuses_it() -> None:
    d = Driver()
    d.chain(1, 3, h1=[out()])
    (first,) = of(d.log, ProposeMint)
    acts = d(BlockDisconnected(3, bh(3)))
    acts += d(BlockDisconnected(2, bh(2)))
    acts += d(BlockDisconnected(1, bh(1)))
    assert d.state() == REORGED and of(acts, Alert)
    # the signature of the in-flight session arrives while the deposit is out of the chain: kept, not relayed
    acts = d(OrderSigned(did(), first.order, sign(first.order)), dt=1)
    assert not of(acts, Relay)
    d.chain(1, 3, fork="w", h2=[out()])
    acts = d.chain(4, 4, fork="w")
    assert of(acts, Relay) == [Relay(did(), first.order, sign(first.order))]
    assert len(of(d.log, ProposeMint)) == 1 and d.m.deposits[did()].issued == [first.order]


def test_reorg_after_mint_is_an_erratum_that_pauses_the_chain() -> None:
    d = Driver()
    d.chain(1, 3, h1=[out()])
    (p,) = of(d.log, ProposeMint)
    d(OrderSigned(did(), p.order, sign(p.order)))
    d(MintSeen(did(), "0x" + "01" * 32, 5))
    acts = d(BlockDisconnected(1, bh(1)))
    assert of(acts, PauseChain) == [PauseChain(BTC, of(acts, PauseChain)[0].reason, did())]
    assert of(acts, Alert)[0].severity == "critical" and did() in of(acts, Alert)[0].message
    assert d.state() == ERRATUM and d.m.paused
    # while paused nothing is proposed; another deposit waits at `confirmed`
    d.chain(1, 4, fork="v", h1=[out(txid="bb" * 32)])
    assert d.state(did("bb" * 32)) == CONFIRMED and len(of(d.log, ProposeMint)) == 1
    acts = d(Resume("operators reconciled"), dt=1)
    assert [a.deposit_id for a in of(acts, ProposeMint)] == [did("bb" * 32)]
    assert d.state() == ERRATUM  # the erratum itself stays for the record


def test_minted_while_out_of_the_chain_is_an_erratum() -> None:
    d = Driver()
    d.chain(1, 3, h1=[out()])
    d(BlockDisconnected(3, bh(3)))
    d(BlockDisconnected(2, bh(2)))
    d(BlockDisconnected(1, bh(1)))
    acts = d(MintSeen(did(), "0x" + "02" * 32, 9))
    assert of(acts, PauseChain) and d.state() == ERRATUM


def test_failed_signing_retries_the_same_order_until_it_expires() -> None:
    d = Driver()
    d.chain(1, 3, h1=[out()])
    (first,) = of(d.log, ProposeMint)
    acts = d(SigningFailed(did(), "peer timed out"), dt=30)
    assert of(acts, ProposeMint) == [ProposeMint(did(), first.order)]
    # past deadline + grace: a fresh order with the same terms
    acts = d(SigningFailed(did(), "again"), dt=700)
    (second,) = of(acts, ProposeMint)
    assert second.order.nonce == 2 and second.order.same_deposit_terms(first.order)
    assert second.order.deadline == d.now + 600
    # a late signature of the expired first order is ignored
    acts = d(OrderSigned(did(), first.order, sign(first.order)))
    assert not of(acts, Relay) and d.state() == SIGNING


def test_signed_but_unminted_order_is_reissued_after_its_deadline() -> None:
    d = Driver()
    d.chain(1, 3, h1=[out()])
    (first,) = of(d.log, ProposeMint)
    d(OrderSigned(did(), first.order, sign(first.order)))
    assert not of(d(Tick(), dt=600 + 60), ProposeMint)  # inclusive deadline + grace: still live
    acts = d(Tick(), dt=1)
    (second,) = of(acts, ProposeMint)
    assert second.order.nonce == 2 and d.state() == SIGNING
    assert [o.nonce for o in d.m.deposits[did()].issued] == [1, 2]


def test_queued_large_mint_is_never_reissued() -> None:
    d = Driver()
    d.chain(1, 3, h1=[out()])
    (first,) = of(d.log, ProposeMint)
    d(OrderSigned(did(), first.order, sign(first.order)))
    d(MintQueuedSeen(did(), "0x" + first.order.digest(GATEWAY, 31338).hex(), T0 + 10_000))
    assert not of(d(Tick(), dt=100_000), ProposeMint)
    d(MintSeen(did(), "0x" + "03" * 32, 99))
    assert d.state() == MINTED


def test_restart_reproposes_or_relays_the_same_order() -> None:
    d = Driver()
    d.chain(1, 4, h1=[out()], h2=[out(txid="bb" * 32)])
    proposals = {p.deposit_id: p.order for p in of(d.log, ProposeMint)}
    d(OrderSigned(did(), proposals[did()], sign(proposals[did()])))
    restored = DepositMachine.from_dict(json.loads(json.dumps(d.m.to_dict())), d.cfg)
    acts = restored.resume_actions(d.now + 1)
    assert Relay(did(), proposals[did()], sign(proposals[did()])) in acts
    assert ProposeMint(did("bb" * 32), proposals[did("bb" * 32)]) in acts
    assert len(acts) == 2


def test_signed_orders_are_checked() -> None:
    d = Driver()
    d.chain(1, 3, h1=[out()])
    (p,) = of(d.log, ProposeMint)
    other_key = PrivateKey(b"\x07" * 32)
    raw = other_key.sign_recoverable(p.order.digest(GATEWAY, 31338), hasher=None)
    forged = encode_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64])
    acts = d(OrderSigned(did(), p.order, forged))
    assert of(acts, Alert) and not of(acts, Relay)
    inflated = MintOrder(**{**p.order.to_dict(), "amount": p.order.amount + 1})
    acts = d(OrderSigned(did(), inflated, sign(inflated)))
    assert of(acts, Alert)[0].severity == "critical" and not of(acts, Relay)
    redirected = MintOrder(**{**p.order.to_dict(), "recipient": BOB})
    assert not of(d(OrderSigned(did(), redirected, sign(redirected))), Relay)
    assert d.state() == SIGNING


def test_another_coordinators_order_with_the_same_terms_is_adopted() -> None:
    d = Driver()
    d.chain(1, 3, h1=[out()])
    (p,) = of(d.log, ProposeMint)
    theirs = MintOrder(**{**p.order.to_dict(), "nonce": 999, "deadline": d.now + 300})
    acts = d(OrderSigned(did(), theirs, sign(theirs)))
    assert of(acts, Relay) == [Relay(did(), theirs, sign(theirs))]
    # our own session finishing later does not produce a second relay of a different order
    assert not of(d(OrderSigned(did(), p.order, sign(p.order))), Relay)


def test_mint_seen_before_the_deposit() -> None:
    d = Driver()
    acts = d(MintSeen(did(), "0x" + "04" * 32, 3))
    assert of(acts, Alert)
    d.chain(1, 5, h1=[out()])
    assert d.state() == MINTED and not of(d.log, ProposeMint)


def test_signer_epoch_is_taken_from_observations() -> None:
    from fusion_prime.bridge.deposits import SignerEpochChanged

    d = Driver()
    d(SignerEpochChanged(4))
    d.chain(1, 3, h1=[out()])
    assert of(d.log, ProposeMint)[0].order.signer_epoch == 4


def test_state_rejects_another_chain() -> None:
    m = DepositMachine(config())
    with pytest.raises(ValueError):
        DepositMachine.from_dict(m.to_dict(), config(source_chain="bip122:000000000019d6689c085ae165831e93"))


# ---- property: whatever happens, at most one live order per deposit, all with the same terms

step = st.one_of(
    st.tuples(st.just("block"), st.sampled_from([0, 0, 0, 0, 0, 1, 2]), st.booleans()),  # fork, include it
    st.tuples(st.just("block"), st.just(0), st.just(False)),
    st.tuples(st.just("disconnect"), st.integers(1, 3)),
    st.tuples(st.just("tick"), st.integers(0, 400)),
    st.tuples(st.just("fail"), st.integers(0, 400)),
    st.tuples(st.just("sign"), st.integers(0, 400)),
    st.tuples(st.just("restart"), st.integers(0, 1)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(step, max_size=40))
@example([("block", 0, True), ("block", 0, False), ("block", 0, False), ("tick", 400), ("fail", 400)])
@example([("block", 0, True), ("block", 0, False), ("block", 0, False), ("sign", 10), ("disconnect", 3),
          ("tick", 400), ("block", 1, True), ("block", 1, False), ("block", 1, False), ("restart", 0),
          ("tick", 0), ("sign", 1), ("tick", 400)])
def test_orders_never_overlap(steps: list[tuple[Any, ...]]) -> None:
    cfg = config(order_lifetime=300, expiry_grace=30, signer=None, group_key=None, chain_code=None)
    m, now, height, fork = DepositMachine(cfg), T0, 0, 0
    proposals: list[tuple[int, MintOrder]] = []
    for s in steps:
        acts: list[Any] = []
        if s[0] == "block":
            if s[1] != fork:  # switch to another branch from two blocks down
                for h in range(height, max(height - 2, 0), -1):
                    acts += m.handle(BlockDisconnected(h, bh(h, str(fork))), now)
                height, fork = max(height - 2, 0), s[1]
            height += 1
            parent = m.headers.get(height - 1, bh(height - 1, str(fork)))
            outputs = (out(),) if s[2] else ()
            acts += m.handle(BlockConnected(height, bh(height, str(fork)), parent, outputs), now)
        elif s[0] == "disconnect":
            for _ in range(s[1]):
                if height > 0 and height in m.headers:
                    acts += m.handle(BlockDisconnected(height, m.headers[height]), now)
                    height -= 1
        elif s[0] == "tick":
            now += s[1]
            acts += m.handle(Tick(), now)
        elif s[0] == "fail":
            now += s[1]
            acts += m.handle(SigningFailed(did(), "x"), now)
        elif s[0] == "sign":
            now += s[1]
            dep = m.deposits.get(did())
            if dep is not None and dep.order is not None:
                acts += m.handle(OrderSigned(did(), dep.order, sign(dep.order)), now)
        else:
            m = DepositMachine.from_dict(json.loads(json.dumps(m.to_dict())), cfg)
            acts += m.resume_actions(now)
        for a in acts:
            if isinstance(a, ProposeMint):
                proposals.append((now, a.order))
            if isinstance(a, Relay):
                assert a.order in [o for _, o in proposals]
    distinct: list[tuple[int, MintOrder]] = []
    for t, o in proposals:
        if all(o != p for _, p in distinct):
            distinct.append((t, o))
    for (_, a), (t_b, b) in itertools.pairwise(distinct):
        assert a.same_deposit_terms(b)
        assert t_b > a.deadline + cfg.expiry_grace  # the earlier one could no longer be submitted
        assert b.nonce > a.nonce
    REISSUES.append(len(distinct))


REISSUES: list[int] = []


def test_the_property_saw_reissues() -> None:
    """Guard against a vacuous property: the generated runs must include re-issued orders."""
    if not REISSUES:
        test_orders_never_overlap()
    assert max(REISSUES) >= 3


def test_a_mint_by_an_order_this_node_co_signed_raises_no_alert_and_a_foreign_one_does() -> None:
    for cosigned, alerts in ((True, 0), (False, 1)):
        d = Driver()
        d.chain(1, 9)
        d(block(10, out()), dt=10)
        d.chain(11, 12)
        foreign = "0x" + "ef" * 32  # another coordinator's order (not issued by this machine)
        acts = d(MintSeen(did(), "0x" + "cd" * 32, 77, foreign, cosigned=cosigned), dt=5)
        assert d.state() == MINTED
        assert len([a for a in of(acts, Alert) if "did not issue" in a.message]) == alerts
