"""Sessions: one protocol run between a set of nodes, driven on trio.

:class:`SessionDriver` owns one sans-IO :class:`RoundMachine`. It runs inside its own
nursery, so a session's delivery tasks live and die with it; it feeds the machine the
envelopes the transport hands it, routes the machine's outgoing messages, and enforces a
deadline per round with a cancel scope. When a round times out the driver broadcasts what it
waits for (``RoundMachine.waiting_for``: from the messages the machine *accepted*, signature
checked, never from envelopes that merely arrived), listens briefly for the peers' timeout
notices, and lets the machine decide who is silent and which pairs are in dispute
(``RoundMachine.timeout_verdict``) - so a node starved of a private message is not the one
its peers blame for the silence that followed.

CPU-heavy work (``start()`` and ``receive()``: Paillier, proofs, prime generation) runs in a
worker thread via ``trio.to_thread.run_sync`` under a shared capacity limiter, so the event
loop keeps serving the transport and other sessions while one presign grinds through its
proofs. gmpy2 releases the GIL inside ``gmpy2.context(allow_release_gil=True)``, which is
what lets a second thread (another session, or the loop itself) make progress in parallel.
A machine is only ever touched by one thread at a time: the driver awaits each step.

:class:`SessionManager` is both sides of session setup:

* **coordinator**: picks participants among peers that answer ``Health`` as serving,
  proposes a signed :class:`SessionProposal` to each, and starts once everyone accepted; on
  refusal, timeout or abort it retries with a fresh session id and another set, excluding the
  refusers, the unresponsive and the blamed.
* **participant**: validates the proposal (roster and roster order, freshness, binding
  session id, phase supported, own participation, a round deadline long enough for the
  phase), asks the node's policy hook ``authorize(proposal)`` - the
  seam where the wallet API and the bridge plug in their checks - and only then builds the
  machine and joins.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gmpy2
import trio
from google.protobuf.message import DecodeError

from ..proto.generated import peer_pb2
from ..protocol.errors import InvalidInput, ProtocolError
from ..protocol.identity import PartyIdentity
from ..protocol.machine import (
    BROADCAST,
    CONTROL_KINDS,
    KIND_ABORT,
    Certificate,
    ProtocolMessage,
    RoundMachine,
    Status,
)
from .logs import internal_error, log_event
from .metrics import NodeMetrics
from .storage import ConfirmedSession, Storage, StorageError
from .transport import PeerInfo, ProposalLimited, SessionInbox, Transport, TransportError
from .wire import derive_session_id, fresh_nonce, params_encoding, sign_proposal, sign_withdrawal

log = logging.getLogger("fusion_prime.node.session")

PROPOSAL_TTL_MS = 30_000
RECONCILE_FIRST_DELAY = 1.0
RECONCILE_INTERVAL = 10.0
# A participant that confirmed a sign and ended it without the certificate asks its peers for one
# at once, at these delays, each try bounded (the common race: an honest peer completed a moment
# after our deadline); after that the signature is kept *in doubt* and the reconcile loop asks
# on (see _certificate_from_peers and reconcile) - correctness never rests on these numbers.
CERTIFICATE_LOOKUP_DELAYS = (0.0, 0.5, 2.0)
CERTIFICATE_LOOKUP_TRY = 3.0
# An output in doubt is asked about every RECONCILE_INTERVAL for this long after it was staged,
# then every RECONCILE_SLOW_EVERY-th pass: never given up (a later certificate must still be
# adopted, or a patient certificate holder could split the outcome), but an old row costs little.
RECONCILE_FAST_SECONDS = 600.0
RECONCILE_SLOW_EVERY = 30
RECENT_CERTIFICATES = 4096  # sign certificates kept in memory for peers that ask

# Per-coordinator admission limits (issue: a roster peer opened 100 presign sessions in 8 s and
# every one was accepted). A peer over a limit is answered RESOURCE_EXHAUSTED, counted as a
# rejected envelope with reason "proposal-limit", and may try again later; the limits are far
# above what an honest coordinator needs (its own pool refill runs a few presigns at a time,
# and a burst of signs is bounded by its wallet queue).
MAX_SESSIONS_PER_PEER = 64
MAX_PHASE_SESSIONS_PER_PEER = {"presign": 8, "keygen": 2, "aux-info": 2, "key-refresh": 2, "reshare": 2}
PROPOSAL_RATE_PER_PEER = 100.0  # proposals per second, sustained
PROPOSAL_BURST_PER_PEER = 200.0


def _call_releasing_gil(fn: Callable[..., list[bytes]], *args: Any) -> list[bytes]:
    """Run a machine step in a worker thread with gmpy2 allowed to drop the GIL during big-number
    operations. gmpy2 contexts are thread-local, and the protocol layer is sans-IO and knows
    nothing of threads, so the node - which owns the threads - makes this choice."""
    gmpy2.get_context().allow_release_gil = True
    return fn(*args)


PROPOSE_TIMEOUT = 5.0
HEALTH_TTL = 2.0
PENDING_WAIT = 2.0  # well inside PROPOSE_TIMEOUT
# Rounds of these phases include safe-prime generation and the Π^mod/Π^prm/Π^fac proofs:
# seconds of CPU per round at 3072 bits, more on a busy machine, where a presign or sign round
# takes milliseconds. One deadline for both would either detect a dead signer slowly or time
# out an honest node that is still computing, so these get a multiple of the configured one.
HEAVY_PHASE_DEADLINE_FACTOR = {"aux-info": 4.0, "key-refresh": 4.0, "reshare": 4.0}
# A participant refuses a heavy-phase proposal whose round deadline is shorter than this: two
# 1536-bit safe primes take seconds even from a warm pool's fallback, so a shorter deadline
# would let a coordinator time out honest nodes mid-generation and have them blamed. The
# coordinator never proposes less (round_deadline_for).
MIN_HEAVY_ROUND_DEADLINE_MS = 5_000


# -------------------------------------------------------------------------------------------
# Results
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionOutcome:
    """How one session ended. ``culprits`` are node ids (blamed or unresponsive)."""

    session_id: bytes
    phase: str
    status: str  # "done" | "aborted" | "timeout" | "refused" | "cancelled"
    participants: tuple[str, ...] = ()
    output: Any = field(default=None, repr=False)
    culprits: tuple[str, ...] = ()
    reason: str = ""
    duration: float = 0.0
    # Pairs the evidence cannot tell apart (one says it never got what the other sent):
    # neither is a culprit; a retry avoids both.
    disputes: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "done"


class Refuse(Exception):
    """Raised by a phase handler or policy: this node will not take part (reason is public)."""


# -------------------------------------------------------------------------------------------
# Phase handlers: how a proposal becomes a machine, and where its output goes
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionContext:
    """Everything a phase handler needs to build this node's machine for one session."""

    node_id: str
    me: int  # this node's party index
    identity: PartyIdentity
    proposal: peer_pb2.SessionProposal
    index_of: Mapping[str, int]  # participant node id -> party index
    roster: Mapping[int, bytes]  # party index -> identity public key (participants only)
    storage: Storage | None
    test_mode: bool
    transcript: bytes = b""  # set when the output is staged: the digest every participant confirms

    @property
    def session_id(self) -> bytes:
        return self.proposal.session_id

    @property
    def parties(self) -> list[int]:
        return sorted(self.index_of.values())


class PhaseHandler(Protocol):
    """One protocol phase as the node runs it. ``build`` may raise :class:`Refuse`."""

    phase: str

    def build(self, ctx: SessionContext) -> RoundMachine: ...

    def finish(self, ctx: SessionContext, output: Any) -> Any: ...

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None: ...


class StagingHandler(PhaseHandler, Protocol):
    """A phase whose output the node keeps: ``stage`` stores it durably as *pending* (nothing
    usable changes, nothing is erased) before this node confirms; ``finish`` runs only once
    every participant confirmed (the machine's certificate) and makes it current."""

    def stage(self, ctx: SessionContext, output: Any) -> None: ...


Authorizer = Callable[[peer_pb2.SessionProposal], "tuple[bool, str] | Awaitable[tuple[bool, str]]"]


def allow_all(proposal: peer_pb2.SessionProposal) -> tuple[bool, str]:
    """The default policy: the roster is trusted to propose any supported phase."""
    return True, ""


# -------------------------------------------------------------------------------------------
# Driver
# -------------------------------------------------------------------------------------------


class SessionDriver:
    """Runs one machine to completion, abort or timeout."""

    def __init__(
        self,
        *,
        ctx: SessionContext,
        machine: RoundMachine,
        transport: Transport,
        inbox: SessionInbox,
        round_deadline: float,
        cpu_limiter: trio.CapacityLimiter,
        metrics: NodeMetrics,
        stage: Callable[[Any, bytes], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.machine = machine
        self.stage = stage
        if stage is not None:
            machine.require_confirmation()
        self.transport = transport
        self.inbox = inbox
        self.round_deadline = round_deadline
        self.cpu_limiter = cpu_limiter
        self.metrics = metrics
        self.phase = ctx.proposal.phase
        self.node_of = {i: n for n, i in ctx.index_of.items()}
        self.peers = [n for n in ctx.index_of if n != ctx.node_id]
        self._rejected_seen = 0
        self._sends_failed: set[str] = set()
        self._send_scopes: set[trio.CancelScope] = set()
        self._sends_cancelled = False

    async def _step(self, fn: Callable[..., list[bytes]], *args: Any) -> list[bytes]:
        started = time.perf_counter()
        try:
            return await trio.to_thread.run_sync(_call_releasing_gil, fn, *args, limiter=self.cpu_limiter)
        finally:
            self.metrics.machine_seconds.labels(phase=self.phase).observe(time.perf_counter() - started)

    def _route(self, nursery: trio.Nursery, outgoing: Iterable[bytes]) -> None:
        deadline = trio.current_time() + self.round_deadline
        for raw in outgoing:
            msg = ProtocolMessage.from_bytes(raw)
            targets = self.peers if msg.receiver == BROADCAST else [self.node_of[msg.receiver]]
            for node in targets:
                nursery.start_soon(self._send, node, msg, raw, deadline)

    async def _send(self, node: str, msg: ProtocolMessage, raw: bytes, deadline: float) -> None:
        # An abort notice is the last thing a failed session says, and the peers need it to
        # reach the same verdict: it is never called off with the session's other sends.
        final = msg.kind == KIND_ABORT
        with trio.CancelScope() as scope:
            if self._sends_cancelled and not final:  # scheduled just before the session failed
                return
            if not final:
                self._send_scopes.add(scope)
            try:
                ok = await self.transport.send(
                    node, session_id=self.ctx.session_id, phase=self.phase, round=msg.round,
                    broadcast=msg.receiver == BROADCAST, payload=raw, deadline=deadline,
                )
            finally:
                self._send_scopes.discard(scope)
            if not ok:
                self._sends_failed.add(node)

    def cancel_sends(self) -> None:
        self._sends_cancelled = True
        for scope in list(self._send_scopes):
            scope.cancel()

    def _note_rejections(self) -> None:
        for reason in self.machine.rejected[self._rejected_seen:]:
            self.metrics.envelopes_rejected.labels(reason="machine").inc()
            log_event(log, logging.WARNING, "protocol message dropped", session_id=self.ctx.session_id,
                      phase=self.phase, reason=reason)
        self._rejected_seen = len(self.machine.rejected)

    def _notice_grace(self) -> float:
        """How long a node that timed out keeps listening for its peers' timeout notices before
        it decides: their deadlines fire at about the same moment as ours."""
        return min(2.0, max(0.2, self.round_deadline / 4))

    def _outcome(self, status: str, started: float, culprits: Iterable[str] = (), reason: str = "",
                 output: Any = None, disputes: Iterable[tuple[str, str]] = ()) -> SessionOutcome:
        return SessionOutcome(self.ctx.session_id, self.phase, status, tuple(self.ctx.index_of), output,
                              tuple(sorted(set(culprits))), reason, trio.current_time() - started,
                              tuple(sorted(set(disputes))))

    async def run(self, sends: trio.Nursery | None = None) -> SessionOutcome:
        """Drive the machine to its end. Delivery tasks run in ``sends``: when the caller
        passes a nursery that outlives this call, the outcome is returned as soon as the
        machine is done, while the last messages (our echo, which the peers still need) are
        being acknowledged - nobody waits for the acks of a finished session."""
        if sends is None:
            async with trio.open_nursery() as own:
                return await self.run(own)
        started = trio.current_time()
        try:
            outcome = await self._drive(sends, started)
        except ProtocolError as exc:  # a bug-level failure in the machine: end this session only
            outcome = self._outcome("aborted", started, (), f"protocol error: {exc}")
        except Exception as exc:  # any machine bug ends this session, never the node
            where = internal_error(exc)
            log_event(log, logging.ERROR, "session machine raised an unexpected exception",
                      session_id=self.ctx.session_id, phase=self.phase, error=where)
            try:  # tell the peers we stopped, so that they do not wait for us and name us silent
                self._route(sends, self.machine.withdraw(f"internal error: {where}"))
            except Exception as again:
                log_event(log, logging.ERROR, "could not send the withdrawal notice",
                          session_id=self.ctx.session_id, error=internal_error(again))
            outcome = self._outcome("aborted", started, (), f"internal error: {where}")
        if outcome.status != "done":
            # Undelivered messages of a failed session help nobody: stop retrying them.
            self.cancel_sends()
        self.transport.close_session(self.ctx.session_id)
        return outcome

    async def _drive(self, sends: trio.Nursery, started: float) -> SessionOutcome:
        m = self.machine
        self._route(sends, await self._step(m.start))
        self._note_rejections()
        current, round_started = (m.round, m.awaiting_store), trio.current_time()
        while m.status is Status.RUNNING:
            if m.awaiting_store and not m.confirmed:
                # The last round is done: store the output as pending, durably, and only then
                # confirm it. Nothing usable changes until every participant has confirmed.
                # (A phase with nothing to store - sign - confirms inside the machine, in the
                # step that ends its last round: require_confirmation(store=False).)
                if self.stage is None:  # a machine that waits for a store this node cannot make
                    self._route(sends, m.store_failed("this node has no staging for this phase's output"))
                    break
                try:
                    await trio.to_thread.run_sync(self.stage, m.output, m.transcript)
                except Exception as exc:  # a disk or storage fault: this session ends, nobody is blamed
                    why = str(exc) if isinstance(exc, ValueError) else internal_error(exc)
                    self._route(sends, m.store_failed(why))
                    break
                self._route(sends, await self._step(m.stored))
                self._note_rejections()
                continue
            if (m.round, m.awaiting_store) != current:
                current, round_started = (m.round, m.awaiting_store), trio.current_time()
            with trio.move_on_at(round_started + self.round_deadline) as scope:
                try:
                    inbound = await self.inbox.receive()
                except trio.EndOfChannel:
                    return self._outcome("cancelled", started, (), "transport closed the session")
            if scope.cancelled_caught:
                return await self._timed_out(sends, started)
            msg = self._checked(inbound)
            if msg is None:
                continue
            self._route(sends, await self._receive(inbound.payload))
            self._note_rejections()
        return self._final(started)

    async def _receive(self, payload: bytes) -> list[bytes]:
        """Feed one message to the machine. Once this node has confirmed, a machine bug that a
        message sets off drops that message instead of ending the session here: the peers may
        complete the certificate with our confirmation, so a withdrawal now would leave this
        node aborted while they are done (issue 11 review, the same split as a late blame).
        The certificate or the deadline still ends the session. Before we confirmed, the
        exception ends the session (``run``), which is safe: no certificate can exist."""
        m = self.machine
        try:
            return await self._step(m.receive, payload)
        except Exception as exc:
            if not m.confirmed or m.status is not Status.RUNNING:
                raise
            log_event(log, logging.ERROR, "session machine raised after confirming; message dropped",
                      session_id=self.ctx.session_id, phase=self.phase, error=internal_error(exc))
            return []

    def _checked(self, inbound: Any) -> ProtocolMessage | None:
        try:
            msg = ProtocolMessage.from_bytes(inbound.payload)
        except InvalidInput as exc:
            self.transport.count_reject("malformed-payload", peer=inbound.sender, session_id=inbound.session_id,
                                        detail=str(exc))
            return None
        if msg.sender != self.ctx.index_of.get(inbound.sender) or msg.round != inbound.round:
            self.transport.count_reject("envelope-payload-mismatch", peer=inbound.sender,
                                        session_id=inbound.session_id)
            return None
        return msg

    def _final(self, started: float) -> SessionOutcome:
        m = self.machine
        if m.status is Status.DONE:
            for party, why in sorted(m.late_faults.items()):
                # A participant misbehaved after we confirmed; the session still completed
                # (every participant confirmed the same transcript), so it is only reported.
                log_event(log, logging.WARNING, "participant misbehaved after confirming",
                          session_id=self.ctx.session_id, phase=self.phase,
                          culprit=self.node_of.get(party, str(party)), reason=why[:500])
            return self._outcome("done", started, output=m.output)
        abort = m.abort
        culprits = [self.node_of.get(i, str(i)) for i in (abort.culprits if abort else ())]
        disputes = [(self.node_of.get(a, str(a)), self.node_of.get(b, str(b))) for a, b in
                    (abort.disputes if abort else ())]
        return self._outcome("aborted", started, culprits, abort.reason if abort else "aborted", disputes=disputes)

    async def _timed_out(self, sends: trio.Nursery, started: float) -> SessionOutcome:
        """A deadline passed: say whom we wait for (a signed timeout notice), listen a moment
        for the peers' notices and for abort evidence, then let the machine decide who is
        silent and which pairs are in dispute - so that a node that was starved of a private
        message is not the one its peers name for the silence that followed."""
        m = self.machine
        self.metrics.round_timeouts.labels(phase=self.phase).inc()
        waiting = m.waiting_for()
        self._route(sends, m.timeout_notice(waiting))
        with trio.move_on_after(self._notice_grace()):
            while m.status is Status.RUNNING:
                try:
                    inbound = await self.inbox.receive()
                except trio.EndOfChannel:
                    break
                msg = self._checked(inbound)
                # Notices, and confirmations or a relay that may still complete the certificate
                if msg is not None and msg.kind in CONTROL_KINDS:
                    self._route(sends, await self._receive(inbound.payload))
        # Concluded on what we told the peers we wait for (our timeout notice), not on what we
        # still lack now: the peers judge from that same statement, so the verdicts agree. What
        # arrived in the grace window and completed the machine makes this a no-op.
        m.conclude_timeout(waiting)
        outcome = self._final(started)
        if m.abort is not None and m.abort.reason.startswith("round deadline passed"):
            return dataclasses.replace(outcome, status="timeout")
        return outcome


# -------------------------------------------------------------------------------------------
# Manager
# -------------------------------------------------------------------------------------------


@dataclass
class _Active:
    ctx: SessionContext
    done: trio.Event = field(default_factory=trio.Event)
    outcome: SessionOutcome | None = None
    withdrawn: str | None = None
    machine: RoundMachine | None = None  # set once built: a withdrawal after it confirmed is refused


ParamsFactory = Callable[[Sequence[str]], "peer_pb2.SessionProposal"]


class SessionManager:
    """Runs this node's sessions; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        identity: PartyIdentity,
        peers: Mapping[str, PeerInfo],
        transport: Transport,
        phases: Mapping[str, PhaseHandler],
        storage: Storage | None = None,
        authorize: Authorizer = allow_all,
        metrics: NodeMetrics | None = None,
        round_deadline: float = 30.0,
        test_mode: bool = False,
        cpu_threads: int = 4,
        version: str = "0.1.0",
    ) -> None:
        self.node_id = node_id
        self.identity = identity
        self.peers = dict(peers)
        self.transport = transport
        self.phases = dict(phases)
        self.storage = storage
        self.authorize = authorize
        self.metrics = metrics or transport.metrics
        self.round_deadline = round_deadline
        self.test_mode = test_mode
        self.version = version
        self.cpu_limiter = trio.CapacityLimiter(cpu_threads)
        self.draining = False
        self._active: dict[bytes, _Active] = {}
        self._health: dict[str, tuple[float, frozenset[str]]] = {}
        self._refreshing: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, at)
        self._admitting: list[tuple[str, str]] = []  # (coordinator, phase) of proposals being admitted
        self._reconciling: set[bytes] = set()
        self._dispute_counts: dict[str, int] = {}  # node -> disputes it was in (this process)
        # session id -> (participants, certificate) of recent sessions with nothing staged: served
        # at once, before (and without depending on) the commit that also records it
        self._recent_certificates: collections.OrderedDict[bytes, tuple[frozenset[str], bytes]] = \
            collections.OrderedDict()
        transport.proposal_handler = self.handle_proposal
        transport.certificate_provider = self._certificate_for
        transport.health_provider = self.health_reply
        transport.withdrawal_handler = self.handle_withdrawal

    # lifecycle -----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.storage is not None:
                nursery.start_soon(self._reconcile_loop)
            task_status.started()
            await trio.sleep_forever()

    # agreement: outputs staged here whose certificate a peer may hold ----------------------------
    async def _reconcile_loop(self) -> None:
        """At start (a crash may have come between staging and the certificate) and then every
        ``RECONCILE_INTERVAL`` seconds, try to make staged outputs current from a peer's
        certificate (outputs in doubt for longer than ``RECONCILE_FAST_SECONDS``: every
        ``RECONCILE_SLOW_EVERY``-th pass)."""
        await trio.sleep(RECONCILE_FIRST_DELAY)
        passes = 0
        while not self.draining:
            try:
                await self.reconcile(include_old=passes % RECONCILE_SLOW_EVERY == 0)
            except Exception as exc:  # storage trouble: try again next time, never stop the manager
                log_event(log, logging.WARNING, "reconciliation failed", error=internal_error(exc))
            passes += 1
            await trio.sleep(RECONCILE_INTERVAL)

    async def _reconcile_soon(self, session_id: bytes) -> None:
        """A session ended here after we confirmed, without the certificate: a peer that got it
        relays it or answers for it in a moment."""
        for delay in (0.5, 2.0, 5.0):
            await trio.sleep(delay)
            if await self.reconcile([session_id]):
                return

    async def reconcile(self, session_ids: Iterable[bytes] | None = None, *, include_old: bool = True) -> int:
        """Make staged outputs current where a participant shows a valid certificate: every
        participant's signed confirmation of *this* node's transcript. Returns how many. A sign
        kept in doubt (confirmed here, ended without the certificate) is staged the same way and
        ends done here - the session recorded ``done`` - once a peer shows the certificate."""
        assert self.storage is not None
        wanted = set(session_ids) if session_ids is not None else None
        promoted = 0
        recent = set() if include_old else {
            r[0] for r in await self._db(self.storage.outputs_in_doubt, newer_than=RECONCILE_FAST_SECONDS)}
        for session_id, phase, raw_proposal, transcript in await self._db(self.storage.outputs_in_doubt):
            if (wanted is not None and session_id not in wanted) or session_id in self._active \
                    or session_id in self._reconciling or (not include_old and session_id not in recent):
                continue
            handler = self.phases.get(phase)
            restore = getattr(handler, "restore", None)
            if handler is None or restore is None:
                continue
            try:
                proposal = peer_pb2.SessionProposal.FromString(raw_proposal)
            except DecodeError:  # a row this build cannot read: leave it for the operator
                log_event(log, logging.WARNING, "staged output with an unreadable proposal", session_id=session_id)
                continue
            if any(p not in self.peers for p in proposal.participants) or self.node_id not in proposal.participants:
                continue  # the roster changed since: certificates cannot be checked here
            self._reconciling.add(session_id)
            try:
                ctx = dataclasses.replace(self._context(proposal), transcript=transcript)
                certificate = await self._find_certificate(ctx, transcript)
                if certificate is None:
                    continue
                staged = await self._db(self.storage.staged_output, session_id)
                if staged is None or staged[2] is None:
                    continue
                output = restore(ctx, staged[2])
                await trio.to_thread.run_sync(handler.finish, ctx, output)
                await self._db(self.storage.output_confirmed, session_id, certificate.to_bytes())
                if getattr(handler, "encode_output", None) is not None:  # a sign that was in doubt
                    await self._db(self.storage.session_finished, session_id, state="done",
                                   reason="completed from a peer's certificate after ending in doubt here")
                promoted += 1
                log_event(log, logging.INFO, "staged output made current from a peer's certificate",
                          session_id=session_id, phase=phase)
            except Exception as exc:  # e.g. a newer version is current by now: leave it staged
                log_event(log, logging.WARNING, "staged output could not be made current",
                          session_id=session_id, phase=phase,
                          error=str(exc) if isinstance(exc, ValueError) else internal_error(exc))
            finally:
                self._reconciling.discard(session_id)
        return promoted

    async def _find_certificate(self, ctx: SessionContext, transcript: bytes) -> Certificate | None:
        """Ask every other participant; the first certificate that verifies here wins (the other
        questions are then called off). A peer's answer is checked, never trusted: same session
        and phase, *our* transcript, and a valid confirmation signed by every participant's
        identity key."""
        found: list[Certificate] = []
        peers = [n for n in ctx.index_of if n != self.node_id]

        async def ask(peer: str, scope: trio.CancelScope) -> None:
            raw = await self.transport.session_certificate(peer, ctx.session_id)
            if not raw or found:
                return
            try:
                cert = Certificate.from_bytes(raw)
            except (InvalidInput, ValueError):
                return
            if (cert.session_id == ctx.session_id and cert.phase == ctx.proposal.phase
                    and cert.transcript == transcript and cert.verify(ctx.parties, ctx.roster)):
                found.append(cert)
                scope.cancel()

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer, nursery.cancel_scope)
        return found[0] if found else None

    async def _certificate_from_peers(self, ctx: SessionContext, transcript: bytes) -> Certificate | None:
        """A sign this node confirmed ended here without the certificate - its deadline passed, or
        a late fault was named - while a peer may have completed it: a signer that sends its
        confirmation to one honest signer only, just after another's deadline, leaves one done
        with the signature and the other timed out (issue 11, the last split). The signature
        here is the same (it is computed from the confirmed transcript), so a valid certificate
        from any participant ends the session done here too.

        Asked a few times at once (the common race). No window can be enough on its own: the
        malicious signer holds a certificate itself (every honest signer confirmed to it) and
        may show it to one honest signer whenever the other has stopped asking (issue 11 review,
        R10-R12). So a sign not completed here stays *in doubt* - the signature staged, asked
        about by the reconcile loop for as long as the node runs - and an honest peer that
        completed serves its certificate for ever: every honest signer ends done, or none."""
        for delay in CERTIFICATE_LOOKUP_DELAYS:
            await trio.sleep(delay)
            with trio.move_on_after(CERTIFICATE_LOOKUP_TRY):
                found = await self._find_certificate(ctx, transcript)
                if found is not None:
                    return found
        return None

    def _certificate_for(self, asker: str, session_id: bytes) -> bytes:
        """Serve a session's certificate to one of its participants (b"" to anyone else)."""
        recent = self._recent_certificates.get(session_id)
        if recent is not None:
            return recent[1] if asker in recent[0] else b""
        return self.storage.certificate_for(session_id, asker) if self.storage is not None else b""

    def _remember_certificate(self, participants: Iterable[str], session_id: bytes, certificate: bytes) -> None:
        self._recent_certificates[session_id] = (frozenset(participants), certificate)
        while len(self._recent_certificates) > RECENT_CERTIFICATES:
            self._recent_certificates.popitem(last=False)

    async def drain(self, grace: float) -> None:
        """Graceful shutdown: refuse new sessions, let running ones finish for up to ``grace``
        seconds, then cancel the rest (recorded as aborted by shutdown)."""
        self.draining = True
        with trio.move_on_after(grace):
            for active in list(self._active.values()):
                await active.done.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def active_sessions(self) -> int:
        return len(self._active)

    def health_reply(self) -> peer_pb2.HealthReply:
        status = peer_pb2.HealthReply.DRAINING if self.draining else peer_pb2.HealthReply.SERVING
        return peer_pb2.HealthReply(node_id=self.node_id, status=status, active_sessions=len(self._active),
                                    version=self.version, phases=sorted(self.phases))

    # participant side ------------------------------------------------------------------------
    def _validate(self, p: peer_pb2.SessionProposal) -> str | None:
        if self.draining or self._nursery is None:
            return "node is shutting down" if self.draining else "node is not running sessions yet"
        if p.phase not in self.phases:
            return f"phase {p.phase!r} is not supported by this node"
        participants = list(p.participants)
        if len(participants) < 2 or len(set(participants)) != len(participants):
            return "participants must be at least two distinct nodes"
        unknown = [n for n in participants if n not in self.peers]
        if unknown:
            return f"participants not in the roster: {', '.join(unknown)}"
        indices = [self.peers[n].index for n in participants]
        if indices != sorted(indices):
            # The list is stored and compared as text elsewhere: one order, the roster's.
            return "participants are not in roster index order"
        if self.node_id not in participants or p.coordinator not in participants:
            return "this node or the coordinator is not a participant"
        if not 50 <= p.round_deadline_ms <= 3_600_000:
            return "round deadline out of range"
        if p.phase in HEAVY_PHASE_DEADLINE_FACTOR and p.round_deadline_ms < MIN_HEAVY_ROUND_DEADLINE_MS:
            return (f"round deadline {p.round_deadline_ms} ms is below the {MIN_HEAVY_ROUND_DEADLINE_MS} ms minimum "
                    f"for {p.phase} (prime generation)")
        if p.expires_at_ms < time.time() * 1000:
            return "proposal expired"
        if p.session_id in self._active or (self.storage and self.storage.session_state(p.session_id)):
            return "session id already used"
        return None

    async def _authorize(self, proposal: peer_pb2.SessionProposal) -> tuple[bool, str]:
        verdict = self.authorize(proposal)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict  # type: ignore[return-value]

    def _context(self, proposal: peer_pb2.SessionProposal) -> SessionContext:
        index_of = {n: self.peers[n].index for n in proposal.participants}
        roster = {self.peers[n].index: self.peers[n].identity_public_key for n in proposal.participants}
        return SessionContext(self.node_id, self.peers[self.node_id].index, self.identity, proposal, index_of,
                              roster, self.storage, self.test_mode)

    async def _join(self, proposal: peer_pb2.SessionProposal) -> tuple[_Active | None, str]:
        """Validate, authorise, build and start this node's side of a session."""
        problem = await self._admit(proposal)
        if problem is not None:
            await self._refused(proposal, problem)
            return None, problem
        return await self._begin(proposal)

    async def _admit(self, proposal: peer_pb2.SessionProposal) -> str | None:
        """Validation and the policy hook: None if this node is willing to take part."""
        problem = self._validate(proposal)
        if problem is None:
            try:
                ok, why = await self._authorize(proposal)
            except Refuse as exc:
                ok, why = False, str(exc)
            if not ok:
                problem = f"policy: {why or 'refused'}"
        return problem

    async def _refused(self, proposal: peer_pb2.SessionProposal, problem: str) -> None:
        self.metrics.proposals.labels(phase=proposal.phase, decision="refused").inc()
        if self.storage is not None:
            await self._db(self.storage.session_refused, proposal.session_id, phase=proposal.phase,
                           coordinator=proposal.coordinator, reason=problem or "refused")

    async def _begin(self, proposal: peer_pb2.SessionProposal) -> tuple[_Active | None, str]:
        """Build the machine and start the session (the proposal is already admitted).

        The handler's ``build`` (for sign: the durable consumption of the presignature) and
        the ``session-started`` record run in one worker-thread hop, in that order; the machine
        cannot emit anything before both are committed, because it only starts afterwards."""
        handler = self.phases.get(proposal.phase)
        if handler is None or self._nursery is None:
            problem = "phase not supported" if handler is None else "node is not running sessions yet"
            await self._refused(proposal, problem)
            return None, problem
        ctx = self._context(proposal)
        try:
            inbox = self.transport.open_session(proposal.session_id, proposal.phase, proposal.participants)
        except TransportError as exc:
            return None, str(exc)

        def prepare() -> RoundMachine:
            machine = handler.build(ctx)
            if machine.phase != proposal.phase:
                raise Refuse(f"handler for {proposal.phase!r} built a {machine.phase!r} machine")
            if self.storage is not None:
                self.storage.session_started(proposal.session_id, phase=proposal.phase,
                                             coordinator=proposal.coordinator,
                                             participants=list(proposal.participants))
            return machine

        try:
            machine = await self._build(proposal, prepare)
        except (Refuse, ProtocolError) as exc:
            self.transport.close_session(proposal.session_id)
            await self._refused(proposal, str(exc))
            return None, str(exc)
        except Exception as exc:  # a handler bug refuses this session, never kills the node
            self.transport.close_session(proposal.session_id)
            # A storage fault's message names the file or row, never a secret (StorageError).
            problem = f"storage: {exc}" if isinstance(exc, StorageError) else f"internal error: {internal_error(exc)}"
            log_event(log, logging.ERROR, "phase handler raised an unexpected exception",
                      session_id=proposal.session_id, phase=proposal.phase, error=problem)
            await self._refused(proposal, problem)
            return None, problem
        except BaseException:
            self.transport.close_session(proposal.session_id)
            raise
        self.metrics.proposals.labels(phase=proposal.phase, decision="accepted").inc()
        active = _Active(ctx)
        self._active[proposal.session_id] = active
        stage = getattr(handler, "stage", None)

        def staged(output: Any, transcript: bytes, ctx: SessionContext = ctx) -> None:
            assert stage is not None
            stage(dataclasses.replace(ctx, transcript=transcript), output)

        active.machine = machine
        driver = SessionDriver(ctx=ctx, machine=machine, transport=self.transport, inbox=inbox,
                               round_deadline=proposal.round_deadline_ms / 1000, cpu_limiter=self.cpu_limiter,
                               metrics=self.metrics, stage=staged if stage else None)
        try:
            self._nursery.start_soon(self._run_driver, driver, handler, active)
        except RuntimeError:
            # Shutdown closed the sessions' nursery while this session was being built (the
            # pool refill races SIGTERM): the session never starts; refuse it, don't crash.
            self._active.pop(proposal.session_id, None)
            self.transport.close_session(proposal.session_id)
            if self.storage is not None and self.storage.session_state(proposal.session_id) == "running":
                await self._db(self.storage.session_finished, proposal.session_id, state="aborted",
                               reason="node is shutting down")
            return None, "node is shutting down"
        self.metrics.active_sessions.inc()
        log_event(log, logging.INFO, "session joined", session_id=proposal.session_id, phase=proposal.phase,
                  coordinator=proposal.coordinator, participants=list(proposal.participants))
        return active, ""

    async def _build(self, proposal: peer_pb2.SessionProposal, prepare: Callable[[], RoundMachine]) -> RoundMachine:
        """Run ``prepare`` in a worker thread. If the handler refuses while an earlier session of
        the same coordinator is still finishing here, wait for that session (bounded) and try
        once more: the coordinator may have seen that session end a moment before this node
        stored its output (the aux info, the presignature) that this proposal needs."""
        try:
            return await trio.to_thread.run_sync(prepare)
        except Refuse:
            pending = [a for a in self._active.values() if a.ctx.proposal.coordinator == proposal.coordinator]
            if not pending:
                raise
        with trio.move_on_after(PENDING_WAIT):
            for active in pending:
                await active.done.wait()
        return await trio.to_thread.run_sync(prepare)

    async def _run_driver(self, driver: SessionDriver, handler: PhaseHandler, active: _Active) -> None:
        # The delivery tasks live in this nursery, which outlives the outcome: the session is
        # reported done while its last envelopes are still being acknowledged.
        async with trio.open_nursery() as sends:
            await self._drive_and_record(driver, handler, active, sends)

    async def _drive_and_record(self, driver: SessionDriver, handler: PhaseHandler, active: _Active,
                                sends: trio.Nursery) -> None:
        outcome: SessionOutcome | None = None
        confirmed: ConfirmedSession | None = None
        in_doubt = False
        try:
            outcome = await driver.run(sends)
            if outcome.status == "cancelled" and active.withdrawn:
                outcome = SessionOutcome(outcome.session_id, outcome.phase, "cancelled", outcome.participants,
                                         None, (), f"withdrawn by the coordinator: {active.withdrawn}",
                                         outcome.duration)
            m = driver.machine
            certificate = m.certificate
            # Confirmed here, nothing staged, no certificate - and no proof that none can exist: a
            # peer may complete it (or have completed it) with our confirmation.
            in_doubt = (outcome.status in ("aborted", "timeout", "cancelled") and driver.stage is None
                        and m.confirmed and m.output is not None and not m.certificate_impossible)
            if in_doubt and outcome.status != "cancelled" and not self.draining:
                try:
                    certificate = await self._certificate_from_peers(active.ctx, m.transcript)
                except Exception as exc:  # a lookup bug must not stop the manager: the reconcile loop asks on
                    log_event(log, logging.ERROR, "certificate lookup raised", session_id=active.ctx.session_id,
                              error=internal_error(exc))
                if certificate is not None:
                    log_event(log, logging.WARNING, "session completed from a peer's certificate",
                              session_id=active.ctx.session_id, phase=driver.phase, ended_here=outcome.status,
                              culprits=list(outcome.culprits), reason=outcome.reason[:500])
                    outcome = SessionOutcome(outcome.session_id, outcome.phase, "done", outcome.participants,
                                             m.output, (), "", outcome.duration)
            if in_doubt and certificate is None:
                # What the caller hears: not a failure the records will keep, a signature that a
                # peer's certificate may still complete here (the reconcile loop asks on).
                outcome = dataclasses.replace(outcome, reason=f"in doubt (confirmed here, no certificate yet): "
                                                              f"{outcome.reason}")
            if outcome.ok:
                try:
                    result = await trio.to_thread.run_sync(handler.finish, active.ctx, outcome.output)
                    if certificate is not None and driver.stage is not None and self.storage is not None:
                        # A staged output: the certificate makes it current (a peer that missed the
                        # end of the session may need it to do the same).
                        await self._db(self.storage.output_confirmed, active.ctx.session_id, certificate.to_bytes())
                    elif certificate is not None:
                        # Nothing staged (a sign): kept for a participant whose deadline passed just
                        # before the relay that completed it here - served from memory at once,
                        # and recorded with the session's end in the same commit.
                        encoded = certificate.to_bytes()  # once: served from memory and recorded
                        self._remember_certificate(active.ctx.index_of, active.ctx.session_id, encoded)
                        confirmed = ConfirmedSession(driver.phase, active.ctx.proposal.SerializeToString(),
                                                     certificate.transcript, encoded)
                    outcome = SessionOutcome(outcome.session_id, outcome.phase, "done", outcome.participants,
                                             result, (), "", outcome.duration)
                except Exception as exc:  # a failure to store aborts this session, never crashes the manager
                    # Handlers raise ValueError with a reason written to be public (_stored);
                    # anything else is a bug whose message is not shown.
                    why = str(exc) if isinstance(exc, ValueError) else internal_error(exc)
                    outcome = SessionOutcome(outcome.session_id, outcome.phase, "aborted", outcome.participants,
                                             None, (), f"could not store the output: {why}", outcome.duration)
        finally:
            if outcome is None:  # cancelled: shutdown
                outcome = SessionOutcome(active.ctx.session_id, driver.phase, "cancelled", tuple(active.ctx.index_of),
                                         reason="node shut down during the session")
                self.transport.close_session(active.ctx.session_id)
            with trio.CancelScope(shield=True):
                if not outcome.ok and in_doubt and self.storage is not None:
                    await self._keep_in_doubt(driver, handler, active, outcome)
                if not outcome.ok and driver.stage is not None and driver.machine.confirmed \
                        and self.storage is not None:
                    try:  # staged but never confirmed by everyone: nothing current changed
                        await self._db(self.storage.output_abandoned, active.ctx.session_id, outcome.reason[:500])
                    except Exception as exc:
                        log_event(log, logging.ERROR, "could not mark a staged output abandoned",
                                  session_id=active.ctx.session_id, error=internal_error(exc))
                    if self._nursery is not None and not self.draining:
                        # A peer may have completed the certificate (we confirmed): ask soon.
                        self._nursery.start_soon(self._reconcile_soon, active.ctx.session_id)
                if not outcome.ok:
                    try:
                        handler.failed(active.ctx, outcome)
                    except Exception as exc:  # cleanup bugs must not stop the manager
                        log_event(log, logging.ERROR, "phase cleanup raised an unexpected exception",
                                  session_id=active.ctx.session_id, phase=driver.phase, error=internal_error(exc))
                await self._record(outcome, confirmed)
                active.outcome = outcome
                self._active.pop(active.ctx.session_id, None)
                self.metrics.active_sessions.dec()
                active.done.set()

    async def _keep_in_doubt(self, driver: SessionDriver, handler: PhaseHandler, active: _Active,
                             outcome: SessionOutcome) -> None:
        """Stage the signature of a sign this node confirmed but did not see completed, marked
        abandoned: the reconcile loop asks the peers on and ends it done here the moment one of
        them shows the certificate (``_certificate_from_peers`` says why a window is not enough)."""
        assert self.storage is not None
        encode = getattr(handler, "encode_output", None)
        if encode is None:
            return
        sid = active.ctx.session_id
        try:
            await self._db(self.storage.stage_output, sid, driver.phase, encode(driver.machine.output),
                           proposal=active.ctx.proposal.SerializeToString(), transcript=driver.machine.transcript)
            await self._db(self.storage.output_abandoned, sid, f"in doubt: {outcome.reason[:400]}")
        except Exception as exc:
            log_event(log, logging.ERROR, "could not keep a sign in doubt", session_id=sid, error=internal_error(exc))
            return
        log_event(log, logging.WARNING, "sign confirmed here but not completed: kept in doubt", session_id=sid,
                  ended_here=outcome.status, culprits=list(outcome.culprits))
        if self._nursery is not None and not self.draining:
            self._nursery.start_soon(self._reconcile_soon, sid)

    @staticmethod
    async def _db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Storage calls commit with fsync (synchronous=FULL): keep them off the event loop."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def _record(self, outcome: SessionOutcome, confirmed: ConfirmedSession | None = None) -> None:
        self.metrics.sessions.labels(phase=outcome.phase, outcome=outcome.status).inc()
        self.metrics.session_seconds.labels(phase=outcome.phase).observe(outcome.duration)
        level = logging.INFO if outcome.ok else logging.WARNING
        log_event(log, level, "session finished", session_id=outcome.session_id, phase=outcome.phase,
                  status=outcome.status, culprits=list(outcome.culprits), reason=outcome.reason,
                  disputes=[list(d) for d in outcome.disputes], seconds=round(outcome.duration, 4))
        if self.storage is not None:
            state = "aborted" if outcome.status == "cancelled" else outcome.status
            await self._db(self.storage.session_finished, outcome.session_id, state=state,
                           culprits=outcome.culprits, reason=outcome.reason, confirmed=confirmed)

    def _check_limits(self, proposal: peer_pb2.SessionProposal) -> None:
        """Raise :class:`ProposalLimited` if the proposing peer is over its rate or its number of
        concurrent sessions here (overall, or of this phase). Checked before anything is
        decoded, stored or built, so an over-limit proposal costs a dictionary lookup."""
        peer = proposal.coordinator
        now = trio.current_time()
        tokens, at = self._buckets.get(peer, (PROPOSAL_BURST_PER_PEER, now))
        tokens = min(PROPOSAL_BURST_PER_PEER, tokens + (now - at) * PROPOSAL_RATE_PER_PEER)
        if tokens < 1.0:
            self._buckets[peer] = (tokens, now)
            raise ProposalLimited(f"{peer} is over its proposal rate ({PROPOSAL_RATE_PER_PEER:g}/s)")
        self._buckets[peer] = (tokens - 1.0, now)
        # Sessions being admitted count too: admission awaits the policy and a worker thread,
        # so a burst would otherwise pass the check before any of it is running.
        theirs = [a.ctx.proposal.phase for a in self._active.values() if a.ctx.proposal.coordinator == peer]
        theirs += [ph for (who, ph) in self._admitting if who == peer]
        if len(theirs) >= MAX_SESSIONS_PER_PEER:
            raise ProposalLimited(f"{peer} already runs {len(theirs)} sessions here (limit {MAX_SESSIONS_PER_PEER})")
        cap = MAX_PHASE_SESSIONS_PER_PEER.get(proposal.phase)
        if cap is not None and theirs.count(proposal.phase) >= cap:
            raise ProposalLimited(f"{peer} already runs {cap} {proposal.phase} sessions here (limit {cap})")

    async def handle_proposal(self, proposal: peer_pb2.SessionProposal) -> peer_pb2.ProposalReply:
        """Transport entry point for ``Propose`` (runs on the trio thread)."""
        try:
            self._check_limits(proposal)
        except ProposalLimited:
            self.metrics.proposals.labels(phase=proposal.phase, decision="limited").inc()
            raise
        slot = (proposal.coordinator, proposal.phase)
        self._admitting.append(slot)
        try:
            active, reason = await self._join(proposal)
        finally:
            self._admitting.remove(slot)
        if active is None:
            log_event(log, logging.WARNING, "proposal refused", session_id=proposal.session_id,
                      phase=proposal.phase, coordinator=proposal.coordinator, reason=reason)
        return peer_pb2.ProposalReply(accepted=active is not None, reason=reason, node_id=self.node_id)

    def handle_withdrawal(self, withdrawal: peer_pb2.SessionWithdrawal) -> tuple[bool, str]:
        """The coordinator called a session off: end our side now (transport verified it)."""
        active = self._active.get(withdrawal.session_id)
        if active is None:
            return False, "no such running session"
        if active.ctx.proposal.coordinator != withdrawal.coordinator:
            return False, "only the session's coordinator may withdraw it"
        if active.machine is not None and active.machine.confirmed:
            # The others may complete the certificate with our confirmation: ending here now
            # would leave this node aborted while they are done (issue 11 review, R12). The
            # certificate or the deadline ends it.
            log_event(log, logging.WARNING, "withdrawal refused: this node confirmed the session",
                      session_id=withdrawal.session_id, coordinator=withdrawal.coordinator)
            return False, "this node has confirmed the session: only its certificate or deadline ends it"
        log_event(log, logging.INFO, "session withdrawn by its coordinator", session_id=withdrawal.session_id,
                  coordinator=withdrawal.coordinator, reason=withdrawal.reason)
        active.withdrawn = withdrawal.reason or "withdrawn"
        self.transport.close_session(withdrawal.session_id)
        return True, ""

    async def _withdraw(self, proposal: peer_pb2.SessionProposal, peers: Iterable[str], reason: str) -> None:
        w = sign_withdrawal(peer_pb2.SessionWithdrawal(session_id=proposal.session_id, coordinator=self.node_id,
                                                       reason=reason), self.identity)
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(self.transport.withdraw, peer, w, PROPOSE_TIMEOUT)

    # coordinator side ------------------------------------------------------------------------
    async def healthy_peers(self, phase: str, timeout: float = 2.0) -> list[str]:
        """Peers that answer Health as serving and support ``phase`` (probed concurrently).

        A positive answer is trusted for ``HEALTH_TTL`` seconds so that a burst of sign
        requests does not pay two RPCs each; once it is older than half that, a background
        probe refreshes it, so a steady stream of requests never waits for a health RPC. A
        peer that fails a session is forgotten at once (:meth:`forget_health`), so retries
        re-probe it before using it."""
        now = trio.current_time()
        healthy: list[str] = []

        async def probe(peer: str) -> None:
            reply = await self.transport.health(peer, timeout)
            if reply is not None and reply.status == peer_pb2.HealthReply.SERVING:
                self._health[peer] = (trio.current_time(), frozenset(reply.phases))
            else:
                self._health.pop(peer, None)

        async def refresh(peer: str) -> None:
            try:
                await probe(peer)
            finally:
                self._refreshing.discard(peer)

        async with trio.open_nursery() as nursery:
            for peer in self.peers:
                cached = self._health.get(peer)
                if peer == self.node_id:
                    continue
                if cached is None or now - cached[0] > HEALTH_TTL:
                    nursery.start_soon(probe, peer)
                elif now - cached[0] > HEALTH_TTL / 2 and peer not in self._refreshing and self._nursery:
                    self._refreshing.add(peer)
                    self._nursery.start_soon(refresh, peer)
        for peer, (_, phases) in self._health.items():
            if phase in phases and peer in self.peers:  # a roster reload may have removed it
                healthy.append(peer)
        return sorted(healthy)

    def _dispute_exclusions(self, disputes: Iterable[tuple[str, str]]) -> set[str]:
        """Whom a retry avoids after disputes (pairs nobody can tell apart). If this node is in
        the pair, the other one. Otherwise the member that has been in more disputes here (a
        party that keeps accusing, or being accused, ends up the common member), and both when
        they are even - so one party cannot use a dispute to push out a different honest node
        each time without being pushed out itself first."""
        out: set[str] = set()
        for a, b in disputes:
            self._dispute_counts[a] = self._dispute_counts.get(a, 0) + 1
            self._dispute_counts[b] = self._dispute_counts.get(b, 0) + 1
        for a, b in disputes:
            if self.node_id in (a, b):
                out.add(b if a == self.node_id else a)
                continue
            ca, cb = self._dispute_counts[a], self._dispute_counts[b]
            out.update([a] if ca > cb else [b] if cb > ca else [a, b])
        return out

    def forget_health(self, peers: Iterable[str]) -> None:
        for peer in peers:
            self._health.pop(peer, None)

    def _proposal(self, phase: str, participants: Sequence[str], fill: Callable[[peer_pb2.SessionProposal], None],
                  round_deadline: float) -> peer_pb2.SessionProposal:
        ordered = sorted(participants, key=lambda n: self.peers[n].index)
        p = peer_pb2.SessionProposal(phase=phase, coordinator=self.node_id, participants=ordered,
                                     nonce=fresh_nonce(), round_deadline_ms=int(round_deadline * 1000),
                                     expires_at_ms=int(time.time() * 1000) + PROPOSAL_TTL_MS)
        fill(p)
        p.session_id = derive_session_id(phase, self.node_id, ordered, p.nonce, params_encoding(p),
                                         p.round_deadline_ms)
        return sign_proposal(p, self.identity)

    def update_peers(self, peers: Mapping[str, PeerInfo]) -> None:
        """Adopt a reloaded roster. Refused while a running session involves a peer that would
        go: its driver still routes messages to it."""
        busy = sorted({n for a in self._active.values() for n in a.ctx.index_of if n not in peers})
        if busy:
            raise ValueError(f"cannot remove {', '.join(busy)}: in a running session; try again when it ends")
        self.peers = dict(peers)
        for gone in [n for n in self._health if n not in peers]:
            del self._health[gone]

    def round_deadline_for(self, phase: str) -> float:
        """The round deadline this node proposes for ``phase`` (see HEAVY_PHASE_DEADLINE_FACTOR;
        never below MIN_HEAVY_ROUND_DEADLINE_MS for a heavy phase, which participants refuse)."""
        if phase in HEAVY_PHASE_DEADLINE_FACTOR:
            return max(self.round_deadline * HEAVY_PHASE_DEADLINE_FACTOR[phase], MIN_HEAVY_ROUND_DEADLINE_MS / 1000)
        return self.round_deadline

    async def coordinate(
        self,
        phase: str,
        size: int,
        fill: Callable[[peer_pb2.SessionProposal], None],
        *,
        required: Iterable[str] = (),
        exclude: Iterable[str] = (),
        attempts: int = 3,
        round_deadline: float | None = None,
        choose: Callable[[list[str], int], list[str]] | None = None,
    ) -> SessionOutcome:
        """Run ``phase`` with ``size`` participants (this node included), retrying with
        another set after a refusal, timeout or abort. ``fill`` sets the phase parameters."""
        excluded = set(exclude)
        required = set(required) | {self.node_id}
        deadline = round_deadline or self.round_deadline_for(phase)
        last = SessionOutcome(b"", phase, "refused", reason="no attempt made")
        rng = secrets.SystemRandom()
        for _attempt in range(attempts):
            healthy = [p for p in await self.healthy_peers(phase) if p not in excluded]
            need = size - len(required)
            pool = [p for p in healthy if p not in required]
            if any(r not in healthy and r != self.node_id for r in required) or len(pool) < need:
                return SessionOutcome(b"", phase, "refused", reason=(
                    f"not enough healthy peers for {size} participants (healthy: {', '.join(healthy) or 'none'}; "
                    f"excluded: {', '.join(sorted(excluded)) or 'none'})"))
            chosen = choose(pool, need) if choose else rng.sample(pool, need)
            participants = sorted(required | set(chosen), key=lambda n: self.peers[n].index)
            proposal = self._proposal(phase, participants, fill, deadline)
            problem = await self._admit(proposal)
            if problem is not None:  # our own policy said no: nobody else hears of it
                await self._refused(proposal, problem)
                return SessionOutcome(proposal.session_id, phase, "refused", tuple(participants),
                                      reason=f"this node refused its own proposal: {problem}")
            replies: dict[str, peer_pb2.ProposalReply] = {}
            begun: list[tuple[_Active | None, str]] = []

            async def ask(
                peer: str,
                proposal: peer_pb2.SessionProposal = proposal,
                replies: dict[str, peer_pb2.ProposalReply] = replies,
            ) -> None:
                replies[peer] = await self.transport.propose(peer, proposal, PROPOSE_TIMEOUT)

            async def begin(proposal: peer_pb2.SessionProposal = proposal,
                            begun: list[tuple[_Active | None, str]] = begun) -> None:
                begun.append(await self._begin(proposal))

            # Our own build (for sign: durably consuming our presignature) overlaps the
            # proposal's round trip and the participants' builds instead of preceding them.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(begin)
                for peer in participants:
                    if peer != self.node_id:
                        nursery.start_soon(ask, peer)
            mine, reason = begun[0]
            if mine is None:
                accepted = [p for p, r in replies.items() if r.accepted]
                if accepted:
                    await self._withdraw(proposal, accepted, f"the coordinator could not start: {reason}")
                return SessionOutcome(proposal.session_id, phase, "refused", tuple(participants),
                                      reason=f"this node refused its own proposal: {reason}")
            refusers = sorted(p for p, r in replies.items() if not r.accepted)
            if refusers:
                self.forget_health(refusers)
                # The session cannot complete without them: end it everywhere now, not at the deadline.
                why = "participants refused: " + ", ".join(refusers)
                mine.withdrawn = why
                self.transport.close_session(proposal.session_id)
                await self._withdraw(proposal, [p for p, r in replies.items() if r.accepted], why)
                await mine.done.wait()
                excluded.update(refusers)
                last = SessionOutcome(proposal.session_id, phase, "refused", tuple(participants), None,
                                      tuple(refusers), "; ".join(f"{p}: {replies[p].reason}" for p in refusers))
                log_event(log, logging.WARNING, "proposal refused, retrying with another set",
                          session_id=proposal.session_id, refusers=refusers, reason=last.reason)
                continue
            await mine.done.wait()
            assert mine.outcome is not None
            last = mine.outcome
            if last.ok:
                return last
            excluded.update(c for c in last.culprits if c != self.node_id)
            excluded.update(self._dispute_exclusions(last.disputes))
            self.forget_health(last.culprits)
            log_event(log, logging.WARNING, "session failed, retrying with another set", session_id=last.session_id,
                      status=last.status, culprits=list(last.culprits), disputes=[list(d) for d in last.disputes])
        return last
