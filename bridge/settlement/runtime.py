"""The settlement runtime: the ledger's edge — ordering, replication, checkpoints (I/O lives here).

Roles. One node (``[bridge.settlement] coordinator``) orders: clients' instructions (submitted at
any node, forwarded to it), credits of deposits its bridge saw reach depth, finished account
withdrawals, and the cycle's clock (cut-off, finalisation) go into signed batches. Every other
node *pulls* the batches (a long poll on the coordinator's Settlement API), checks the
coordinator's signature, re-verifies every system entry on its own view (``Funding.verify_credit``,
``AccountWithdrawals.verify``) and every client signature, applies the batch to its own replica
and stores it. The coordinator has no power over balances: a batch that breaks a rule at a node is
refused there as a whole, recorded with the coordinator's name, and that node stops following.

Checkpoints. Every node computes, right after applying the batch that finalises cycle *n*, the
checkpoint of its own replica (``checkpoint.next_checkpoint`` over ``merkle.build_tree``) and
stores it. The coordinator then asks the group to sign its checkpoint through the ordinary
threshold signing; each participant's hook (``authorize_checkpoint``) co-signs only if the
proposal is byte-for-byte the checkpoint *it* computed — a replica that diverged refuses. After
the signature the coordinator asks every peer for its checkpoint of the cycle and names every
one whose root differs (``status()["divergent"]``, an audit event). A node that finds the group's
signed checkpoint differing from its own replica rebuilds the replica by replaying the signed
batch log from the start, checking every cycle's root against the signed checkpoints
(``resync``): nothing is trusted that the coordinator's signature and the group key do not cover.

Threads. gRPC handlers and trio worker threads call in here; one lock guards the ledger and its
store, so a batch is applied and stored as one step and a reader sees the replica between
batches, never inside one.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import trio

from ...node.logs import log_event
from ...proto.generated import settlement_pb2, settlement_pb2_grpc
from ...protocol.encoding import Encoder
from ...protocol.identity import PartyIdentity, verify_signature
from ..config import SettlementSettings
from ..orders import encode_signature
from . import checkpoint as cp
from .batch import (
    Batch,
    Credit,
    Cutoff,
    Finalize,
    SignedBatch,
    SystemEntry,
    WithdrawalPaid,
    WithdrawalReturned,
    decode_batch,
    sign_batch,
)
from .instructions import NET, InstructionError, SignedInstruction
from .ledger import AFFIRMED, Applied, BatchRefused, Ledger, LedgerParams, Outcome
from .merkle import AccountLeaf, build_tree
from .store import SettlementStore, StoreError

if TYPE_CHECKING:
    from .publish import CheckpointRelay

log = logging.getLogger("fusion_prime.bridge.settlement")

PULL_TAG = b"fusion-prime/settlement-pull/v1"
PULL_WAIT_MS = 1000
PULL_LIMIT = 64
MAX_BATCH_BYTES = 900_000  # the canonical encoding caps one field at 1 MiB
CHECKPOINT_WAIT_SECONDS = 20.0  # a participant waits this long for its replica to reach the cycle
RESULTS_KEPT = 200_000
#: a relayed checkpoint not on-chain after this long is sent again (dropped, or the node's
#: endpoint lost it); before that it is in flight and not sent twice
RELAY_RESEND_SECONDS = 60.0
#: ``published_tx`` of a cycle found on-chain whose transaction the endpoint no longer serves
ON_CHAIN = "on-chain"
MAX_EVIDENCE_BYTES = 1_000_000  # a conflicting batch kept in the audit event up to this size
#: kinds of halt: a batch refused by a rule; one not verifiable in time (lifts if it verifies
#: later); a fork (two signed histories - only the operator can choose)
HALT_REFUSED, HALT_UNVERIFIED, HALT_FORKED = "refused", "unverified", "forked"


def _short(digest: bytes) -> str:
    return digest.hex()[:16] + "…"


def pull_digest(node_id: str, after: int, time_ms: int) -> bytes:
    return hashlib.sha256(Encoder().bytes(PULL_TAG).bytes(node_id.encode()).uint(after).uint(time_ms)
                          .finish()).digest()


@dataclass(frozen=True)
class Peer:
    node_id: str
    target: str  # host:port of its Bridge API (the Settlement service is served there too)
    cert_pem: bytes


class SettlementError(Exception):
    """A request the runtime cannot serve (not running, halted, coordinator unreachable)."""


class SettlementRuntime:
    def __init__(self, settings: SettlementSettings, *, db: Any, node_id: str, identity: PartyIdentity,
                 node_keys: dict[str, bytes], peers: Sequence[Peer], assets: Sequence[str],
                 sign: Callable[..., Awaitable[Any]] | None, key_id: bytes, signer_path: Sequence[int],
                 signer_address: str, chain_id: int, registry: str, funding: Any = None, payouts: Any = None,
                 relay: CheckpointRelay | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.node_id = node_id
        self.identity = identity
        self.node_keys = dict(node_keys)  # node id -> identity public key (the roster)
        self.peers = {p.node_id: p for p in peers if p.node_id != node_id}
        self.params = LedgerParams(assets=tuple(sorted(assets)), cycle_ms=int(settings.cycle_seconds * 1000),
                                   dispute_window_ms=int(settings.dispute_window_seconds * 1000),
                                   open_to=settings.open_to)
        self.store = SettlementStore(db, self.params)
        self.sign = sign
        self.key_id, self.signer_path = key_id, tuple(signer_path)
        self.signer_address, self.chain_id, self.registry = signer_address, chain_id, registry
        self.funding, self.payouts, self.relay = funding, payouts, relay
        #: (coordinator) cycle -> (when, tx) this node last sent it to the registry (not resent while in flight)
        # cycle -> (when last sent, every transaction sent for it): any one of them may be the one mined
        self._relayed: dict[int, tuple[float, tuple[str, ...]]] = {}
        self._relay_conflicts: set[int] = set()  # cycles whose published root is not this node's (logged once)
        self.clock = clock
        self.ledger: Ledger | None = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._queue: collections.deque[SignedInstruction] = collections.deque()
        self._results: collections.OrderedDict[tuple[bytes, str], tuple[Outcome, int]] = collections.OrderedDict()
        self._wake: trio.Event | None = None
        self._token: Any = None
        self._channels: dict[str, Any] = {}
        self._channel_lock = threading.Lock()
        #: asset -> balances + pending withdrawals after the last stored batch; read without the
        #: ledger's lock (the bridge's solvency checks call it from inside their own transactions)
        self._owed: dict[str, int] = {}
        self._stored_withdrawals: dict[bytes, Any] = {}
        self._moved_since_final = True  # (coordinator) anything to checkpoint since the last cycle
        self._checkpoint_due: trio.Event | None = None
        #: every naming of a divergent peer (the current set above clears when it agrees again)
        self.divergence_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.halted: str = ""  # why this node stopped following (empty: it follows)
        #: the halt, machine-readable: seq, coordinator, reason, kind, at (None: following)
        self.halt: dict[str, Any] | None = None
        #: (follower) a pulled batch this node cannot verify *yet*: seq, hash, reason, since
        self.waiting: dict[str, Any] | None = None
        self.divergent: dict[str, str] = {}  # node id -> why its checkpoint differs (coordinator's view)
        self.refusals: list[dict[str, Any]] = []
        self.signed_cycles = 0
        self.last_checkpoint_seconds = 0.0
        self._closing = False

    @property
    def coordinator(self) -> bool:
        return self.settings.coordinator == self.node_id

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        """Run until cancelled. A failure stops the ledger on this node (halted, reported in its
        status and log) but never the signer and bridge it runs beside."""
        try:
            await self._run()
        except Exception as exc:
            self.halted = f"settlement runtime failed: {type(exc).__name__}: {exc}"
            log_event(log, logging.CRITICAL, "settlement runtime stopped", node=self.node_id, error=self.halted)

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.ledger = await trio.to_thread.run_sync(self._load)
        await trio.to_thread.run_sync(self._resume_hooks)
        log_event(log, logging.INFO, "settlement running", node=self.node_id, role=self._role(),
                  head=self.ledger.seq, cycle=self.ledger.open_cycle)
        try:
            async with trio.open_nursery() as nursery:
                if self.coordinator:
                    self._wake = trio.Event()
                    nursery.start_soon(self._coordinate)
                    nursery.start_soon(self._sign_backlog)
                else:
                    nursery.start_soon(self._follow)
                    nursery.start_soon(self._adopt_signatures)
        finally:
            self._closing = True
            with self._changed:
                self._changed.notify_all()
            for ch in self._channels.values():
                ch.close()

    def _role(self) -> str:
        return "coordinator" if self.coordinator else "follower"

    def _decode(self, raw: bytes) -> SignedBatch:
        return decode_batch(raw, {self.settings.coordinator: self.node_keys[self.settings.coordinator]})

    def _load(self) -> Ledger:
        """The stored replica. An edited snapshot is not detected here but at the next checkpoint:
        the group will not sign this replica's root, and adopting the signed one rebuilds it."""
        return self.store.load(self._decode)

    def liabilities(self) -> dict[str, int]:
        """What the ledger owes per asset (sum of balances + pending withdrawals), lock-free."""
        return dict(self._owed)

    def _note_owed(self, ledger: Ledger, withdrawals: Any = None) -> None:
        self._owed = {a: bal + pending for a, (bal, pending) in ledger.liabilities().items()}
        if withdrawals is None:
            self._stored_withdrawals = dict(ledger.withdrawals)
        else:
            self._stored_withdrawals.update({w: ledger.withdrawals[w] for w in withdrawals if w in ledger.withdrawals})

    def withdrawal(self, withdrawal_id: bytes) -> Any:
        """An account withdrawal as of the last *stored* batch, lock-free (the payout co-signing
        hooks ask from inside their own database transactions)."""
        return self._stored_withdrawals.get(withdrawal_id)

    def _resume_hooks(self) -> None:
        assert self.ledger is not None
        self._note_owed(self.ledger)
        if self.payouts is not None:
            pending = [w for w in self.ledger.withdrawals.values() if w.status == "pending"]
            if pending:
                self.payouts.observe(pending)

    # ------------------------------------------------------------------ clients (gRPC threads)
    def submit(self, raw: bytes, wait_seconds: float = 10.0) -> tuple[Outcome, int]:
        """Order one signed instruction and return its outcome and batch. A follower forwards it."""
        return self.submit_many([raw], wait_seconds)[0]

    def submit_many(self, raws: Sequence[bytes], wait_seconds: float = 10.0) -> list[tuple[Outcome, int]]:
        """Order signed instructions in the given order; each gets its own outcome. Every one is
        checked (signature, canonical form) before any is queued: a bad one refuses the call."""
        try:
            instructions = [SignedInstruction.from_bytes(raw) for raw in raws]
        except InstructionError as exc:
            raise ValueError(str(exc)) from None
        if not self.coordinator:
            started = time.monotonic()
            results = self._forward(list(raws), wait_seconds)
            # read-your-writes at this node: answer once this replica applied the batch too
            target = max((seq for _, seq in results), default=0)
            with self._changed:
                while self.ledger is not None and self.ledger.seq < target and not self.halted \
                        and time.monotonic() - started < wait_seconds:
                    self._changed.wait(0.5)
            return results
        keys = [(i.body.client, i.body.key) for i in instructions]
        deadline = time.monotonic() + wait_seconds
        with self._changed:
            if self.ledger is None:
                raise SettlementError("the settlement ledger is not running yet")
            for k in keys:  # wait for *this* submission's outcome, not an earlier one under the key
                self._results.pop(k, None)
            self._queue.extend(instructions)
        self._poke()
        with self._changed:
            while True:
                found = [self._results.get(k) for k in keys]
                if all(f is not None and f[1] > 0 for f in found):
                    return [f for f in found if f is not None]
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    raise TimeoutError("not every instruction was ordered in time; send them again (idempotent)")
                self._changed.wait(left)

    def _poke(self) -> None:
        if self._token is not None and self._wake is not None:
            try:
                trio.from_thread.run_sync(self._wake.set, trio_token=self._token)
            except (trio.RunFinishedError, RuntimeError):
                pass

    def _forward(self, raws: list[bytes], wait_seconds: float) -> list[tuple[Outcome, int]]:
        stub = self._stub(self.settings.coordinator)
        try:
            r = stub.SubmitMany(settlement_pb2.SubmitManyRequest(instructions=raws, wait_ms=int(wait_seconds * 1000)),
                                timeout=wait_seconds + 5, wait_for_ready=True)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise ValueError(exc.details()) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(exc.details()) from None
            raise SettlementError(f"the coordinator {self.settings.coordinator} did not answer: "
                                  f"{code.name if code else 'UNKNOWN'}: {exc.details()}") from None
        out = []
        for raw, one in zip(raws, r.results, strict=True):
            body = SignedInstruction.from_bytes(raw).body
            out.append((Outcome(0, one.kind, body.client, body.key, one.accepted, one.reason, bytes(one.ref),
                                one.duplicate), one.batch_seq))
        return out

    def _stub(self, node_id: str) -> Any:
        peer = self.peers.get(node_id)
        if peer is None:
            raise SettlementError(f"no [[bridge.peers]] entry for {node_id}")
        with self._channel_lock:
            ch = self._channels.get(node_id)
            if ch is None:
                creds = grpc.ssl_channel_credentials(root_certificates=peer.cert_pem)
                # a peer that was down must be reached soon after it is back: gRPC's default
                # reconnect back-off grows to two minutes and fails every call meanwhile
                ch = grpc.secure_channel(peer.target, creds, options=[
                    ("grpc.ssl_target_name_override", node_id), ("grpc.max_receive_message_length", 64 << 20),
                    ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2000)])
                self._channels[node_id] = ch
        return settlement_pb2_grpc.SettlementStub(ch)

    def read(self, fn: Callable[[Ledger], Any]) -> Any:
        """Run ``fn`` on the replica between batches."""
        with self._lock:
            if self.ledger is None:
                raise SettlementError("the settlement ledger is not running yet")
            return fn(self.ledger)

    def wait_change(self, after_seq: int, timeout: float) -> int:
        with self._changed:
            if self.ledger is not None and self.ledger.seq <= after_seq and not self._closing:
                self._changed.wait(timeout)
            return self.ledger.seq if self.ledger is not None else 0

    # ------------------------------------------------------------------ coordinator
    async def _coordinate(self) -> None:
        assert self._wake is not None
        interval = self.settings.batch_interval_seconds
        while True:
            with trio.move_on_after(max(interval, 0.5)):
                await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(interval)  # let a burst gather into one batch
            try:
                while await trio.to_thread.run_sync(self._make_batch):
                    pass
            except Exception as exc:  # a database error: the replica was reloaded; try again
                log_event(log, logging.ERROR, "settlement batch failed", node=self.node_id,
                          error=f"{type(exc).__name__}: {exc}")
                await trio.sleep(1.0)

    def _make_batch(self) -> bool:
        """(worker thread) Cut, apply, store and announce one batch; True if more work is queued."""
        with self._changed:
            ledger = self.ledger
            assert ledger is not None
            now_ms = max(int(self.clock() * 1000), ledger.time_ms)
            system: list[SystemEntry] = []
            if self.funding is not None:
                system += self.funding.pending_credits(lambda d: d in ledger.credited,
                                                       eligible=lambda c: c.party in ledger.parties)
            if self.payouts is not None:
                system += self.payouts.finished()
            entries: list[Any] = list(system)
            size = 0
            while self._queue and len(entries) < self.settings.max_batch_entries and size < MAX_BATCH_BYTES:
                instruction = self._queue.popleft()
                size += len(instruction.to_bytes()) + 8
                entries.append(instruction)
            clock_entry: list[Any] = []
            if ledger.finalize_due(now_ms):
                clock_entry = [Finalize(ledger.awaiting_final)]
            elif ledger.cutoff_due(now_ms) and (self._moved_since_final or entries):
                # a cycle in which nothing happened is not cut: no empty checkpoints every cycle
                clock_entry = [Cutoff(ledger.open_cycle)]
            deadline_due = ledger.deadline_due(now_ms)
            if not entries and not clock_entry and not deadline_due:
                return False  # (an empty batch when a deadline passed: time moves only with batches)
            batch = Batch(ledger.seq + 1, ledger.head, now_ms, self.node_id, tuple(entries + clock_entry))
            signed = sign_batch(self.identity, batch)
            try:
                applied = self._apply_and_store(signed)
            except BatchRefused as exc:
                # our own view refused one of our own system entries (a reorg between asking and
                # applying): order the clients' instructions without them and try again next tick
                log_event(log, logging.WARNING, "own batch refused; retrying without system entries",
                          node=self.node_id, reason=exc.reason)
                entries = [e for e in entries if isinstance(e, SignedInstruction)]
                if not entries:
                    return False
                batch = Batch(ledger.seq + 1, ledger.head, now_ms, self.node_id, tuple(entries))
                applied = self._apply_and_store(sign_batch(self.identity, batch))
            if self.payouts is not None:
                done = [e.withdrawal_id for e in batch.entries if isinstance(e, WithdrawalPaid | WithdrawalReturned)]
                if done:
                    self.payouts.reported(done)
            return bool(self._queue) or applied.finalized > 0

    # ------------------------------------------------------------------ every node
    def _verify(self, entry: SystemEntry) -> str | None:
        if isinstance(entry, Credit):
            if self.funding is None:
                return "this node does not credit deposits (no bridge funding)"
            return self.funding.verify_credit(entry)
        if isinstance(entry, WithdrawalPaid | WithdrawalReturned):
            if self.payouts is None:
                return "this node does not pay account withdrawals"
            return self.payouts.verify(entry)
        return None

    def _apply_and_store(self, signed: SignedBatch) -> Applied:
        """(worker thread, lock held) The one place a batch enters the replica."""
        ledger = self.ledger
        assert ledger is not None
        applied = ledger.apply(signed.batch, verify=self._verify)
        try:
            snapshot = signed.batch.seq % self.settings.snapshot_every == 0
            checkpoint = None
            if applied.finalized:  # stored with the batch that finalises it, never apart from it
                own = self._own_checkpoint(ledger, applied.finalized, signed.batch.seq, signed.hash,
                                           signed.batch.time_ms)
                checkpoint = (own.cycle, own.root, own.to_bytes(), self._accounts_json(ledger))
            self.store.append(signed, applied, ledger, snapshot=snapshot, checkpoint=checkpoint)
        except BaseException:
            # the replica must not run ahead of its disk: reload what is stored
            self.ledger = self.store.load(self._decode)
            raise
        for o in applied.outcomes:
            if o.kind in ("credit", "withdrawal-paid", "withdrawal-returned", "cutoff", "finalize"):
                continue
            self._results[(o.client, o.key)] = (o, signed.batch.seq)
            self._results.move_to_end((o.client, o.key))
        while len(self._results) > RESULTS_KEPT:
            self._results.popitem(last=False)
        if applied.finalized:
            self._own_checkpoint_stored(applied.finalized, signed)
        if applied.accounts or applied.withdrawals:
            self._note_owed(ledger, applied.withdrawals)
        if applied.finalized:
            # the checkpoint covers every change so far; only net trades waiting for a cut-off
            # (affirmed during the window, or rolled) make the next cycle worth cutting
            self._moved_since_final = any(t.mode == NET and t.status == AFFIRMED for t in ledger.trades.values())
        elif applied.accounts or applied.trades or applied.withdrawals or applied.parties:
            self._moved_since_final = True
        self._changed.notify_all()
        self._after(signed.batch, applied)
        return applied

    def _after(self, batch: Batch, applied: Applied) -> None:
        credits = [e for e in batch.entries if isinstance(e, Credit)]
        if credits and self.funding is not None:
            try:
                self.funding.credited(credits)
            except Exception as exc:  # custody bookkeeping retries on the next start (idempotent)
                log_event(log, logging.ERROR, "credited deposits not recorded as custody", error=str(exc))
        if self.payouts is not None and applied.withdrawals:
            assert self.ledger is not None
            new = [w for wid in applied.withdrawals
                   if (w := self.ledger.withdrawals.get(wid)) is not None and w.status == "pending"]
            if new:
                self.payouts.observe(new)

    @staticmethod
    def _root_of(ledger: Ledger) -> bytes:
        return build_tree(AccountLeaf(p, a, b, h) for p, a, b, h in ledger.account_rows()).root

    @staticmethod
    def _accounts_json(ledger: Ledger) -> bytes:
        return json.dumps(sorted([p.hex(), a, str(b), str(h)] for p, a, b, h in ledger.account_rows()),
                          separators=(",", ":")).encode()

    def _own_checkpoint(self, ledger: Ledger, cycle: int, batch_seq: int, batch_hash: bytes, time_ms: int
                        ) -> cp.Checkpoint:
        tree = build_tree(AccountLeaf(p, a, b, h) for p, a, b, h in ledger.account_rows())
        prev_row = self.store.checkpoint(cycle - 1) if cycle > 1 else None
        previous = cp.Checkpoint.from_bytes(prev_row["checkpoint"]) if prev_row else None
        if cycle > 1 and previous is None:
            raise SettlementError(f"no checkpoint of cycle {cycle - 1} to chain cycle {cycle} to")
        pending = {a: p for a, (_, p) in ledger.liabilities().items() if p}
        return cp.next_checkpoint(previous, tree, batch_seq=batch_seq, batch_hash=batch_hash, pending=pending,
                                  time_ms=time_ms)

    def _own_checkpoint_stored(self, cycle: int, signed: SignedBatch) -> None:
        """(the batch and its checkpoint stored) Wake the signing; say so."""
        row = self.store.checkpoint(cycle)
        assert row is not None
        if self._checkpoint_due is not None and self._token is not None:
            try:
                trio.from_thread.run_sync(self._checkpoint_due.set, trio_token=self._token)
            except (trio.RunFinishedError, RuntimeError):
                pass
        log_event(log, logging.INFO, "settlement cycle finalised", node=self.node_id, cycle=cycle,
                  root=row["root"].hex(), batch=signed.batch.seq)

    # ------------------------------------------------------------------ checkpoint signing
    async def _sign_backlog(self) -> None:
        """(coordinator) Sign every finalised cycle's checkpoint, in order, and relay every signed
        one the registry does not hold yet - again after a failed relay or a restart."""
        self._checkpoint_due = trio.Event()
        while True:
            todo = await trio.to_thread.run_sync(lambda: self.store.checkpoints(signed=False))
            for row in todo:
                ok = await self._sign_checkpoint(row)
                if not ok:
                    break
            behind = await trio.to_thread.run_sync(self._publish_backlog)
            with trio.move_on_after(1.0 if todo or behind else 5.0):  # woken at once by a finalised cycle
                await self._checkpoint_due.wait()
            self._checkpoint_due = trio.Event()

    def _publish_backlog(self) -> bool:
        """(worker thread, coordinator) Relay the signed cycles after the registry's last one, in
        cycle order; note the ones someone else relayed. True while a signed cycle is not on-chain."""
        if self.relay is None:
            return False
        rows = self.store.checkpoints(signed=True, published=False)
        if not rows:
            return False
        try:
            self._relay_rows(rows)
        except Exception as exc:  # the endpoint is down or answered nonsense: the next pass asks again
            log_event(log, logging.WARNING, "settlement registry unreachable", error=f"{type(exc).__name__}: {exc}")
            return True
        return bool(self.store.checkpoints(signed=True, published=False))

    def _relay_rows(self, rows: list[dict[str, Any]]) -> None:
        assert self.relay is not None
        last = self.relay.last_cycle()
        for row in rows:
            cycle = row["cycle"]
            if cycle <= last:  # on-chain already: relayed by another node or before a restart
                root = self.relay.root_of(cycle)
                if root == row["root"]:
                    # our own relay: its receipt says so without a log scan - unless it was dropped
                    # or replaced and another relayer's transaction published the cycle
                    sent = self._relayed.pop(cycle, (0.0, ()))[1]
                    tx = next((t for t in reversed(sent) if self.relay.published_by(t, cycle)), None)
                    self.store.set_published(cycle, tx or self.relay.publication_tx(cycle) or ON_CHAIN)
                elif cycle not in self._relay_conflicts:
                    self._relay_conflicts.add(cycle)
                    log_event(log, logging.CRITICAL, "the registry holds another root for a cycle than this node's "
                              "signed checkpoint", cycle=cycle, registry=root.hex() if root else None,
                              ours=row["root"].hex())
                    self.store.record_event("settlement.registry_conflict", {
                        "cycle": cycle, "registry": root.hex() if root else None, "ours": row["root"].hex()})
                continue
            if cycle != last + 1:
                break  # an earlier cycle is not signed here yet
            earlier = self._relayed.get(cycle)
            if earlier is not None and time.monotonic() - earlier[0] < RELAY_RESEND_SECONDS:
                break  # in flight: not sent twice before it could be mined
            assert row["signature"] is not None
            signed = cp.SignedCheckpoint(cp.Checkpoint.from_bytes(row["checkpoint"]), row["signature"],
                                         self.chain_id, self.registry)
            try:
                tx = self.relay.publish(signed)
            except Exception as exc:  # retried next pass; the signed file exists
                log_event(log, logging.WARNING, "settlement checkpoint not published", cycle=cycle,
                          error=f"{type(exc).__name__}: {exc}")
                return
            self._relayed[cycle] = (time.monotonic(), (earlier[1] if earlier else ()) + (tx,))
            log_event(log, logging.INFO, "settlement checkpoint relayed", cycle=cycle, tx=tx)
            last = cycle  # the next one chains onto it (estimated against the pending state)

    async def _sign_checkpoint(self, row: dict[str, Any]) -> bool:
        if self.sign is None:
            return False
        started = time.monotonic()
        checkpoint = cp.Checkpoint.from_bytes(row["checkpoint"])
        # every peer's own checkpoint of the cycle first: one that differs is named now, whether
        # or not the signing set below includes it (a 2-of-3 group signs without it)
        await trio.to_thread.run_sync(self._cross_check, checkpoint)
        digest = checkpoint.digest(self.chain_id, self.registry)
        request = encode_checkpoint_request(row["checkpoint"])
        outcome = await self.sign(self.key_id, digest, self.signer_path, client_request=request)
        if not outcome.ok:
            log_event(log, logging.WARNING, "checkpoint not signed", node=self.node_id, cycle=row["cycle"],
                      status=outcome.status, reason=outcome.reason, culprits=list(outcome.culprits))
            self.refusals.append({"cycle": row["cycle"], "reason": outcome.reason, "at": time.time()})
            del self.refusals[:-50]
            await trio.sleep(2.0)
            return False
        sig = outcome.output
        signature = encode_signature(sig.r, sig.s, sig.recovery_id)
        signed = cp.SignedCheckpoint(checkpoint, signature, self.chain_id, self.registry)
        if not cp.verify_signed_checkpoint(signed, self.signer_address):
            log_event(log, logging.ERROR, "checkpoint signature does not recover to the group key", cycle=row["cycle"])
            return False
        await trio.to_thread.run_sync(self.store.set_signature, row["cycle"], signature)
        self.signed_cycles += 1
        self.last_checkpoint_seconds = time.monotonic() - started
        log_event(log, logging.INFO, "settlement checkpoint signed", node=self.node_id, cycle=row["cycle"],
                  root=checkpoint.root.hex(), seconds=round(self.last_checkpoint_seconds, 3))
        await trio.to_thread.run_sync(self._after_signed, signed)
        return True

    def _after_signed(self, signed: cp.SignedCheckpoint) -> None:
        """(worker thread) Write the file; :meth:`_publish_backlog` relays it on-chain."""
        cycle = signed.checkpoint.cycle
        if self.settings.checkpoint_dir is not None:
            self.settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            cp.write_checkpoint_file(self.settings.checkpoint_dir / f"checkpoint-{cycle:08d}.json", signed)

    def _cross_check(self, checkpoint: cp.Checkpoint) -> None:
        """(worker thread, coordinator) Ask every peer, in parallel, for its checkpoint of the cycle."""
        answers: dict[str, str | None] = {}

        def ask(node_id: str) -> None:
            answers[node_id] = self._peer_disagrees(node_id, checkpoint)
        threads = [threading.Thread(target=ask, args=(n,), daemon=True) for n in sorted(self.peers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CHECKPOINT_WAIT_SECONDS + 10)
        for node_id, why in sorted(answers.items()):
            if why:
                self.divergent[node_id] = why
                self.divergence_log.append({"node": node_id, "cycle": checkpoint.cycle, "reason": why,
                                            "at": time.time()})
                self.store.record_event("settlement.divergent", {"node": node_id, "cycle": checkpoint.cycle,
                                                                 "reason": why})
                log_event(log, logging.ERROR, "settlement replica diverges", node=node_id, cycle=checkpoint.cycle,
                          reason=why)
            elif why is not None:
                self.divergent.pop(node_id, None)

    def _peer_disagrees(self, node_id: str, checkpoint: cp.Checkpoint) -> str | None:
        """'' if the peer holds the same checkpoint, a reason if not, None if it cannot be asked."""
        deadline = time.monotonic() + CHECKPOINT_WAIT_SECONDS
        while True:
            try:
                r = self._stub(node_id).GetCheckpoint(settlement_pb2.CheckpointRequest(cycle=checkpoint.cycle),
                                                      timeout=5)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # halted short of the cycle: no wait
                    return exc.details() or f"has no checkpoint of cycle {checkpoint.cycle} (halted)"
                retry = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if exc.code() in retry and time.monotonic() < deadline:
                    time.sleep(0.05)  # not applied the finalising batch yet, or restarting
                    continue
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return f"has no checkpoint of cycle {checkpoint.cycle} (behind or halted)"
                return None
            except SettlementError:
                return None
            if bytes(r.checkpoint) == checkpoint.to_bytes():
                return ""
            try:
                theirs = cp.Checkpoint.from_bytes(bytes(r.checkpoint))
            except cp.CheckpointError as exc:
                return f"cycle {checkpoint.cycle}: unreadable checkpoint ({exc})"
            return f"cycle {checkpoint.cycle}: {checkpoint_difference(theirs, checkpoint, 'its', 'ours')}"

    def authorize_checkpoint(self, digest: bytes, path: Sequence[int], raw_checkpoint: bytes, coordinator: str
                             ) -> tuple[bool, str]:
        """(worker thread, participant) Co-sign only the checkpoint this replica computed itself."""
        if coordinator != self.settings.coordinator:
            return False, f"settlement: only {self.settings.coordinator} proposes checkpoints"
        if tuple(path) != self.signer_path:
            return False, "settlement: checkpoints are signed at the Gateway signer's path"
        try:
            proposed = cp.Checkpoint.from_bytes(raw_checkpoint)
        except cp.CheckpointError as exc:
            return False, f"settlement: malformed checkpoint: {exc}"
        if digest != proposed.digest(self.chain_id, self.registry):
            return False, "settlement: the digest is not this checkpoint's"
        deadline = time.monotonic() + CHECKPOINT_WAIT_SECONDS
        while True:
            mine = self.store.checkpoint(proposed.cycle)
            if mine is not None or time.monotonic() > deadline or self.halted:
                break
            time.sleep(0.1)
        if mine is None:
            why = f"this replica has not finalised cycle {proposed.cycle}" + (f" (halted: {self.halted})"
                                                                              if self.halted else "")
        elif mine["checkpoint"] != raw_checkpoint:
            why = (f"replica diverges at cycle {proposed.cycle}: "
                   + checkpoint_difference(cp.Checkpoint.from_bytes(mine["checkpoint"]), proposed, "mine", "proposed"))
        else:
            return True, ""
        self.store.record_event("settlement.checkpoint_refused", {"cycle": proposed.cycle, "reason": why,
                                                                  "coordinator": coordinator,
                                                                  "root": proposed.root.hex()})
        log_event(log, logging.ERROR, "settlement checkpoint refused", node=self.node_id, coordinator=coordinator,
                  reason=why)
        return False, f"settlement: {why}"

    # ------------------------------------------------------------------ follower
    async def _follow(self) -> None:
        delay = 0.5
        while True:
            # a batch this node could not verify in time keeps being retried (the fact it names
            # may still appear, and then the halt lifts); any other halt waits for the operator
            if self.halted and not (self.halt is not None and self.halt["kind"] == HALT_UNVERIFIED):
                await trio.sleep(1.0)
                continue
            try:
                batches, head = await trio.to_thread.run_sync(self._pull)
                delay = 0.5
            except (grpc.RpcError, SettlementError) as exc:
                log_event(log, logging.DEBUG, "settlement pull failed", error=str(exc))
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            for raw in batches:
                if not await trio.to_thread.run_sync(self._apply_remote, raw, head):
                    await trio.sleep(1.0)
                    break

    def _pull(self) -> tuple[list[bytes], int]:
        assert self.ledger is not None
        after = self.ledger.seq
        now_ms = int(self.clock() * 1000)
        request = settlement_pb2.PullRequest(node_id=self.node_id, after=after, limit=PULL_LIMIT,
                                             wait_ms=PULL_WAIT_MS, time_ms=now_ms,
                                             signature=self.identity.sign(pull_digest(self.node_id, after, now_ms)))
        r = self._stub(self.settings.coordinator).PullBatches(request, timeout=PULL_WAIT_MS / 1000 + 10)
        return [bytes(b) for b in r.batches], int(r.head)

    def _apply_remote(self, raw: bytes, head: int) -> bool:
        """(worker thread) One pulled batch; False to stop this round (retry later or halted).

        Everything a coordinator could lie with is checked here or in the ledger before the batch
        touches the replica: its signature, its time (never ahead of this node's clock by more than
        the allowed skew; never before the previous batch - the ledger), its place in the chain
        (a batch that does not follow the one this node applied, or a second, different batch
        under a number already seen, is a fork: proof that the coordinator signed two histories),
        and every entry against this node's own view."""
        try:
            signed = self._decode(raw)
        except Exception as exc:
            self._halt(0, f"an unreadable or unsigned batch from the coordinator: {exc}")
            return False
        batch = signed.batch
        now_ms = int(self.clock() * 1000)
        skew = int(self.settings.max_clock_skew_seconds * 1000)
        if batch.time_ms > now_ms + skew:
            self._halt(batch.seq, f"batch {batch.seq} is timed {batch.time_ms - now_ms} ms ahead of this node's clock "
                                  f"(at most {skew} ms allowed)")
            return False
        if batch.seq == head and batch.time_ms < now_ms - 10 * skew and batch.seq > 1:
            log_event(log, logging.WARNING, "the coordinator's newest batch is old", seq=batch.seq)
        with self._changed:
            assert self.ledger is not None
            if batch.seq <= self.ledger.seq:
                stored = self.store.batch_hash(batch.seq)
                if stored is not None and stored != signed.hash:
                    self._fork(batch.seq, f"the coordinator served a second, different batch {batch.seq} "
                                          f"(this node applied {_short(stored)}, now {_short(signed.hash)})", signed)
                    return False
                return True
            if batch.seq == self.ledger.seq + 1 and batch.prev_hash != self.ledger.head:
                self._fork(batch.seq, f"batch {batch.seq} follows a batch {self.ledger.seq} with hash "
                                      f"{_short(batch.prev_hash)}, but the batch {self.ledger.seq} the coordinator "
                                      f"served this node has hash {_short(self.ledger.head)}", signed)
                return False
            waiting = self.waiting
            if waiting is not None and waiting["seq"] == batch.seq and waiting["hash"] != signed.hash.hex():
                self._fork(batch.seq, f"the coordinator served two different batches {batch.seq} "
                                      f"({_short(bytes.fromhex(waiting['hash']))} and {_short(signed.hash)})", signed)
                return False
            try:
                self._apply_and_store(signed)
            except BatchRefused as exc:
                if exc.retry:
                    self._unverified(signed, exc.reason)
                    return False
                self._halt(batch.seq, exc.reason)
                return False
            if waiting is not None:
                self.waiting = None
                if self.halt is not None and self.halt["kind"] == HALT_UNVERIFIED:
                    self.halted, self.halt = "", None
                    log_event(log, logging.WARNING, "settlement batch verified after all; following again",
                              node=self.node_id, seq=batch.seq)
        return True

    def _unverified(self, signed: SignedBatch, reason: str) -> None:
        """(lock held) A batch this node cannot verify *yet* (a credit of a deposit it has not seen
        at depth, a gap): retried, shown in the status with the coordinator named at once, and
        refused as a halt once ``unverified_batch_seconds`` passed - a coordinator cannot stall a
        follower silently with a fact nobody else can see."""
        batch = signed.batch
        now = self.clock()
        if self.waiting is None or self.waiting["seq"] != batch.seq:
            self.waiting = {"seq": batch.seq, "hash": signed.hash.hex(), "coordinator": self.settings.coordinator,
                            "reason": reason, "since": now}
            log_event(log, logging.WARNING, "settlement batch waits for this node's view", node=self.node_id,
                      coordinator=self.settings.coordinator, seq=batch.seq, reason=reason)
        self.waiting["reason"] = reason
        waited = now - self.waiting["since"]
        bound = self.settings.unverified_batch_seconds
        if waited >= bound and not self.halted:
            self._halt(batch.seq, f"not verifiable here after {waited:.0f} s: {reason}", kind=HALT_UNVERIFIED)

    def _fork(self, seq: int, reason: str, conflicting: SignedBatch | None) -> None:
        """(lock held) Two signed histories from one coordinator: halt for good (a resync replays
        this node's own log, which is one of them) and keep the conflicting batch - signed by the
        coordinator, beside the one in this node's log - as the evidence."""
        evidence: dict[str, Any] = {}
        if conflicting is not None:
            raw = conflicting.to_bytes()
            evidence = {"conflicting_hash": conflicting.hash.hex(),
                        "conflicting_batch": raw.hex() if len(raw) <= MAX_EVIDENCE_BYTES else ""}
        if self.halt is not None and self.halt["kind"] == HALT_FORKED:
            return  # named once
        self._halt(seq, f"the coordinator forked the ledger: {reason}", kind=HALT_FORKED, evidence=evidence)

    def _halt(self, seq: int, reason: str, *, kind: str = HALT_REFUSED, evidence: dict[str, Any] | None = None
              ) -> None:
        coordinator = self.settings.coordinator
        self.halted = (f"batch {seq} from coordinator {coordinator} refused: {reason}" if seq
                       else f"coordinator {coordinator}: {reason}")
        self.halt = {"seq": seq, "coordinator": coordinator, "reason": reason, "kind": kind, "at": time.time()}
        self.store.record_event("settlement.batch_refused", {"seq": seq, "coordinator": coordinator, "kind": kind,
                                                             "reason": reason, **(evidence or {})})
        log_event(log, logging.CRITICAL, "settlement batch refused; this node stops following the coordinator",
                  node=self.node_id, coordinator=coordinator, seq=seq, kind=kind, reason=reason)

    async def _adopt_signatures(self) -> None:
        """(follower) Take the group's signatures of the checkpoints; a different root → resync."""
        while True:
            await trio.sleep(1.0)
            try:
                await trio.to_thread.run_sync(self._adopt_once)
            except (grpc.RpcError, SettlementError) as exc:
                log_event(log, logging.DEBUG, "checkpoint adoption failed", error=str(exc))

    def _adopt_once(self) -> None:
        if self.halt is not None and self.halt["kind"] == HALT_FORKED:
            return  # its own log is one of two signed histories: replaying it proves nothing
        for row in self.store.checkpoints(signed=False):
            r = self._stub(self.settings.coordinator).GetCheckpoint(
                settlement_pb2.CheckpointRequest(cycle=row["cycle"]), timeout=5)
            if not r.signature:
                return
            signed = cp.SignedCheckpoint(cp.Checkpoint.from_bytes(bytes(r.checkpoint)), bytes(r.signature),
                                         self.chain_id, self.registry)
            if not cp.verify_signed_checkpoint(signed, self.signer_address):
                log_event(log, logging.ERROR, "the coordinator serves a checkpoint the group key did not sign",
                          cycle=row["cycle"])
                return
            if signed.checkpoint.to_bytes() == row["checkpoint"]:
                self.store.set_signature(row["cycle"], bytes(r.signature))
                continue
            self._adopt_other(row, signed.checkpoint)
            return

    def _adopt_other(self, row: dict[str, Any], group: cp.Checkpoint) -> None:
        """The group signed another checkpoint of this cycle than this replica computed. If this
        node's batch log holds the very batch the group's checkpoint ends with, the log is the
        group's and only the replica drifted (an edited snapshot): rebuild it from the log. If not,
        the coordinator served this node another batch than the group applied - a fork no replay
        of this node's log can mend: halt, naming it."""
        cycle = row["cycle"]
        with self._changed:
            mine = self.store.batch_hash(group.batch_seq)
            if mine != group.batch_hash:
                applied = (f"batch {group.batch_seq} {_short(mine)}" if mine is not None
                           else f"no batch {group.batch_seq}")
                self._fork(group.batch_seq, f"the group signed cycle {cycle} after batch {group.batch_seq} "
                                            f"{_short(group.batch_hash)}, but this node's log holds {applied}",
                           None)
                return
        log_event(log, logging.ERROR, "the group signed another root than this replica's; resyncing",
                  node=self.node_id, cycle=cycle)
        self.resync()
        again = self.store.checkpoint(cycle)
        if again is None or again["checkpoint"] != group.to_bytes():
            with self._changed:
                self._fork(group.batch_seq, f"rebuilt from its own log, which ends cycle {cycle} with the group's "
                                            "batch, this replica still computes another checkpoint (are this node's "
                                            "[bridge.settlement] parameters the network's?)", None)

    # ------------------------------------------------------------------ resync
    def resync(self) -> None:
        """Rebuild the replica from the signed batch log and check it against signed checkpoints.
        A fork halt stays: the log rebuilt from is one of the two histories."""
        with self._changed:
            try:
                self.ledger = self._rebuild()
            except (SettlementError, StoreError) as exc:
                self._fork(self.ledger.seq if self.ledger is not None else 0, f"resync failed: {exc}", None)
                raise SettlementError(str(exc)) from None
            self._note_owed(self.ledger)
            if self.halt is None or self.halt["kind"] != HALT_FORKED:
                self.halted, self.halt = "", None
            self._changed.notify_all()

    def _rebuild(self) -> Ledger:
        """Replay every stored batch from genesis (each coordinator signature re-checked) and
        recompute every finalised cycle's checkpoint. One the group signed must come out
        identical — else the log itself is damaged and the node stays halted; an unsigned one of
        this node's that differs (it was computed from an edited replica) is replaced."""
        ledger = Ledger(self.params)
        for signed in self.store.iter_batches(0, self._decode):
            applied = ledger.apply(signed.batch)
            if not applied.finalized:
                continue
            mine = self._own_checkpoint(ledger, applied.finalized, signed.batch.seq, signed.hash,
                                        signed.batch.time_ms)
            row = self.store.checkpoint(applied.finalized)
            if row is not None and row["checkpoint"] != mine.to_bytes():
                if row["signature"] is not None:
                    raise SettlementError(f"the signed batch log does not reproduce the group-signed checkpoint of "
                                          f"cycle {applied.finalized}: the batch log itself is damaged")
                self.store.record_event("settlement.checkpoint_replaced", {
                    "cycle": applied.finalized, "was": row["root"].hex(), "now": mine.root.hex()})
            self.store.put_checkpoint(mine.cycle, mine.root, mine.to_bytes(), self._accounts_json(ledger),
                                      replace=True)
        self.store.put_snapshot(ledger)
        self.store.record_event("settlement.resynced", {"seq": ledger.seq, "cycle": ledger.open_cycle})
        log_event(log, logging.WARNING, "settlement replica rebuilt from the signed batch log", node=self.node_id,
                  head=ledger.seq)
        return ledger

    # ------------------------------------------------------------------ serving peers
    def batches_after(self, node_id: str, after: int, time_ms: int, signature: bytes, limit: int, wait_ms: int
                      ) -> tuple[list[bytes], int]:
        """(gRPC thread) A peer's pull: authenticated by its identity key, long-polled."""
        key = self.node_keys.get(node_id)
        if key is None or not verify_signature(key, pull_digest(node_id, after, time_ms), signature):
            raise PermissionError("pull requests are signed by a roster node's identity key")
        if abs(time_ms - int(self.clock() * 1000)) > 300_000:
            raise PermissionError("pull request too old or from the future")
        head = self.wait_change(after, wait_ms / 1000) if wait_ms else self.read(lambda led: led.seq)
        return self.store.raw_batches(after, min(max(limit, 1), PULL_LIMIT)), head

    def status(self) -> dict[str, Any]:
        with self._lock:
            led = self.ledger
            out: dict[str, Any] = {"node": self.node_id, "role": self._role(),
                                   "coordinator": self.settings.coordinator, "halted": self.halted,
                                   "halt": dict(self.halt) if self.halt else None,
                                   "waiting": dict(self.waiting) if self.waiting else None,
                                   "divergent": dict(self.divergent), "divergence_log": list(self.divergence_log),
                                   "refusals": list(self.refusals[-10:]),
                                   "signed_cycles": self.signed_cycles,
                                   "last_checkpoint_seconds": round(self.last_checkpoint_seconds, 3)}
            if led is not None:
                out.update({"head": led.seq, "open_cycle": led.open_cycle, "awaiting_final": led.awaiting_final,
                            "parties": len(led.parties), "trades": len(led.trades), "queued": len(self._queue)})
        return out


def checkpoint_difference(a: cp.Checkpoint, b: cp.Checkpoint, a_name: str, b_name: str) -> str:
    """What two checkpoints of one cycle disagree on, in words: the root (balances differ), and
    the batch each ends with (a different batch under one number is a fork of the batch log)."""
    parts = []
    if a.root != b.root:
        parts.append(f"{a_name} root {a.root.hex()} != {b_name} {b.root.hex()}")
    if (a.batch_seq, a.batch_hash) != (b.batch_seq, b.batch_hash):
        parts.append(f"{a_name} ends with batch {a.batch_seq} {_short(a.batch_hash)}, {b_name} with batch "
                     f"{b.batch_seq} {_short(b.batch_hash)}")
    if a.prev_root != b.prev_root:
        parts.append(f"{a_name} follows root {a.prev_root.hex()}, {b_name} {b.prev_root.hex()}")
    if a.totals != b.totals or a.time_ms != b.time_ms:
        parts.append(f"totals or time differ ({a_name} {a.time_ms} ms, {b_name} {b.time_ms} ms)")
    return "; ".join(parts) or "the encodings differ"


CHECKPOINT_REQUEST_TAG = b"FPSETTLE"


def encode_checkpoint_request(raw_checkpoint: bytes) -> bytes:
    """What a checkpoint sign proposal carries in ``client_request`` (never a wallet request)."""
    return CHECKPOINT_REQUEST_TAG + raw_checkpoint


def decode_checkpoint_request(raw: bytes) -> bytes | None:
    return raw[len(CHECKPOINT_REQUEST_TAG):] if raw.startswith(CHECKPOINT_REQUEST_TAG) else None
