"""The settlement ledger's rules, one by one (``bridge/settlement/ledger.py``, issue 16).

Each test drives a fresh replica with batches built here (a node applies the same objects after
decoding them) and asserts what the rule says *and* what it forbids: nothing held after a rejected
affirmation, no leg moving alone, a refused batch leaving the replica byte-identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

import pytest

from fusion_prime.bridge.settlement.batch import (
    Batch,
    Credit,
    Cutoff,
    Entry,
    Finalize,
    SystemEntry,
    WithdrawalPaid,
    WithdrawalReturned,
)
from fusion_prime.bridge.settlement.instructions import (
    AFFIRM,
    CANCEL,
    DISPUTE,
    GROSS,
    NET,
    OPEN_ACCOUNT,
    SUBMIT_TRADE,
    WITHDRAW,
    InstructionBody,
    SignedInstruction,
    sign_instruction,
    trade_legs,
)
from fusion_prime.bridge.settlement.ledger import (
    AFFIRMED,
    CANCELLED,
    CUT,
    DISPUTED,
    EXPIRED,
    PENDING,
    SETTLED,
    Applied,
    BatchRefused,
    Ledger,
    LedgerParams,
    Outcome,
)
from fusion_prime.protocol.identity import PartyIdentity

A, B, C, D = (PartyIdentity.from_secret(bytes([i]) * 32) for i in (1, 2, 3, 4))
T0 = 1_700_000_000_000
CYCLE, WINDOW = 60_000, 30_000
PARAMS = LedgerParams(assets=("BTC", "ETH"), cycle_ms=CYCLE, dispute_window_ms=WINDOW)
MINUTE = 60_000


class World:
    """One replica and a coordinator's clock. ``apply`` makes and applies the next batch."""

    def __init__(self, params: LedgerParams = PARAMS) -> None:
        self.ledger = Ledger(params)
        self.now = T0
        self._keys = itertools.count(1)
        self._deposits = itertools.count(1)

    # instructions
    def ins(self, who: PartyIdentity, kind: str, *, key: str | None = None, at: int | None = None,
            **fields: Any) -> SignedInstruction:
        body = InstructionBody(kind=kind, client=who.public_key, key=key or f"key-{next(self._keys)}",
                               issued_at_ms=self.now if at is None else at, **fields)
        return sign_instruction(who, body)

    def submit(self, who: PartyIdentity, legs: list[tuple[PartyIdentity, str, int]], mode: str = GROSS,
               deadline: int | None = None, **kw: Any) -> SignedInstruction:
        return self.ins(who, SUBMIT_TRADE, legs=trade_legs([(p.public_key, a, q) for p, a, q in legs]), mode=mode,
                        deadline_ms=deadline or self.now + 10 * MINUTE, **kw)

    def affirm(self, who: PartyIdentity, tid: bytes, **kw: Any) -> SignedInstruction:
        return self.ins(who, AFFIRM, trade_id=tid, **kw)

    def dispute(self, who: PartyIdentity, tid: bytes, reason: str = "wrong price") -> SignedInstruction:
        return self.ins(who, DISPUTE, trade_id=tid, reason=reason)

    def cancel(self, who: PartyIdentity, tid: bytes) -> SignedInstruction:
        return self.ins(who, CANCEL, trade_id=tid)

    def withdraw(self, who: PartyIdentity, asset: str, amount: int, **kw: Any) -> SignedInstruction:
        return self.ins(who, WITHDRAW, asset=asset, amount=amount, destination_chain="bip122:000000000019d6689c",
                        destination=kw.pop("destination", "bc1qdest"), **kw)

    def credit(self, who: PartyIdentity, asset: str, amount: int, deposit: bytes | None = None) -> Credit:
        deposit = deposit or hashlib.sha256(b"deposit %d" % next(self._deposits)).digest()
        return Credit(deposit, who.public_key, asset, amount)

    # batches
    def batch(self, *entries: Entry, dt: int = 0) -> Batch:
        return Batch(self.ledger.seq + 1, self.ledger.head, self.now + dt, "node-a", tuple(entries))

    def apply(self, *entries: Entry, dt: int = 0, verify: Any = None) -> Applied:
        batch = self.batch(*entries, dt=dt)
        applied = self.ledger.apply(batch, verify)
        self.now = batch.time_ms
        self.ledger.check_invariants()
        return applied

    def one(self, entry: Entry, dt: int = 0) -> Outcome:
        return self.apply(entry, dt=dt).outcomes[0]

    def refused(self, *entries: Entry, dt: int = 0, match: str | None = None) -> BatchRefused:
        before = self.ledger.to_snapshot()
        with pytest.raises(BatchRefused, match=match) as info:
            self.ledger.apply(self.batch(*entries, dt=dt))
        assert self.ledger.to_snapshot() == before, "a refused batch changed the replica"
        self.ledger.check_invariants()
        return info.value

    # setup
    def open(self, *who: PartyIdentity) -> None:
        outcomes = self.apply(*(self.ins(p, OPEN_ACCOUNT, label=f"party {i}") for i, p in enumerate(who))).outcomes
        assert all(o.accepted for o in outcomes), outcomes

    def fund(self, who: PartyIdentity, asset: str, amount: int) -> None:
        self.apply(self.credit(who, asset, amount))

    def trade(self, tid: bytes) -> Any:
        return self.ledger.trades[tid]

    def bal(self, who: PartyIdentity, asset: str) -> tuple[int, int]:
        """(balance, held)"""
        return self.ledger.balance(who.public_key, asset), self.ledger.held(who.public_key, asset)


def state(ledger: Ledger) -> dict[str, Any]:
    """The replica without the batch chain's own bookkeeping (seq, head, time)."""
    data = json.loads(ledger.to_snapshot())
    for k in ("seq", "head", "time_ms"):
        data.pop(k)
    return data


def dvp_legs(seller: PartyIdentity, buyer: PartyIdentity, btc: int, eth: int) -> list[tuple[PartyIdentity, str, int]]:
    return [(seller, "BTC", -btc), (buyer, "BTC", btc), (seller, "ETH", eth), (buyer, "ETH", -eth)]


def funded(*, a_btc: int = 10, b_eth: int = 1000, c_btc: int = 0, c_eth: int = 0) -> World:
    w = World()
    w.open(A, B, C)
    entries: list[Entry] = [w.credit(A, "BTC", a_btc), w.credit(B, "ETH", b_eth)]
    if c_btc:
        entries.append(w.credit(C, "BTC", c_btc))
    if c_eth:
        entries.append(w.credit(C, "ETH", c_eth))
    w.apply(*entries)
    return w


def accepted(applied: Applied) -> list[bool]:
    return [o.accepted for o in applied.outcomes]


# --------------------------------------------------------------------------- accounts and credits


def test_open_account_once_and_only_for_allowed_clients() -> None:
    w = World(dataclasses.replace(PARAMS, open_to=frozenset({A.public_key})))
    a1, a2, b1 = (w.ins(A, OPEN_ACCOUNT), w.ins(A, OPEN_ACCOUNT), w.ins(B, OPEN_ACCOUNT))
    out = w.apply(a1, a2, b1).outcomes
    assert out[0].accepted
    assert (out[1].accepted, out[1].reason) == (False, "account already open")
    assert not out[2].accepted and "may not open" in out[2].reason
    assert set(w.ledger.parties) == {A.public_key}


def test_instructions_before_an_account_are_rejected() -> None:
    w = World()
    w.open(A)
    o = w.one(w.withdraw(B, "BTC", 1))
    assert not o.accepted and "no account" in o.reason


def test_credit_moves_custody_into_the_account() -> None:
    w = World()
    w.open(A)
    applied = w.apply(w.credit(A, "BTC", 7), w.credit(A, "BTC", 3))
    assert accepted(applied) == [True, True]
    assert w.bal(A, "BTC") == (10, 0)
    assert w.ledger.totals["BTC"] == [10, 0, 0]


def test_credit_to_unknown_party_refuses_the_batch() -> None:
    w = World()
    w.open(A)
    w.refused(w.credit(A, "BTC", 1), w.credit(B, "BTC", 5), match="without an account")


def test_credit_of_unknown_asset_or_twice_refuses_the_batch() -> None:
    w = World()
    w.open(A)
    dep = w.credit(A, "BTC", 5)
    w.refused(dataclasses.replace(dep, asset="DOGE"), match="unknown asset")
    w.refused(dep, dep, match="already credited")
    w.apply(dep)
    w.refused(dataclasses.replace(dep, amount=6), match="already credited")
    assert w.bal(A, "BTC") == (5, 0)


def test_the_nodes_own_view_refuses_a_credit() -> None:
    w = World()
    w.open(A)
    dep = w.credit(A, "BTC", 5)
    before = w.ledger.to_snapshot()
    with pytest.raises(BatchRefused) as info:
        w.ledger.apply(w.batch(w.ins(A, OPEN_ACCOUNT), dep), lambda e: "retry: not at depth yet")
    assert info.value.retry and "not at depth" in info.value.reason
    with pytest.raises(BatchRefused) as info:
        w.ledger.apply(w.batch(dep), lambda e: "no such deposit")
    assert not info.value.retry
    assert w.ledger.to_snapshot() == before
    seen: list[SystemEntry] = []
    w.apply(dep, Cutoff(1), dt=CYCLE, verify=lambda e: seen.append(e))
    assert seen == [dep]  # the schedule's entries are the ledger's own business


# --------------------------------------------------------------------------- gross trades


def test_gross_trade_settles_every_leg_in_the_batch_of_the_last_affirmation() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700))
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid))
    assert w.trade(tid).status == PENDING
    assert w.bal(A, "BTC") == (10, 5) and w.bal(B, "ETH") == (1000, 0)
    before = {(p, a): w.ledger.balance(p.public_key, a) for p in (A, B) for a in ("BTC", "ETH")}
    applied = w.apply(w.affirm(B, tid))
    assert accepted(applied) == [True]
    assert w.trade(tid).status == SETTLED
    after = {(p, a): w.ledger.balance(p.public_key, a) for p in (A, B) for a in ("BTC", "ETH")}
    assert {k: after[k] - before[k] for k in after} == {(A, "BTC"): -5, (B, "BTC"): 5, (A, "ETH"): 700,
                                                        (B, "ETH"): -700}
    assert w.bal(A, "BTC") == (5, 0) and w.bal(B, "ETH") == (300, 0)
    assert {(p.public_key, a) for p in (A, B) for a in ("BTC", "ETH")} <= applied.accounts


def test_three_party_gross_trade_waits_for_everyone() -> None:
    w = funded(c_eth=50)
    legs = [(A, "BTC", -3), (B, "BTC", 3), (B, "ETH", -100), (C, "ETH", 60), (A, "ETH", 40)]
    sub = w.submit(B, legs)
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid), w.affirm(C, tid))
    assert w.trade(tid).status == PENDING and w.bal(C, "ETH") == (50, 0)  # C delivers nothing
    w.apply(w.affirm(B, tid))
    assert w.trade(tid).status == SETTLED
    assert w.bal(A, "BTC") == (7, 0) and w.bal(B, "BTC") == (3, 0)
    assert w.bal(A, "ETH") == (40, 0) and w.bal(B, "ETH") == (900, 0) and w.bal(C, "ETH") == (110, 0)


@pytest.mark.parametrize("mode", [GROSS, NET])
def test_double_spend_across_two_trades_second_affirmation_rejected_nothing_held(mode: str) -> None:
    w = funded(a_btc=5)
    t1, t2 = w.submit(A, dvp_legs(A, B, 5, 100), mode), w.submit(A, dvp_legs(A, C, 5, 100), mode)
    id1, id2 = t1.body.new_trade_id, t2.body.new_trade_id
    w.apply(t1, t2, w.affirm(A, id1))
    assert w.bal(A, "BTC") == (5, 5)
    before = state(w.ledger)
    o = w.one(w.affirm(A, id2))
    assert not o.accepted and "insufficient" in o.reason
    after = state(w.ledger)
    assert after["accounts"] == before["accounts"] and after["trades"] == before["trades"]
    assert w.trade(id2).affirmed == set() and w.bal(A, "BTC") == (5, 5)
    # the first trade's hold also keeps the balance from a withdrawal
    o = w.one(w.withdraw(A, "BTC", 1))
    assert not o.accepted and "insufficient available" in o.reason


def test_gross_affirmation_without_the_delivery_is_rejected() -> None:
    w = funded(a_btc=4)
    sub = w.submit(A, dvp_legs(A, B, 5, 100))
    tid = sub.body.new_trade_id
    out = w.apply(sub, w.affirm(B, tid), w.affirm(A, tid)).outcomes
    assert [o.accepted for o in out] == [True, True, False]
    assert w.trade(tid).status == PENDING and w.trade(tid).affirmed == {B.public_key}
    assert w.bal(A, "BTC") == (4, 0) and w.bal(B, "ETH") == (1000, 100)


def test_affirmation_rules() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 1, 10))
    tid = sub.body.new_trade_id
    out = w.apply(sub, w.affirm(C, tid), w.affirm(A, tid), w.affirm(A, tid),
                  w.affirm(A, hashlib.sha256(b"nothing").digest())).outcomes
    assert [(o.accepted, o.reason) for o in out[1:]] == [
        (False, "not a party to this trade"), (True, ""), (False, "already affirmed"), (False, "no such trade")]


# --------------------------------------------------------------------------- idempotency


def test_replayed_instruction_gets_the_first_outcome_and_changes_nothing() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), key="trade-1")
    tid = sub.body.new_trade_id
    first = w.apply(sub, w.affirm(A, tid, key="aff-1")).outcomes
    before = state(w.ledger)
    again = w.apply(sub, w.affirm(A, tid, key="aff-1", at=w.now + 5), dt=10).outcomes  # a re-signed retry too
    assert [o.duplicate for o in again] == [True, True]
    assert [(o.accepted, o.reason, o.ref) for o in again] == [(o.accepted, o.reason, o.ref) for o in first]
    assert state(w.ledger) == before
    assert w.bal(A, "BTC") == (10, 5)  # held once, not twice


def test_same_key_different_body_is_rejected_and_the_record_kept() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), key="trade-1")
    w.apply(sub)
    record = w.ledger.idempotency[(A.public_key, "trade-1")]
    other = w.submit(A, dvp_legs(A, B, 6, 700), key="trade-1")
    o = w.one(other)
    assert not o.accepted and not o.duplicate and "already used" in o.reason
    assert other.body.new_trade_id not in w.ledger.trades
    assert w.ledger.idempotency[(A.public_key, "trade-1")] == record
    # and the genuine retry still gets the first outcome
    assert w.one(sub).duplicate and w.ledger.idempotency[(A.public_key, "trade-1")] == record


def test_keys_are_per_client() -> None:
    w = funded()
    a_ins, b_ins = w.withdraw(A, "BTC", 1, key="same"), w.withdraw(B, "ETH", 1, key="same")
    out = w.apply(a_ins, b_ins).outcomes
    assert [(o.accepted, o.duplicate) for o in out] == [(True, False), (True, False)]


def test_a_rejected_instruction_stays_rejected_under_its_key() -> None:
    """The first outcome is the outcome: funding the account later does not revive the key."""
    w = funded(a_btc=0)
    wd = w.withdraw(A, "BTC", 5, key="w-1")
    assert not w.one(wd).accepted
    w.fund(A, "BTC", 5)
    o = w.one(wd)
    assert o.duplicate and not o.accepted and w.bal(A, "BTC") == (5, 0)


def test_stale_and_future_instructions_are_rejected() -> None:
    w = funded()
    w.now += 20 * MINUTE
    stale = w.withdraw(A, "BTC", 1, at=w.now - PARAMS.max_instruction_age_ms - 1)
    future = w.withdraw(A, "BTC", 1, at=w.now + PARAMS.max_instruction_ahead_ms + 1)
    edge = w.withdraw(A, "BTC", 1, at=w.now - PARAMS.max_instruction_age_ms)
    out = w.apply(stale, future, edge).outcomes
    assert [o.accepted for o in out] == [False, False, True]
    assert "stale" in out[0].reason and "future" in out[1].reason


# --------------------------------------------------------------------------- deadlines, cancels, finality


def test_gross_trade_past_its_deadline_is_unwound() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), deadline=w.now + MINUTE)
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid))
    assert w.bal(A, "BTC") == (10, 5)
    w.apply(dt=MINUTE - 1)
    assert w.trade(tid).status == PENDING
    late = w.affirm(B, tid, at=w.now + 1)
    applied = w.apply(late, dt=1)  # the deadline itself: unwound before the affirmation is looked at
    assert w.trade(tid).status == EXPIRED and "deadline" in w.trade(tid).note
    assert not applied.outcomes[0].accepted and "expired" in applied.outcomes[0].reason
    assert w.bal(A, "BTC") == (10, 0) and w.bal(B, "ETH") == (1000, 0)


def test_net_trade_affirmed_but_never_cut_is_unwound_at_its_deadline() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET, deadline=w.now + 3 * MINUTE)
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid), w.affirm(B, tid))
    assert w.trade(tid).status == AFFIRMED and w.bal(A, "BTC") == (10, 5) and w.bal(B, "ETH") == (1000, 700)
    w.apply(dt=3 * MINUTE)  # nobody cut the cycle
    assert w.trade(tid).status == EXPIRED
    assert w.bal(A, "BTC") == (10, 0) and w.bal(B, "ETH") == (1000, 0)
    o = w.one(w.affirm(A, tid))
    assert not o.accepted and "expired" in o.reason


def test_submission_checks() -> None:
    w = funded()
    past = w.submit(A, dvp_legs(A, B, 1, 1), deadline=w.now)
    stranger = w.submit(A, dvp_legs(A, D, 1, 1))
    sol = w.submit(A, [(A, "SOL", -1), (B, "SOL", 1)])
    out = w.apply(past, stranger, sol).outcomes
    assert [o.accepted for o in out] == [False, False, False]
    assert "deadline" in out[0].reason and "no account" in out[1].reason and "SOL" in out[2].reason
    assert not w.ledger.trades


def test_cancel_releases_every_hold_and_is_final() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET)
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid))
    out = w.apply(w.cancel(C, tid), w.cancel(B, tid), w.affirm(B, tid), w.cancel(A, tid)).outcomes
    assert [(o.accepted, o.reason) for o in out] == [
        (False, "not a party to this trade"), (True, ""), (False, "trade is cancelled"),
        (False, "only a trade not yet affirmed by every party can be cancelled (it is cancelled)")]
    assert w.trade(tid).status == CANCELLED and w.trade(tid).affirmed == set()
    assert w.bal(A, "BTC") == (10, 0)


def test_fully_affirmed_net_trade_cannot_be_cancelled_only_disputed() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET)
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid), w.affirm(B, tid))
    o = w.one(w.cancel(A, tid))
    assert not o.accepted and w.trade(tid).status == AFFIRMED
    out = w.apply(w.dispute(C, tid), w.dispute(A, tid)).outcomes
    assert [o.accepted for o in out] == [False, True] and "not a party" in out[0].reason
    assert w.trade(tid).status == DISPUTED and w.bal(A, "BTC") == (10, 0) and w.bal(B, "ETH") == (1000, 0)


def test_settled_is_final() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700))
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid), w.affirm(B, tid))
    before = state(w.ledger)
    out = w.apply(w.dispute(A, tid), w.dispute(B, tid), w.cancel(A, tid), w.affirm(A, tid)).outcomes
    assert not any(o.accepted for o in out)
    after = state(w.ledger)
    assert after["trades"] == before["trades"] and after["accounts"] == before["accounts"]
    assert w.trade(tid).status == SETTLED


def test_pending_trade_cannot_be_disputed() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET)
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid))
    o = w.one(w.dispute(B, tid))
    assert not o.accepted and w.trade(tid).status == PENDING and w.bal(A, "BTC") == (10, 5)


# --------------------------------------------------------------------------- netting cycles


def _cycle(w: World) -> tuple[Applied, Applied]:
    """Cut and finalise the open cycle at the earliest times the schedule allows."""
    number = w.ledger.open_cycle
    opened = w.ledger.cycles[number].opened_ms
    cut = w.apply(Cutoff(number), dt=max(0, opened + CYCLE - w.now))
    fin = w.apply(Finalize(number), dt=WINDOW)
    return cut, fin


def test_net_cycle_settles_every_trade_together() -> None:
    w = funded(c_btc=10, c_eth=500)
    t1 = w.submit(A, dvp_legs(A, B, 4, 400), NET)
    t2 = w.submit(C, dvp_legs(C, B, 3, 300), NET)
    ids = [t1.body.new_trade_id, t2.body.new_trade_id]
    w.apply(t1, t2, *(w.affirm(p, ids[0]) for p in (A, B)), *(w.affirm(p, ids[1]) for p in (B, C)))
    cut = w.apply(Cutoff(1), dt=CYCLE)
    c1 = w.ledger.cycles[1]
    assert sorted(ids) == c1.cut and all(w.trade(t).status == CUT for t in ids)
    assert w.bal(B, "ETH") == (1000, 700)  # nothing moves at the cut-off
    fin = w.apply(Finalize(1), dt=WINDOW)
    assert fin.finalized == 1 and cut.finalized == 0
    c1 = w.ledger.cycles[1]  # records are copied on write: read it again
    assert all(w.trade(t).status == SETTLED for t in ids) and c1.settled == sorted(ids) and c1.cut == []
    assert w.bal(A, "BTC") == (6, 0) and w.bal(C, "BTC") == (7, 0) and w.bal(B, "BTC") == (7, 0)
    assert w.bal(B, "ETH") == (300, 0) and w.bal(A, "ETH") == (400, 0) and w.bal(C, "ETH") == (800, 0)
    assert c1.net[(B.public_key, "ETH")] == -700 and c1.net[(B.public_key, "BTC")] == 7
    assert w.ledger.open_cycle == 2 and w.ledger.awaiting_final == 0


def test_netting_needs_only_the_net_debit_but_gross_needs_the_whole_delivery() -> None:
    """A sells 10 BTC to B and buys 8 BTC from C in one cycle: holding 2 BTC is enough."""
    w = funded(a_btc=2, c_btc=8)
    w.fund(A, "ETH", 1000)
    buy = w.submit(A, [(C, "BTC", -8), (A, "BTC", 8), (C, "ETH", 800), (A, "ETH", -800)], NET)
    sell = w.submit(A, dvp_legs(A, B, 10, 1000), NET)
    gross_sell = w.submit(A, dvp_legs(A, B, 10, 1000), GROSS)
    bid, sid, gid = (x.body.new_trade_id for x in (buy, sell, gross_sell))
    out = w.apply(buy, sell, gross_sell, w.affirm(A, bid), w.affirm(A, sid), w.affirm(A, gid)).outcomes
    assert [o.accepted for o in out[3:]] == [True, True, False]
    assert "insufficient available BTC" in out[5].reason
    assert w.bal(A, "BTC") == (2, 2)
    w.apply(w.affirm(C, bid), w.affirm(B, sid))
    _cycle(w)
    assert w.trade(bid).status == SETTLED and w.trade(sid).status == SETTLED
    assert w.bal(A, "BTC") == (0, 0) and w.bal(B, "BTC") == (10, 0) and w.bal(C, "BTC") == (0, 0)
    assert w.ledger.cycles[1].net[(A.public_key, "BTC")] == -2


@pytest.mark.parametrize("sale_first", [True, False])
def test_finalize_settles_a_net_position_whatever_the_order_of_its_trades(sale_first: bool) -> None:
    """A holds 2 BTC, buys 8 and sells 10 in the cycle. The finalisation moves each account's net
    once: applied trade by trade, the sale (if its id sorts first) took A's balance to -8 and the
    ledger refused every Finalize of the cycle for ever."""
    for attempt in range(64):
        w = funded(a_btc=2, c_btc=8)
        w.fund(A, "ETH", 1000)
        buy = w.submit(A, [(C, "BTC", -8), (A, "BTC", 8), (C, "ETH", 800), (A, "ETH", -800)], NET,
                       reference=f"try {attempt}")
        sell = w.submit(A, dvp_legs(A, B, 10, 1000), NET, reference=f"try {attempt}")
        bid, sid = buy.body.new_trade_id, sell.body.new_trade_id
        if (sid < bid) == sale_first:
            break
    w.apply(buy, sell, w.affirm(A, bid), w.affirm(A, sid), w.affirm(B, sid), w.affirm(C, bid))
    _, fin = _cycle(w)
    assert fin.finalized == 1 and w.ledger.cycles[1].settled == sorted([bid, sid])
    assert w.bal(A, "BTC") == (0, 0) and w.bal(A, "ETH") == (1200, 0) and w.bal(B, "BTC") == (10, 0)
    assert w.ledger.accounts[(A.public_key, "BTC")] == (0, 0, 0, 0)


def test_net_affirmation_beyond_the_net_position_is_rejected() -> None:
    w = funded(a_btc=2, c_btc=8)
    buy = w.submit(A, [(C, "BTC", -8), (A, "BTC", 8), (C, "ETH", 800), (A, "ETH", -800)], NET)
    sell = w.submit(A, dvp_legs(A, B, 11, 1000), NET)
    w.fund(A, "ETH", 800)
    out = w.apply(buy, sell, w.affirm(A, buy.body.new_trade_id), w.affirm(A, sell.body.new_trade_id)).outcomes
    assert [o.accepted for o in out] == [True, True, True, False] and "net position" in out[3].reason
    assert w.bal(A, "BTC") == (2, 0)


def test_counterparty_that_never_affirms_rolls_the_dependent_trade_then_deadline_unwinds() -> None:
    """A sells 10 BTC it expects to buy from C; C never affirms. A's sale fails at every cut-off
    (rolls, B's hold kept), the unaffirmed buy stays pending, and both unwind at their deadlines."""
    w = funded(a_btc=0, c_btc=10)
    w.fund(A, "ETH", 1000)
    deadline = w.now + 2 * CYCLE + CYCLE // 2
    buy = w.submit(A, [(C, "BTC", -10), (A, "BTC", 10), (C, "ETH", 1000), (A, "ETH", -1000)], NET, deadline)
    sell = w.submit(A, dvp_legs(A, B, 10, 900), NET, deadline)
    bid, sid = buy.body.new_trade_id, sell.body.new_trade_id
    out = w.apply(buy, sell, w.affirm(A, bid), w.affirm(A, sid), w.affirm(B, sid)).outcomes
    assert all(o.accepted for o in out)
    _cycle(w)
    c1 = w.ledger.cycles[1]
    assert c1.cut == [] and c1.rolled == [sid] and c1.settled == []
    assert w.trade(sid).status == AFFIRMED and w.trade(sid).rolled == 1 and w.trade(bid).status == PENDING
    assert w.bal(B, "ETH") == (1000, 900) and w.bal(A, "BTC") == (0, 0) and w.bal(C, "BTC") == (10, 0)
    _cycle(w)
    assert w.ledger.cycles[2].rolled == [sid] and w.trade(sid).rolled == 2
    w.apply(dt=deadline - w.now)
    assert w.trade(sid).status == EXPIRED and w.trade(bid).status == EXPIRED
    assert w.bal(B, "ETH") == (1000, 0) and w.bal(A, "ETH") == (1000, 0)
    assert w.ledger.accounts[(A.public_key, "BTC")][2] == 0


def test_circular_trades_net_to_zero_and_a_missing_link_fails_the_whole_chain() -> None:
    """A -> B -> C -> A, 5 BTC each way, nobody holding BTC: the nets are zero and all settle. Without
    C's affirmation of the last link, A is short, its sale fails, which leaves B short, whose sale
    fails too - the drop loop cascades, and no leg of either moves."""
    w = World()
    w.open(A, B, C)
    w.apply(*(w.credit(p, "ETH", 100) for p in (A, B, C)))
    links = [w.submit(x, dvp_legs(x, y, 5, 10), NET) for x, y in ((A, B), (B, C), (C, A))]
    ids = [x.body.new_trade_id for x in links]
    # each party affirms its buy first: its sale is then covered by the buy (nets to zero)
    out = w.apply(*links, *(w.affirm(q, ids[i]) for i, q in enumerate((B, C, A))),
                  *(w.affirm(p, ids[i]) for i, p in enumerate((A, B, C)))).outcomes
    assert all(o.accepted for o in out)
    assert all(w.trade(t).status == AFFIRMED for t in ids)
    _cycle(w)
    assert all(w.trade(t).status == SETTLED for t in ids)
    assert all(w.bal(p, "BTC") == (0, 0) and w.bal(p, "ETH") == (100, 0) for p in (A, B, C))

    w2 = World()
    w2.open(A, B, C)
    w2.apply(*(w2.credit(p, "ETH", 100) for p in (A, B, C)))
    links = [w2.submit(x, dvp_legs(x, y, 5, 10), NET) for x, y in ((A, B), (B, C), (C, A))]
    ids = [x.body.new_trade_id for x in links]
    out = w2.apply(*links, w2.affirm(A, ids[2]), w2.affirm(A, ids[0]), w2.affirm(B, ids[0]), w2.affirm(B, ids[1]),
                   w2.affirm(C, ids[1])).outcomes  # C never affirms its sale to A
    assert all(o.accepted for o in out)
    before = {(p, a): w2.bal(p, a) for p in (A, B, C) for a in ("BTC", "ETH")}
    w2.apply(Cutoff(1), dt=CYCLE)
    c1 = w2.ledger.cycles[1]
    assert c1.cut == [] and sorted(c1.rolled) == sorted(ids[:2])
    assert c1.rolled == [ids[0], ids[1]]  # A's failure first, then the B it left short
    assert {(p, a): w2.bal(p, a) for p in (A, B, C) for a in ("BTC", "ETH")} == before


def test_an_unmatched_buy_does_not_free_a_net_hold() -> None:
    """Netting credits a party's buys against its sales only once the buy is matched (every party
    affirmed it). A buy whose seller never affirms frees nothing: the held BTC cannot be withdrawn."""
    w = funded(a_btc=10, c_btc=0)
    w.fund(A, "ETH", 100)
    sale = w.submit(A, dvp_legs(A, B, 10, 500), NET)
    phantom = w.submit(A, [(C, "BTC", -10), (A, "BTC", 10), (C, "ETH", 1), (A, "ETH", -1)], NET)
    sid, pid = sale.body.new_trade_id, phantom.body.new_trade_id
    w.apply(sale, w.affirm(A, sid), w.affirm(B, sid))
    assert w.bal(A, "BTC") == (10, 10)
    out = w.apply(phantom, w.affirm(A, pid), w.withdraw(A, "BTC", 10)).outcomes
    assert [o.accepted for o in out] == [True, True, False] and "insufficient" in out[2].reason
    assert w.bal(A, "BTC") == (10, 10)
    w.apply(Cutoff(1), dt=CYCLE)
    assert w.ledger.cycles[1].cut == [sid] and w.ledger.cycles[1].rolled == []


def test_latest_affirmed_delivering_trade_fails_first() -> None:
    w = funded(a_btc=10)
    t1, t2, t3 = (w.submit(A, dvp_legs(A, B, q, 1), NET) for q in (4, 4, 4))
    ids = [t.body.new_trade_id for t in (t1, t2, t3)]
    # A affirms all three (12 > 10 is fine only while B has not: A's third hold is over the balance)
    out = w.apply(t1, t2, t3, w.affirm(A, ids[0]), w.affirm(A, ids[1]), w.affirm(A, ids[2])).outcomes
    assert [o.accepted for o in out[3:]] == [True, True, False]
    w.apply(w.affirm(B, ids[1]))
    w.apply(w.affirm(B, ids[0]))
    w.apply(w.withdraw(A, "BTC", 2))  # available: 10 - 8 = 2; now both trades cannot be covered
    assert w.bal(A, "BTC") == (8, 8)
    w.apply(w.withdraw(A, "BTC", 1))  # refused by the ledger: nothing left available
    assert w.bal(A, "BTC") == (8, 8)
    w.apply(Cutoff(1), dt=CYCLE)
    assert w.ledger.cycles[1].cut == sorted(ids[:2]) and w.ledger.cycles[1].rolled == []


def test_dispute_in_the_window_leaves_the_cut_and_both_reaffirm_into_the_next_cycle() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET)
    other = w.submit(A, dvp_legs(A, B, 1, 100), NET)
    tid, oid = sub.body.new_trade_id, other.body.new_trade_id
    w.apply(sub, other, *(w.affirm(p, t) for p in (A, B) for t in (tid, oid)))
    w.apply(Cutoff(1), dt=CYCLE)
    assert w.trade(tid).status == CUT
    o = w.one(w.dispute(B, tid, "price"), dt=WINDOW // 2)
    assert o.accepted
    c1 = w.ledger.cycles[1]
    t = w.trade(tid)
    assert (t.status, t.affirmed, t.note) == (DISPUTED, set(), "price")
    assert c1.cut == [oid] and c1.disputed == [tid]
    assert w.bal(A, "BTC") == (10, 1) and w.bal(B, "ETH") == (1000, 100)  # only the other trade's holds
    w.apply(Finalize(1), dt=WINDOW // 2)
    assert w.trade(oid).status == SETTLED and w.trade(tid).status == DISPUTED
    assert w.bal(A, "BTC") == (9, 0) and w.bal(B, "ETH") == (900, 0)
    w.apply(w.affirm(A, tid))
    assert w.trade(tid).status == DISPUTED  # one side is not enough
    w.apply(w.affirm(B, tid))
    assert w.trade(tid).status == AFFIRMED
    _cycle(w)
    assert w.trade(tid).status == SETTLED and w.trade(tid).cycle == 2
    assert w.bal(A, "BTC") == (4, 0) and w.bal(B, "BTC") == (6, 0)


def test_dispute_that_leaves_another_party_short_rolls_that_partys_trade_whole() -> None:
    """A sells to B the BTC it buys from C in the same cycle (A holds none). C disputes its trade
    in the window: at finalisation A is short, so A's sale to B fails and rolls - no leg of it
    moves, B keeps its hold - while a third, covered trade settles."""
    w = funded(a_btc=0, c_btc=11)
    w.fund(A, "ETH", 1000)
    buy = w.submit(A, [(C, "BTC", -10), (A, "BTC", 10), (C, "ETH", 1000), (A, "ETH", -1000)], NET)
    sell = w.submit(A, dvp_legs(A, B, 10, 900), NET)
    side = w.submit(C, [(C, "BTC", -1), (B, "BTC", 1), (C, "ETH", 10), (B, "ETH", -10)], NET)
    ids = bid, sid, xid = [x.body.new_trade_id for x in (buy, sell, side)]
    w.apply(buy, sell, side, *(w.affirm(p, bid) for p in (A, C)), *(w.affirm(p, sid) for p in (A, B)),
            *(w.affirm(p, xid) for p in (B, C)))
    w.apply(Cutoff(1), dt=CYCLE)
    assert w.ledger.cycles[1].cut == sorted(ids)
    balances = {(p, a): w.bal(p, a)[0] for p in (A, B, C) for a in ("BTC", "ETH")}
    w.apply(w.dispute(C, bid))
    w.apply(Finalize(1), dt=WINDOW)
    c1 = w.ledger.cycles[1]
    assert c1.settled == [xid] and c1.rolled == [sid] and c1.disputed == [bid]
    assert w.trade(sid).status == AFFIRMED and w.trade(sid).rolled == 1
    moved = {k: w.bal(*k)[0] - v for k, v in balances.items()}
    assert moved == {(A, "BTC"): 0, (A, "ETH"): 0, (B, "BTC"): 1, (B, "ETH"): -10, (C, "BTC"): -1, (C, "ETH"): 10}
    assert w.bal(B, "ETH") == (990, 900)  # still promised to the rolled sale


def test_cutoff_and_finalize_before_their_time_refuse_the_whole_batch() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET)
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid))
    opened = w.ledger.cycles[1].opened_ms
    early = opened + CYCLE - 1 - w.now
    w.refused(w.affirm(B, tid), Cutoff(1), dt=early, match="not due")
    w.refused(Finalize(1), dt=CYCLE, match="no cycle")
    w.refused(Cutoff(2), dt=CYCLE, match="cycle 1 is open")
    w.apply(w.affirm(B, tid), Cutoff(1), dt=early + 1)
    w.refused(w.withdraw(A, "BTC", 1), Finalize(1), dt=WINDOW - 1, match="dispute window")
    w.refused(Cutoff(2), dt=CYCLE, match="not finalised")
    w.refused(Finalize(2), dt=WINDOW, match="finalisation of cycle 2")
    w.refused(Finalize(1), w.withdraw(A, "BTC", 1), dt=WINDOW, match="last entry")
    w.refused(Finalize(1), Finalize(1), dt=WINDOW, match="last entry")
    w.apply(w.withdraw(A, "BTC", 1), Finalize(1), dt=WINDOW)
    assert w.trade(tid).status == SETTLED and w.bal(A, "BTC") == (4, 0)
    w.refused(Finalize(1), dt=CYCLE, match="no cycle")
    w.refused(Cutoff(1), dt=CYCLE, match="cycle 2 is open")


def test_cycle_clock_runs_from_the_previous_cutoff() -> None:
    w = funded()
    w.apply(Cutoff(1), dt=CYCLE + 5)
    cut_at = w.now
    assert w.ledger.cycles[2].opened_ms == cut_at and w.ledger.cutoff_due(w.now + 10 * CYCLE) is False
    assert w.ledger.finalize_due(cut_at + WINDOW) and not w.ledger.finalize_due(cut_at + WINDOW - 1)
    w.apply(Finalize(1), dt=WINDOW)
    assert not w.ledger.cutoff_due(cut_at + CYCLE - 1) and w.ledger.cutoff_due(cut_at + CYCLE)
    w.refused(Cutoff(2), dt=cut_at + CYCLE - 1 - w.now)
    w.apply(Cutoff(2), dt=cut_at + CYCLE - w.now)


# --------------------------------------------------------------------------- deadlines through cycles


def test_cut_trade_disputed_after_its_deadline_is_unwound() -> None:
    """The trade was cut before its deadline, which passed in the dispute window; once disputed it
    can no longer be cut, so it is unwound at the next batch - and cannot be re-affirmed meanwhile."""
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET, deadline=w.now + CYCLE + WINDOW // 2)
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid), w.affirm(B, tid))
    w.apply(Cutoff(1), dt=CYCLE)
    w.apply(dt=WINDOW // 2 + 1)  # past the deadline, still cut
    assert w.trade(tid).status == CUT
    out = w.apply(w.dispute(A, tid), w.affirm(A, tid), w.affirm(B, tid)).outcomes
    assert [o.accepted for o in out] == [True, False, False] and "deadline" in out[1].reason
    w.apply(dt=1)
    assert w.trade(tid).status == EXPIRED and w.bal(A, "BTC") == (10, 0)
    w.apply(Finalize(1), dt=WINDOW)
    w.apply(w.affirm(A, tid), w.affirm(B, tid))
    _cycle(w)
    assert w.trade(tid).status == EXPIRED and w.bal(A, "BTC") == (10, 0) and w.bal(B, "BTC") == (0, 0)


def test_trade_rolled_at_finalize_after_its_deadline_is_unwound_not_settled_later() -> None:
    w = funded(a_btc=0, c_btc=10)
    w.fund(A, "ETH", 1000)
    buy = w.submit(A, [(C, "BTC", -10), (A, "BTC", 10), (C, "ETH", 1000), (A, "ETH", -1000)], NET)
    sell = w.submit(A, dvp_legs(A, B, 10, 900), NET, deadline=w.now + CYCLE + WINDOW // 2)
    bid, sid = buy.body.new_trade_id, sell.body.new_trade_id
    w.apply(buy, sell, *(w.affirm(p, bid) for p in (A, C)), *(w.affirm(p, sid) for p in (A, B)))
    w.apply(Cutoff(1), dt=CYCLE)
    w.apply(w.dispute(C, bid), dt=WINDOW // 2 + 1)  # past the sale's deadline
    w.apply(Finalize(1), dt=WINDOW)
    assert w.trade(sid).status == AFFIRMED and w.ledger.cycles[1].rolled == [sid]
    w.apply(w.credit(A, "BTC", 10))  # A could now deliver ...
    assert w.trade(sid).status == EXPIRED  # ... but the trade is past its deadline
    _cycle(w)
    assert w.trade(sid).status == EXPIRED and w.bal(A, "BTC") == (10, 0) and w.bal(B, "ETH") == (1000, 0)


def test_replica_restored_mid_window_stays_identical_through_deadlines() -> None:
    """A replica loaded from a snapshot rebuilds its deadline schedule; it must unwind exactly what
    the replica that never stopped unwinds."""
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET, deadline=w.now + CYCLE + WINDOW // 2)
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid), w.affirm(B, tid))
    w.apply(Cutoff(1), dt=CYCLE)
    restored = Ledger.from_snapshot(w.ledger.to_snapshot(), PARAMS)
    batches = [w.batch(w.dispute(B, tid), dt=WINDOW // 4)]
    w.ledger.apply(batches[-1])
    w.now = batches[-1].time_ms
    for dt in (WINDOW // 4 + 1, WINDOW):
        batches.append(w.batch(dt=dt))
        w.ledger.apply(batches[-1])
        w.now = batches[-1].time_ms
    for b in batches:
        restored.apply(b)
    assert w.trade(tid).status == EXPIRED
    assert restored.to_snapshot() == w.ledger.to_snapshot()


# --------------------------------------------------------------------------- withdrawals


def test_withdrawal_debits_available_only() -> None:
    w = funded()
    sub = w.submit(A, dvp_legs(A, B, 6, 700))
    tid = sub.body.new_trade_id
    w.apply(sub, w.affirm(A, tid))
    too_much, ok = w.withdraw(A, "BTC", 5), w.withdraw(A, "BTC", 4)
    out = w.apply(too_much, ok).outcomes
    assert [o.accepted for o in out] == [False, True]
    wid = ok.body.withdrawal_id
    assert out[1].ref == wid and w.ledger.withdrawals[wid].status == "pending"
    assert w.bal(A, "BTC") == (6, 6) and w.ledger.totals["BTC"] == [10, 4, 0]
    w.apply(w.affirm(B, tid))
    assert w.trade(tid).status == SETTLED and w.bal(A, "BTC") == (0, 0)


def test_withdrawal_paid_and_returned() -> None:
    w = funded()
    w1, w2 = w.withdraw(A, "BTC", 3), w.withdraw(A, "BTC", 2)
    w.apply(w1, w2)
    id1, id2 = w1.body.withdrawal_id, w2.body.withdrawal_id
    assert w.bal(A, "BTC") == (5, 0) and w.ledger.totals["BTC"] == [10, 5, 0]
    out = w.apply(WithdrawalPaid(id1, "ab" * 32), WithdrawalReturned(id2, "unpayable")).outcomes
    assert [o.kind for o in out] == ["withdrawal-paid", "withdrawal-returned"]
    assert w.ledger.withdrawals[id1].status == "paid" and w.ledger.withdrawals[id1].txid == "ab" * 32
    assert w.ledger.withdrawals[id2].status == "returned"
    assert w.bal(A, "BTC") == (7, 0) and w.ledger.totals["BTC"] == [10, 0, 3]
    w.refused(WithdrawalPaid(id1, "cd" * 32), match="not pending")
    w.refused(WithdrawalReturned(id1, "again"), match="not pending")
    w.refused(WithdrawalPaid(id2, "cd" * 32), match="not pending")
    w.refused(WithdrawalPaid(b"\x00" * 32, "cd" * 32), match="not pending")


def test_withdrawal_of_an_unknown_asset_or_more_than_available() -> None:
    w = funded()
    out = w.apply(w.withdraw(A, "SOL", 1), w.withdraw(A, "BTC", 11), w.withdraw(B, "BTC", 1)).outcomes
    assert not any(o.accepted for o in out)
    assert w.ledger.totals["BTC"][1] == 0 and not w.ledger.withdrawals


# --------------------------------------------------------------------------- batches as a whole


def test_batch_refused_midway_leaves_the_replica_byte_identical() -> None:
    w = funded()
    dep = w.credit(C, "BTC", 4)
    w.apply(dep)
    sub = w.submit(A, dvp_legs(A, B, 5, 700))
    tid = sub.body.new_trade_id
    entries: list[Entry] = [w.ins(D, OPEN_ACCOUNT), sub, w.affirm(A, tid), w.affirm(B, tid), w.withdraw(A, "BTC", 5),
                            w.credit(D, "ETH", 9), w.cancel(A, tid), dep]
    w.refused(*entries, dt=5, match="already credited")
    assert D.public_key not in w.ledger.parties and tid not in w.ledger.trades
    applied = w.apply(*entries[:-1], dt=5)  # the same entries without the bad one: all apply
    assert accepted(applied) == [True, True, True, True, True, True, False]
    assert w.trade(tid).status == SETTLED and w.bal(A, "BTC") == (0, 0) and w.bal(D, "ETH") == (9, 0)


def test_batch_chain_is_checked() -> None:
    w = funded()
    seq, head = w.ledger.seq, w.ledger.head
    ahead = dataclasses.replace(w.batch(), seq=seq + 2)
    with pytest.raises(BatchRefused) as info:
        w.ledger.apply(ahead)
    assert info.value.retry
    with pytest.raises(BatchRefused) as info:
        w.ledger.apply(dataclasses.replace(w.batch(), seq=seq))
    assert not info.value.retry
    with pytest.raises(BatchRefused, match="previous hash"):
        w.ledger.apply(dataclasses.replace(w.batch(), prev_hash=b"\x00" * 32))
    w.refused(dt=-1, match="backwards")
    assert (w.ledger.seq, w.ledger.head) == (seq, head)
    applied = w.apply()
    assert (w.ledger.seq, w.ledger.head) == (seq + 1, applied.hash)


def test_snapshot_round_trip() -> None:
    w = funded(c_btc=3)
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET, reference="ünïcode desk")
    tid = sub.body.new_trade_id
    g = w.submit(C, dvp_legs(C, B, 1, 10))
    w.apply(sub, g, w.affirm(A, tid), w.affirm(B, tid), w.affirm(C, g.body.new_trade_id), w.withdraw(A, "BTC", 1))
    w.apply(Cutoff(1), dt=CYCLE)
    raw = w.ledger.to_snapshot()
    restored = Ledger.from_snapshot(raw, PARAMS)
    assert restored.to_snapshot() == raw
    restored.check_invariants()
    nxt = w.batch(w.affirm(B, g.body.new_trade_id), Finalize(1), dt=WINDOW)
    assert restored.apply(nxt).outcomes == w.ledger.apply(nxt).outcomes
    assert restored.to_snapshot() == w.ledger.to_snapshot()
    with pytest.raises(ValueError, match="other ledger parameters"):
        Ledger.from_snapshot(raw, dataclasses.replace(PARAMS, cycle_ms=1))


def test_two_replicas_agree_on_outcomes_and_state() -> None:
    w = funded(c_btc=3)
    other = Ledger.from_snapshot(w.ledger.to_snapshot(), PARAMS)
    sub = w.submit(A, dvp_legs(A, B, 5, 700), NET)
    tid = sub.body.new_trade_id
    batches = [w.batch(sub, w.affirm(A, tid), w.affirm(B, tid))]
    batches.append(dataclasses.replace(batches[0], seq=batches[0].seq + 1, prev_hash=batches[0].hash,
                                       time_ms=w.now + CYCLE, entries=(Cutoff(1),)))
    batches.append(dataclasses.replace(batches[1], seq=batches[1].seq + 1, prev_hash=batches[1].hash,
                                       time_ms=w.now + CYCLE + WINDOW, entries=(Finalize(1),)))
    for b in batches:
        assert w.ledger.apply(b).outcomes == other.apply(b).outcomes
    assert w.ledger.to_snapshot() == other.to_snapshot()
    assert w.ledger.trades[tid].status == SETTLED
