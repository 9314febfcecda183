"""The wallet gRPC service on each node, and the policy hook every participant runs.

Flow of a signature: a client sends a ``SignedRequest`` to any node. That node (the
coordinator) verifies the client's signature, checks its own policy, and proposes a sign
session whose parameters carry the request unchanged. Every participant's
``WalletAuthorizer`` verifies the same request again and checks it against *its own* policy
before joining — so a coordinator that skips or fakes its check still cannot get a signature.

Idempotency: a request id names one request of one client. A repeat with the same body
returns the stored result without running a session; the same id with another body is
refused. Order of the checks on every call: the client's signature (UNAUTHENTICATED), whether
this node's policy names the client at all (PERMISSION_DENIED), whether this node holds the key
(NOT_FOUND - before anything is recorded, reserved or charged to a window), then the policy
for the key. Reads (ListKeys, GetPublicKey) are signed requests too, never recorded.

Progress: every request's states go to the Status stream as they happen (CreateKey:
authorised, running/keygen, running/aux-info, done), and the node logs the long aux-info phase
(started, still running every AUX_PROGRESS_SECONDS, finished).

Threading: grpcio's sync server runs handlers in its thread pool; they call into the node's
trio loop with ``trio.from_thread.run`` (the node owns all session state).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import trio

from ..node.daemon import Node
from ..node.logs import log_event
from ..node.phases import RefreshParams, ReshareParams, load_key_share
from ..node.session import Refuse
from ..node.storage import StorageError, StorageFault
from ..proto.generated import peer_pb2, wallet_pb2, wallet_pb2_grpc
from ..protocol.addresses import ethereum_address, p2wpkh_address
from ..protocol.ecdsa import Signature
from ..protocol.encoding import Decoder, Encoder
from ..protocol.errors import InvalidInput
from ..protocol.hd import derive
from .policy import PolicyEnforcer, PolicyRefusal
from .requests import (
    KIND_CREATE_KEY,
    KIND_LIST_KEYS,
    KIND_PUBLIC_KEY,
    KIND_REFRESH,
    KIND_RESHARE,
    KIND_SIGN,
    RequestBody,
    Unauthenticated,
    VerifiedRequest,
    parse_forwarded,
    verify_request,
)

log = logging.getLogger("fusion_prime.signer.service")

# Status is unauthenticated (anyone may name any client key and request id), and each open
# stream holds one of the server's WALLET_SERVER_THREADS threads, so:
# * an id this node does not know is answered NOT_FOUND at once (never waited on);
# * a stream for a known, unfinished request waits on a condition (no polling) for at most
#   STATUS_MAX_SECONDS, then ends with DEADLINE_EXCEEDED ("ask again");
# * at most STATUS_MAX_STREAMS such waiting streams exist at once, and at most
#   STATUS_MAX_STREAMS_PER_CLIENT per client key; beyond either, RESOURCE_EXHAUSTED at once.
#   So Status can never hold more than STATUS_MAX_STREAMS of the threads: the rest stay free
#   for Sign, ListKeys and the others.
#
# Sign and the admin calls (CreateKey, Refresh, Reshare) wait for their session on a server
# thread too (a sign at most the node's bounded queue wait), so each kind has its own budget of
# threads, overall and per client key, and a call beyond it is RESOURCE_EXHAUSTED at once:
# one client cannot take another's share, and the budgets together leave
# WALLET_SERVER_THREADS - (SIGN + ADMIN + STATUS) threads that only the calls that never wait
# (ListKeys, GetPublicKey, refusals, an unknown Status id) can use.
WALLET_SERVER_THREADS = 64
STATUS_MAX_SECONDS = 60.0
STATUS_MAX_STREAMS = 4
STATUS_MAX_STREAMS_PER_CLIENT = 2
SIGN_MAX_WAITING = 48
SIGN_MAX_WAITING_PER_CLIENT = 40
ADMIN_MAX_WAITING = 4
ADMIN_MAX_WAITING_PER_CLIENT = 2
# Status history kept in memory (oldest entries are dropped first).
STATUS_HISTORY = 10_000
# While a CreateKey's aux info runs (each node generates its Paillier safe primes: minutes at
# the production level), the coordinator logs that it is still running this often.
AUX_PROGRESS_SECONDS = 15.0


class _ThreadBudget:
    """How many calls of one kind may hold a server thread at once, overall and per client."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self._lock = threading.Lock()
        self._held = 0
        self._of: dict[bytes, int] = {}

    def take(self, client: bytes) -> bool:
        with self._lock:
            if self._held >= self.total or self._of.get(client, 0) >= self.per_client:
                return False
            self._held += 1
            self._of[client] = self._of.get(client, 0) + 1
            return True

    def give_back(self, client: bytes) -> None:
        with self._lock:
            self._held -= 1
            left = self._of.get(client, 0) - 1
            if left > 0:
                self._of[client] = left
            else:
                self._of.pop(client, None)

    def held(self) -> int:
        with self._lock:
            return self._held

    @contextmanager
    def slot(self, client: bytes, context: grpc.ServicerContext, what: str) -> Iterator[None]:
        if not self.take(client):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many {what} calls waiting on this node (at most {self.total}, "
                          f"{self.per_client} per client); retry later")
        try:
            yield
        finally:
            self.give_back(client)


class _StillRunning:
    """Logs "still running" every ``every`` seconds from a helper thread until closed, so an
    operator watching the log of a long phase sees it alive (and for how long)."""

    def __init__(self, event: str, every: float, **fields: Any) -> None:
        self.event, self.every, self.fields = event, every, fields
        self.started = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wallet-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self.every):
            log_event(log, logging.INFO, self.event, state="running",
                      seconds=round(time.monotonic() - self.started, 1), **self.fields)

    def close(self) -> float:
        """Stop logging; the seconds the phase ran."""
        self._done.set()
        self._thread.join()
        return round(time.monotonic() - self.started, 1)


class WalletAuthorizer:
    """The participant-side check, plugged into the node as its ``authorize`` hook.

    Every session that can create, change or use a key must carry the wallet client's signed
    request, and this node checks it against its *own* policy and against the proposal's
    parameters: a sign session (SignParams.client_request), and the key administration
    sessions - keygen and aux info for CreateKey, key-refresh for Refresh, reshare and the new
    committee's aux info for Reshare (SessionProposal.client_request). Without that, any roster
    peer could propose a resharing to threshold 1 among itself and one honest node and so
    learn the whole key. Presign is node-internal: it releases nothing and uses no client
    authority."""

    NODE_INTERNAL = frozenset({"presign"})

    def __init__(self, enforcer: PolicyEnforcer | None) -> None:
        self.enforcer = enforcer

    async def in_thread(self, proposal: peer_pb2.SessionProposal) -> tuple[bool, str]:
        """The hook as the node should call it: signature checks and the policy's fsynced SQLite
        write happen in a worker thread, never on the node's event loop."""
        return await trio.to_thread.run_sync(self, proposal)

    def __call__(self, proposal: peer_pb2.SessionProposal) -> tuple[bool, str]:
        if self.enforcer is None:
            return False, "wallet policy not loaded yet"
        if proposal.phase in self.NODE_INTERNAL:
            return True, ""
        raw = proposal.sign.client_request if proposal.phase == "sign" else proposal.client_request
        if not raw:
            return False, f"a {proposal.phase} session needs the client's signed request"
        try:
            verified = verify_request(parse_forwarded(raw))
        except InvalidInput as exc:
            return False, f"client request rejected: {exc}"
        mismatch = self._mismatch(proposal, verified.body)
        if mismatch:
            return False, f"the proposal does not match what the client signed: {mismatch}"
        try:
            # With the session id: one request, at most MAX_SESSIONS_PER_REQUEST sign sessions.
            self.enforcer.check(verified, session_id=proposal.session_id)
        except PolicyRefusal as exc:
            return False, str(exc)
        if proposal.phase == "aux-info":
            # the long phase of a key's creation, and the only sign of it at a participant
            log_event(log, logging.INFO, "aux info authorised: generating this node's Paillier primes",
                      session_id=proposal.session_id, parties=list(proposal.participants),
                      request_id=verified.body.request_id)
        return True, ""

    @staticmethod
    def _mismatch(proposal: peer_pb2.SessionProposal, body: RequestBody) -> str:
        """Why the proposal is not what ``body`` asked for ("" when it is)."""
        phase, participants = proposal.phase, list(proposal.participants)
        if phase == "sign":
            s = proposal.sign
            if body.kind != KIND_SIGN or body.key_id != s.key_id or body.digest != s.digest \
                    or tuple(body.path) != tuple(s.path):
                return "key, digest or path"
            return ""
        if phase == "keygen":
            if body.kind != KIND_CREATE_KEY:
                return f"a {body.kind} request cannot start a key generation"
            if (body.threshold, body.parties) != (proposal.keygen.threshold, len(participants)):
                return f"threshold/parties {body.threshold}/{body.parties}, proposed " \
                       f"{proposal.keygen.threshold}/{len(participants)}"
            return ""
        if phase == "aux-info":
            if body.kind == KIND_CREATE_KEY and body.parties == len(participants):
                return ""
            if body.kind == KIND_RESHARE and set(body.new_parties) == set(participants):
                return ""
            return "aux info only for the committee of a CreateKey or Reshare request"
        if phase == "key-refresh":
            try:
                refresh = RefreshParams.decode(proposal.opaque.data)
            except InvalidInput as exc:
                return str(exc)
            if body.kind != KIND_REFRESH or body.key_id != refresh.key_id:
                return "key"
            return ""
        if phase == "reshare":
            try:
                reshare = ReshareParams.decode(proposal.opaque.data)
            except InvalidInput as exc:
                return str(exc)
            if body.kind != KIND_RESHARE or body.key_id != reshare.key_id:
                return "key"
            if set(body.new_parties) != set(reshare.new_parties) or body.threshold != reshare.new_threshold:
                return "new committee or threshold"
            return ""
        return f"no client request kind allows a {phase!r} session"


def encode_signature(sig: Signature) -> bytes:
    return Encoder().bytes(sig.to_compact()).uint(sig.recovery_id).bytes(sig.public_key.to_bytes()).finish()


def decode_signature(data: bytes) -> tuple[bytes, bytes, int, bytes]:
    d = Decoder(data, "stored signature")
    compact, rec, pub = d.bytes(64), d.uint(8), d.bytes(33)
    d.finish()
    return compact[:32], compact[32:], rec, pub


def _storage_error(exc: BaseException) -> StorageError | None:
    """The storage error in ``exc`` (looking inside exception groups: a fault in a session's
    nursery arrives as one), or None."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _storage_error(inner)
            if found is not None:
                return found
    return None


def _aborted(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """True if ``exc`` is grpcio's own signal that the handler called ``context.abort``."""
    code = getattr(context, "code", lambda: None)()
    return code is not None and type(exc) is Exception and not exc.args


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Every unary RPC: a storage fault (damaged file, a row that does not authenticate)
    answers DATA_LOSS with its message (no secrets: storage messages never carry any), another
    storage error INTERNAL with its message, and anything unexpected INTERNAL without details -
    each logged through the node's JSON log (grpcio's own logger has only a NullHandler, so
    without this the node said nothing and the client saw UNKNOWN)."""

    @functools.wraps(method)
    def handler(self: WalletServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except BaseException as exc:
            if _aborted(exc, context) or not isinstance(exc, Exception):
                raise
            fault = _storage_error(exc)
            if fault is not None:
                code = grpc.StatusCode.DATA_LOSS if isinstance(fault, StorageFault) else grpc.StatusCode.INTERNAL
                log_event(log, logging.ERROR, "wallet rpc storage error", rpc=method.__name__,
                          error=type(fault).__name__, exc_info=(type(fault), fault, None))
                context.abort(code, f"storage error on this node: {' '.join(str(fault).split())}")
            log_event(log, logging.ERROR, "wallet rpc failed", rpc=method.__name__, error=type(exc).__name__,
                      exc_info=(type(exc), exc, None))
            context.abort(grpc.StatusCode.INTERNAL, "internal error on this node (logged there)")
            raise  # not reached: abort raises

    return handler


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, node: Node, enforcer: PolicyEnforcer, token: trio.lowlevel.TrioToken, *,
                 status_max_seconds: float = STATUS_MAX_SECONDS, status_max_streams: int = STATUS_MAX_STREAMS,
                 status_max_streams_per_client: int = STATUS_MAX_STREAMS_PER_CLIENT,
                 sign_max_waiting: int = SIGN_MAX_WAITING,
                 sign_max_waiting_per_client: int = SIGN_MAX_WAITING_PER_CLIENT,
                 admin_max_waiting: int = ADMIN_MAX_WAITING,
                 admin_max_waiting_per_client: int = ADMIN_MAX_WAITING_PER_CLIENT) -> None:
        self.node, self.enforcer, self.token = node, enforcer, token
        self._in_flight: set[tuple[bytes, str]] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every status update
        self._status: dict[tuple[bytes, str], list[wallet_pb2.StatusUpdate]] = {}
        self.status_max_seconds = status_max_seconds
        self.status_max_streams = status_max_streams
        self._status_budget = _ThreadBudget(status_max_streams, status_max_streams_per_client)
        self._sign_budget = _ThreadBudget(sign_max_waiting, sign_max_waiting_per_client)
        self._admin_budget = _ThreadBudget(admin_max_waiting, admin_max_waiting_per_client)

    # helpers -------------------------------------------------------------------------------
    def _verify(self, request: wallet_pb2.SignedRequest, context: grpc.ServicerContext, kind: str) -> VerifiedRequest:
        try:
            verified = verify_request(request)
        except Unauthenticated as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except InvalidInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if verified.body.kind != kind:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected a {kind!r} request")
        return verified

    def _known_client(self, verified: VerifiedRequest, context: grpc.ServicerContext) -> None:
        """PERMISSION_DENIED for a client this node's policy does not name at all - before any
        other answer, so that a stranger learns nothing (not even which keys exist)."""
        if not self.enforcer.book.knows(verified.body.client):  # not noted: strangers get no Status history
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "client is not allowed on this node (not named in its wallet policy)")

    def _held(self, verified: VerifiedRequest, context: grpc.ServicerContext) -> dict[str, Any]:
        """The key's public record, or NOT_FOUND when this node holds no share of it (never
        had one, or reshared it away) - checked before anything is recorded or charged."""
        key_id = verified.body.key_id
        info = self.node.storage.key_info(key_id)
        if info is None:
            self._note(verified, "refused", "no such key on this node")
            context.abort(grpc.StatusCode.NOT_FOUND, f"this node holds no key {key_id.hex()}")
        return info

    def _note(self, verified: VerifiedRequest, state: str, detail: str = "", culprits: tuple[str, ...] = (),
              phase: str = "") -> None:
        update = wallet_pb2.StatusUpdate(request_id=verified.body.request_id, state=state, detail=detail,
                                         culprits=list(culprits), phase=phase)
        with self._lock:
            self._status.setdefault((verified.body.client, verified.body.request_id), []).append(update)
            while len(self._status) > STATUS_HISTORY:
                del self._status[next(iter(self._status))]
            self._changed.notify_all()

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return trio.from_thread.run(lambda: fn(*args, **kwargs), trio_token=self.token)

    # RPCs ----------------------------------------------------------------------------------
    @_guarded
    def Sign(self, request: wallet_pb2.SignedRequest, context: grpc.ServicerContext) -> wallet_pb2.SignResponse:
        verified = self._verify(request, context, KIND_SIGN)
        body = verified.body
        slot = (body.client, body.request_id)
        self._known_client(verified, context)
        self._held(verified, context)
        try:
            repeat = self.enforcer.check(verified)
        except PolicyRefusal as exc:
            self._note(verified, "refused", str(exc))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        stored = self.enforcer.stored_result(*slot) if repeat else None
        if stored is not None:
            r, s, rec, pub = decode_signature(stored)
            return wallet_pb2.SignResponse(request_id=body.request_id, r=r, s=s, recovery_id=rec, public_key=pub,
                                           replayed=True)
        with self._sign_budget.slot(body.client, context, "sign"):
            with self._lock:
                if slot in self._in_flight:
                    context.abort(grpc.StatusCode.ABORTED, "this request is already being signed; retry later")
                self._in_flight.add(slot)
            try:
                self._note(verified, "running", phase="sign")
                try:
                    outcome = self._run(self.node.sign, body.key_id, body.digest, body.path,
                                        client_request=verified.raw)
                except BaseException:
                    self._note(verified, "failed", "error on this node")  # Status streams end, not wait
                    raise
            finally:
                with self._lock:
                    self._in_flight.discard(slot)
        if not outcome.ok:
            self._note(verified, "failed", outcome.reason, outcome.culprits)
            # "exhausted": the node's sign queue is full or its bounded wait ran out - retry later
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if outcome.status == "exhausted" else grpc.StatusCode.ABORTED
            context.abort(code,
                          f"signing failed: {outcome.reason} (culprits: {', '.join(outcome.culprits) or 'none'})")
        sig: Signature = outcome.output
        self.enforcer.store_result(verified, encode_signature(sig))
        self._note(verified, "done")
        log_event(log, logging.INFO, "wallet signature", request_id=body.request_id, key_id=body.key_id.hex())
        return wallet_pb2.SignResponse(request_id=body.request_id, r=sig.r.to_bytes(32, "big"),
                                       s=sig.s.to_bytes(32, "big"), recovery_id=sig.recovery_id,
                                       public_key=sig.public_key.to_bytes())

    @_guarded
    def CreateKey(self, request: wallet_pb2.SignedRequest, context: grpc.ServicerContext
                  ) -> wallet_pb2.CreateKeyResponse:
        verified = self._verify(request, context, KIND_CREATE_KEY)
        body = verified.body
        slot = (body.client, body.request_id)
        self._known_client(verified, context)
        try:
            self.enforcer.check(verified)
        except PolicyRefusal as exc:
            self._note(verified, "refused", str(exc))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        stored = self.enforcer.stored_result(*slot)
        if stored is None:
            with self._admin_budget.slot(body.client, context, "create-key, refresh and reshare"):
                with self._lock:
                    if slot in self._in_flight:
                        context.abort(grpc.StatusCode.ABORTED, "this key is already being created; retry later")
                    self._in_flight.add(slot)
                try:
                    stored = self._create(verified, context)
                except BaseException:
                    if not self._final(slot):
                        self._note(verified, "failed", "error on this node")  # Status streams end, not wait
                    raise
                finally:
                    with self._lock:
                        self._in_flight.discard(slot)
        info = self.node.storage.key_info(stored) or {}
        return wallet_pb2.CreateKeyResponse(request_id=body.request_id, key_id=stored,
                                            group_public_key=bytes(info.get("public_key") or b""),
                                            threshold=int(info.get("threshold", 0)), parties=info.get("parties", []))

    def _create(self, verified: VerifiedRequest, context: grpc.ServicerContext) -> bytes:
        """Key generation, then aux info for the committee if it has none yet; each phase is
        noted on the Status stream as it starts, and aux info is logged while it runs."""
        body = verified.body
        self._note(verified, "authorised")
        self._note(verified, "running", f"key generation, {body.threshold}-of-{body.parties}", phase="keygen")
        log_event(log, logging.INFO, "wallet create-key: key generation", request_id=body.request_id,
                  threshold=body.threshold, parties=body.parties)
        keygen = self._run(self.node.keygen, body.threshold, body.parties, client_request=verified.raw)
        if not keygen.ok:
            self._note(verified, "failed", f"key generation failed: {keygen.reason}", keygen.culprits)
            context.abort(grpc.StatusCode.ABORTED, f"key generation failed: {keygen.reason}")
        key_id = bytes(keygen.output["key_id"] if isinstance(keygen.output, dict) else keygen.output)
        parties = list(keygen.participants)
        if self.node.storage.latest_aux_info(parties) is None:
            self._note(verified, "running", f"aux info for {', '.join(parties)} (Paillier primes at every node)",
                       phase="aux-info")
            log_event(log, logging.INFO, "wallet create-key: aux info", state="started", request_id=body.request_id,
                      key_id=key_id.hex(), parties=parties)
            progress = _StillRunning("wallet create-key: aux info", AUX_PROGRESS_SECONDS,
                                     request_id=body.request_id, key_id=key_id.hex())
            try:
                aux = self._run(self.node.aux_info, parties, client_request=verified.raw)
            finally:
                seconds = progress.close()
            log_event(log, logging.INFO, "wallet create-key: aux info", state="done" if aux.ok else "failed",
                      seconds=seconds, request_id=body.request_id, key_id=key_id.hex())
            if not aux.ok:
                self._note(verified, "failed", f"aux info failed: {aux.reason}", aux.culprits)
                context.abort(grpc.StatusCode.ABORTED, f"aux info failed: {aux.reason}")
        self.enforcer.record_label(verified, key_id)
        self.enforcer.store_result(verified, key_id)
        self._note(verified, "done", key_id.hex())
        return key_id

    def _final(self, slot: tuple[bytes, str]) -> bool:
        with self._lock:
            updates = self._status.get(slot, [])
            return bool(updates) and updates[-1].state in _FINAL_STATES

    @_guarded
    def ListKeys(self, request: wallet_pb2.SignedRequest, context: grpc.ServicerContext
                 ) -> wallet_pb2.ListKeysResponse:
        verified = self._verify(request, context, KIND_LIST_KEYS)
        self._known_client(verified, context)
        client = verified.body.client
        labels = self.enforcer.labels()
        out = wallet_pb2.ListKeysResponse()
        for key_id in self.node.storage.list_keys():
            if not self.enforcer.book.may_see(client, key_id):
                continue
            info = self.node.storage.key_info(key_id)
            if info is None:  # reshared away since list_keys
                continue
            label = labels[key_id] if key_id in labels else self._label_from_key_generation(key_id)
            # What a sign sent to *this* node can use at once: the presignatures it leads (only a
            # presignature's leader may sign with it); its copies of others' are not counted.
            available = len(self.node.storage.led_presignatures(key_id, self.node.cfg.node_id))
            out.keys.add(key_id=key_id, group_public_key=bytes(info.get("public_key") or b""),
                         threshold=int(info.get("threshold", 0)), parties=info.get("parties", []),
                         epoch=int(info.get("epoch") or 0), label=label, presignatures_available=available)
        return out

    def _label_from_key_generation(self, key_id: bytes) -> str:
        """The label of a key created by another node's CreateKey: the key generation's proposal,
        stored here as it ran, carries the client's signed request. The signature is checked (a
        coordinator could have put anything beside it) and the label remembered like one served
        here. Freshness is not: the request was fresh when this node authorised the session."""
        raw = self.node.storage.key_creation_proposal(key_id)
        if raw is None:
            return ""
        try:
            proposal = peer_pb2.SessionProposal.FromString(raw)
            forwarded = parse_forwarded(proposal.client_request)
            issued = RequestBody.decode(forwarded.body).issued_at_ms
            verified = verify_request(forwarded, now_ms=issued)
        except Exception:  # protobuf's DecodeError, InvalidInput, Unauthenticated: no label, no guess
            return ""
        if verified.body.kind != KIND_CREATE_KEY:
            return ""
        self.enforcer.record_label(verified, key_id)
        return verified.body.label

    @_guarded
    def GetPublicKey(self, request: wallet_pb2.SignedRequest, context: grpc.ServicerContext
                     ) -> wallet_pb2.PublicKeyResponse:
        verified = self._verify(request, context, KIND_PUBLIC_KEY)
        body = verified.body
        self._known_client(verified, context)
        self._held(verified, context)
        try:
            self.enforcer.check_read(verified)
        except PolicyRefusal as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        try:
            share = load_key_share(self.node.storage, body.key_id)
            child = derive(share.group_key, share.chain_code, body.path).public_key
            return wallet_pb2.PublicKeyResponse(public_key=child.to_bytes(), ethereum_address=ethereum_address(child),
                                                bitcoin_address=p2wpkh_address(child, body.network),
                                                path="m" + "".join(f"/{i}" for i in body.path))
        except (InvalidInput, Refuse) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT if isinstance(exc, InvalidInput)
                          else grpc.StatusCode.NOT_FOUND, str(exc))

    def _administer(self, verified: VerifiedRequest, context: grpc.ServicerContext, action: Any, *args: Any
                    ) -> wallet_pb2.StatusUpdate:
        self._known_client(verified, context)
        self._held(verified, context)
        try:
            self.enforcer.check(verified)
        except PolicyRefusal as exc:
            self._note(verified, "refused", str(exc))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        with self._admin_budget.slot(verified.body.client, context, "create-key, refresh and reshare"):
            self._note(verified, "running", phase=verified.body.kind)
            try:
                outcome = self._run(action, *args, client_request=verified.raw)
            except (KeyError, ValueError) as exc:
                self._note(verified, "failed", str(exc))
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except BaseException:
                self._note(verified, "failed", "error on this node")
                raise
        state = "done" if outcome.ok else "failed"
        self._note(verified, state, outcome.reason, outcome.culprits)
        return wallet_pb2.StatusUpdate(request_id=verified.body.request_id, state=state, detail=outcome.reason,
                                       culprits=list(outcome.culprits))

    @_guarded
    def Refresh(self, request: wallet_pb2.SignedRequest, context: grpc.ServicerContext) -> wallet_pb2.StatusUpdate:
        verified = self._verify(request, context, KIND_REFRESH)
        return self._administer(verified, context, self.node.refresh, verified.body.key_id)

    @_guarded
    def Reshare(self, request: wallet_pb2.SignedRequest, context: grpc.ServicerContext) -> wallet_pb2.StatusUpdate:
        verified = self._verify(request, context, KIND_RESHARE)
        body = verified.body
        return self._administer(verified, context, self.node.reshare, body.key_id, list(body.new_parties),
                                body.threshold)

    def Status(self, request: wallet_pb2.StatusRequest, context: grpc.ServicerContext
               ) -> Iterator[wallet_pb2.StatusUpdate]:
        """What this node knows of a request: its updates so far, then each new one until it
        ends. Bounded (see STATUS_MAX_STREAMS): an unknown id is NOT_FOUND at once; a waiting
        stream takes a per-client and a global slot or is RESOURCE_EXHAUSTED, and ends after
        ``status_max_seconds``."""
        client = bytes(request.client_public_key)
        slot = (client, request.request_id)
        with self._lock:
            updates = list(self._status.get(slot, []))
        if not updates:
            if self.enforcer.stored_result(*slot) is not None:  # finished before this process started
                yield wallet_pb2.StatusUpdate(request_id=request.request_id, state="done")
                return
            context.abort(grpc.StatusCode.NOT_FOUND, "no request with this id from this client on this node")
        if updates[-1].state in _FINAL_STATES:
            yield from updates
            return
        # The slot is taken before anything is sent: a client that has the first update knows
        # its stream holds a slot (taking it after the first yield let a third stream of one
        # client in while the first two were still between their first update and their slot).
        if not self._status_budget.take(client):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "too many status streams open on this node; ask again later")
        try:
            yield from updates
            sent = len(updates)
            # A cancelled or expired call wakes the wait at once instead of holding the thread.
            context.add_callback(self._wake)
            deadline = time.monotonic() + self.status_max_seconds
            while True:
                with self._lock:
                    while context.is_active() and len(self._status.get(slot, [])) <= sent:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._changed.wait(left)
                    updates = list(self._status.get(slot, []))
                if not context.is_active():
                    return
                if len(updates) < sent:  # dropped from the history (STATUS_HISTORY): start over
                    sent = 0
                yield from updates[sent:]
                sent = len(updates)
                if updates and updates[-1].state in _FINAL_STATES:
                    return
                if time.monotonic() >= deadline:
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "status stream lasted too long; ask again")
        finally:
            self._status_budget.give_back(client)

    def _wake(self) -> None:
        with self._lock:
            self._changed.notify_all()

    def status_streams(self) -> int:
        """Status streams waiting right now (never more than ``status_max_streams``)."""
        return self._status_budget.held()

    def waiting_calls(self) -> dict[str, int]:
        """Server threads each budgeted kind of call holds right now."""
        return {"sign": self._sign_budget.held(), "admin": self._admin_budget.held(),
                "status": self._status_budget.held()}


_FINAL_STATES = ("done", "failed", "refused")


def start_wallet_server(
    servicer: WalletServicer, listen: str, cert_pem: bytes, key_pem: bytes
) -> tuple[grpc.Server, int]:
    """TLS server (clients pin the node's certificate; they authenticate by signed requests)."""
    # so_reuseport off: gRPC turns it on by default, and then a second daemon started on this port
    # binds too and silently takes half of the wallets' connections instead of failing to start
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WALLET_SERVER_THREADS, thread_name_prefix="wallet"),
                         options=[("grpc.so_reuseport", 0)])
    wallet_pb2_grpc.add_WalletServiceServicer_to_server(servicer, server)
    port = server.add_secure_port(listen, grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    return server, port
