"""The settlement ledger: a deterministic state machine over signed batches (sans-IO).

Every node holds one ``Ledger`` — its own replica — and applies the same batches in the same order;
nothing here reads a clock, a socket or a file, so equal inputs give equal state at every node and
the checkpoint root (``merkle.py``) is the proof of it. The rules (``README.md`` in this folder):

Accounts are (party, asset); ``balance`` is what the party owns, ``held`` the part of it promised
to affirmed trades. Holds are never a separate pot of money: they only make ``available =
balance - held`` smaller, so nothing can be promised twice (the double-spend across two trades).

* **Gross** trades: affirming holds the party's deliveries in full (insufficient → rejected,
  nothing held); when the last party affirms, every leg moves in this batch — one step of the
  state machine, one database transaction at every node — or none does.
* **Net** trades settle in the netting cycle. Affirming changes the party's running net position
  over the net trades it affirmed; the hold is that position's debit, so a party that buys and
  sells in one cycle needs only its *net* debit (CLS's multilateral net funding). At the cut-off
  the fully affirmed net trades are netted per (party, asset); a party whose net debit is not
  covered (its counterparty disputed or never affirmed a trade it counted on) makes its
  latest-affirmed delivering trade *fail*: it rolls to the next cycle (holds kept) and the netting
  is recomputed until every debit is covered. Then a dispute window; at ``Finalize`` the cycle's
  trades settle together, after the same check once more, or a failed one rolls — never one leg.
* A trade not settled (gross) or cut (net) by its deadline is unwound: every hold released.
* SETTLED is final; a reversal is a new, opposite trade.

Atomicity: ``apply`` journals every write; a batch that must be refused as a whole (a wrong
sequence, a system entry this node's view contradicts, a cut-off before its time) is rolled back
completely and raised as ``BatchRefused`` — the node names the coordinator, and its state is as
before. A client instruction that breaks a rule is only *rejected* (with a reason, the same at every
node); the batch goes on.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .batch import GENESIS_HASH, Batch, Credit, Cutoff, Entry, Finalize, SystemEntry, WithdrawalPaid, WithdrawalReturned
from .instructions import (
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
)

PENDING = "pending"  # submitted; some parties have not affirmed
AFFIRMED = "affirmed"  # every party affirmed (net: waits for the cut-off)
CUT = "cut"  # in a cycle's cut, inside the dispute window
SETTLED = "settled"  # final
DISPUTED = "disputed"  # a party disputed it: every affirmation cleared, needs all again
CANCELLED = "cancelled"
EXPIRED = "expired"  # unwound at its deadline
LIVE = (PENDING, AFFIRMED, CUT, DISPUTED)

_MISSING = object()
_EMPTY = (0, 0, 0, 0)  # balance, gross holds, matched net position, unmatched receipts


class BatchRefused(Exception):
    """The batch as a whole cannot be applied at this node; its state is unchanged."""

    def __init__(self, seq: int, reason: str, *, retry: bool = False) -> None:
        super().__init__(f"batch {seq} refused: {reason}")
        self.seq, self.reason = seq, reason
        #: the node may simply not see a fact *yet* (a deposit a block behind): try again later,
        #: do not name the coordinator
        self.retry = retry


@dataclass(frozen=True)
class LedgerParams:
    assets: tuple[str, ...]
    cycle_ms: int = 60_000  # a netting cycle's cut-off is this long after the previous one
    dispute_window_ms: int = 30_000  # between cut-off and finalisation
    max_instruction_age_ms: int = 600_000  # an instruction older than this (by batch time) is stale
    max_instruction_ahead_ms: int = 60_000  # ... or this far in the batch's future
    open_to: frozenset[bytes] | None = None  # clients that may open an account; None: anyone

    def to_dict(self) -> dict[str, Any]:
        return {"assets": list(self.assets), "cycle_ms": self.cycle_ms, "dispute_window_ms": self.dispute_window_ms,
                "max_instruction_age_ms": self.max_instruction_age_ms,
                "max_instruction_ahead_ms": self.max_instruction_ahead_ms,
                "open_to": None if self.open_to is None else sorted(k.hex() for k in self.open_to)}


@dataclass
class Trade:
    trade_id: bytes
    submitter: bytes
    legs: tuple[Leg, ...]
    mode: str
    deadline_ms: int
    reference: str
    submitted_ms: int
    status: str = PENDING
    affirmed: set[bytes] = field(default_factory=set)
    ready_order: int = 0  # when it last became fully affirmed (a global counter): latest fails first
    cycle: int = 0  # the cycle it was cut in / settled in
    rolled: int = 0  # how many cut-offs it failed
    note: str = ""  # why it was disputed / unwound
    updated_ms: int = 0

    @property
    def parties(self) -> tuple[bytes, ...]:
        return tuple(sorted({leg.party for leg in self.legs}))

    def legs_of(self, party: bytes) -> Iterator[Leg]:
        return (leg for leg in self.legs if leg.party == party)

    def copy(self) -> Trade:
        return Trade(self.trade_id, self.submitter, self.legs, self.mode, self.deadline_ms, self.reference,
                     self.submitted_ms, self.status, set(self.affirmed), self.ready_order, self.cycle, self.rolled,
                     self.note, self.updated_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"trade_id": self.trade_id.hex(), "submitter": self.submitter.hex(),
                "legs": [[leg.party.hex(), leg.asset, str(leg.quantity)] for leg in self.legs], "mode": self.mode,
                "deadline_ms": self.deadline_ms, "reference": self.reference, "submitted_ms": self.submitted_ms,
                "status": self.status, "affirmed": sorted(p.hex() for p in self.affirmed),
                "ready_order": self.ready_order, "cycle": self.cycle, "rolled": self.rolled, "note": self.note,
                "updated_ms": self.updated_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trade:
        return cls(bytes.fromhex(d["trade_id"]), bytes.fromhex(d["submitter"]),
                   tuple(Leg(bytes.fromhex(p), a, int(q)) for p, a, q in d["legs"]), d["mode"], d["deadline_ms"],
                   d["reference"], d["submitted_ms"], d["status"], {bytes.fromhex(p) for p in d["affirmed"]},
                   d["ready_order"], d["cycle"], d["rolled"], d["note"], d["updated_ms"])


@dataclass
class Withdrawal:
    withdrawal_id: bytes
    party: bytes
    asset: str
    amount: int
    destination_chain: str
    destination: str
    created_ms: int
    status: str = "pending"  # pending → paid | returned
    txid: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"withdrawal_id": self.withdrawal_id.hex(), "party": self.party.hex(), "asset": self.asset,
                "amount": str(self.amount), "destination_chain": self.destination_chain,
                "destination": self.destination, "created_ms": self.created_ms, "status": self.status,
                "txid": self.txid, "note": self.note}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Withdrawal:
        return cls(bytes.fromhex(d["withdrawal_id"]), bytes.fromhex(d["party"]), d["asset"], int(d["amount"]),
                   d["destination_chain"], d["destination"], d["created_ms"], d["status"], d["txid"], d["note"])


@dataclass
class Cycle:
    number: int
    opened_ms: int
    cut_ms: int = 0
    finalized_ms: int = 0
    cut: list[bytes] = field(default_factory=list)  # trade ids in the cut (dispute window)
    settled: list[bytes] = field(default_factory=list)
    rolled: list[bytes] = field(default_factory=list)  # failed at the cut-off or at finalisation
    disputed: list[bytes] = field(default_factory=list)
    net: dict[tuple[bytes, str], int] = field(default_factory=dict)  # settled net positions
    batch_seq: int = 0  # the batch that finalised it

    def copy(self) -> Cycle:
        return Cycle(self.number, self.opened_ms, self.cut_ms, self.finalized_ms, list(self.cut), list(self.settled),
                     list(self.rolled), list(self.disputed), dict(self.net), self.batch_seq)

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "opened_ms": self.opened_ms, "cut_ms": self.cut_ms,
                "finalized_ms": self.finalized_ms, "cut": [t.hex() for t in self.cut],
                "settled": [t.hex() for t in self.settled], "rolled": [t.hex() for t in self.rolled],
                "disputed": [t.hex() for t in self.disputed],
                "net": [[p.hex(), a, str(q)] for (p, a), q in sorted(self.net.items())], "batch_seq": self.batch_seq}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cycle:
        return cls(d["number"], d["opened_ms"], d["cut_ms"], d["finalized_ms"], [bytes.fromhex(t) for t in d["cut"]],
                   [bytes.fromhex(t) for t in d["settled"]], [bytes.fromhex(t) for t in d["rolled"]],
                   [bytes.fromhex(t) for t in d["disputed"]],
                   {(bytes.fromhex(p), a): int(q) for p, a, q in d["net"]}, d["batch_seq"])


@dataclass(frozen=True)
class Outcome:
    """What became of one entry. The same at every node that applied the batch."""

    index: int
    kind: str
    client: bytes
    key: str
    accepted: bool
    reason: str = ""
    ref: bytes = b""  # the trade id / withdrawal id / deposit id concerned
    duplicate: bool = False  # an idempotent repeat: the first outcome, nothing changed

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "client": self.client.hex(), "key": self.key,
                "accepted": self.accepted, "reason": self.reason, "ref": self.ref.hex(), "duplicate": self.duplicate}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Outcome:
        return cls(d["index"], d["kind"], bytes.fromhex(d["client"]), d["key"], d["accepted"], d["reason"],
                   bytes.fromhex(d["ref"]), d["duplicate"])


@dataclass
class Applied:
    """The result of one batch: outcomes, what changed (for storage and status streams)."""

    seq: int
    hash: bytes
    time_ms: int
    outcomes: list[Outcome] = field(default_factory=list)
    trades: set[bytes] = field(default_factory=set)  # trade ids whose record changed
    accounts: set[tuple[bytes, str]] = field(default_factory=set)
    withdrawals: set[bytes] = field(default_factory=set)
    parties: set[bytes] = field(default_factory=set)
    cycles: set[int] = field(default_factory=set)
    finalized: int = 0  # the cycle finalised by this batch (then a checkpoint is due)


class Ledger:
    """One node's replica. ``apply`` is the only way state changes."""

    def __init__(self, params: LedgerParams) -> None:
        self.params = params
        self.assets = frozenset(params.assets)
        self.parties: dict[bytes, str] = {}  # client key -> label
        # (party, asset) -> [balance, gross_hold, net_sum]; net_sum = Σ quantities of the live net
        # trades the party affirmed (its running net position; a debit is negative)
        self.accounts: dict[tuple[bytes, str], tuple[int, int, int, int]] = {}
        self.trades: dict[bytes, Trade] = {}
        self.withdrawals: dict[bytes, Withdrawal] = {}
        self.idempotency: dict[tuple[bytes, str], tuple[bytes, Outcome]] = {}  # -> (identity, first outcome)
        self.credited: dict[bytes, tuple[bytes, str, int]] = {}  # deposit id -> (party, asset, amount)
        self.cycles: dict[int, Cycle] = {}
        self.totals: dict[str, list[int]] = {a: [0, 0, 0] for a in params.assets}  # credited, pending, paid
        self.open_cycle = 1
        self.awaiting_final = 0  # the cycle in its dispute window (0: none)
        self.seq = 0
        self.head = GENESIS_HASH
        self.time_ms = 0
        self.order = 0
        self._deadlines: list[tuple[int, bytes]] = []
        self._journal: list[Callable[[], None]] = []
        self._applied: Applied | None = None

    # ------------------------------------------------------------------ reading
    def balance(self, party: bytes, asset: str) -> int:
        return self.accounts.get((party, asset), _EMPTY)[0]

    def held(self, party: bytes, asset: str) -> int:
        bal, gross, net, _ = self.accounts.get((party, asset), _EMPTY)
        return min(bal, gross + max(0, -net))

    def available(self, party: bytes, asset: str) -> int:
        return self.balance(party, asset) - self.held(party, asset)

    def shortfall(self, party: bytes, asset: str) -> int:
        """How much the party's holds exceed its balance (after a counterparty's dispute)."""
        bal, gross, net, _ = self.accounts.get((party, asset), _EMPTY)
        return max(0, gross + max(0, -net) - bal)

    def account_rows(self) -> Iterator[tuple[bytes, str, int, int]]:
        """(party, asset, balance, held) for every account holding anything: the checkpoint's leaves."""
        for (party, asset), (bal, gross, net, _) in self.accounts.items():
            held = min(bal, gross + max(0, -net))
            if bal or held:
                yield party, asset, bal, held

    def liabilities(self) -> dict[str, tuple[int, int]]:
        """asset -> (sum of balances, pending withdrawals)."""
        sums: dict[str, int] = defaultdict(int)
        for (_, asset), (bal, _, _, _) in self.accounts.items():
            sums[asset] += bal
        return {a: (sums.get(a, 0), self.totals[a][1]) for a in sorted(self.assets)}

    def check_invariants(self) -> None:
        """The ledger's conservation law; raises AssertionError. Cheap enough for tests and audits."""
        sums: dict[str, int] = defaultdict(int)
        for (party, asset), (bal, gross, _net, _unmatched) in self.accounts.items():
            assert bal >= 0 and gross >= 0, f"negative account {party.hex()[:8]}/{asset}"
            assert gross <= bal, f"gross holds exceed the balance {party.hex()[:8]}/{asset}"
            sums[asset] += bal
        for asset, (credited, pending, paid) in self.totals.items():
            assert sums.get(asset, 0) + pending == credited - paid, f"{asset}: balances + pending != custody"
        pending_now: dict[str, int] = defaultdict(int)
        for w in self.withdrawals.values():
            if w.status == "pending":
                pending_now[w.asset] += w.amount
        for asset in self.assets:
            assert pending_now.get(asset, 0) == self.totals[asset][1], f"{asset}: pending withdrawals drifted"
        recomputed: dict[tuple[bytes, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        for t in self.trades.values():
            if t.status not in LIVE:
                continue
            counted = t.status in (AFFIRMED, CUT)
            for party in t.affirmed:
                for leg in t.legs_of(party):
                    if t.mode == GROSS:
                        recomputed[(party, leg.asset)][0] += max(0, -leg.quantity)
                    elif leg.quantity < 0 or counted:
                        recomputed[(party, leg.asset)][1] += leg.quantity
                    else:
                        recomputed[(party, leg.asset)][2] += leg.quantity
        for key, (_bal, gross, net, unmatched) in self.accounts.items():
            assert [gross, net, unmatched] == recomputed.get(key, [0, 0, 0]), \
                f"holds drifted for {key[0].hex()[:8]}/{key[1]}"

    # ------------------------------------------------------------------ applying
    def apply(self, batch: Batch, verify: Callable[[SystemEntry], str | None] | None = None) -> Applied:
        """Apply one batch, or refuse it whole (``BatchRefused``, state unchanged).

        ``verify`` is the node's own check of a system entry against its view of the world (a
        credit's deposit in its bridge database, a payout on its chain); it returns ``None`` when
        the entry holds, else why not. A reason starting with ``"retry:"`` means "not yet"."""
        if batch.seq != self.seq + 1:
            raise BatchRefused(batch.seq, f"expected batch {self.seq + 1}", retry=batch.seq > self.seq + 1)
        if batch.prev_hash != self.head:
            raise BatchRefused(batch.seq, "previous hash is not this replica's head")
        if batch.time_ms < self.time_ms:
            raise BatchRefused(batch.seq, f"batch time goes backwards: {batch.time_ms} ms, before the previous "
                                          f"batch's {self.time_ms} ms")
        for i, entry in enumerate(batch.entries):
            if isinstance(entry, Finalize) and i != len(batch.entries) - 1:
                raise BatchRefused(batch.seq, "a finalisation must be its batch's last entry")
        self._journal = []
        saved = (self.open_cycle, self.awaiting_final, self.seq, self.head, self.time_ms, self.order)
        applied = Applied(batch.seq, batch.hash, batch.time_ms)
        self._applied = applied
        try:
            self.time_ms = batch.time_ms
            if self.open_cycle not in self.cycles:  # the first batch opens cycle 1
                self._cycle(self.open_cycle)
            self._expire(batch.time_ms)
            for i, entry in enumerate(batch.entries):
                if isinstance(entry, SignedInstruction):
                    applied.outcomes.append(self._instruction(i, entry.body, batch.time_ms))
                else:
                    if verify is not None and not isinstance(entry, Cutoff | Finalize):
                        why = verify(entry)
                        if why is not None:
                            retry = why.startswith("retry:")
                            raise BatchRefused(batch.seq, why.removeprefix("retry:").strip(), retry=retry)
                    applied.outcomes.append(self._system(i, entry, batch))
        except BaseException:
            for undo in reversed(self._journal):
                undo()
            self.open_cycle, self.awaiting_final, self.seq, self.head, self.time_ms, self.order = saved
            self._journal = []
            self._applied = None
            raise
        self.seq, self.head = batch.seq, batch.hash
        self._journal = []
        self._applied = None
        return applied

    # -- journaled writes
    def _put(self, table: dict, key: Any, value: Any) -> None:
        old = table.get(key, _MISSING)

        def undo() -> None:
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old
        self._journal.append(undo)
        table[key] = value

    def _account(self, party: bytes, asset: str, d_balance: int = 0, d_gross: int = 0, d_net: int = 0,
                 d_unmatched: int = 0) -> None:
        bal, gross, net, unmatched = self.accounts.get((party, asset), _EMPTY)
        new = (bal + d_balance, gross + d_gross, net + d_net, unmatched + d_unmatched)
        assert new[0] >= 0 and new[1] >= 0, "a balance or hold went negative (a ledger bug)"
        self._put(self.accounts, (party, asset), new)
        assert self._applied is not None
        self._applied.accounts.add((party, asset))

    def _trade(self, t: Trade) -> Trade:
        """A writable trade: the old record is journaled once per batch."""
        assert self._applied is not None
        if t.trade_id not in self._applied.trades or self.trades.get(t.trade_id) is not t:
            self._put(self.trades, t.trade_id, t.copy())
            self._applied.trades.add(t.trade_id)
        return self.trades[t.trade_id]

    def _cycle(self, number: int) -> Cycle:
        assert self._applied is not None
        c = self.cycles.get(number) or Cycle(number, self.time_ms)
        if number not in self._applied.cycles or number not in self.cycles:
            self._put(self.cycles, number, c.copy())
            self._applied.cycles.add(number)
        return self.cycles[number]

    def _total(self, asset: str, i: int, delta: int) -> None:
        old = list(self.totals[asset])
        self._journal.append(lambda: self.totals.__setitem__(asset, old))
        self.totals[asset] = [v + (delta if j == i else 0) for j, v in enumerate(old)]

    def _push_deadline(self, deadline: int, trade_id: bytes) -> None:
        heapq.heappush(self._deadlines, (deadline, trade_id))
        # a pushed entry for a trade that does not survive a rollback is harmless: expiry checks
        # the trade's current record

    # -- holds
    def _hold(self, t: Trade, party: bytes, sign: int, *, matched: bool = False) -> None:
        """Gross: the party's deliveries are held. Net: its running position - deliveries always,
        receipts into the *matched* position only once every party affirmed the trade (before that
        they are *unmatched*: they let the party commit to more sales, never withdraw)."""
        for leg in t.legs_of(party):
            if t.mode == GROSS:
                if leg.quantity < 0:
                    self._account(party, leg.asset, d_gross=sign * -leg.quantity)
            elif leg.quantity < 0 or matched:
                self._account(party, leg.asset, d_net=sign * leg.quantity)
            else:
                self._account(party, leg.asset, d_unmatched=sign * leg.quantity)

    def _match(self, t: Trade) -> None:
        """A net trade became fully affirmed: every party's receipts in it are matched now."""
        for leg in t.legs:
            if leg.quantity > 0:
                self._account(leg.party, leg.asset, d_net=leg.quantity, d_unmatched=-leg.quantity)

    def _release_all(self, t: Trade) -> None:
        matched = t.mode == NET and t.status in (AFFIRMED, CUT)
        for party in sorted(t.affirmed):
            self._hold(t, party, -1, matched=matched)
        t.affirmed = set()

    def _can_affirm(self, t: Trade, party: bytes) -> str:
        """Gross: the delivery must be available (balance less every hold). Net: the party's whole
        commitment - its position counting every receipt it affirmed, matched or not - must stay
        covered by its balance (less gross holds): a ring of parties netting to zero can form
        with nobody pre-funded, and what a receipt that never matches leaves uncovered fails at the
        cut-off as a whole trade."""
        for leg in t.legs_of(party):
            bal, gross, net, unmatched = self.accounts.get((party, leg.asset), _EMPTY)
            if t.mode == GROSS:
                if leg.quantity < 0 and bal - min(bal, gross + max(0, -net)) < -leg.quantity:
                    return f"insufficient available {leg.asset} for this delivery"
            else:
                before = gross + max(0, -(net + unmatched))
                after = gross + max(0, -(net + unmatched + leg.quantity))
                if after > bal and after > before:
                    return f"insufficient {leg.asset} to cover the net position"
        return ""

    # -- deadlines
    def _expire(self, now: int) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            item = heapq.heappop(self._deadlines)
            self._journal.append(lambda item=item: heapq.heappush(self._deadlines, item))
            t = self.trades.get(item[1])
            if t is None or t.deadline_ms != item[0] or t.status not in (PENDING, AFFIRMED, DISPUTED):
                continue
            t = self._trade(t)
            self._release_all(t)
            t.status, t.note, t.updated_ms = EXPIRED, "deadline passed before settlement", now

    # -- client instructions
    def _instruction(self, index: int, body: InstructionBody, now: int) -> Outcome:
        ref = body.new_trade_id if body.kind == SUBMIT_TRADE else (
            body.withdrawal_id if body.kind == WITHDRAW else body.trade_id)
        prior = self.idempotency.get((body.client, body.key))
        if prior is not None:
            identity, first = prior
            if identity == body.identity():
                return Outcome(index, body.kind, body.client, body.key, first.accepted, first.reason, first.ref,
                               duplicate=True)
            return Outcome(index, body.kind, body.client, body.key, False,
                           "idempotency key already used for a different instruction", ref)
        reason = ""
        if body.issued_at_ms < now - self.params.max_instruction_age_ms:
            reason = "instruction is stale (issued too long before this batch)"
        elif body.issued_at_ms > now + self.params.max_instruction_ahead_ms:
            reason = "instruction is issued in the future; check the client's clock"
        elif body.kind != OPEN_ACCOUNT and body.client not in self.parties:
            reason = "no account: open one first"
        else:
            handler = {OPEN_ACCOUNT: self._open, SUBMIT_TRADE: self._submit, AFFIRM: self._affirm,
                       DISPUTE: self._dispute, CANCEL: self._cancel, WITHDRAW: self._withdraw}[body.kind]
            reason = handler(body, now)
        outcome = Outcome(index, body.kind, body.client, body.key, not reason, reason, ref)
        self._put(self.idempotency, (body.client, body.key), (body.identity(), outcome))
        return outcome

    def _open(self, body: InstructionBody, now: int) -> str:
        if self.params.open_to is not None and body.client not in self.params.open_to:
            return "this client may not open an account here"
        if body.client in self.parties:
            return "account already open"
        self._put(self.parties, body.client, body.label)
        assert self._applied is not None
        self._applied.parties.add(body.client)
        return ""

    def _submit(self, body: InstructionBody, now: int) -> str:
        for leg in body.legs:
            if leg.asset not in self.assets:
                return f"asset {leg.asset} is not settled here"
            if leg.party not in self.parties:
                return f"party {leg.party.hex()[:16]}… has no account"
        if body.deadline_ms <= now:
            return "deadline already passed"
        tid = body.new_trade_id
        if tid in self.trades:
            return "trade already exists"
        t = Trade(tid, body.client, body.legs, body.mode, body.deadline_ms, body.reference, now, updated_ms=now)
        self._put(self.trades, tid, t)
        assert self._applied is not None
        self._applied.trades.add(tid)
        self._push_deadline(t.deadline_ms, tid)
        return ""

    def _party_trade(self, body: InstructionBody) -> tuple[Trade | None, str]:
        """The trade an affirm/dispute/cancel names, if the client is one of its parties."""
        t = self.trades.get(body.trade_id)
        if t is None:
            return None, "no such trade"
        if body.client not in t.parties:
            return None, "not a party to this trade"
        return t, ""

    def _affirm(self, body: InstructionBody, now: int) -> str:
        t, why = self._party_trade(body)
        if t is None:
            return why
        if t.status not in (PENDING, DISPUTED):
            return f"trade is {t.status}"
        if now >= t.deadline_ms:  # e.g. disputed out of a cut after its deadline, unwound at the next batch
            return "the trade's deadline has passed"
        if body.client in t.affirmed:
            return "already affirmed"
        why = self._can_affirm(t, body.client)
        if why:
            return why
        t = self._trade(t)
        self._hold(t, body.client, +1)
        t.affirmed.add(body.client)
        t.updated_ms = now
        if len(t.affirmed) == len(t.parties):
            self.order += 1
            t.status, t.ready_order, t.note = AFFIRMED, self.order, ""
            if t.mode == GROSS:
                self._settle_gross(t)
            else:
                self._match(t)
        return ""

    def _settle_gross(self, t: Trade) -> None:
        for leg in t.legs:
            # the deliverer's gross hold becomes the delivery itself
            self._account(leg.party, leg.asset, d_balance=leg.quantity, d_gross=min(leg.quantity, 0))
        t.status, t.cycle = SETTLED, self.open_cycle

    def _dispute(self, body: InstructionBody, now: int) -> str:
        t, why = self._party_trade(body)
        if t is None:
            return why
        if t.status not in (AFFIRMED, CUT):
            return f"only an affirmed, unsettled trade can be disputed (it is {t.status})"
        if t.status == CUT:
            window_end = self.cycles[t.cycle].cut_ms + self.params.dispute_window_ms
            if now >= window_end:
                return f"cycle {t.cycle}'s dispute window closed at {window_end} ms"
        t = self._trade(t)
        if t.status == CUT:
            c = self._cycle(t.cycle)
            c.cut.remove(t.trade_id)
            c.disputed.append(t.trade_id)
            # _expire dropped its deadline if it passed while the trade was cut: watch it again
            self._push_deadline(t.deadline_ms, t.trade_id)
        self._release_all(t)
        t.status, t.note, t.updated_ms, t.cycle = DISPUTED, body.reason, now, 0
        return ""

    def _cancel(self, body: InstructionBody, now: int) -> str:
        t, why = self._party_trade(body)
        if t is None:
            return why
        if t.status not in (PENDING, DISPUTED):
            return f"only a trade not yet affirmed by every party can be cancelled (it is {t.status})"
        t = self._trade(t)
        self._release_all(t)
        t.status, t.note, t.updated_ms = CANCELLED, f"cancelled by {body.client.hex()[:16]}", now
        return ""

    def _withdraw(self, body: InstructionBody, now: int) -> str:
        if body.asset not in self.assets:
            return f"asset {body.asset} is not settled here"
        wid = body.withdrawal_id
        if wid in self.withdrawals:
            return "withdrawal already exists"
        if self.available(body.client, body.asset) < body.amount:
            return f"insufficient available {body.asset}"
        self._account(body.client, body.asset, d_balance=-body.amount)
        self._total(body.asset, 1, body.amount)
        self._put(self.withdrawals, wid, Withdrawal(wid, body.client, body.asset, body.amount, body.destination_chain,
                                                    body.destination, now))
        assert self._applied is not None
        self._applied.withdrawals.add(wid)
        return ""

    # -- system entries
    def _system(self, index: int, entry: Entry, batch: Batch) -> Outcome:
        seq = batch.seq
        if isinstance(entry, Credit):
            if entry.deposit_id in self.credited:
                raise BatchRefused(seq, f"deposit {entry.deposit_id.hex()} is already credited")
            if entry.asset not in self.assets:
                raise BatchRefused(seq, f"credit of unknown asset {entry.asset}")
            if entry.party not in self.parties:
                raise BatchRefused(seq, "credit to a party without an account")
            self._put(self.credited, entry.deposit_id, (entry.party, entry.asset, entry.amount))
            self._account(entry.party, entry.asset, d_balance=entry.amount)
            self._total(entry.asset, 0, entry.amount)
            return Outcome(index, "credit", entry.party, "", True, "", entry.deposit_id)
        if isinstance(entry, WithdrawalPaid | WithdrawalReturned):
            w = self.withdrawals.get(entry.withdrawal_id)
            if w is None or w.status != "pending":
                raise BatchRefused(seq, f"withdrawal {entry.withdrawal_id.hex()} is not pending")
            w = Withdrawal(**{**w.__dict__})
            self._put(self.withdrawals, w.withdrawal_id, w)
            assert self._applied is not None
            self._applied.withdrawals.add(w.withdrawal_id)
            self._total(w.asset, 1, -w.amount)
            if isinstance(entry, WithdrawalPaid):
                w.status, w.txid = "paid", entry.txid
                self._total(w.asset, 2, w.amount)
                kind = "withdrawal-paid"
            else:
                w.status, w.note = "returned", entry.reason
                self._account(w.party, w.asset, d_balance=w.amount)
                kind = "withdrawal-returned"
            return Outcome(index, kind, w.party, "", True, "", w.withdrawal_id)
        if isinstance(entry, Cutoff):
            self._cutoff(entry.cycle, batch)
            return Outcome(index, "cutoff", b"", "", True, "", entry.cycle.to_bytes(8, "big"))
        if isinstance(entry, Finalize):
            self._finalize(entry.cycle, batch)
            return Outcome(index, "finalize", b"", "", True, "", entry.cycle.to_bytes(8, "big"))
        raise BatchRefused(seq, f"unknown entry {type(entry).__name__}")

    def cutoff_due(self, now_ms: int) -> bool:
        c = self.cycles.get(self.open_cycle)
        return c is not None and not self.awaiting_final and now_ms >= c.opened_ms + self.params.cycle_ms

    def deadline_due(self, now_ms: int) -> bool:
        """A trade's deadline passed since the last batch (only a batch moves the ledger's time)."""
        return bool(self._deadlines) and self._deadlines[0][0] <= now_ms

    def finalize_due(self, now_ms: int) -> bool:
        if not self.awaiting_final:
            return False
        return now_ms >= self.cycles[self.awaiting_final].cut_ms + self.params.dispute_window_ms

    def _cutoff(self, number: int, batch: Batch) -> None:
        if number != self.open_cycle:
            raise BatchRefused(batch.seq, f"cut-off of cycle {number}, but cycle {self.open_cycle} is open")
        if self.awaiting_final:
            raise BatchRefused(batch.seq, f"cycle {self.awaiting_final} is not finalised yet")
        c = self._cycle(number)
        if batch.time_ms < c.opened_ms + self.params.cycle_ms:
            raise BatchRefused(batch.seq, f"cycle {number}'s cut-off is not due until "
                                          f"{c.opened_ms + self.params.cycle_ms} ms")
        ready = [t for t in self.trades.values() if t.mode == NET and t.status == AFFIRMED]
        keep, failed = self._net_covered(ready)
        for t in failed:
            t = self._trade(t)
            t.rolled += 1
            c.rolled.append(t.trade_id)
        for t in keep:
            t = self._trade(t)
            t.status, t.cycle, t.updated_ms = CUT, number, batch.time_ms
            c.cut.append(t.trade_id)
        c.cut.sort()
        c.cut_ms = batch.time_ms
        self.awaiting_final = number
        self.open_cycle = number + 1
        nxt = self._cycle(number + 1)
        nxt.opened_ms = batch.time_ms

    def _finalize(self, number: int, batch: Batch) -> None:
        if number != self.awaiting_final:
            raise BatchRefused(batch.seq, f"finalisation of cycle {number}, but "
                                          f"{self.awaiting_final or 'no'} cycle is in its dispute window")
        c = self._cycle(number)
        if batch.time_ms < c.cut_ms + self.params.dispute_window_ms:
            raise BatchRefused(batch.seq, f"cycle {number}'s dispute window is open until "
                                          f"{c.cut_ms + self.params.dispute_window_ms} ms")
        keep, failed = self._net_covered([self.trades[tid] for tid in c.cut])
        for t in failed:  # a dispute in the window left a party short: its trade rolls on
            t = self._trade(t)
            t.status, t.cycle, t.rolled = AFFIRMED, 0, t.rolled + 1
            c.rolled.append(t.trade_id)
            self._push_deadline(t.deadline_ms, t.trade_id)  # as in _dispute: unwound if its deadline passed
        net: dict[tuple[bytes, str], int] = defaultdict(int)
        for t in keep:
            t = self._trade(t)
            for leg in t.legs:
                net[(leg.party, leg.asset)] += leg.quantity
            t.status, t.updated_ms = SETTLED, batch.time_ms
            c.settled.append(t.trade_id)
        for (party, asset), q in sorted(net.items()):
            # the trades leave the party's running position and their net moves for real - once per
            # account: leg by leg, a debit ordered before the credit netted against it would go below zero
            self._account(party, asset, d_balance=q, d_net=-q)
        c.settled.sort()
        c.cut = []
        c.net = {k: v for k, v in net.items() if v}
        c.finalized_ms, c.batch_seq = batch.time_ms, batch.seq
        self.awaiting_final = 0
        assert self._applied is not None
        self._applied.finalized = number

    def _net_covered(self, trades: Iterable[Trade]) -> tuple[list[Trade], list[Trade]]:
        """Multilateral netting with fails: drop the latest-affirmed delivering trade of each party
        whose net debit its balance (less gross holds) does not cover, until every debit is covered."""
        keep = {t.trade_id: t for t in trades}
        net: dict[tuple[bytes, str], int] = defaultdict(int)
        for t in keep.values():
            for leg in t.legs:
                net[(leg.party, leg.asset)] += leg.quantity
        failed: list[Trade] = []
        while True:
            short = sorted(k for k, q in net.items() if q < 0 and -q > self._funds(*k))
            if not short:
                break
            party, asset = short[0]
            victim = max((t for t in keep.values() if any(leg.party == party and leg.asset == asset
                                                          and leg.quantity < 0 for leg in t.legs)),
                         key=lambda t: (t.ready_order, t.trade_id))
            del keep[victim.trade_id]
            failed.append(victim)
            for leg in victim.legs:
                net[(leg.party, leg.asset)] -= leg.quantity
        return sorted(keep.values(), key=lambda t: t.trade_id), failed

    def _funds(self, party: bytes, asset: str) -> int:
        bal, gross, _, _ = self.accounts.get((party, asset), _EMPTY)
        return bal - gross

    # ------------------------------------------------------------------ snapshots
    def to_snapshot(self) -> bytes:
        """The whole replica as canonical JSON (stored at each checkpoint; a restart loads it and
        replays the batches after it)."""
        data = {
            "params": self.params.to_dict(), "seq": self.seq, "head": self.head.hex(), "time_ms": self.time_ms,
            "order": self.order, "open_cycle": self.open_cycle, "awaiting_final": self.awaiting_final,
            "parties": sorted([p.hex(), label] for p, label in self.parties.items()),
            "accounts": sorted([p.hex(), a, str(b), str(g), str(n), str(u)]
                               for (p, a), (b, g, n, u) in self.accounts.items()
                               if b or g or n or u),
            "trades": [self.trades[k].to_dict() for k in sorted(self.trades)],
            "withdrawals": [self.withdrawals[k].to_dict() for k in sorted(self.withdrawals)],
            "idempotency": sorted([c.hex(), k, ident.hex(), o.to_dict()]
                                  for (c, k), (ident, o) in self.idempotency.items()),
            "credited": sorted([d.hex(), p.hex(), a, str(q)] for d, (p, a, q) in self.credited.items()),
            "cycles": [self.cycles[n].to_dict() for n in sorted(self.cycles)],
            "totals": {a: [str(v) for v in vals] for a, vals in sorted(self.totals.items())},
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_snapshot(cls, raw: bytes, params: LedgerParams) -> Ledger:
        data = json.loads(raw)
        if data["params"] != params.to_dict():
            raise ValueError("the snapshot was taken under other ledger parameters")
        led = cls(params)
        led.seq, led.head, led.time_ms = data["seq"], bytes.fromhex(data["head"]), data["time_ms"]
        led.order, led.open_cycle, led.awaiting_final = data["order"], data["open_cycle"], data["awaiting_final"]
        led.parties = {bytes.fromhex(p): label for p, label in data["parties"]}
        led.accounts = {(bytes.fromhex(p), a): (int(b), int(g), int(n), int(u))
                        for p, a, b, g, n, u in data["accounts"]}
        led.trades = {bytes.fromhex(t["trade_id"]): Trade.from_dict(t) for t in data["trades"]}
        led.withdrawals = {bytes.fromhex(w["withdrawal_id"]): Withdrawal.from_dict(w) for w in data["withdrawals"]}
        led.idempotency = {(bytes.fromhex(c), k): (bytes.fromhex(i), Outcome.from_dict(o))
                           for c, k, i, o in data["idempotency"]}
        led.credited = {bytes.fromhex(d): (bytes.fromhex(p), a, int(q)) for d, p, a, q in data["credited"]}
        led.cycles = {c["number"]: Cycle.from_dict(c) for c in data["cycles"]}
        led.totals = {a: [int(v) for v in vals] for a, vals in data["totals"].items()}
        led._deadlines = [(t.deadline_ms, t.trade_id) for t in led.trades.values()
                          if t.status in (PENDING, AFFIRMED, DISPUTED)]
        heapq.heapify(led._deadlines)
        return led
