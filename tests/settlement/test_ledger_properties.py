"""Property tests of the settlement ledger: random histories, including deliberately bad batches.

A hypothesis state machine plays a coordinator that orders random batches of opens, credits, gross
and net trades among 2-4 parties in 1-2 assets, affirmations (some by non-parties, some beyond the
balance), cancellations, disputes, withdrawals and their payouts, idempotent replays (also re-signed,
also with another body under the same key), stale instructions, and cut-offs and finalisations
with advancing time - some early, some of the wrong cycle, some not last in their batch. Three
replicas apply every batch: the main one, one fed the *decoded* signed batch, and one restored from
a snapshot taken mid-way. After every batch:

* the conservation law and hold bookkeeping hold (``Ledger.check_invariants``), no balance is negative;
* **no trade moves one leg without the others**: every account's change in the batch is exactly
  the sum of the complete legs of the trades that became SETTLED in it, plus credits, withdrawals
  and returned withdrawals;
* a trade settles only with every party's affirmation, net trades only at a finalisation of a cycle
  cut before their deadline, gross ones before it; SETTLED, CANCELLED and EXPIRED never change;
* a live trade whose deadline the batch time reached is unwound;
* an idempotency key gets its first outcome back (``duplicate``), a different body under it is
  rejected, and the ledger's record of it never changes;
* the replicas agree on every outcome and their snapshots are byte-identical; a refused batch is
  refused by all and leaves every snapshot unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fusion_prime.bridge.settlement.batch import (
    Batch,
    Credit,
    Cutoff,
    Entry,
    Finalize,
    WithdrawalPaid,
    WithdrawalReturned,
    decode_batch,
    sign_batch,
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
    Leg,
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
)
from fusion_prime.protocol.identity import PartyIdentity

PARTIES = [PartyIdentity.from_secret(bytes([i + 1]) * 32) for i in range(5)]  # the fifth never opens
OPENABLE = PARTIES[:4]
ASSETS = ("BTC", "ETH")
CYCLE, WINDOW = 1_000, 400
PARAMS = LedgerParams(assets=ASSETS, cycle_ms=CYCLE, dispute_window_ms=WINDOW, max_instruction_age_ms=5_000,
                      max_instruction_ahead_ms=1_000)
NODE = PartyIdentity.from_secret(b"\x0c" * 32)
ROSTER = {"node-a": NODE.public_key}
T0 = 1_700_000_000_000
TERMINAL = (SETTLED, CANCELLED, EXPIRED)

small_dt = st.sampled_from([0, 0, 1, 7, 50, 120, 333, 700])


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.main = Ledger(PARAMS)
        self.decoded = Ledger(PARAMS)  # fed the signed batch's bytes, decoded and verified
        self.restored: Ledger | None = None  # from a snapshot of main taken mid-way
        self.now = T0
        self.keys = itertools.count(1)
        self.deposit_no = itertools.count(1)
        self.trade_ids: list[bytes] = []
        self.withdrawal_ids: list[bytes] = []
        self.deposits: list[Credit] = []
        self.sent: list[SignedInstruction] = []
        self.first: dict[tuple[bytes, str], tuple[bytes, bool, str, bytes]] = {}  # (client, key) -> first outcome
        self.batches = 0
        self.refusals = 0
        self.settled = 0

    # ------------------------------------------------------------------ running a batch
    def run(self, entries: list[Entry], dt: int) -> Applied | None:
        batch = Batch(self.main.seq + 1, self.main.head, self.now + dt, "node-a", tuple(entries))
        wire = decode_batch(sign_batch(NODE, batch).to_bytes(), ROSTER)
        assert wire.hash == batch.hash
        replicas: list[tuple[Ledger, Batch]] = [(self.decoded, wire.batch)]
        if self.restored is not None:
            replicas.append((self.restored, batch))
        before = self.main.to_snapshot()
        pre_accounts = {k: v[0] for k, v in self.main.accounts.items()}
        pre_trades = {tid: t.copy() for tid, t in self.main.trades.items()}
        try:
            applied = self.main.apply(batch)
        except BatchRefused:
            self.refusals += 1
            assert self.main.to_snapshot() == before, "a refused batch changed the replica"
            for ledger, b in replicas:
                snap = ledger.to_snapshot()
                try:
                    ledger.apply(b)
                except BatchRefused:
                    pass
                else:
                    raise AssertionError("a replica applied a batch another refused")
                assert ledger.to_snapshot() == snap == before
            self.main.check_invariants()
            return None
        self.batches += 1
        self.now = batch.time_ms
        for ledger, b in replicas:
            assert ledger.apply(b).outcomes == applied.outcomes
        self.check_batch(batch, applied, pre_accounts, pre_trades)
        return applied

    def check_batch(self, batch: Batch, applied: Applied, pre_accounts: dict[tuple[bytes, str], int],
                    pre_trades: dict[bytes, Any]) -> None:
        led = self.main
        led.check_invariants()
        now = batch.time_ms
        # -- every balance change is explained by complete legs, credits and withdrawals
        expected: dict[tuple[bytes, str], int] = defaultdict(int)
        for tid, t in led.trades.items():
            old = pre_trades.get(tid)
            if t.status == SETTLED and (old is None or old.status != SETTLED):
                self.settled += 1
                assert t.affirmed == set(t.parties), "settled without every affirmation"
                for leg in t.legs:
                    expected[(leg.party, leg.asset)] += leg.quantity
                if t.mode == GROSS:
                    assert now < t.deadline_ms, "gross trade settled at or after its deadline"
                else:
                    assert applied.finalized and t.cycle == applied.finalized
                    assert led.cycles[t.cycle].cut_ms < t.deadline_ms, "net trade cut after its deadline"
                    assert tid in led.cycles[t.cycle].settled
        for o in applied.outcomes:
            if o.kind == "credit":
                credit = batch.entries[o.index]
                assert isinstance(credit, Credit)
                expected[(credit.party, credit.asset)] += credit.amount
            elif o.kind == WITHDRAW and o.accepted and not o.duplicate:
                ins = batch.entries[o.index]
                assert isinstance(ins, SignedInstruction)
                expected[(o.client, ins.body.asset)] -= ins.body.amount
            elif o.kind == "withdrawal-returned":
                w = led.withdrawals[o.ref]
                expected[(w.party, w.asset)] += w.amount
        keys = set(pre_accounts) | set(led.accounts) | set(expected)
        actual = {k: led.accounts.get(k, (0, 0, 0))[0] - pre_accounts.get(k, 0) for k in keys}
        assert {k: v for k, v in actual.items() if v} == {k: v for k, v in expected.items() if v}, \
            "a balance moved that no complete trade, credit or withdrawal explains"
        # -- final states stay final; deadlines unwind
        for tid, old in pre_trades.items():
            t = led.trades[tid]
            if old.status in TERMINAL:
                assert t.status == old.status
            if old.status == SETTLED:
                assert t.to_dict() == old.to_dict()
            if old.status in (PENDING, AFFIRMED, DISPUTED) and old.deadline_ms <= now:
                assert t.status == EXPIRED, f"a {old.status} trade outlived its deadline"
        for tid, t in led.trades.items():
            if t.status in (PENDING, AFFIRMED, DISPUTED) and t.deadline_ms <= now:
                # only a trade that left a cut in this very batch (disputed, or rolled at finalisation)
                assert tid in pre_trades and pre_trades[tid].status == CUT
                assert t.affirmed == set() or t.status == AFFIRMED
        # -- the cut is exactly the trades in CUT
        cut = {tid for tid, t in led.trades.items() if t.status == CUT}
        if led.awaiting_final:
            assert cut == set(led.cycles[led.awaiting_final].cut)
        else:
            assert not cut
        # -- idempotency
        for o in applied.outcomes:
            entry = batch.entries[o.index]
            if not isinstance(entry, SignedInstruction):
                continue
            body = entry.body
            record = (body.client, body.key)
            first = self.first.get(record)
            if first is None:
                assert not o.duplicate
                self.first[record] = (body.identity(), o.accepted, o.reason, o.ref)
            elif first[0] == body.identity():
                assert o.duplicate and (o.accepted, o.reason, o.ref) == first[1:]
            else:
                assert not o.duplicate and not o.accepted and "already used" in o.reason
            identity, acc, reason, ref = self.first[record]
            stored_identity, stored = led.idempotency[record]
            assert (stored_identity, stored.accepted, stored.reason, stored.ref) == (identity, acc, reason, ref)

    # ------------------------------------------------------------------ building instructions
    def sign(self, who: PartyIdentity, kind: str, *, key: str | None = None, at: int | None = None,
             **fields: Any) -> SignedInstruction:
        body = InstructionBody(kind=kind, client=who.public_key, key=key or f"k{next(self.keys)}",
                               issued_at_ms=self.now if at is None else at, **fields)
        ins = sign_instruction(who, body)
        self.sent.append(ins)
        return ins

    def opened(self) -> list[PartyIdentity]:
        return [p for p in PARTIES if p.public_key in self.main.parties]

    def draw_party(self, data: st.DataObject, label: str) -> PartyIdentity:
        opened = self.opened()
        if opened and data.draw(st.integers(0, 9), f"{label}: any?") > 0:
            return data.draw(st.sampled_from(opened), label)
        return data.draw(st.sampled_from(PARTIES), label)

    def draw_trade(self, data: st.DataObject) -> SignedInstruction:
        opened = self.opened()
        pool = opened if len(opened) >= 2 and data.draw(st.integers(0, 9), "strangers?") > 0 else PARTIES
        n = min(len(pool), data.draw(st.sampled_from([2, 2, 2, 3, 3, 4]), "parties"))
        parties = data.draw(st.permutations(pool), "who")[:n]
        legs: list[Leg] = []
        for asset in data.draw(st.sampled_from([("BTC",), ("ETH",), ("BTC", "ETH"), ("BTC", "ETH")]), "assets"):
            k = data.draw(st.integers(2, n), "legs")
            members = data.draw(st.permutations(parties), "order")[:k]
            sign = -1 if data.draw(st.booleans(), "many deliver") else 1
            qs = [data.draw(st.integers(1, 15), "q") for _ in members[1:]]
            legs += [Leg(p.public_key, asset, sign * q) for p, q in zip(members[1:], qs, strict=True)]
            legs.append(Leg(members[0].public_key, asset, -sign * sum(qs)))
        in_legs = [p for p in parties if any(leg.party == p.public_key for leg in legs)]
        submitter = data.draw(st.sampled_from(in_legs), "submitter")
        deadline = self.now + data.draw(st.sampled_from([0, 300, 900, 1_500, 2_500, 2_500, 6_000]), "deadline")
        mode = data.draw(st.sampled_from([GROSS, NET, NET]), "mode")
        ins = self.sign(submitter, SUBMIT_TRADE, legs=trade_legs(tuple(legs)), mode=mode, deadline_ms=deadline,
                        reference="prop")
        self.trade_ids.append(ins.body.new_trade_id)
        return ins

    def draw_on_trade(self, data: st.DataObject, kind: str) -> SignedInstruction:
        wanted = {AFFIRM: (PENDING, DISPUTED), CANCEL: (PENDING, DISPUTED), DISPUTE: (AFFIRMED, CUT)}[kind]
        live = [tid for tid, t in self.main.trades.items() if t.status in wanted]
        how = data.draw(st.integers(0, 9), "which trade")
        if live and how < 7:
            tid = data.draw(st.sampled_from(live), "live trade")
        elif self.trade_ids and how < 9:
            tid = data.draw(st.sampled_from(self.trade_ids), "any trade")
        else:
            tid = hashlib.sha256(b"no trade %d" % data.draw(st.integers(0, 3), "unknown")).digest()
        t = self.main.trades.get(tid)
        if t is not None and data.draw(st.integers(0, 7), "a party?") > 0:
            todo = [p for p in PARTIES if p.public_key in t.parties and p.public_key not in t.affirmed]
            mine = [p for p in PARTIES if p.public_key in t.parties]
            who = data.draw(st.sampled_from(todo if kind == AFFIRM and todo else mine), "party")
        else:
            who = data.draw(st.sampled_from(PARTIES), "anyone")
        extra = {"reason": "disputed"} if kind == DISPUTE else {}
        return self.sign(who, kind, trade_id=tid, **extra)

    def draw_withdrawal(self, data: st.DataObject) -> SignedInstruction:
        ins = self.sign(self.draw_party(data, "withdrawer"), WITHDRAW, asset=data.draw(st.sampled_from(ASSETS)),
                        amount=data.draw(st.integers(1, 40), "amount"),
                        destination_chain="bip122:000000000019d6689c", destination="bc1qdest")
        self.withdrawal_ids.append(ins.body.withdrawal_id)
        return ins

    def draw_instruction(self, data: st.DataObject) -> SignedInstruction:
        kind = data.draw(st.sampled_from(
            ["trade", "trade", "trade", "affirm", "affirm", "affirm", "affirm", "dispute", "dispute", "cancel",
             "withdraw", "open", "replay", "resign", "conflict", "stale"]), "kind")
        if kind == "trade":
            return self.draw_trade(data)
        if kind in ("affirm", "dispute", "cancel"):
            return self.draw_on_trade(data, {"affirm": AFFIRM, "dispute": DISPUTE, "cancel": CANCEL}[kind])
        if kind == "withdraw" or (kind in ("replay", "resign", "conflict") and not self.sent):
            return self.draw_withdrawal(data)
        if kind == "open":
            return self.sign(data.draw(st.sampled_from(OPENABLE), "who"), OPEN_ACCOUNT, label="late")
        if kind == "stale":
            at = self.now + data.draw(st.sampled_from([-PARAMS.max_instruction_age_ms - 1,
                                                       PARAMS.max_instruction_ahead_ms + 1]), "skew")
            return self.draw_on_trade_at(data, max(at, 1))
        old = data.draw(st.sampled_from(self.sent[-20:]), "old")
        if kind == "replay":
            return old
        who = next(p for p in PARTIES if p.public_key == old.body.client)
        if kind == "resign":  # the same body re-signed later: still the same instruction
            return self.sign(who, old.body.kind, key=old.body.key, **_fields(old.body))
        # the same key with another body
        return self.sign(who, WITHDRAW, key=old.body.key, asset="BTC", amount=data.draw(st.integers(1, 40)),
                         destination_chain="bip122:000000000019d6689c", destination="bc1qother")

    def draw_on_trade_at(self, data: st.DataObject, at: int) -> SignedInstruction:
        ins = self.draw_on_trade(data, AFFIRM)
        return self.sign(next(p for p in PARTIES if p.public_key == ins.body.client), AFFIRM,
                         trade_id=ins.body.trade_id, at=at)

    def credit(self, data: st.DataObject, who: PartyIdentity | None = None) -> Credit:
        who = who or self.draw_party(data, "credited")
        return Credit(hashlib.sha256(b"deposit %d" % next(self.deposit_no)).digest(), who.public_key,
                      data.draw(st.sampled_from(ASSETS), "asset"), data.draw(st.integers(1, 60), "amount"))

    # ------------------------------------------------------------------ rules
    @initialize(data=st.data())
    def setup(self, data: st.DataObject) -> None:
        opened = data.draw(st.sampled_from([OPENABLE[:3], OPENABLE, OPENABLE]), "opened")
        entries: list[Entry] = [self.sign(p, OPEN_ACCOUNT, label=f"party {i}") for i, p in enumerate(opened)]
        for p in opened:
            for asset in ASSETS:
                entries.append(Credit(hashlib.sha256(b"deposit %d" % next(self.deposit_no)).digest(), p.public_key,
                                      asset, data.draw(st.integers(1, 60), "funds")))
        applied = self.run(entries, 0)
        assert applied is not None
        self.deposits += [e for e in entries if isinstance(e, Credit)]

    @rule(data=st.data(), action=st.sampled_from(["instructions"] * 5 + ["everyone"] * 3 + ["schedule"] * 4
                                                 + ["chain"] * 2 + ["payout", "bad", "time", "restart"]))
    def step(self, data: st.DataObject, action: str) -> None:
        getattr(self, f"do_{action}")(data)

    def do_instructions(self, data: st.DataObject) -> None:
        entries: list[Entry] = [self.draw_instruction(data) for _ in range(data.draw(st.integers(1, 5), "n"))]
        if data.draw(st.integers(0, 4), "with credit") == 0:
            entries.insert(data.draw(st.integers(0, len(entries)), "at"), self.credit(data))
        applied = self.run(entries, data.draw(small_dt, "dt"))
        if applied is not None:
            self.deposits += [e for e in entries if isinstance(e, Credit)]

    def do_everyone(self, data: st.DataObject) -> None:
        """Every party still to affirm a live trade affirms it (in a random order)."""
        open_trades = [tid for tid, t in self.main.trades.items() if t.status in (PENDING, DISPUTED)]
        if not open_trades:
            return self.do_instructions(data)
        t = self.main.trades[data.draw(st.sampled_from(open_trades), "trade")]
        todo = [p for p in PARTIES if p.public_key in t.parties and p.public_key not in t.affirmed]
        entries: list[Entry] = [self.sign(p, AFFIRM, trade_id=t.trade_id)
                                for p in data.draw(st.permutations(todo), "order")]
        self.run(entries, data.draw(small_dt, "dt"))
        return None

    def do_chain(self, data: st.DataObject) -> None:
        """The netting case on purpose: X sells Y more than it holds, counting on what it buys from Z
        in the same cycle; Z may or may not affirm (and may dispute later, in other steps)."""
        opened = self.opened()
        if len(opened) < 3:
            return self.do_instructions(data)
        x, y, z = data.draw(st.permutations(opened), "x y z")[:3]
        asset, other = data.draw(st.permutations(ASSETS), "assets")
        have = self.main.available(x.public_key, asset)
        bought = data.draw(st.integers(1, 20), "bought")
        sold = have + data.draw(st.integers(-2, bought), "sold beyond")
        deadline = self.now + data.draw(st.sampled_from([1_500, 2_500, 6_000]), "deadline")
        buy = self.sign(x, SUBMIT_TRADE, mode=NET, deadline_ms=deadline, legs=trade_legs([
            Leg(z.public_key, asset, -bought), Leg(x.public_key, asset, bought),
            Leg(z.public_key, other, 3), Leg(x.public_key, other, -3)]))
        entries: list[Entry] = [buy, self.sign(x, AFFIRM, trade_id=buy.body.new_trade_id)]
        if sold > 0:
            sell = self.sign(x, SUBMIT_TRADE, mode=NET, deadline_ms=deadline, legs=trade_legs([
                Leg(x.public_key, asset, -sold), Leg(y.public_key, asset, sold),
                Leg(x.public_key, other, 2), Leg(y.public_key, other, -2)]))
            entries += [sell, self.sign(x, AFFIRM, trade_id=sell.body.new_trade_id),
                        self.sign(y, AFFIRM, trade_id=sell.body.new_trade_id)]
            self.trade_ids.append(sell.body.new_trade_id)
        if data.draw(st.booleans(), "z affirms"):
            entries.append(self.sign(z, AFFIRM, trade_id=buy.body.new_trade_id))
        self.trade_ids.append(buy.body.new_trade_id)
        self.run(entries, data.draw(small_dt, "dt"))
        return None

    def do_bad(self, data: st.DataObject) -> None:
        """Good instructions, then an entry this replica must refuse: the whole batch goes."""
        entries: list[Entry] = [self.draw_instruction(data) for _ in range(data.draw(st.integers(0, 3), "n"))]
        bad = data.draw(st.sampled_from(["twice", "stranger", "no withdrawal", "paid twice", "backwards"]), "bad")
        paid = [wid for wid, w in self.main.withdrawals.items() if w.status != "pending"]
        dt = data.draw(small_dt, "dt")
        if bad == "twice" and self.deposits:
            entries.append(data.draw(st.sampled_from(self.deposits), "already credited"))
        elif bad == "paid twice" and paid:
            entries.append(WithdrawalPaid(data.draw(st.sampled_from(paid), "paid"), "ab" * 32))
        elif bad == "backwards" and self.now > T0:
            dt = -data.draw(st.sampled_from([1, 500]), "back")
        elif bad == "stranger":
            entries.append(self.credit(data, PARTIES[4]))
        else:
            entries.append(WithdrawalReturned(hashlib.sha256(b"no withdrawal").digest(), "?"))
        entries += [self.draw_instruction(data) for _ in range(data.draw(st.integers(0, 2), "after"))]
        assert self.run(entries, dt) is None

    def do_payout(self, data: st.DataObject) -> None:
        if not self.withdrawal_ids:
            return self.do_instructions(data)
        pending = [wid for wid, w in self.main.withdrawals.items() if w.status == "pending"]
        wid = data.draw(st.sampled_from(pending if pending and data.draw(st.booleans()) else self.withdrawal_ids),
                        "withdrawal")
        entry: Entry = (WithdrawalPaid(wid, "ab" * 32) if data.draw(st.booleans(), "paid")
                        else WithdrawalReturned(wid, "unpayable"))
        w = self.main.withdrawals.get(wid)
        applied = self.run([entry], data.draw(small_dt, "dt"))
        assert (applied is not None) == (w is not None and w.status == "pending")
        return None

    def do_time(self, data: st.DataObject) -> None:
        assert self.run([], data.draw(st.sampled_from([1, 100, 999, 1_000, 2_500]), "dt")) is not None

    def do_restart(self, data: st.DataObject) -> None:
        self.restored = Ledger.from_snapshot(self.main.to_snapshot(), PARAMS)

    def do_schedule(self, data: st.DataObject) -> None:
        """A cut-off or a finalisation, usually when due, sometimes early, late, of the wrong cycle, or
        with client instructions (disputes, affirmations) ahead of it in the batch."""
        led = self.main
        if led.awaiting_final:
            number, due = led.awaiting_final, led.cycles[led.awaiting_final].cut_ms + WINDOW
            entry: Entry = Finalize(number)
        else:
            number = led.open_cycle
            due = led.cycles[number].opened_ms + CYCLE
            entry = Cutoff(number)
        wrong = data.draw(st.integers(0, 9), "wrong")
        if wrong == 0:
            entry = type(entry)(number + data.draw(st.sampled_from([-1, 1]), "off"))
        elif wrong == 1:
            entry = Cutoff(number) if isinstance(entry, Finalize) else Finalize(number)
        dt = max(0, max(0, due - self.now) + data.draw(st.sampled_from([-1, 0, 0, 0, 5, 300, 2_000]), "late"))
        entries: list[Entry] = [self.draw_instruction(data) for _ in range(data.draw(st.integers(0, 2), "n"))]
        entries.append(entry)
        trailing = data.draw(st.integers(0, 9), "trailing") == 0
        if trailing:
            entries.append(self.draw_instruction(data))  # after a finalisation: the batch is refused
        expect = wrong >= 2 and self.now + dt >= due and not (trailing and isinstance(entry, Finalize))
        applied = self.run(entries, dt)
        assert (applied is not None) == expect, (entry, due, self.now, dt)
        if applied is not None and isinstance(entry, Cutoff):
            assert led.awaiting_final == number and led.open_cycle == number + 1
            for tid in led.cycles[number].cut:
                assert led.trades[tid].deadline_ms > led.cycles[number].cut_ms

    def teardown(self) -> None:
        """What the history reached (``pytest --hypothesis-show-statistics``)."""
        def bucket(n: int) -> str:
            return "0" if n == 0 else "1-4" if n < 5 else "5+"
        rolled = sum(1 for t in self.main.trades.values() if t.rolled)
        disputed = sum(len(c.disputed) for c in self.main.cycles.values())
        finalized = sum(1 for c in self.main.cycles.values() if c.finalized_ms)
        event(f"trades settled: {bucket(self.settled)}")
        event(f"net trades rolled: {bucket(rolled)}")
        event(f"disputed in a window: {bucket(disputed)}")
        event(f"cycles finalised: {bucket(finalized)}")
        event(f"batches refused: {bucket(self.refusals)}")

    # ------------------------------------------------------------------ invariants
    @invariant()
    def replicas_agree(self) -> None:
        snap = self.main.to_snapshot()
        assert self.decoded.to_snapshot() == snap
        if self.restored is not None:
            assert self.restored.to_snapshot() == snap
            self.restored.check_invariants()

    @invariant()
    def nothing_negative(self) -> None:
        for (_party, asset), (bal, gross, _net, _unmatched) in self.main.accounts.items():
            assert asset in ASSETS and bal >= 0 and 0 <= gross <= bal
        for asset, (credited, pending, paid) in self.main.totals.items():
            assert credited >= 0 and pending >= 0 and paid >= 0, asset


def _fields(body: InstructionBody) -> dict[str, Any]:
    keep = {SUBMIT_TRADE: ("legs", "mode", "deadline_ms", "reference"), AFFIRM: ("trade_id",), CANCEL: ("trade_id",),
            DISPUTE: ("trade_id", "reason"), OPEN_ACCOUNT: ("label",),
            WITHDRAW: ("asset", "amount", "destination_chain", "destination")}[body.kind]
    return {name: getattr(body, name) for name in keep}


LedgerMachine.TestCase.settings = settings(
    max_examples=70, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestLedgerMachine = LedgerMachine.TestCase
