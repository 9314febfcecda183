"""The node daemon: configuration, storage, transport, sessions and the presignature pool
wired together under one trio nursery, with graceful shutdown.

Startup order matters: storage first (a wrong passphrase must stop the node before it opens
a port), then reservations left by a crash are returned and interrupted sessions recorded
as aborted, then a fresh transport epoch (so peers reject replays of our previous run), then
the gRPC server and the session manager.

Shutdown (SIGTERM/SIGINT, or :meth:`Node.stop`): the node answers health checks and
proposals as *draining*, gives running sessions up to one round deadline to finish, cancels
whatever is left (recorded in the audit log as aborted by shutdown), stops gRPC with a short
grace period and closes the database.

Presignature pool (see node/README.md, "Presignatures"):

* **Leader rule.** Every presignature has a *leader*: the node that coordinated its presign
  session (stored with it, ``storage._migration_6``). Only the leader may propose a sign
  session with it; a participant refuses any other coordinator (``NOT_PRESIGNATURE_LEADER``)
  before consuming anything, and such a refusal names nobody as culprit. Coordinators on
  different nodes therefore never collide on one presignature.
* **Pools per leader.** Each node leads a pool of ``presign_pool_depth`` presignatures per key
  for one signer set: itself plus the next ``t - 1`` *healthy* members of the key's committee
  in roster ring order (so the load spreads over the committee). When a member of that set is
  down, the next pool pass (every ``POOL_INTERVAL`` s) builds the pool for a set of healthy
  nodes instead.
* **On demand, queued.** A sign with no usable presignature runs a presign on demand (at most
  ``ON_DEMAND_PRESIGNS`` at a time on this node; the pool refills behind it) and signs with
  exactly the presignature it made. Requests queue for at most ``SIGN_WAIT_SECONDS``, at most
  ``SIGN_QUEUE_LIMIT`` per key and ``MAX_SIGN_SESSIONS`` sign sessions at a time; only a full
  queue or an expired wait answers ``exhausted`` (the wallet API's RESOURCE_EXHAUSTED).
* **Rollback detection, quarantine and resync.** A database that went backwards (lost WAL,
  restored file copy) holds presignatures as available that its peers consumed. At every start,
  and whenever a peer refuses a sign proposal with ``PRESIGNATURE_CONSUMED``, the node resyncs:
  it asks the other signers of each presignature it holds (``PresignatureStatus``, mTLS-pinned
  like every peer RPC) and discards what any of them reports consumed or unknown. Until every
  co-signer has confirmed it, a presignature held at start is not used. Evidence of a rollback
  (a presignature this node leads, consumed at a peer) puts the node in *quarantine* (persisted
  in storage, one ERROR log line, ``health()["pool"]``, ``fp_pool_quarantined``): it neither
  coordinates nor joins sign sessions until a full resync pass has run after that.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

import trio
from prometheus_client import Counter, Gauge

from ..proto.generated import peer_pb2
from ..protocol.levels import level_by_name
from ..protocol.reshare import KeyPublicInfo
from .config import ConfigError, NodeConfig, load_config, parse_address
from .identity import IdentityError
from .logs import log_event
from .material import NodeMaterial
from .metrics import HealthServer, NodeMetrics
from .phases import PrimeSource, RefreshParams, ReshareParams, cggmp21_phases, load_key_share
from .primepool import PrimePool
from .session import Authorizer, PhaseHandler, SessionManager, SessionOutcome, allow_all
from .storage import COORDINATOR_RESERVATION, KeyMaterial, Storage
from .tls import TLSError
from .transport import Transport

log = logging.getLogger("fusion_prime.node.daemon")
VERSION = "0.1.0"
POOL_INTERVAL = 2.0
SIGN_WAIT_SECONDS = 60.0  # longest a sign request waits for a presignature (pool or on demand)
SIGN_QUEUE_LIMIT = 512  # sign requests waiting for a presignature, per key
ON_DEMAND_PRESIGNS = 4  # presign sessions run for waiting signs at a time (participants allow 8 per coordinator)
MAX_SIGN_SESSIONS = 32  # sign sessions this node coordinates at a time (participants allow 64 per coordinator)
ON_DEMAND_FAILURES = 3  # failed on-demand presigns before a sign request gives up
NO_SIGNER_SET_WAIT_SECONDS = 30.0  # how long a sign re-probes its peers before "no healthy signer set"
NO_SIGNER_SET_PAUSE_SECONDS = 0.5
# An admin session (keygen, aux info, refresh) asked for while too few peers answer their health
# probe - a network started a moment ago, a peer restarting - probes again for this long before
# it is refused with "not enough healthy peers".
PEERS_WAIT_SECONDS = 20.0
RESYNC_RETRY_SECONDS = 5.0  # a resync pass repeats this often while some presignature is unverified
RESYNC_RPC_TIMEOUT = 2.0
Refusal = peer_pb2.ProposalReply
PresigState = peer_pb2.PresignatureStates
_STATE_CODES = {"available": PresigState.AVAILABLE, "reserved": PresigState.RESERVED,
                "consumed": PresigState.CONSUMED}


@dataclasses.dataclass(frozen=True)
class RosterChange:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    readdressed: tuple[str, ...]


class Node:
    """One signer node. ``await nursery.start(node.run)``; ``node.stop()`` to shut down."""

    def __init__(
        self,
        cfg: NodeConfig,
        key: KeyMaterial,
        *,
        phases: Mapping[str, PhaseHandler] | None = None,
        authorize: Authorizer = allow_all,
        primes: PrimeSource | None = None,
        fill_pool: bool = True,
        prime_pool: bool = True,
    ) -> None:
        self.cfg = cfg
        self.material = NodeMaterial.load(cfg)
        self.storage = Storage(cfg.database_path, key, node_id=cfg.node_id,
                               scrypt_log2_n=cfg.storage.scrypt_log2_n, allow_weak_kdf=cfg.test_mode)
        try:
            released = self.storage.recover_after_restart()
            self.metrics = NodeMetrics(cfg.node_id)
            # Safe primes for aux info and key refresh, generated ahead in a separate process.
            self.prime_pool: PrimePool | None = None
            if primes is None and prime_pool and cfg.prime_pool_depth > 0:
                self.prime_pool = PrimePool(self.storage, cfg.level.prime_bits, cfg.prime_pool_depth)
                primes = self.prime_pool.take
            self.transport = Transport(
                node_id=cfg.node_id, identity=self.material.identity, peers=self.material.peers, tls=self.material.tls,
                listen=cfg.listen, epoch=self.storage.next_transport_epoch(), metrics=self.metrics,
                buffer_ttl=max(2 * cfg.round_deadline_seconds, 5.0),
            )
            self.sessions = SessionManager(
                node_id=cfg.node_id, identity=self.material.identity, peers=self.material.peers,
                transport=self.transport, phases=phases if phases is not None else cggmp21_phases(primes),
                storage=self.storage, authorize=authorize, metrics=self.metrics,
                round_deadline=cfg.round_deadline_seconds, test_mode=cfg.test_mode, version=VERSION,
            )
            self.fill_pool = fill_pool
            self._stop = trio.Event()
            self._init_pool_state()
            self._health_server: HealthServer | None = None
            self.health_port: int | None = None
        except BaseException:
            # Nothing half-open is left behind: the database closes (its pooled connections
            # with it) whatever failed after it opened - a damaged row, a busy port.
            self.storage.close()
            raise
        log_event(log, logging.INFO, "node opened", node=cfg.node_id, reservations_released=released,
                  test_mode=cfg.test_mode, security_level=cfg.security_level)

    # lifecycle -----------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = False,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            if self.cfg.metrics_listen:
                host, port = parse_address(self.cfg.metrics_listen)
                self._health_server = HealthServer(host, port, self.metrics, self.health)
                self._health_server.start()
                self.health_port = self._health_server.port
            async with trio.open_nursery() as nursery:
                await nursery.start(self.transport.run)
                await nursery.start(self.sessions.run)
                if handle_signals:
                    nursery.start_soon(self._signals)
                if "sign" in self.sessions.phases:
                    nursery.start_soon(self._sync_loop)
                if self.fill_pool and self.cfg.presign_pool_depth > 0 and "presign" in self.sessions.phases:
                    nursery.start_soon(self._pool_loop)
                if self.prime_pool is not None and {"aux-info", "key-refresh"} & set(self.sessions.phases):
                    await nursery.start(self.prime_pool.run)
                log_event(log, logging.INFO, "node running", node=self.cfg.node_id, port=self.transport.port)
                task_status.started()
                await self._stop.wait()
                log_event(log, logging.INFO, "node draining", node=self.cfg.node_id,
                          active_sessions=self.sessions.active_sessions)
                await self.sessions.drain(self.cfg.round_deadline_seconds)
                nursery.cancel_scope.cancel()
        finally:
            if self._health_server is not None:
                self._health_server.stop()
            self.storage.close()
            log_event(log, logging.INFO, "node stopped", node=self.cfg.node_id)

    def stop(self) -> None:
        self._stop.set()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log_event(log, logging.INFO, "signal received", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    self.reload_roster_from_file()
                    continue
                self.stop()
                return

    def reload_roster_from_file(self) -> RosterChange | None:
        """SIGHUP: re-read the config file and adopt its roster; a bad file changes nothing."""
        try:
            change = self.reload_roster(load_config(self.cfg.path))
        except (ConfigError, TLSError, IdentityError, ValueError, OSError) as exc:
            log_event(log, logging.ERROR, "roster reload refused", reason=str(exc))
            return None
        log_event(log, logging.INFO, "roster reloaded", added=list(change.added), removed=list(change.removed),
                  readdressed=list(change.readdressed))
        return change

    def reload_roster(self, new: NodeConfig) -> RosterChange:
        """Adopt the roster of ``new`` without a restart (on the trio thread), so an operator
        can be added before a resharing brings it into a committee.

        Only the roster changes: this node's own entry, and the index, identity key and
        certificate of every peer that stays, must be what they were (a changed key is another
        node; give it another id). A peer that is in a committee of a key held here, or in a
        running session, cannot be removed. Everything is checked before anything changes."""
        old = {e.node_id: e for e in self.cfg.roster}
        fresh = {e.node_id: e for e in new.roster}
        if new.node_id != self.cfg.node_id or fresh.get(self.cfg.node_id) != old[self.cfg.node_id]:
            raise ValueError("this node's own roster entry cannot change at run time")
        for node_id in old.keys() & fresh.keys():
            a, b = old[node_id], fresh[node_id]
            if (a.index, a.identity_public_key) != (b.index, b.identity_public_key) or \
                    a.tls_cert.read_bytes() != b.tls_cert.read_bytes():
                raise ValueError(f"{node_id}: index, identity key or certificate changed; a new key is a new node id")
        indices = [e.index for e in new.roster]
        if len(set(indices)) != len(indices):
            raise ValueError("two roster entries share a party index")
        removed = sorted(old.keys() - fresh.keys())
        for key_id in self.storage.list_keys():
            info = self.storage.key_info(key_id) or {}
            members = [n for n in removed if n in info.get("parties", ())]
            if members:
                raise ValueError(f"cannot remove {', '.join(members)}: member of key {key_id.hex()}'s committee; "
                                 "reshare the key away from it first")
        material = self.material.with_roster(new)
        self.sessions.update_peers(material.peers)  # may refuse: nothing has changed yet
        self.transport.update_roster(material.peers, material.tls)
        self.material = material
        self.cfg = dataclasses.replace(self.cfg, roster=new.roster)
        return RosterChange(
            added=tuple(sorted(fresh.keys() - old.keys())), removed=tuple(removed),
            readdressed=tuple(sorted(n for n in old.keys() & fresh.keys() if old[n].address != fresh[n].address)))

    def health(self) -> dict[str, Any]:
        """For the loopback HTTP endpoint (called from its thread; reads only)."""
        return {
            "node_id": self.cfg.node_id,
            "status": "draining" if self.sessions.draining else "serving",
            "active_sessions": self.sessions.active_sessions,
            "buffered_envelopes": self.transport.buffered_count,
            "phases": sorted(self.sessions.phases),
            "version": VERSION,
            "pool": self.pool_status(),
        }

    # coordinator operations ----------------------------------------------------------------
    def _level(self, name: str | None) -> str:
        level = level_by_name(name or self.cfg.security_level)
        if level.test_only and not self.cfg.test_mode:
            raise ValueError(f"security level {level.name!r} is for tests only")
        return level.name

    async def keygen(self, threshold: int, n: int, *, level: str | None = None,
                     client_request: bytes = b"") -> SessionOutcome:
        """``client_request``: the wallet client's signed CreateKey request, forwarded so that
        every participant checks it against its own policy (see SessionProposal.client_request)."""
        name = self._level(level)

        def fill(p: peer_pb2.SessionProposal) -> None:
            p.keygen.threshold, p.keygen.level = threshold, name
            p.client_request = client_request

        await self._wait_for_peers("keygen", n)
        return await self.sessions.coordinate("keygen", n, fill)

    async def _wait_for_peers(self, phase: str, size: int, required: Sequence[str] = ()) -> None:
        """Until ``size`` participants (``required`` among them) answer as healthy, or
        ``PEERS_WAIT_SECONDS``; the session then starts or is refused saying who was missing."""
        me = self.cfg.node_id
        must = set(required) - {me}
        with trio.move_on_after(PEERS_WAIT_SECONDS):
            while True:
                healthy = set(await self.sessions.healthy_peers(phase))
                if must <= healthy and len(healthy) + 1 >= size:
                    return
                await trio.sleep(NO_SIGNER_SET_PAUSE_SECONDS)

    async def aux_info(self, parties: Sequence[str], *, level: str | None = None,
                       client_request: bytes = b"") -> SessionOutcome:
        name = self._level(level)

        def fill(p: peer_pb2.SessionProposal) -> None:
            p.aux_info.level = name
            p.client_request = client_request

        await self._wait_for_peers("aux-info", len(parties), parties)
        return await self.sessions.coordinate("aux-info", len(parties), fill, required=parties, attempts=1)

    async def presign(self, key_id: bytes, signers: Sequence[str] | None = None) -> SessionOutcome:
        info = self.storage.key_info(key_id)
        if info is None:
            raise KeyError(f"no key {key_id.hex()} on this node")
        aux_id = self.storage.latest_aux_info(info["parties"])
        if aux_id is None:
            raise KeyError("no aux info for this key's committee")

        def fill(p: peer_pb2.SessionProposal) -> None:
            p.presign.key_id, p.presign.aux_id, p.presign.epoch = key_id, aux_id, info["epoch"]

        excluded = [n for n in self.material.peers if n not in info["parties"]]
        if signers is not None:
            return await self.sessions.coordinate("presign", len(signers), fill, required=signers,
                                                  exclude=excluded, attempts=1)
        return await self.sessions.coordinate("presign", info["threshold"], fill, exclude=excluded)

    async def sign(self, key_id: bytes, digest: bytes, path: Sequence[int] = (), *, attempts: int = 3,
                   client_request: bytes = b"") -> SessionOutcome:
        """Sign with a presignature this node leads, for a healthy signer set that includes it;
        with none usable, one is made on demand (see the module docstring: slower, never a
        failure while ``t`` nodes are healthy). A request waits at most ``SIGN_WAIT_SECONDS``;
        ``status == "exhausted"`` only when the queue is full or that wait ran out. At most
        ``attempts`` sign sessions are proposed (a wallet participant accepts 3 per request)."""
        info = self.storage.key_info(key_id)
        if info is None:
            return SessionOutcome(b"", "sign", "refused", reason=f"no key {key_id.hex()} on this node")
        queue = self._queues.setdefault(key_id, _KeyQueue())
        if queue.waiting >= SIGN_QUEUE_LIMIT:
            return SessionOutcome(b"", "sign", "exhausted", reason=(
                f"{queue.waiting} sign requests already wait for key {key_id.hex()} (limit {SIGN_QUEUE_LIMIT})"))
        deadline = trio.current_time() + SIGN_WAIT_SECONDS
        excluded: set[str] = set()
        last: SessionOutcome | None = None
        queue.waiting += 1
        self._sign_waiting.inc()
        try:
            for _ in range(attempts):
                async with self._sign_slots:
                    if not await self._wait_pool_ready(deadline):
                        return SessionOutcome(b"", "sign", "exhausted", reason=(
                            "this node is quarantined until its presignature pool is resynchronised with its peers "
                            f"({(self._quarantine or {}).get('reason', 'first resync pending')})"))
                    taken = await self._take_presignature(key_id, info, excluded, deadline)
                    if isinstance(taken, SessionOutcome):
                        # an attempt ran: its reason (e.g. a policy refusal) is the news
                        return last if last is not None and last.session_id else taken
                    presig_id, signers = taken
                    self._sign_waiting.dec()
                    try:
                        last, refusals = await self._sign_with(key_id, presig_id, signers, digest, path,
                                                               client_request)
                    finally:
                        self._sign_waiting.inc()
                if last.ok:
                    return last
                excluded.update(c for c in last.culprits if c != self.cfg.node_id)
                # refused without blame (quarantined, say): not for this request, not a culprit
                excluded.update(p for p, code in refusals.items() if code == Refusal.POOL_QUARANTINED)
                self.sessions.forget_health(last.culprits)
        finally:
            queue.waiting -= 1
            self._sign_waiting.dec()
        assert last is not None
        return last

    async def _sign_with(self, key_id: bytes, presig_id: bytes, signers: list[str], digest: bytes,
                         path: Sequence[int], client_request: bytes) -> tuple[SessionOutcome, dict[str, int]]:
        """One sign session with a presignature reserved here. Refusals that carry a code
        (``ProposalReply.Refusal``) are acted on and never count as culprits."""

        def fill(p: peer_pb2.SessionProposal) -> None:
            p.sign.key_id, p.sign.presignature_id, p.sign.digest = key_id, presig_id, digest
            p.sign.path.extend(path)
            p.sign.client_request = client_request  # every participant re-checks it (wallet policy)

        try:
            outcome = await self.sessions.coordinate("sign", len(signers), fill, required=signers, attempts=1)
        except BaseException:
            with trio.CancelScope(shield=True):
                # cancelled mid-proposal: a peer may have consumed it, so it is never used again
                await trio.to_thread.run_sync(self.storage.discard_presignature, presig_id,
                                              "sign request cancelled while proposing")
            raise
        replies = self._sign_replies.pop(outcome.session_id, {}) if outcome.session_id else {}
        refusals = {p: r.refusal for p, r in replies.items() if not r.accepted and r.refusal}
        codes = set(refusals.values())
        if await trio.to_thread.run_sync(self.storage.presignature_state, presig_id) == "reserved":
            # This node never consumed it. If a peer did (accepted, or says so), it is gone.
            if any(r.accepted for r in replies.values()) or codes & {
                    Refusal.PRESIGNATURE_CONSUMED, Refusal.PRESIGNATURE_UNKNOWN}:
                await trio.to_thread.run_sync(self.storage.discard_presignature, presig_id,
                                              "consumed or unknown at a peer")
            else:
                await trio.to_thread.run_sync(self.storage.release_presignature, presig_id)
        consumed_at = sorted(p for p, code in refusals.items() if code == Refusal.PRESIGNATURE_CONSUMED)
        if consumed_at:
            await self._enter_quarantine(
                f"{', '.join(consumed_at)} refused presignature {presig_id.hex()[:16]} as already consumed, which "
                "this node held as available: its database went backwards (lost WAL or restored copy)")
        if refusals:
            outcome = dataclasses.replace(outcome, culprits=tuple(c for c in outcome.culprits if c not in refusals))
        return outcome, refusals

    async def _take_presignature(self, key_id: bytes, info: dict[str, Any], excluded: set[str],
                                 deadline: float) -> tuple[bytes, list[str]] | SessionOutcome:
        """Reserve a usable presignature led by this node, or make one on demand."""
        me = self.cfg.node_id
        failures = 0
        no_set_since: float | None = None
        with trio.move_on_at(deadline):
            while True:
                healthy = (set(await self.sessions.healthy_peers("sign")) - excluded) | {me}
                got = await trio.to_thread.run_sync(self._reserve_led, key_id, healthy)
                if got is not None:
                    return got
                async with self._presign_slots:
                    got = await trio.to_thread.run_sync(self._reserve_led, key_id, healthy)
                    if got is not None:
                        return got
                    healthy = set(await self.sessions.healthy_peers("presign")) - excluded
                    signers = self._signer_set(info, healthy)
                    if signers is not None:
                        no_set_since = None
                        self._on_demand.inc()
                        outcome = await self.presign(key_id, signers)
                        if outcome.ok:
                            made = outcome.output["presignature_id"]
                            if await trio.to_thread.run_sync(self.storage.reserve_presignature_id, made,
                                                              COORDINATOR_RESERVATION):
                                return made, signers
                            continue
                if signers is None:
                    no_set = (f"no healthy signer set of {info['threshold']} that includes this node (healthy "
                              f"peers: {', '.join(sorted(healthy)) or 'none'}; "
                              f"excluded: {', '.join(sorted(excluded)) or 'none'})")
                    now = trio.current_time()
                    no_set_since = now if no_set_since is None else no_set_since
                    reachable = set(self.material.peers) - excluded
                    if self._signer_set(info, reachable) is None or now - no_set_since >= NO_SIGNER_SET_WAIT_SECONDS:
                        return SessionOutcome(b"", "sign", "refused", reason=no_set)
                    # A health probe that timed out on a loaded machine, or a peer that is
                    # restarting, is not a verdict: probe again for a while before refusing.
                    await trio.sleep(NO_SIGNER_SET_PAUSE_SECONDS)
                    continue
                failures += 1
                excluded.update(c for c in outcome.culprits if c != me)
                self.sessions.forget_health(outcome.culprits)
                log_event(log, logging.WARNING, "on-demand presign failed", key_id=key_id, status=outcome.status,
                          culprits=list(outcome.culprits), reason=outcome.reason)
                if failures >= ON_DEMAND_FAILURES:
                    return SessionOutcome(outcome.session_id, "sign", "refused", outcome.participants,
                                          culprits=outcome.culprits,
                                          reason=f"no presignature: presigning on demand failed ({outcome.reason})")
        return SessionOutcome(b"", "sign", "exhausted", reason=(
            f"no presignature for key {key_id.hex()} within {SIGN_WAIT_SECONDS:g} s; the pool is refilling"))

    def _reserve_led(self, key_id: bytes, allowed: set[str]) -> tuple[bytes, list[str]] | None:
        """(worker thread) Reserve the oldest verified presignature this node leads whose signer
        set is within ``allowed``."""
        for presig_id, signers in self.storage.led_presignatures(key_id, self.cfg.node_id):
            if presig_id in self._unverified or not set(signers) <= allowed:
                continue
            if self.storage.reserve_presignature_id(presig_id, COORDINATOR_RESERVATION):
                return presig_id, signers
        return None

    def _signer_set(self, info: dict[str, Any], healthy: set[str]) -> list[str] | None:
        """This node and the next ``t - 1`` healthy committee members in roster ring order."""
        order = self.material.peers
        me = self.cfg.node_id
        members = sorted((p for p in info["parties"] if p in order), key=lambda n: order[n].index)
        if me not in members:
            return None
        at = members.index(me)
        others = [p for p in members[at + 1:] + members[:at] if p in healthy]
        need = int(info["threshold"]) - 1
        if len(others) < need:
            return None
        return sorted([me, *others[:need]], key=lambda n: order[n].index)

    async def refresh(self, key_id: bytes, *, client_request: bytes = b"") -> SessionOutcome:
        """Proactive refresh of a key by its whole committee: same group key and addresses,
        new shares (epoch + 1) and new aux info on every member; presignatures of the old
        epoch are erased everywhere as the new shares are stored. Needs every member healthy."""
        info = self.storage.key_info(key_id)
        if info is None:
            raise KeyError(f"no key {key_id.hex()} on this node")
        data = RefreshParams(key_id, int(info["epoch"])).encode()

        def fill(p: peer_pb2.SessionProposal) -> None:
            p.opaque.data = data
            p.client_request = client_request

        await self._wait_for_peers("key-refresh", len(info["parties"]), info["parties"])
        return await self.sessions.coordinate("key-refresh", len(info["parties"]), fill,
                                              required=info["parties"], attempts=1)

    async def reshare(self, key_id: bytes, new_parties: Sequence[str], new_threshold: int,
                      dealers: Sequence[str] | None = None, *, client_request: bytes = b"") -> SessionOutcome:
        """Move a key from its committee to ``new_parties`` with ``new_threshold``, keeping the
        group key. ``dealers`` (old holders, at least the old threshold) default to every
        healthy old holder, so that members who leave take part and retire their shares. If
        this node is in the new committee and that committee has no aux info yet, an aux-info
        session follows; its id is in ``output["aux_id"]`` (a failed aux-info session is
        returned instead, with the resharing's success noted in the reason)."""
        info = self.storage.key_info(key_id)
        if info is None:
            raise KeyError(f"no key {key_id.hex()} on this node")
        share = await trio.to_thread.run_sync(load_key_share, self.storage, key_id)
        unknown = [n for n in new_parties if n not in self.material.peers]
        if unknown:
            raise ValueError(f"not in the roster: {', '.join(unknown)}")
        order = self.material.peers
        new = sorted(set(new_parties), key=lambda n: order[n].index)
        if dealers is None:
            healthy = set(await self.sessions.healthy_peers("reshare")) | {self.cfg.node_id}
            dealers = [p for p in info["parties"] if p in healthy]
        chosen = sorted(set(dealers), key=lambda n: order[n].index)
        if len(chosen) < info["threshold"] or not set(chosen) <= set(info["parties"]):
            raise ValueError(f"resharing needs at least {info['threshold']} dealers among the key's holders")
        participants = sorted(set(chosen) | set(new), key=lambda n: order[n].index)
        if self.cfg.node_id not in participants:
            raise ValueError("the coordinator must deal or be in the new committee")
        data = ReshareParams(key_id, KeyPublicInfo.of(share), tuple(chosen), tuple(new), new_threshold).encode()

        def fill(p: peer_pb2.SessionProposal) -> None:
            p.opaque.data = data
            p.client_request = client_request

        outcome = await self.sessions.coordinate("reshare", len(participants), fill, required=participants,
                                                 attempts=1)
        if not outcome.ok or self.cfg.node_id not in new:
            return outcome
        aux_id = self.storage.latest_aux_info(new)
        if aux_id is None:
            aux = await self.aux_info(new, level=info["level"], client_request=client_request)
            if not aux.ok:
                return dataclasses.replace(aux, reason=(
                    f"the key was reshared (session {outcome.session_id.hex()[:16]}), but aux info for the new "
                    f"committee failed: {aux.reason}"))
            aux_id = aux.output["aux_id"]
        return dataclasses.replace(outcome, output={**outcome.output, "aux_id": aux_id})

    # presignature pool -----------------------------------------------------------------------
    def _init_pool_state(self) -> None:
        r = self.metrics.registry
        self._quarantined_gauge = Gauge("fp_pool_quarantined", "1 while the node is quarantined (rollback evidence)",
                                        registry=r)
        self._unverified_gauge = Gauge(
            "fp_presignatures_unverified", "Presignatures held since start not yet confirmed by their co-signers",
            registry=r)
        self._rollbacks = Counter("fp_pool_rollbacks_detected_total",
                                  "Times a peer's answer showed this node's database went backwards", registry=r)
        self._discarded = Counter(
            "fp_presignatures_discarded_total", "Presignatures discarded: a peer reported them consumed or unknown",
            registry=r)
        self._on_demand = Counter("fp_presign_on_demand_total", "Presign sessions run for a waiting sign request",
                                  registry=r)
        self._sign_waiting = Gauge("fp_sign_requests_waiting", "Sign requests waiting for a presignature", registry=r)
        self._queues: dict[bytes, _KeyQueue] = {}
        self._presign_slots = trio.Semaphore(ON_DEMAND_PRESIGNS)
        self._sign_slots = trio.Semaphore(MAX_SIGN_SESSIONS)
        self._sign_replies: dict[bytes, dict[str, peer_pb2.ProposalReply]] = {}
        # Presignatures held when this node started cannot be trusted until their co-signers
        # confirm them: a restored file copy or a lost WAL looks like a normal start.
        self._unverified: set[bytes] = {row[0] for row in self.storage.held_presignatures()}
        self._unverified_gauge.set(len(self._unverified))
        self._quarantine: dict[str, Any] | None = self.storage.pool_quarantine()
        self._quarantine_generation = 0
        self._synced = trio.Event()
        self._resync_wanted = trio.Event()
        if "sign" not in self.sessions.phases:
            self._synced.set()
        if self._quarantine is not None:
            self._quarantined_gauge.set(1)
            log_event(log, logging.ERROR, "node starts quarantined: presignature pool resync pending",
                      node=self.cfg.node_id, reason=self._quarantine.get("reason", ""))
        self.transport.proposal_reply_observer = self._observe_reply
        self.transport.presignature_status_provider = self._presignature_states
        self.transport.proposal_handler = self._answer_proposal

    def pool_status(self) -> dict[str, Any]:
        """For health/status: synced, syncing (first resync after start) or quarantined."""
        state = "quarantined" if self._quarantine is not None else "synced" if self._synced.is_set() else "syncing"
        doc: dict[str, Any] = {"state": state, "unverified_presignatures": len(self._unverified)}
        if self._quarantine is not None:
            doc["quarantine_reason"] = self._quarantine.get("reason", "")
            doc["quarantined_since"] = self._quarantine.get("since", 0.0)
        return doc

    @property
    def quarantined(self) -> bool:
        return self._quarantine is not None

    def _pool_ready(self) -> bool:
        return self._synced.is_set() and self._quarantine is None

    async def _wait_pool_ready(self, deadline: float) -> bool:
        while not self._pool_ready():
            with trio.move_on_at(deadline) as scope:
                await self._synced.wait()
            if scope.cancelled_caught:
                return False
            if self._quarantine is not None:  # entered again meanwhile: wait for the next pass
                await trio.sleep(0.05)
        return True

    def _observe_reply(self, peer: str, proposal: peer_pb2.SessionProposal, reply: peer_pb2.ProposalReply) -> None:
        if proposal.phase == "sign" and proposal.coordinator == self.cfg.node_id:
            self._sign_replies.setdefault(proposal.session_id, {})[peer] = reply
            while len(self._sign_replies) > 4096:  # a session whose outcome was never collected
                del self._sign_replies[next(iter(self._sign_replies))]

    async def _answer_proposal(self, proposal: peer_pb2.SessionProposal) -> peer_pb2.ProposalReply:
        """Participant side, around the session manager: a quarantined node joins no sign
        session, and a sign refusal says *why* in ``refusal`` when the coordinator must act."""
        if proposal.phase == "sign" and self._quarantine is not None:
            reason = "this node is quarantined until its presignature pool is resynchronised with its peers"
            log_event(log, logging.WARNING, "proposal refused", session_id=proposal.session_id, phase=proposal.phase,
                      coordinator=proposal.coordinator, reason=reason)
            return Refusal(accepted=False, reason=reason, node_id=self.cfg.node_id, refusal=Refusal.POOL_QUARANTINED)
        reply = await self.sessions.handle_proposal(proposal)
        if not reply.accepted and proposal.phase == "sign" and proposal.WhichOneof("params") == "sign":
            reply.refusal = await trio.to_thread.run_sync(self._sign_refusal, proposal)
        return reply

    def _sign_refusal(self, proposal: peer_pb2.SessionProposal) -> int:
        row = self.storage.presignature_row(proposal.sign.presignature_id)
        if row is None:
            return Refusal.PRESIGNATURE_UNKNOWN
        state, _signers, leader, consumed_for = row
        if state == "consumed" and consumed_for != proposal.session_id:
            return Refusal.PRESIGNATURE_CONSUMED
        if leader is not None and leader != proposal.coordinator:
            return Refusal.NOT_PRESIGNATURE_LEADER
        return Refusal.REFUSAL_UNSPECIFIED

    def _presignature_states(self, peer: str, presig_ids: list[bytes]) -> list[int]:
        """(gRPC thread) ``PresignatureStatus``: only presignatures the asker signs with."""
        views = self.storage.presignature_views(presig_ids)
        out = []
        for presig_id in presig_ids:
            view = views.get(presig_id)
            out.append(PresigState.UNKNOWN if view is None or peer not in view[1] else _STATE_CODES[view[0]])
        return out

    async def _enter_quarantine(self, reason: str) -> None:
        """Rollback evidence: stop signing until a full resync pass has run after this."""
        first = self._quarantine is None
        self._quarantine = {"reason": reason, "since": time.time()}
        self._quarantine_generation += 1
        if self._synced.is_set():
            self._synced = trio.Event()
        held = await trio.to_thread.run_sync(self.storage.held_presignatures)
        self._unverified |= {row[0] for row in held if row[4] == "available"}
        self._unverified_gauge.set(len(self._unverified))
        self._rollbacks.inc()
        self._quarantined_gauge.set(1)
        await trio.to_thread.run_sync(self.storage.set_pool_quarantine, reason)
        if first:
            log_event(log, logging.ERROR, "database rollback detected: node quarantined until its presignature pool "
                      "is resynchronised with its peers", node=self.cfg.node_id, reason=reason)
        self._resync_wanted.set()

    async def _sync_loop(self) -> None:
        """Resync at start, after every quarantine, and while presignatures are unverified."""
        while True:
            self._resync_wanted = trio.Event()
            await self._resync()
            if self._resync_wanted.is_set():
                continue
            wait = RESYNC_RETRY_SECONDS if self._unverified else float("inf")
            with trio.move_on_after(wait):
                await self._resync_wanted.wait()

    async def resync(self) -> None:
        """One resync pass now (see :meth:`_resync`)."""
        await self._resync()

    async def _resync(self) -> None:
        """Ask the co-signers of every unverified presignature held here whether they still hold
        it; discard what any reports consumed or unknown; a presignature every co-signer holds
        becomes usable; one whose co-signer did not answer stays unusable until a later pass.
        A quarantine entered before the pass began is lifted at its end."""
        me = self.cfg.node_id
        generation = self._quarantine_generation
        held = await trio.to_thread.run_sync(self.storage.held_presignatures)
        self._unverified &= {row[0] for row in held}
        todo = [row for row in held if row[0] in self._unverified and row[4] == "available"]
        asks: dict[str, list[bytes]] = {}
        for presig_id, _key, signers, _leader, _state in todo:
            for peer in signers:
                if peer != me and peer in self.material.peers:
                    asks.setdefault(peer, []).append(presig_id)
        answers: dict[str, dict[bytes, int]] = {}

        async def ask(peer: str, ids: list[bytes]) -> None:
            got: dict[bytes, int] = {}
            for at in range(0, len(ids), 1024):
                chunk = ids[at:at + 1024]
                states = await self.transport.presignature_status(peer, chunk, RESYNC_RPC_TIMEOUT)
                if states is None:
                    return
                got.update(zip(chunk, states, strict=True))
            answers[peer] = got

        async with trio.open_nursery() as nursery:
            for peer, ids in asks.items():
                nursery.start_soon(ask, peer, ids)
        rolled_back: list[bytes] = []
        verified = discarded = pending = 0
        for presig_id, _key, signers, leader, _state in todo:
            said = [answers.get(p, {}).get(presig_id) for p in signers if p != me]
            if PresigState.CONSUMED in said or PresigState.UNKNOWN in said:
                why = "consumed at a peer" if PresigState.CONSUMED in said else "unknown at a peer"
                if await trio.to_thread.run_sync(self.storage.discard_presignature, presig_id, f"pool resync: {why}"):
                    discarded += 1
                    self._discarded.inc()
                if PresigState.CONSUMED in said and leader == me:
                    rolled_back.append(presig_id)
                self._unverified.discard(presig_id)
            elif all(s in (PresigState.AVAILABLE, PresigState.RESERVED) for s in said):
                self._unverified.discard(presig_id)
                verified += 1
            else:
                pending += 1
        self._unverified_gauge.set(len(self._unverified))
        if rolled_back:
            await self._enter_quarantine(
                f"{len(rolled_back)} presignature(s) this node leads are consumed at its peers but were available "
                "here: its database went backwards (lost WAL or restored copy)")
        detail = {"verified": verified, "discarded": discarded, "unconfirmed": pending,
                  "peers_answered": sorted(answers)}
        if self._quarantine is not None and self._quarantine_generation == generation:
            await trio.to_thread.run_sync(self.storage.clear_pool_quarantine, detail)
            self._quarantine = None
            self._quarantined_gauge.set(0)
            log_event(log, logging.WARNING, "quarantine lifted: presignature pool resynchronised with peers",
                      node=me, **detail)
        elif todo:
            log_event(log, logging.INFO, "presignature pool resynchronised", node=me, **detail)
        if self._quarantine is None:
            self._synced.set()

    async def _pool_loop(self) -> None:
        """Keep ``presign_pool_depth`` presignatures per key for a healthy signer set led here."""
        while True:
            await trio.sleep(POOL_INTERVAL + secrets.randbelow(1000) / 1000)
            if self.sessions.draining:
                return
            for key_id in self.storage.list_keys():
                await self._refill(key_id)
            # Old aux secrets whose last presignature has been used go now (see prune_aux_info).
            await trio.to_thread.run_sync(self.storage.prune_aux_info)

    async def _refill(self, key_id: bytes) -> None:
        """Top up the pool of this node's preferred healthy signer set (see _signer_set): when a
        member of the previous set is down, this is already a set without it."""
        info = self.storage.key_info(key_id)
        if info is None or self.storage.latest_aux_info(info["parties"]) is None:
            return
        while not self.sessions.draining:
            healthy = set(await self.sessions.healthy_peers("presign"))
            signers = self._signer_set(info, healthy)
            if signers is None:
                return
            led = await trio.to_thread.run_sync(self.storage.led_presignatures, key_id, self.cfg.node_id)
            have = sum(1 for presig_id, s in led if s == sorted(signers) and presig_id not in self._unverified)
            if have >= self.cfg.presign_pool_depth:
                return
            outcome = await self.presign(key_id, signers)
            if not outcome.ok:
                log_event(log, logging.WARNING, "presignature refill failed", key_id=key_id,
                          status=outcome.status, culprits=list(outcome.culprits), reason=outcome.reason)
                return
            self.metrics.presignatures.labels(state="available").set(self.storage.presignature_counts().available)


@dataclasses.dataclass
class _KeyQueue:
    waiting: int = 0
