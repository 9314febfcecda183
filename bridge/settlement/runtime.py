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
from typing import Any

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
from .store import SettlementStore

log = logging.getLogger("fusion_prime.bridge.settlement")

PULL_TAG = b"fusion-prime/settlement-pull/v1"
PULL_WAIT_MS = 1000
PULL_LIMIT = 64
MAX_BATCH_BYTES = 900_000  # the canonical encoding caps one field at 1 MiB
CHECKPOINT_WAIT_SECONDS = 20.0  # a participant waits this long for its replica to reach the cycle
RESULTS_KEPT = 200_000


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
                 publish: Callable[[cp.SignedCheckpoint], str] | None = None,
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
        self.funding, self.payouts, self.publish = funding, payouts, publish
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
            self.store.append(signed, applied, ledger, snapshot=snapshot)
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
            self._store_own_checkpoint(ledger, applied, signed)
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

    def _store_own_checkpoint(self, ledger: Ledger, applied: Applied, signed: SignedBatch) -> None:
        checkpoint = self._own_checkpoint(ledger, applied.finalized, signed.batch.seq, signed.hash,
                                          signed.batch.time_ms)
        self.store.put_checkpoint(checkpoint.cycle, checkpoint.root, checkpoint.to_bytes(), self._accounts_json(ledger))
        if self._checkpoint_due is not None and self._token is not None:
            try:
                trio.from_thread.run_sync(self._checkpoint_due.set, trio_token=self._token)
            except (trio.RunFinishedError, RuntimeError):
                pass
        log_event(log, logging.INFO, "settlement cycle finalised", node=self.node_id, cycle=checkpoint.cycle,
                  root=checkpoint.root.hex(), batch=signed.batch.seq)

    # ------------------------------------------------------------------ checkpoint signing
    async def _sign_backlog(self) -> None:
        """(coordinator) Sign every finalised cycle's checkpoint, in order, then publish it."""
        self._checkpoint_due = trio.Event()
        while True:
            rows = await trio.to_thread.run_sync(self.store.checkpoints)
            todo = [r for r in rows if r["signature"] is None]
            for row in todo:
                ok = await self._sign_checkpoint(row)
                if not ok:
                    break
            with trio.move_on_after(1.0 if todo else 5.0):  # woken at once by a finalised cycle
                await self._checkpoint_due.wait()
            self._checkpoint_due = trio.Event()

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
        """(worker thread) Write the file, publish on-chain, and name every peer that diverges."""
        cycle = signed.checkpoint.cycle
        if self.settings.checkpoint_dir is not None:
            self.settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            cp.write_checkpoint_file(self.settings.checkpoint_dir / f"checkpoint-{cycle:08d}.json", signed)
        if self.publish is not None:
            try:
                tx = self.publish(signed)
                self.store.set_published(cycle, tx)
                log_event(log, logging.INFO, "settlement checkpoint published", cycle=cycle, tx=tx)
            except Exception as exc:  # publication is retried by whoever relays next; the file exists
                log_event(log, logging.WARNING, "settlement checkpoint not published", cycle=cycle,
                          error=f"{type(exc).__name__}: {exc}")

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
                return f"cycle {checkpoint.cycle}: its root {theirs.root.hex()} != {checkpoint.root.hex()}"
            except cp.CheckpointError as exc:
                return f"cycle {checkpoint.cycle}: unreadable checkpoint ({exc})"

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
            return False, f"settlement: {why}"
        if mine["checkpoint"] != raw_checkpoint:
            mine_cp = cp.Checkpoint.from_bytes(mine["checkpoint"])
            why = (f"replica diverges at cycle {proposed.cycle}: my root {mine_cp.root.hex()}, "
                   f"proposed {proposed.root.hex()}")
            self.store.record_event("settlement.checkpoint_refused", {"cycle": proposed.cycle, "reason": why,
                                                                      "coordinator": coordinator})
            log_event(log, logging.ERROR, "settlement checkpoint refused", node=self.node_id, reason=why)
            return False, f"settlement: {why}"
        return True, ""

    # ------------------------------------------------------------------ follower
    async def _follow(self) -> None:
        delay = 0.5
        while True:
            if self.halted:
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
        """(worker thread) One pulled batch; False to stop this round (retry later or halted)."""
        try:
            signed = self._decode(raw)
        except Exception as exc:
            self._halt(0, f"an unreadable or unsigned batch from the coordinator: {exc}")
            return False
        batch = signed.batch
        now_ms = int(self.clock() * 1000)
        skew = int(self.settings.max_clock_skew_seconds * 1000)
        if batch.time_ms > now_ms + skew:
            self._halt(batch.seq, f"batch {batch.seq} is timed {batch.time_ms - now_ms} ms ahead of this node's clock")
            return False
        if batch.seq == head and batch.time_ms < now_ms - 10 * skew and batch.seq > 1:
            log_event(log, logging.WARNING, "the coordinator's newest batch is old", seq=batch.seq)
        with self._changed:
            assert self.ledger is not None
            if batch.seq <= self.ledger.seq:
                return True
            try:
                self._apply_and_store(signed)
            except BatchRefused as exc:
                if exc.retry:
                    log_event(log, logging.INFO, "settlement batch waits for this node's view", seq=batch.seq,
                              reason=exc.reason)
                    return False
                self._halt(batch.seq, exc.reason)
                return False
        return True

    def _halt(self, seq: int, reason: str) -> None:
        self.halted = f"batch {seq}: {reason}" if seq else reason
        self.store.record_event("settlement.batch_refused", {"seq": seq, "coordinator": self.settings.coordinator,
                                                             "reason": reason})
        log_event(log, logging.CRITICAL, "settlement batch refused; this node stops following the coordinator",
                  node=self.node_id, coordinator=self.settings.coordinator, seq=seq, reason=reason)

    async def _adopt_signatures(self) -> None:
        """(follower) Take the group's signatures of the checkpoints; a different root → resync."""
        while True:
            await trio.sleep(1.0)
            try:
                await trio.to_thread.run_sync(self._adopt_once)
            except (grpc.RpcError, SettlementError) as exc:
                log_event(log, logging.DEBUG, "checkpoint adoption failed", error=str(exc))

    def _adopt_once(self) -> None:
        for row in self.store.checkpoints():
            if row["signature"] is not None:
                continue
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
            log_event(log, logging.ERROR, "the group signed another root than this replica's; resyncing",
                      node=self.node_id, cycle=row["cycle"])
            self.resync()
            return

    # ------------------------------------------------------------------ resync
    def resync(self) -> None:
        """Rebuild the replica from the signed batch log and check it against signed checkpoints."""
        with self._changed:
            self.ledger = self._rebuild()
            self._note_owed(self.ledger)
            self.halted = ""
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
                                   "divergent": dict(self.divergent), "divergence_log": list(self.divergence_log),
                                   "refusals": list(self.refusals[-10:]),
                                   "signed_cycles": self.signed_cycles,
                                   "last_checkpoint_seconds": round(self.last_checkpoint_seconds, 3)}
            if led is not None:
                out.update({"head": led.seq, "open_cycle": led.open_cycle, "awaiting_final": led.awaiting_final,
                            "parties": len(led.parties), "trades": len(led.trades), "queued": len(self._queue)})
        return out


CHECKPOINT_REQUEST_TAG = b"FPSETTLE"


def encode_checkpoint_request(raw_checkpoint: bytes) -> bytes:
    """What a checkpoint sign proposal carries in ``client_request`` (never a wallet request)."""
    return CHECKPOINT_REQUEST_TAG + raw_checkpoint


def decode_checkpoint_request(raw: bytes) -> bytes | None:
    return raw[len(CHECKPOINT_REQUEST_TAG):] if raw.startswith(CHECKPOINT_REQUEST_TAG) else None
