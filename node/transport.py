"""The peer transport: gRPC with mutual TLS, signed envelopes, and a trio front end.

How grpcio and trio meet
------------------------
grpcio's asyncio API (``grpc.aio``) needs an asyncio event loop, and trio is not one. We use
grpcio's *synchronous* API on both sides and cross the boundary with trio's own thread
bridges, which are the supported, cancellation-aware way in and out of a trio run:

* **Server**: a ``grpc.server`` with its own thread pool. Each handler runs in a gRPC
  thread and does the stateless, CPU-bound part there - TLS peer lookup, roster and size
  checks, secp256k1 signature verification - so that work never touches the event loop.
  It then calls ``trio.from_thread.run_sync(self._admit, ...)``, which runs a short,
  non-blocking function *on the trio thread*: replay window, duplicate check, session
  lookup, early-message buffer, and ``send_nowait`` into the session's memory channel.
  All mutable transport state is therefore owned by the trio thread and needs no locks.
  The Ack the peer receives tells it what happened to its envelope. When the inbox is
  full the handler answers ``RESOURCE_EXHAUSTED`` and the sender retries: backpressure
  rather than unbounded queues.
* **Client**: the blocking stub call runs in a worker thread via
  ``trio.to_thread.run_sync(..., abandon_on_cancel=True)`` under a capacity limiter. Each
  call has its own gRPC timeout, so a thread abandoned by a cancelled round still ends.
  Sync channels are thread-safe and multiplex calls over one HTTP/2 connection per peer.

Why not ``grpc.aio`` in a dedicated asyncio thread: it works too, but then every message
crosses two event loops and two sets of cancellation semantics, and the gRPC thread pool
already gives us parallel signature verification for free. The cost of our choice is one
thread hop per RPC (tens of microseconds), far below a protocol round's arithmetic.

Envelopes
---------
Sign on send, verify on receive. A receiver accepts an envelope only if: the TLS client
certificate is a pinned roster certificate and belongs to the envelope's sender; the
receiver is this node; the signature verifies under the sender's roster identity key; the
(epoch, sequence) pair is new (per-sender sliding window; an older epoch is a replay); and
the session is running with that phase and lists the sender as a participant. Envelopes for
a session not yet known are buffered (bounded in total and per sender, in envelopes and in
bytes, with a TTL) until the session opens, and dropped when they expire. A session's inbox
is bounded the same way (envelopes and bytes). Each rejection is logged (structured,
without payload) and counted in ``fp_envelopes_rejected_total{reason}``.

Memory budgets
--------------
An envelope may carry up to ``MAX_PAYLOAD`` (4 MiB), so a bound in envelopes alone lets one
roster peer park gigabytes. Every queue is therefore also bounded in payload bytes. The
largest legitimate CGGMP21 messages at the 128-bit level (measured with the in-process
runner, 3072-bit Paillier): aux-info / key-refresh rounds 2 and 3 broadcasts with Π^prm and
Π^mod, ~101 KB each, independent of n; the identification rounds grow with the committee,
about 4 KB + 18 KB·n (presign round 4: 40 KB at n = 3, 59 KB at n = 4) and 21 KB·n (sign
round 2: 43 KB / 64 KB); an echo carrying complaints forwards at most n − 1 private
messages of ≤ 16 KB (presign round 2). Everything else is below 16 KB.

* Early buffer: ``BUFFER_BYTES_PER_SENDER`` = 32 MiB and ``BUFFER_BYTES`` = 128 MiB, i.e.
  128 KB (more than any legitimate message up to n ≈ 6, and far more than the round-1
  messages, the only ones that can legitimately precede a session: round 2 needs this
  node's own echo) times the envelope limits (256 per sender, 1024 in total). The byte
  budget never binds before the envelope limit for honest traffic; a flood of 4 MiB
  envelopes stops at 32 MiB per peer and 128 MiB overall instead of 1 GiB / 4 GiB.
* Session inbox: ``SESSION_INBOX_BYTES`` = 32 MiB per session. A session legitimately
  queues at most (rounds × (broadcast + private + echo)) per peer - ~330 KB per peer for aux
  info, less than 1 MB per peer for an identification run at n = 16 - so 32 MiB is a wide
  margin for the committees this network runs, while a participant flooding a session is
  stopped there.

Over budget, the envelope is refused with ``RESOURCE_EXHAUSTED`` (the sender backs off and
retries until its deadline, as for a full count) and counted with reason ``buffer-bytes-full``
or ``inbox-bytes-full``; the bytes are released when the session takes the envelope, when it
expires unclaimed, or when the session closes.

Delivery is retried with exponential backoff and jitter until the caller's deadline (the
round deadline). The same signed envelope is resent, so a retry whose first attempt did
arrive is acknowledged as DUPLICATE and not processed twice.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import trio

from ..proto.generated import peer_pb2, peer_pb2_grpc
from ..protocol.identity import PartyIdentity
from ..protocol.machine import MAX_PAYLOAD
from .logs import log_event
from .metrics import NodeMetrics
from .tls import TLSMaterial, reloadable_server_credentials
from .wire import proposal_session_id, sign_envelope, verify_envelope, verify_proposal, verify_withdrawal

log = logging.getLogger("fusion_prime.node.transport")

MAX_MESSAGE_BYTES = MAX_PAYLOAD + (64 << 10)
# Byte budgets, payload bytes (see "Memory budgets" above for the measured sizes behind them).
BUFFER_BYTES_PER_SENDER = 32 << 20
BUFFER_BYTES = 128 << 20
SESSION_INBOX_BYTES = 32 << 20
RPC_TIMEOUT = 5.0
INITIAL_BACKOFF, MAX_BACKOFF = 0.05, 1.0
Ack = peer_pb2.Ack

ProposalHandler = Callable[[peer_pb2.SessionProposal], Awaitable[peer_pb2.ProposalReply]]
WithdrawalHandler = Callable[[peer_pb2.SessionWithdrawal], tuple[bool, str]]
HealthProvider = Callable[[], peer_pb2.HealthReply]
# (asking peer, presignature ids) -> one PresignatureStates.State per id; runs in a gRPC thread.
PresignatureStatusProvider = Callable[[str, list[bytes]], list[int]]
CertificateProvider = Callable[[str, bytes], bytes]  # (asking peer, session id) -> certificate or b""
# Sees every reply to a proposal this node sent: (peer, proposal, reply).
ProposalReplyObserver = Callable[[str, peer_pb2.SessionProposal, peer_pb2.ProposalReply], None]
MAX_PRESIGNATURE_QUERY = 1024


class TransportError(RuntimeError):
    pass


class _Transient(Exception):
    """Raised inside the trio-side admission to make the gRPC handler answer RESOURCE_EXHAUSTED."""


class ProposalLimited(Exception):
    """Raised by a proposal handler when the proposing peer is over its session limits: the
    ``Propose`` call then answers RESOURCE_EXHAUSTED (the coordinator backs off or picks another
    set) instead of a refusal that reads like a policy decision."""


@dataclass(frozen=True)
class PeerInfo:
    node_id: str
    index: int
    address: str
    identity_public_key: bytes


@dataclass(frozen=True)
class Inbound:
    """A verified envelope, as a session sees it."""

    session_id: bytes
    phase: str
    round: int
    sender: str
    broadcast: bool
    payload: bytes = field(repr=False)


class ReplayWindow:
    """Anti-replay state for one sender (in the style of IPsec's sliding window).

    Sequence numbers can arrive out of order (concurrent sessions, retries in parallel
    threads), so "greater than the last one" would drop honest traffic. Instead we accept any
    unseen sequence within ``size`` of the highest seen, and refuse older ones. An envelope
    from an older epoch than the newest seen comes from a previous run of the sender: replay.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.epoch = -1
        self.highest = 0
        self.seen: set[int] = set()

    def classify(self, epoch: int, seq: int) -> str:
        if epoch < self.epoch:
            return "replay-old-epoch"
        if epoch > self.epoch:
            return "new"
        if seq in self.seen:
            return "duplicate"
        if seq + self.size <= self.highest:
            return "replay-outside-window"
        return "new"

    def record(self, epoch: int, seq: int) -> None:
        if epoch > self.epoch:
            self.epoch, self.highest, self.seen = epoch, 0, set()
        self.seen.add(seq)
        self.highest = max(self.highest, seq)
        if len(self.seen) > 2 * self.size:
            floor = self.highest - self.size
            self.seen = {s for s in self.seen if s > floor}


@dataclass
class _Session:
    phase: str
    participants: frozenset[str]
    send: trio.MemorySendChannel[Inbound]
    queued_bytes: int = 0  # payload bytes sent into the inbox and not yet received by the driver


class SessionInbox:
    """The receiving end of one session's inbox: a trio memory channel that also gives the
    payload bytes of each envelope it hands out back to the session's byte budget."""

    def __init__(self, session: _Session, receive: trio.MemoryReceiveChannel[Inbound]) -> None:
        self._session = session
        self._receive = receive

    def _took(self, inbound: Inbound) -> Inbound:
        self._session.queued_bytes -= len(inbound.payload)
        return inbound

    async def receive(self) -> Inbound:
        return self._took(await self._receive.receive())

    def receive_nowait(self) -> Inbound:
        return self._took(self._receive.receive_nowait())

    def close(self) -> None:
        self._receive.close()


@dataclass
class _Held:
    inbound: Inbound
    expires_at: float


class _Servicer(peer_pb2_grpc.PeerServicer):
    """Runs in gRPC's threads; see the module docstring."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport

    def _peer(self, context: grpc.ServicerContext) -> str:
        peer = self.t.tls.trust.peer_node_id(context)
        if peer is None or peer not in self.t.peers:
            self.t.count_reject("unpinned-certificate", peer=context.peer())
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "client certificate is not in the roster")
        return peer  # type: ignore[return-value]

    def _to_trio(self, fn: Callable[..., Any], *args: Any) -> Any:
        token = self.t.trio_token
        if token is None:
            raise trio.RunFinishedError
        return trio.from_thread.run_sync(fn, *args, trio_token=token)

    def Deliver(self, request: peer_pb2.Envelope, context: grpc.ServicerContext) -> peer_pb2.Ack:
        peer = self._peer(context)
        problem = self.t.check_envelope(request, peer)
        if problem is not None:
            reason, detail = problem
            self.t.count_reject(reason, peer=peer, detail=detail, session_id=request.session_id, round=request.round)
            return Ack(status=Ack.REJECTED, reason=detail)
        inbound = Inbound(request.session_id, request.phase, request.round, request.sender, request.broadcast,
                          request.payload)
        try:
            status, reason = self._to_trio(self.t.admit, inbound, request.epoch, request.sequence)
        except _Transient as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except trio.RunFinishedError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "node is shutting down")
        return Ack(status=status, reason=reason)

    def Propose(self, request: peer_pb2.SessionProposal, context: grpc.ServicerContext) -> peer_pb2.ProposalReply:
        peer = self._peer(context)
        me = self.t.node_id

        def refuse(reason: str) -> peer_pb2.ProposalReply:
            log_event(log, logging.WARNING, "proposal refused", peer=peer, phase=request.phase,
                      session_id=request.session_id, reason=reason)
            return peer_pb2.ProposalReply(accepted=False, reason=reason, node_id=me)

        if request.coordinator != peer:
            return refuse("coordinator does not match the TLS peer")
        if not verify_proposal(request, self.t.peers[peer].identity_public_key):
            return refuse("bad coordinator signature on the proposal")
        if proposal_session_id(request) != request.session_id:
            return refuse("session id does not bind the proposal's contents")
        handler = self.t.proposal_handler
        if handler is None:
            return refuse("this node is not accepting sessions")
        try:
            token = self.t.trio_token
            if token is None:
                raise trio.RunFinishedError
            return trio.from_thread.run(handler, request, trio_token=token)
        except trio.RunFinishedError:
            return refuse("node is shutting down")
        except ProposalLimited as exc:
            self.t.count_reject("proposal-limit", peer=peer, session_id=request.session_id, detail=str(exc))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    def Withdraw(self, request: peer_pb2.SessionWithdrawal, context: grpc.ServicerContext) -> peer_pb2.Ack:
        peer = self._peer(context)
        if request.coordinator != peer or not verify_withdrawal(request, self.t.peers[peer].identity_public_key):
            self.t.count_reject("bad-withdrawal", peer=peer, session_id=request.session_id)
            return Ack(status=Ack.REJECTED, reason="withdrawal not signed by the TLS peer")
        handler = self.t.withdrawal_handler
        if handler is None:
            return Ack(status=Ack.REJECTED, reason="this node runs no sessions")
        try:
            done, reason = self._to_trio(handler, request)
        except trio.RunFinishedError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "node is shutting down")
        return Ack(status=Ack.ACCEPTED if done else Ack.REJECTED, reason=reason)

    def PresignatureStatus(self, request: peer_pb2.PresignatureQuery, context: grpc.ServicerContext
                           ) -> peer_pb2.PresignatureStates:
        """Pool resync (read-only): the state here of each presignature the caller asks about.
        Authenticated like every peer RPC (pinned TLS certificate = a roster node); the provider
        answers only for presignatures whose signer set includes the caller."""
        peer = self._peer(context)
        ids = list(request.presignature_ids)
        if len(ids) > MAX_PRESIGNATURE_QUERY or any(len(i) > 64 for i in ids):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_PRESIGNATURE_QUERY} presignature ids")
        provider = self.t.presignature_status_provider
        if provider is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this node keeps no presignatures")
        try:
            states = provider(peer, ids)
        except Exception as exc:  # storage trouble: the asker keeps its presignatures unverified
            log_event(log, logging.WARNING, "presignature status failed", peer=peer, error=type(exc).__name__)
            context.abort(grpc.StatusCode.UNAVAILABLE, "presignature status unavailable")
        return peer_pb2.PresignatureStates(node_id=self.t.node_id, states=states)

    def SessionCertificate(self, request: peer_pb2.CertificateQuery, context: grpc.ServicerContext
                           ) -> peer_pb2.CertificateReply:
        """Agreement (read-only): the certificate of a session the caller took part in, so that
        a participant that missed the end of the session can make its staged output current."""
        peer = self._peer(context)
        if not 16 <= len(request.session_id) <= 128:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session id must be 16 to 128 bytes")
        provider = self.t.certificate_provider
        if provider is None:
            return peer_pb2.CertificateReply(node_id=self.t.node_id)
        try:
            certificate = provider(peer, bytes(request.session_id))
        except Exception as exc:  # storage trouble: the asker tries another peer or later
            log_event(log, logging.WARNING, "certificate lookup failed", peer=peer, error=type(exc).__name__)
            context.abort(grpc.StatusCode.UNAVAILABLE, "certificate lookup unavailable")
        return peer_pb2.CertificateReply(node_id=self.t.node_id, certificate=certificate)

    def Health(self, request: peer_pb2.HealthRequest, context: grpc.ServicerContext) -> peer_pb2.HealthReply:
        self._peer(context)
        provider = self.t.health_provider
        if provider is None:
            return peer_pb2.HealthReply(node_id=self.t.node_id, status=peer_pb2.HealthReply.SERVING)
        try:
            return self._to_trio(provider)
        except trio.RunFinishedError:
            return peer_pb2.HealthReply(node_id=self.t.node_id, status=peer_pb2.HealthReply.DRAINING)


class Transport:
    """gRPC server and clients for one node. Create it, then ``await nursery.start(t.run)``."""

    def __init__(
        self,
        *,
        node_id: str,
        identity: PartyIdentity,
        peers: Mapping[str, PeerInfo],
        tls: TLSMaterial,
        listen: str,
        epoch: int,
        metrics: NodeMetrics | None = None,
        proposal_handler: ProposalHandler | None = None,
        health_provider: HealthProvider | None = None,
        buffer_limit: int = 1024,
        buffer_per_sender: int = 256,
        buffer_ttl: float = 30.0,
        session_inbox: int = 1024,
        buffer_bytes: int = BUFFER_BYTES,
        buffer_bytes_per_sender: int = BUFFER_BYTES_PER_SENDER,
        session_inbox_bytes: int = SESSION_INBOX_BYTES,
        rpc_threads: int = 16,
        replay_window: int = 4096,
    ) -> None:
        if node_id not in peers:
            raise TransportError(f"{node_id!r} is not in its own roster")
        self.node_id = node_id
        self.identity = identity
        self.peers = dict(peers)
        self.tls = tls
        self.listen = listen
        self.epoch = epoch
        self.metrics = metrics or NodeMetrics(node_id)
        self.proposal_handler = proposal_handler
        self.health_provider = health_provider
        self.withdrawal_handler: WithdrawalHandler | None = None
        self.presignature_status_provider: PresignatureStatusProvider | None = None
        self.certificate_provider: CertificateProvider | None = None
        self.proposal_reply_observer: ProposalReplyObserver | None = None
        self.buffer_limit, self.buffer_per_sender, self.buffer_ttl = buffer_limit, buffer_per_sender, buffer_ttl
        self.session_inbox = session_inbox
        if min(buffer_bytes, buffer_bytes_per_sender, session_inbox_bytes) < MAX_PAYLOAD:
            # a smaller budget would refuse a legitimate maximal message forever
            raise TransportError(f"byte budgets must be at least one maximal payload ({MAX_PAYLOAD} bytes)")
        self.buffer_bytes, self.buffer_bytes_per_sender = buffer_bytes, buffer_bytes_per_sender
        self.session_inbox_bytes = session_inbox_bytes
        self.trio_token: trio.lowlevel.TrioToken | None = None
        self.port: int | None = None
        self._rpc_threads = rpc_threads
        self._rpc_limiter = trio.CapacityLimiter(rpc_threads)
        self._window_size = replay_window
        self._windows: dict[str, ReplayWindow] = {}
        self._sessions: dict[bytes, _Session] = {}
        self._held: OrderedDict[int, _Held] = OrderedDict()
        self._held_ids = itertools.count()
        self._held_per_sender: dict[str, int] = {}
        self._held_bytes = 0
        self._held_bytes_per_sender: dict[str, int] = {}
        self._closed: set[bytes] = set()
        self._closed_order: deque[bytes] = deque()
        self._closed_limit = 4096
        self._sequences: dict[str, itertools.count[int]] = {p: itertools.count(1) for p in self.peers}
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, peer_pb2_grpc.PeerStub] = {}

    # server ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(port)`` once listening."""
        self.trio_token = trio.lowlevel.current_trio_token()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.so_reuseport", 0)]
        server = grpc.server(ThreadPoolExecutor(max_workers=self._rpc_threads, thread_name_prefix="fp-grpc"),
                             options=options)
        peer_pb2_grpc.add_PeerServicer_to_server(_Servicer(self), server)
        try:
            port = server.add_secure_port(self.listen, reloadable_server_credentials(lambda: self.tls))
        except RuntimeError as exc:
            raise TransportError(f"cannot listen on {self.listen}: {exc}") from None
        server.start()
        self.port = port
        log_event(log, logging.INFO, "transport listening", node=self.node_id, address=self.listen, port=port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sweep)
                task_status.started(port)
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: server.stop(grace=1.0).wait())
                self.trio_token = None
                for session in self._sessions.values():
                    session.send.close()
                self._sessions.clear()
                for channel in self._channels.values():
                    channel.close()
                self._channels.clear()
                self._stubs.clear()
            log_event(log, logging.INFO, "transport stopped", node=self.node_id)

    def count_reject(self, reason: str, *, level: int = logging.WARNING, **fields: Any) -> None:
        self.metrics.envelopes_rejected.labels(reason=reason).inc()
        log_event(log, level, "envelope rejected", node=self.node_id, reason=reason, **fields)

    def check_envelope(self, env: peer_pb2.Envelope, peer: str) -> tuple[str, str] | None:
        """Stateless checks, run in a gRPC thread. (reason code, detail) or None."""
        if env.sender != peer:
            return "sender-mismatch", f"envelope claims sender {env.sender!r} but the TLS peer is {peer!r}"
        if env.receiver != self.node_id:
            return "wrong-receiver", f"envelope is addressed to {env.receiver!r}"
        if not 16 <= len(env.session_id) <= 128 or not env.phase or len(env.phase) > 64:
            return "malformed", "session id or phase out of range"
        if len(env.payload) > MAX_PAYLOAD:
            return "malformed", "payload too large"
        if not verify_envelope(env, self.peers[peer].identity_public_key):
            return "bad-signature", "envelope signature does not verify under the sender's identity key"
        return None

    def admit(self, inbound: Inbound, epoch: int, sequence: int) -> tuple[int, str]:
        """On the trio thread: replay window, then session inbox or early buffer."""
        window = self._windows.setdefault(inbound.sender, ReplayWindow(self._window_size))
        verdict = window.classify(epoch, sequence)
        fields = {"peer": inbound.sender, "session_id": inbound.session_id, "round": inbound.round,
                  "epoch": epoch, "sequence": sequence}
        if verdict == "duplicate":
            self.count_reject("duplicate", level=logging.INFO, **fields)
            return Ack.DUPLICATE, "already received"
        if verdict != "new":
            self.count_reject(verdict, **fields)
            return Ack.REJECTED, "replayed envelope"
        session = self._sessions.get(inbound.session_id)
        if session is None:
            if inbound.session_id in self._closed:
                self.count_reject("session-closed", level=logging.INFO, **fields)
                return Ack.REJECTED, "session already finished"
            if len(self._held) >= self.buffer_limit or self._held_per_sender.get(inbound.sender, 0) >= (
                self.buffer_per_sender
            ):
                self.count_reject("buffer-full", **fields)
                raise _Transient("early-message buffer full; retry later")
            size = len(inbound.payload)
            if self._held_bytes + size > self.buffer_bytes or self._held_bytes_per_sender.get(
                inbound.sender, 0
            ) + size > self.buffer_bytes_per_sender:
                self.count_reject("buffer-bytes-full", bytes=size, **fields)
                raise _Transient("early-message buffer byte budget exhausted; retry later")
            self._hold(inbound)
            window.record(epoch, sequence)
            self.metrics.envelopes_received.labels(peer=inbound.sender, outcome="buffered").inc()
            log_event(log, logging.DEBUG, "envelope buffered for an unknown session", **fields)
            return Ack.BUFFERED, "session not known yet"
        problem = self._session_problem(session, inbound)
        if problem is not None:
            self.count_reject(problem[0], detail=problem[1], **fields)
            return Ack.REJECTED, problem[1]
        verdict = self._enqueue(session, inbound)
        if verdict in ("inbox-full", "inbox-bytes-full"):
            self.count_reject(verdict, bytes=len(inbound.payload), **fields)
            raise _Transient(f"session {'inbox' if verdict == 'inbox-full' else 'inbox byte budget'} full; "
                             "retry later")
        if verdict == "session-closed":
            self.count_reject("session-closed", level=logging.INFO, **fields)
            return Ack.REJECTED, "session already finished"
        window.record(epoch, sequence)
        self.metrics.envelopes_received.labels(peer=inbound.sender, outcome="accepted").inc()
        return Ack.ACCEPTED, ""

    def _enqueue(self, session: _Session, inbound: Inbound) -> str | None:
        """Into the session's inbox within its byte budget: None, or the reason it was not."""
        size = len(inbound.payload)
        if session.queued_bytes + size > self.session_inbox_bytes:
            return "inbox-bytes-full"
        try:
            session.send.send_nowait(inbound)
        except trio.WouldBlock:
            return "inbox-full"
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return "session-closed"
        session.queued_bytes += size
        return None

    def _hold(self, inbound: Inbound) -> None:
        size = len(inbound.payload)
        self._held[next(self._held_ids)] = _Held(inbound, trio.current_time() + self.buffer_ttl)
        self._held_per_sender[inbound.sender] = self._held_per_sender.get(inbound.sender, 0) + 1
        self._held_bytes += size
        self._held_bytes_per_sender[inbound.sender] = self._held_bytes_per_sender.get(inbound.sender, 0) + size
        self.metrics.buffered.set(len(self._held))

    def _release(self, key: int) -> _Held:
        held = self._held.pop(key)
        sender, size = held.inbound.sender, len(held.inbound.payload)
        self._held_per_sender[sender] -= 1
        self._held_bytes -= size
        self._held_bytes_per_sender[sender] -= size
        if not self._held_per_sender[sender]:  # no empty entries left behind by departed peers
            del self._held_per_sender[sender], self._held_bytes_per_sender[sender]
        return held

    @staticmethod
    def _session_problem(session: _Session, inbound: Inbound) -> tuple[str, str] | None:
        if inbound.phase != session.phase:
            return "wrong-phase", f"session runs phase {session.phase!r}, envelope says {inbound.phase!r}"
        if inbound.sender not in session.participants:
            return "not-a-participant", f"{inbound.sender!r} is not a participant of this session"
        return None

    def open_session(self, session_id: bytes, phase: str, participants: Iterable[str]) -> SessionInbox:
        """Register a session and hand over envelopes that arrived before it existed."""
        if session_id in self._sessions or session_id in self._closed:
            raise TransportError("session id already used")
        send, receive = trio.open_memory_channel[Inbound](self.session_inbox)
        session = _Session(phase, frozenset(participants) - {self.node_id}, send)
        self._sessions[session_id] = session
        for key in [k for k, h in self._held.items() if h.inbound.session_id == session_id]:
            held = self._release(key)
            problem = self._session_problem(session, held.inbound)
            if problem is not None:
                self.count_reject(problem[0], detail=problem[1], peer=held.inbound.sender, session_id=session_id)
                continue
            verdict = self._enqueue(session, held.inbound)
            if verdict is not None:
                self.count_reject(verdict, peer=held.inbound.sender, session_id=session_id,
                                  bytes=len(held.inbound.payload))
        self.metrics.buffered.set(len(self._held))
        return SessionInbox(session, receive)

    def close_session(self, session_id: bytes) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.send.close()  # its queued bytes leave the accounting with the session
        if session_id not in self._closed:
            self._closed.add(session_id)
            self._closed_order.append(session_id)
            while len(self._closed_order) > self._closed_limit:
                self._closed.discard(self._closed_order.popleft())

    @property
    def buffered_count(self) -> int:
        return len(self._held)

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes held in the early-message buffer."""
        return self._held_bytes

    def buffered_bytes_from(self, sender: str) -> int:
        return self._held_bytes_per_sender.get(sender, 0)

    @property
    def inbox_bytes(self) -> int:
        """Payload bytes queued in the inboxes of running sessions, not yet taken by their drivers."""
        return sum(s.queued_bytes for s in self._sessions.values())

    async def _sweep(self) -> None:
        """Drop early envelopes whose session never appeared."""
        while True:
            await trio.sleep(min(1.0, self.buffer_ttl / 4))
            now = trio.current_time()
            expired = [k for k, h in self._held.items() if h.expires_at <= now]
            for key in expired:
                held = self._release(key)
                self.count_reject("expired-unknown-session", peer=held.inbound.sender,
                                  session_id=held.inbound.session_id, round=held.inbound.round)
            if expired:
                self.metrics.buffered.set(len(self._held))

    # roster ------------------------------------------------------------------------------
    def update_roster(self, peers: Mapping[str, PeerInfo], tls: TLSMaterial) -> None:
        """Adopt a reloaded roster (called on the trio thread). New peers can connect from the
        next handshake on (the server's trust store follows ``self.tls``); a peer whose address
        changed gets a fresh channel; a removed peer's channel is closed and its envelopes are
        refused from now on. Identity keys of staying peers never change (Node checks it)."""
        if self.node_id not in peers:
            raise TransportError(f"{self.node_id!r} is not in its own roster")
        for peer in list(self._channels):
            if peer not in peers or peers[peer].address != self.peers[peer].address:
                self._stubs.pop(peer, None)
                self._channels.pop(peer).close()
        for peer in peers:
            self._sequences.setdefault(peer, itertools.count(1))
        self.peers = dict(peers)
        self.tls = tls

    # client ------------------------------------------------------------------------------
    def _stub(self, peer: str) -> peer_pb2_grpc.PeerStub:
        stub = self._stubs.get(peer)
        if stub is None:
            options = [*TLSMaterial.channel_options(peer),
                       ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.initial_reconnect_backoff_ms", 100),
                       ("grpc.max_reconnect_backoff_ms", 1000)]
            channel = grpc.secure_channel(self.peers[peer].address, self.tls.channel_credentials(), options)
            self._channels[peer] = channel
            stub = self._stubs[peer] = peer_pb2_grpc.PeerStub(channel)
        return stub

    async def _call(self, method: Callable[..., Any], request: Any, timeout: float) -> Any:
        return await trio.to_thread.run_sync(
            functools.partial(method, request, timeout=timeout), abandon_on_cancel=True, limiter=self._rpc_limiter
        )

    def make_envelope(
        self, receiver: str, *, session_id: bytes, phase: str, round: int, broadcast: bool, payload: bytes
    ) -> peer_pb2.Envelope:
        env = peer_pb2.Envelope(
            session_id=session_id, phase=phase, round=round, sender=self.node_id, receiver=receiver,
            broadcast=broadcast, epoch=self.epoch, sequence=next(self._sequences[receiver]), payload=payload,
        )
        return sign_envelope(env, self.identity)

    async def deliver_once(self, env: peer_pb2.Envelope, timeout: float) -> peer_pb2.Ack:
        """One attempt; raises grpc.RpcError on transport failure."""
        return await self._call(self._stub(env.receiver).Deliver, env, timeout)

    async def deliver(self, env: peer_pb2.Envelope, *, deadline: float) -> bool:
        """Send one signed envelope, retrying until ``deadline`` (trio clock). True if the
        receiver has it (accepted, buffered, or already had it)."""
        peer = env.receiver
        backoff = INITIAL_BACKOFF
        fields = {"peer": peer, "session_id": env.session_id, "round": env.round, "sequence": env.sequence}
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                self.metrics.delivery_failures.labels(peer=peer).inc()
                log_event(log, logging.WARNING, "delivery gave up at the deadline", **fields)
                return False
            try:
                ack = await self.deliver_once(env, min(remaining, RPC_TIMEOUT))
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                log_event(log, logging.DEBUG, "delivery attempt failed", code=str(code), **fields)
            else:
                if ack.status in (Ack.ACCEPTED, Ack.BUFFERED, Ack.DUPLICATE):
                    self.metrics.envelopes_sent.labels(peer=peer).inc()
                    return True
                log_event(log, logging.WARNING, "peer rejected envelope", reason=ack.reason, **fields)
                return False
            self.metrics.delivery_retries.labels(peer=peer).inc()
            await trio.sleep(min(backoff * random.uniform(0.5, 1.0), max(0.0, deadline - trio.current_time())))  # noqa: S311 - jitter
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def send(
        self, receiver: str, *, session_id: bytes, phase: str, round: int, broadcast: bool, payload: bytes,
        deadline: float,
    ) -> bool:
        env = self.make_envelope(receiver, session_id=session_id, phase=phase, round=round, broadcast=broadcast,
                                 payload=payload)
        return await self.deliver(env, deadline=deadline)

    async def propose(
        self, peer: str, proposal: peer_pb2.SessionProposal, timeout: float
    ) -> peer_pb2.ProposalReply:
        try:
            reply = await self._call(self._stub(peer).Propose, proposal, timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            reply = peer_pb2.ProposalReply(accepted=False, reason=f"unreachable ({code})", node_id=peer)
        if self.proposal_reply_observer is not None:
            self.proposal_reply_observer(peer, proposal, reply)
        return reply

    async def withdraw(self, peer: str, withdrawal: peer_pb2.SessionWithdrawal, timeout: float) -> bool:
        try:
            ack = await self._call(self._stub(peer).Withdraw, withdrawal, timeout)
        except grpc.RpcError:
            return False
        return ack.status == Ack.ACCEPTED

    async def presignature_status(self, peer: str, presig_ids: list[bytes], timeout: float = RPC_TIMEOUT
                                  ) -> list[int] | None:
        """Ask ``peer`` for the state of each presignature (None if unreachable or malformed)."""
        try:
            reply = await self._call(self._stub(peer).PresignatureStatus,
                                     peer_pb2.PresignatureQuery(presignature_ids=presig_ids), timeout)
        except grpc.RpcError:
            return None
        if reply.node_id != peer or len(reply.states) != len(presig_ids):
            return None
        return list(reply.states)

    async def session_certificate(self, peer: str, session_id: bytes, timeout: float = RPC_TIMEOUT) -> bytes | None:
        """Ask ``peer`` for a session's certificate: its bytes, b"" if it has none, None if
        unreachable. The caller verifies it - a peer's answer is never trusted as such."""
        try:
            reply = await self._call(self._stub(peer).SessionCertificate,
                                     peer_pb2.CertificateQuery(session_id=session_id), timeout)
        except grpc.RpcError:
            return None
        if reply.node_id != peer:
            return None
        return bytes(reply.certificate)

    async def health(self, peer: str, timeout: float = 2.0) -> peer_pb2.HealthReply | None:
        try:
            return await self._call(self._stub(peer).Health, peer_pb2.HealthRequest(), timeout)
        except grpc.RpcError:
            return None
