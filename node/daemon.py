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
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import signal
from collections.abc import Mapping, Sequence
from typing import Any

import trio

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

        return await self.sessions.coordinate("keygen", n, fill)

    async def aux_info(self, parties: Sequence[str], *, level: str | None = None,
                       client_request: bytes = b"") -> SessionOutcome:
        name = self._level(level)

        def fill(p: peer_pb2.SessionProposal) -> None:
            p.aux_info.level = name
            p.client_request = client_request

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
        """Sign with a presignature from the pool of a healthy signer set that includes this node."""
        excluded: set[str] = set()
        last = SessionOutcome(b"", "sign", "refused", reason="no presignature available")
        for _ in range(attempts):
            healthy = set(await self.sessions.healthy_peers("sign")) | {self.cfg.node_id}
            available = await trio.to_thread.run_sync(self.storage.presignature_sets, key_id)
            sets = [s for s, _ in available
                    if self.cfg.node_id in s and set(s) <= healthy and not set(s) & excluded]
            if not sets:
                if last.session_id:  # an attempt ran: its reason (e.g. a policy refusal) is the news
                    return last
                return SessionOutcome(b"", "sign", "refused", culprits=last.culprits, reason=(
                    "no presignature for a healthy signer set that includes this node"))
            signers = sets[0]
            presig_id = await trio.to_thread.run_sync(self.storage.reserve_presignature, key_id, signers,
                                                      COORDINATOR_RESERVATION)
            if presig_id is None:
                continue

            def fill(p: peer_pb2.SessionProposal, presig_id: bytes = presig_id) -> None:
                p.sign.key_id, p.sign.presignature_id, p.sign.digest = key_id, presig_id, digest
                p.sign.path.extend(path)
                p.sign.client_request = client_request  # every participant re-checks it (wallet policy)

            last = await self.sessions.coordinate("sign", len(signers), fill, required=signers, attempts=1)
            if self.storage.presignature_state(presig_id) == "reserved":
                # Never used (this node refused before consuming it): back to the pool.
                await trio.to_thread.run_sync(self.storage.release_presignature, presig_id)
            if last.ok:
                return last
            excluded.update(c for c in last.culprits if c != self.cfg.node_id)
            self.sessions.forget_health(last.culprits)
        return last

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
    async def _pool_loop(self) -> None:
        """Keep ``presign_pool_depth`` presignatures per key for one signer set led by this node."""
        while True:
            await trio.sleep(POOL_INTERVAL + secrets.randbelow(1000) / 1000)
            if self.sessions.draining:
                return
            for key_id in self.storage.list_keys():
                await self._refill(key_id)
            # Old aux secrets whose last presignature has been used go now (see prune_aux_info).
            await trio.to_thread.run_sync(self.storage.prune_aux_info)

    async def _refill(self, key_id: bytes) -> None:
        info = self.storage.key_info(key_id)
        if info is None or self.storage.latest_aux_info(info["parties"]) is None:
            return
        me = self.cfg.node_id
        mine = [(s, n) for s, n in self.storage.presignature_sets(key_id) if s and s[0] == me]
        signers = mine[0][0] if mine else None
        have = mine[0][1] if mine else 0
        while have < self.cfg.presign_pool_depth and not self.sessions.draining:
            healthy = set(await self.sessions.healthy_peers("presign"))
            if signers is not None and not set(signers) - {me} <= healthy:
                signers = None  # a member is down: build a pool for another set
            if signers is None:
                others = sorted((p for p in info["parties"] if p in healthy and p > me),
                                key=lambda n: self.material.peers[n].index)
                if len(others) < info["threshold"] - 1:
                    return
                signers = [me, *others[: info["threshold"] - 1]]
            outcome = await self.presign(key_id, signers)
            if not outcome.ok:
                log_event(log, logging.WARNING, "presignature refill failed", key_id=key_id,
                          status=outcome.status, culprits=list(outcome.culprits), reason=outcome.reason)
                return
            have += 1
            self.metrics.presignatures.labels(state="available").set(self.storage.presignature_counts().available)
