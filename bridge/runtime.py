"""The bridge's edge loop (trio): chains in, deposit machines in the middle, signatures and relays out.

Each step: every source-chain follower's observations are fed to that chain's
:class:`~fusion_prime.bridge.deposits.DepositMachine`; after every observation the machine's
``Record`` actions, its alerts, and its whole JSON snapshot are written in **one** database
transaction (so after a crash the machine restarts exactly where its last durable step left it,
and :meth:`DepositMachine.resume_actions` redoes what was in flight); then its actions are
carried out:

* ``ProposeMint`` → ``Node.sign(key, digest, gateway path, client_request=<bridge request>)``, then
  ``OrderSigned``/``SigningFailed`` fed back. The order actually proposed is the machine's order
  made **canonical**: ``deadline`` is the end of the next-but-one ``order_slot_seconds`` slot and
  ``nonce`` is derived from it, so two nodes that propose for the same deposit in the same slot
  propose the *identical* order, which every participant may co-sign again (``check_mint`` only
  refuses a *different* live order). The machine adopts it when the signature comes back (it
  adopts any signed order with exactly its deposit's terms).
* **Who coordinates.** Every node runs the same machines, so every node would propose. Instead the
  committee is rotated by the deposit id: the node at rank 0 proposes at once, rank r only after
  ``r × coordinator_takeover_seconds`` and only if the deposit is still unminted — a designated
  coordinator with ordered fail-over, no election round. Racing coordinators (a takeover while the
  first is slow) are safe: same slot, same order; different slots, the second is refused by
  every node that co-signed the first while it is live; and the Gateway's ``mintedDeposit`` is
  the last line.
* **One order per deposit across slots and restarts.** Before proposing, a node looks in its own
  event log for an order with the same terms that it already co-signed (as coordinator or as
  participant: the authorize hook records both) and that is still live for long enough; if there
  is one, it proposes *that* order instead of this slot's. Otherwise a retry after a slot
  boundary, or a coordinator restarted mid-session in a later slot, would propose a second order
  that every node which co-signed the first — its own hook included — refuses until the first
  expires (``cosigned_different_order``): the deposit would stall for two slots.
* **Addresses registered late.** The block walk sees only outputs to addresses registered when
  the block was read; a deposit whose block was scanned before its address was registered here
  (the user asked another node first, or paid an address computed from the group's public key)
  would never be found. Each step looks for registrations newer than a durable watermark and
  re-reads, for just those addresses, the last ``RESCAN_BLOCKS`` blocks the machine holds;
  outputs found are fed as re-deliveries of blocks the machine already has (idempotent there).
* ``Relay`` → ``Gateway.mint(order, signature)`` from this node's relayer account, skipped when
  ``mintedDeposit`` is already set (a second submission would only revert); a failed submission
  is retried (backing off) while the deposit is still ``signed`` with that order and it is live.
* **Large mints.** A mint above the asset's ``largeMintThreshold`` is only queued by the Gateway
  (``MintQueued``, executable from its ``eta`` unless the guardian vetoes it). The runtime notes the
  eta (after a restart it reads it back with ``actionState`` for the deposits its machine holds as
  queued), and once the destination chain's clock passed it, sends ``executeMint(order)``: the
  deposit's coordinator at once, rank r after ``r × coordinator_takeover_seconds``, each first
  checking ``mintedDeposit`` and the action's state, so one transaction executes it. A relay of an
  order already queued is skipped (a second ``mint`` would only revert).
* ``PauseChain`` → a group-signed ``Pause`` relayed with ``pauseWithSignature``; a CRITICAL log
  line, the ``fp_bridge_chain_paused`` gauge and the status file name the erratum.
* **Settlement account deposits** (issue 16): the machines take deposits to account addresses
  (``DepositConfig.accounts``) and never mint them; the settlement side credits them
  (``bridge/settlement/funding.py``) and records each credit as a ``settlement-credited`` audit
  event. Each step the runtime looks up, for the account deposits its machines hold uncredited,
  whether such an event exists, and feeds ``Credited`` (making sure the deposit is a custody coin
  too: a node may have applied the credit before it saw the deposit). From then on the machine
  treats a reorg of the deposit as an erratum. :meth:`BridgeRuntime.chain_paused` tells the funding
  side not to credit from a chain paused by an erratum.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import trio
from eth_account import Account
from prometheus_client import CollectorRegistry, Counter, Gauge
from web3 import Web3

from fusion_prime.node.logs import log_event
from fusion_prime.protocol.curve import Point

from . import db as dbm
from .chainview import NodeChainView
from .config import BridgeConfig, SourceChain
from .deposits import (
    CONFIRMED,
    CONFIRMING,
    REORGED,
    SEEN,
    Action,
    Alert,
    BlockConnected,
    Credited,
    DepositConfig,
    DepositMachine,
    MintQueuedSeen,
    MintSeen,
    Observation,
    OrderSigned,
    PauseChain,
    ProposeMint,
    Record,
    Relay,
    ReportDust,
    Rescan,
    Route,
    SignerEpochChanged,
    SigningFailed,
    Tick,
)
from .orders import MintOrder, OrderError, encode_signature, recover_signer
from .requests import MintRequest, PauseRequest, encode
from .watchers import BitcoinBlocks, BlockFollower, EvmBlocks, MintFollower

log = logging.getLogger("fusion_prime.bridge.runtime")

#: async (key_id, digest, path, client_request) -> SessionOutcome — ``Node.sign``.
SignFn = Callable[..., Awaitable[Any]]
SNAPSHOT_META = "machine-state:"
ADDRESS_MARK_META = "address-watermark"
EPOCH_EVERY = 40  # steps between signer-epoch reads
#: blocks below the tip re-read for a newly registered address (Bitcoin: two days; the machine
#: keeps at least this many headers)
RESCAN_BLOCKS = 288
#: registrations are looked for from this many seconds before the watermark (one committed late
#: with an earlier ``created_at`` is not missed; those already rescanned are remembered)
ADDRESS_MARGIN = 300.0
#: a co-signed order is reused only while it stays acceptable this long beyond the policy minimum
REUSE_MARGIN = 30
#: the Gateway's ``ActionStatus`` (``actionState``): None, Queued, Executed, Vetoed
ACTION_NONE, ACTION_QUEUED = 0, 1


def canonical_order(order: MintOrder, now: float, slot: int) -> MintOrder:
    """The order every node proposes for this deposit in this time slot (see the module docstring)."""
    deadline = (int(now) // slot + 2) * slot
    return dataclasses.replace(order, deadline=deadline, nonce=deadline)


def coordinator_rank(deposit_id: str, node_id: str, committee: Sequence[str]) -> int:
    """0 for the deposit's designated coordinator, 1 for the first fail-over, ..."""
    members = sorted(committee)
    start = int(deposit_id, 16) % len(members)
    return (members.index(node_id) - start) % len(members)


_PATHS: dict[tuple[str, str], list[str]] = {}


def state_path(current: str, target: str, *, signed_ok: bool, minted_ok: bool) -> list[str] | None:
    """Shortest legal path of database states from ``current`` to ``target`` (excluding ``current``).

    The deposit machine and the database's state machine agree on the states but the machine takes
    a few shortcuts the database spells as two steps (``signing → confirming`` is ``signing →
    reorged → confirming``: the deposit left its block and came back in another); a state whose
    row requirements are not met (``signed`` without a signature) is never an intermediate."""
    frontier, seen = [[current]], {current}
    while frontier:
        nxt = []
        for path in frontier:
            for s in sorted(dbm.TRANSITIONS[path[-1]]):
                if s in seen or (s == "signed" and not signed_ok) or (s == "minted" and not minted_ok):
                    continue
                if s == target:
                    return [*path[1:], s]
                seen.add(s)
                nxt.append([*path, s])
        frontier = nxt
    return None


class BridgeRuntime:
    """One node's bridge edge loop (see the module docstring)."""

    def __init__(self, cfg: BridgeConfig, *, db: dbm.BridgeDB, sign: SignFn, node_id: str, committee: Sequence[str],
                 group_key: Point, chain_code: bytes, view: NodeChainView, sources: dict[str, Any],
                 destination: Web3, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        assert cfg.complete and cfg.key_id is not None and cfg.gateway is not None
        self.cfg, self.db, self.sign_fn, self.node_id = cfg, db, sign, node_id
        self.committee = list(committee)
        self.view, self.destination, self.clock = view, destination, clock
        self.group_key, self.chain_code = group_key, chain_code
        self.gateway = view.gateway
        self.group_address = Web3.to_checksum_address(
            "0x" + Web3.keccak(group_key.to_uncompressed()[1:])[-20:].hex())
        self.machines: dict[str, DepositMachine] = {}
        self.followers: dict[str, BlockFollower] = {}
        self.chain_by_asset: dict[str, str] = {}
        for chain in cfg.chains:
            assert chain.asset is not None
            dconf = DepositConfig(source_chain=chain.caip2, params=chain.params,
                                  routes=(Route(cfg.destination_chain, chain.asset, cfg.gateway),),
                                  expiry_grace=cfg.expiry_grace, group_key=group_key, chain_code=chain_code,
                                  signer=self.group_address, header_window=max(2016, chain.params.max_confirmations),
                                  accounts=True)
            self.machines[chain.caip2] = self._load_machine(dconf)
            self.chain_by_asset[chain.asset] = chain.caip2
            source = self._source(chain, sources[chain.caip2])
            m = self.machines[chain.caip2]
            self.followers[chain.caip2] = BlockFollower(source, headers=m.headers, start_height=chain.start_height)
        cursor = db.get_cursor(cfg.destination_chain)
        self.mints = MintFollower(destination, cfg.gateway, confirmations=cfg.destination_confirmations,
                                  start_block=max(0, cursor.height - 64) if cursor else 0)
        self.relayer = None
        if cfg.relayer_key_file is not None:
            self.relayer = Account.from_key(cfg.relayer_key_file.read_text().strip())
        self._lock = trio.Lock()
        self._nonce_lock = threading.Lock()
        self._pending: dict[str, tuple[str, MintOrder, float]] = {}  # did -> (chain, order, due)
        #: queued large mints: did -> (chain, order digest, eta on the destination clock)
        self._queued: dict[str, tuple[str, str, int]] = {}
        self._executing: set[str] = set()
        self._execute_due: dict[str, float] = {}  # did -> local time before which this node waits
        self._in_flight: set[str] = set()
        self._attempted: set[str] = set()
        self._steps = 0
        self._address_mark = float(db.get_meta(ADDRESS_MARK_META) or 0.0)
        self._address_done: dict[str, float] = {}  # address -> created_at, rescanned already
        self._nursery: trio.Nursery | None = None
        self.alerts: list[dict[str, Any]] = []
        self.dust: list[dict[str, Any]] = []
        self.relayed: list[str] = []
        #: more sections of the status file (the daemon adds the registration forwarder's)
        self.status_extra: dict[str, Callable[[], Any]] = {}
        #: the withdrawal side (``bridge/withdrawal_runtime.py``), attached by the daemon
        self.withdrawals: Any = None
        r = registry if registry is not None else CollectorRegistry()
        self.m_paused = Gauge("fp_bridge_chain_paused", "1 while minting from a source chain is paused", ["chain"],
                              registry=r)
        self.m_alerts = Counter("fp_bridge_alerts_total", "Bridge alerts raised", ["severity"], registry=r)
        self.m_relays = Counter("fp_bridge_relays_total", "Mint transactions relayed by this node", registry=r)
        self.m_refusals = Counter("fp_bridge_signing_failures_total", "Mint signing sessions that failed",
                                  registry=r)

    # -- set-up
    def _source(self, chain: SourceChain, endpoint: Any) -> Any:
        lookup = self._lookup
        if chain.kind == "bitcoin":
            return BitcoinBlocks(endpoint, chain.caip2, lookup)
        return EvmBlocks(endpoint, chain.caip2, lookup)

    def _lookup(self, address: str) -> dbm.DepositAddress | None:
        return self.db.get_address(address)

    def _load_machine(self, dconf: DepositConfig) -> DepositMachine:
        raw = self.db.get_meta(SNAPSHOT_META + dconf.source_chain)
        if raw is None:
            return DepositMachine(dconf)
        return DepositMachine.from_dict(json.loads(raw), dconf)

    # -- the loop
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._epoch()
            now = self.clock()
            for chain, machine in self.machines.items():
                async with self._lock:
                    actions = machine.resume_actions(int(now))
                    await self._persist(chain, None, actions)
                await self._execute(chain, actions)
            await trio.to_thread.run_sync(self._reload_queued)
            if self.withdrawals is not None:
                await self.withdrawals.start(nursery)
            task_status.started()
            while True:
                try:
                    await self.step()
                except Exception as exc:  # an endpoint hiccup must not end the bridge; the next step retries
                    log_event(log, logging.ERROR, "bridge step failed", node=self.node_id,
                              error=f"{type(exc).__name__}: {exc}")
                await trio.sleep(self.cfg.poll_interval)

    async def step(self) -> None:
        self._steps += 1
        if self._steps % EPOCH_EVERY == 0:
            await self._epoch()
        # read before the walk: every block the walk reads from here on sees these registrations,
        # and every block read before is in the machine's headers when the rescan runs
        fresh = await trio.to_thread.run_sync(self._fresh_addresses)
        for chain, follower in self.followers.items():
            for obs in await trio.to_thread.run_sync(follower.poll):
                await self.feed(chain, obs)
        if fresh:
            await self._rescan_new_addresses(fresh)
        await self._learn_credits()
        mints, head, warnings = await trio.to_thread.run_sync(self.mints.poll)
        for w in warnings:
            self._alert("critical", w, None)
        for routed in mints:
            chain = self.chain_by_asset.get(routed.asset)
            if chain is not None:
                obs = routed.observation
                if isinstance(obs, MintSeen) and obs.order_digest is not None:
                    if await trio.to_thread.run_sync(self._cosigned_digest, obs.deposit_id, obs.order_digest):
                        obs = dataclasses.replace(obs, cosigned=True)
                await self.feed(chain, obs)
                self._note_queued(chain, routed.observation)
            if routed.output is not None and self.withdrawals is not None:
                await trio.to_thread.run_sync(self.withdrawals.note_minted, routed.asset, routed.output)
        if self.withdrawals is not None:
            # every Minted log up to here is processed (its custody coin recorded): the solvency
            # check reads the supply no later than this block, so both sides count the same mints
            self.withdrawals.minted_through = self.mints.follower._confirmed_upto
        if mints and head >= 0:
            block = await trio.to_thread.run_sync(lambda: self.destination.eth.get_block(head))
            await trio.to_thread.run_sync(self.db.set_cursor, self.cfg.destination_chain, head,
                                          "0x" + bytes(block["hash"]).hex())
        for chain in self.machines:
            await self.feed(chain, Tick())
        await self._start_due()
        if self._queued:
            await self._execute_queued()
        if self.withdrawals is not None:
            try:
                await self.withdrawals.step()
            except Exception as exc:  # the deposit side goes on; the next step retries
                log_event(log, logging.ERROR, "withdrawal step failed", node=self.node_id,
                          error=f"{type(exc).__name__}: {exc}")
        self._write_status()

    async def _epoch(self) -> None:
        epoch = await trio.to_thread.run_sync(self.view.gateway_signer_epoch)
        for chain, machine in self.machines.items():
            if machine.signer_epoch != epoch:
                await self.feed(chain, SignerEpochChanged(epoch))

    async def feed(self, chain: str, obs: Observation) -> list[Action]:
        """Apply one observation and make its outcome durable before anything is carried out."""
        async with self._lock:
            actions = self.machines[chain].handle(obs, int(self.clock()))
            if actions or not isinstance(obs, Tick):
                await self._persist(chain, obs, actions)
        await self._execute(chain, actions)
        return actions

    # -- settlement account deposits
    def chain_paused(self, chain: str) -> bool:
        """Whether deposits from ``chain`` are paused here (an erratum): the funding side offers and
        accepts no credit from it meanwhile, as no mint is proposed."""
        machine = self.machines.get(chain)
        return machine is None or machine.paused

    async def _learn_credits(self) -> None:
        """Feed ``Credited`` for the account deposits a settlement batch credited (the
        ``settlement-credited`` events) that the machines still hold as uncredited."""
        wanted: dict[str, str] = {}
        for chain, machine in self.machines.items():
            for dep in machine.deposits.values():
                if dep.account and dep.credited is None and dep.state in (SEEN, CONFIRMING, CONFIRMED, REORGED):
                    wanted[dep.deposit_id] = chain
        if not wanted:
            return
        found = await trio.to_thread.run_sync(self._credited_custody, list(wanted))
        for did, reference in found.items():
            await self.feed(wanted[did], Credited(did, reference))

    def _credited_custody(self, deposit_ids: list[str]) -> dict[str, str]:
        """(worker thread) Of ``deposit_ids``, those credited (with the batch reference), each made
        sure to be a custody coin (idempotent)."""
        from .settlement.funding import credited_deposits, custody_coin_of

        out: dict[str, str] = {}
        with self.db.transaction() as tx:
            found = credited_deposits(tx, (bytes.fromhex(d[2:]) for d in deposit_ids))
            for raw, detail in found.items():
                dep = tx.get_deposit(raw)
                coin = custody_coin_of(dep, self.group_key, self.chain_code) if dep is not None else None
                if coin is not None and dep is not None and dep.amount == int(detail.get("amount", -1)) \
                        and dep.recipient == detail.get("party"):
                    tx.add_custody_coin(**coin)
                out["0x" + raw.hex()] = str(detail.get("reference") or "settlement credit")
        return out

    # -- addresses registered after their deposit's block was read
    def _fresh_addresses(self) -> list[dbm.DepositAddress]:
        """(worker thread) Registrations at or after the watermark (less the margin) not rescanned yet."""
        since = self._address_mark - ADDRESS_MARGIN
        table = dbm.deposit_addresses
        with self.db.read() as r:
            rows = r.conn.execute(sa.select(table).where(table.c.created_at >= since)
                                  .order_by(table.c.created_at)).all()
        for a in [a for a, at in self._address_done.items() if at < since]:
            del self._address_done[a]
        return [a for a in (dbm._address_from_row(row) for row in rows) if a.address not in self._address_done]

    async def _rescan_new_addresses(self, fresh: list[dbm.DepositAddress]) -> None:
        """Re-read the recent blocks each source machine holds for just these addresses; feed
        the outputs found as re-deliveries of those blocks. Then advance the durable watermark."""
        for chain, machine in self.machines.items():
            mine = {a.address: a for a in fresh if a.source_chain == chain}
            if not mine:
                continue
            async with self._lock:
                floor = machine.tip - RESCAN_BLOCKS
                blocks = sorted((h, v) for h, v in machine.headers.items() if h > floor)
            source = self.followers[chain].source
            found = 0
            for height, block_hash in blocks:
                parent, outputs = await trio.to_thread.run_sync(source.block, block_hash, mine.get)
                if not outputs:
                    continue
                found += len(outputs)
                obs = BlockConnected(height, block_hash, parent, tuple(outputs))
                async with self._lock:
                    if machine.headers.get(height) != block_hash:
                        continue  # reorganised meanwhile: the walk reports the new branch (it sees them now)
                    actions = machine.handle(obs, int(self.clock()))
                    await self._persist(chain, obs, actions, cursor=False)
                await self._execute(chain, actions)
            log_event(log, logging.INFO, "new deposit addresses rescanned", node=self.node_id, chain=chain,
                      addresses=len(mine), blocks=len(blocks), outputs=found)
        for a in fresh:
            self._address_done[a.address] = a.created_at
        mark = max([self._address_mark, *(a.created_at for a in fresh)])
        if mark > self._address_mark:
            self._address_mark = mark
            await trio.to_thread.run_sync(self._save_mark, mark)

    def _save_mark(self, mark: float) -> None:
        with self.db.transaction() as tx:
            tx.put_derived_meta(ADDRESS_MARK_META, repr(mark))

    # -- persistence
    async def _persist(self, chain: str, obs: Observation | None, actions: list[Action], *,
                       cursor: bool = True) -> None:
        machine = self.machines[chain]
        snapshot = json.dumps(machine.to_dict(), sort_keys=True, separators=(",", ":"))
        await trio.to_thread.run_sync(self._write, chain, obs, actions, snapshot, cursor)

    def _write(self, chain: str, obs: Observation | None, actions: list[Action], snapshot: str,
               cursor: bool = True) -> None:
        machine = self.machines[chain]
        records: dict[str, list[str]] = {}
        with self.db.transaction() as tx:
            for a in actions:
                if isinstance(a, Record):
                    records.setdefault(a.deposit_id, []).append(f"{a.old_state}->{a.new_state}: {a.detail}")
                elif isinstance(a, Alert):
                    tx.record_event("bridge-alert", {"severity": a.severity, "message": a.message},
                                    _did(a.deposit_id))
                elif isinstance(a, ReportDust):
                    tx.record_event("dust-reported", dataclasses.asdict(a), _did(a.deposit_id))
                elif isinstance(a, PauseChain):
                    tx.record_event("chain-paused", dataclasses.asdict(a), _did(a.deposit_id))
            for did, details in records.items():
                dep = machine.get(did)
                if dep is not None:
                    self._mirror(tx, chain, dep, "; ".join(details))
            if isinstance(obs, BlockConnected) and cursor:  # a rescanned old block does not move it back
                tx.set_cursor(chain, obs.height, obs.hash)
            tx.put_derived_meta(SNAPSHOT_META + chain, snapshot)

    def _mirror(self, tx: dbm.Transaction, chain: str, dep: Any, detail: str) -> None:
        """Bring the deposit's row (what the status API shows) to the machine's state."""
        cfg = self.cfg.chain(chain)
        assert cfg is not None
        order = dep.order
        digest = order.digest(self.cfg.gateway, self.cfg.destination_chain_id) if order is not None else None
        fields = dict(block_hash=dep.block_hash, height=dep.block_height, confirmations=dep.confirmations,
                      required_confirmations=dep.required, order_digest=digest,
                      order_json=json.dumps(order.to_dict()) if order is not None else None,
                      signature=dep.signature, mint_tx=dep.minted_tx, minted_block=dep.minted_block,
                      reason=detail[:2000])
        did = bytes.fromhex(dep.deposit_id[2:])
        try:
            current = tx.get_deposit(did)
            if current is None:
                first = dep.state if dep.state in dbm.INITIAL_STATES else "seen"
                tx.upsert_deposit(dbm.Deposit(
                    deposit_id=did, asset=cfg.symbol, source_chain=chain, txid=dep.txid, vout=dep.vout,
                    address=dep.address, amount=dep.amount, recipient=dep.recipient,
                    destination_chain=dep.destination_chain, state=first,
                    **{k: v for k, v in fields.items() if k not in ("order_digest", "order_json", "signature",
                                                                    "mint_tx", "minted_block")}))
                current = tx.get_deposit(did)
                assert current is not None
            if current.state == dep.state:
                if current.state not in dbm.FINAL_STATES:
                    tx.update_deposit(did, **fields)
                return
            path = state_path(current.state, dep.state, signed_ok=dep.signature is not None,
                              minted_ok=dep.minted_tx is not None)
            if path is None:
                tx.record_event("mirror-skipped", {"from": current.state, "to": dep.state, "detail": detail}, did)
                return
            for state in path:
                tx.update_deposit(did, state=state, **fields)
        except dbm.BridgeDBError as exc:
            log_event(log, logging.ERROR, "deposit row not updated", deposit_id=dep.deposit_id, error=str(exc))
            tx.record_event("mirror-failed", {"error": str(exc), "to": dep.state}, did)

    # -- actions
    async def _execute(self, chain: str, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, ProposeMint):
                self._schedule(chain, a)
            elif isinstance(a, Relay):
                self._spawn(self._relay, a)
            elif isinstance(a, PauseChain):
                self.m_paused.labels(chain=a.chain).set(1)
                log_event(log, logging.CRITICAL, "minting paused", node=self.node_id, chain=a.chain,
                          deposit_id=a.deposit_id, reason=a.reason)
                self._spawn(self._pause, a)
            elif isinstance(a, Alert):
                self._alert(a.severity, a.message, a.deposit_id)
            elif isinstance(a, ReportDust):
                self.dust.append(dataclasses.asdict(a))
                log_event(log, logging.WARNING, "dust deposit: recorded, never minted", node=self.node_id,
                          deposit_id=a.deposit_id, amount=a.amount, minimum=a.minimum)
            elif isinstance(a, Rescan):
                self.followers[chain].rewind(a.from_height)

    def _alert(self, severity: str, message: str, deposit_id: str | None) -> None:
        self.m_alerts.labels(severity=severity).inc()
        self.alerts.append({"severity": severity, "message": message, "deposit_id": deposit_id,
                            "at": self.clock()})
        del self.alerts[:-100]
        log_event(log, logging.CRITICAL if severity == "critical" else logging.WARNING, "bridge alert",
                  node=self.node_id, severity=severity, message=message, deposit_id=deposit_id)

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    def _schedule(self, chain: str, a: ProposeMint) -> None:
        if a.deposit_id in self._in_flight:
            return
        now = self.clock()
        if a.deposit_id in self._attempted:
            delay = self.cfg.retry_seconds
        else:
            delay = coordinator_rank(a.deposit_id, self.node_id, self.committee) * self.cfg.coordinator_takeover_seconds
        order = canonical_order(a.order, now, self.cfg.order_slot_seconds)
        self._pending[a.deposit_id] = (chain, order, now + delay)

    async def _start_due(self) -> None:
        now = self.clock()
        for did, (chain, order, due) in list(self._pending.items()):
            dep = self.machines[chain].get(did)
            if dep is None or dep.state != "signing" or self.machines[chain].paused:
                del self._pending[did]
                continue
            if now < due or did in self._in_flight:
                continue
            del self._pending[did]
            # re-canonicalise: a proposal scheduled long ago must not carry a near-expired deadline;
            # but an order with these terms this node already co-signed, still live, is the one
            order = canonical_order(order, now, self.cfg.order_slot_seconds)
            order = await trio.to_thread.run_sync(self._cosigned_live, order, now) or order
            self._in_flight.add(did)
            self._attempted.add(did)
            self._spawn(self._sign_order, chain, did, order)

    def _cosigned_digest(self, deposit_id: str, digest: str) -> bool:
        """(worker thread) Whether this node co-signed the order with ``digest`` for the deposit."""
        try:
            orders = self.view.cosigned_orders(bytes.fromhex(deposit_id[2:]))
        except Exception:  # the alert it would silence is only a warning: fail towards raising it
            return False
        return any("0x" + o.digest(self.cfg.gateway, self.cfg.destination_chain_id).hex() == digest.lower()
                   for o in orders)

    def _cosigned_live(self, order: MintOrder, now: float) -> MintOrder | None:
        """(worker thread) The live order with ``order``'s terms and epoch this node co-signed, if any."""
        try:
            cosigned = self.view.cosigned_orders(order.deposit_id)
        except Exception as exc:  # the database: propose this slot's order; the policy still decides
            log_event(log, logging.WARNING, "co-signed orders unreadable", node=self.node_id, error=str(exc))
            return None
        live = [o for o in cosigned if o.same_deposit_terms(order) and o.signer_epoch == order.signer_epoch
                and o.deadline >= now + self.cfg.min_deadline_ahead + REUSE_MARGIN]
        return max(live, key=lambda o: o.deadline) if live else None

    async def _sign_order(self, chain: str, did: str, order: MintOrder) -> None:
        digest = order.digest(self.cfg.gateway, self.cfg.destination_chain_id)
        obs: Observation
        try:
            outcome = await self.sign_fn(self.cfg.key_id, digest, self.cfg.signer_path,
                                         client_request=encode(MintRequest(order)))
            if outcome.ok:
                sig = outcome.output
                try:
                    signature = encode_signature(sig.r, sig.s, sig.recovery_id)
                    if recover_signer(digest, signature) != self.group_address:
                        raise OrderError("signature does not recover to the Gateway signer")
                    obs = OrderSigned(did, order, signature)
                except OrderError as exc:
                    obs = SigningFailed(did, str(exc))
            else:
                self.m_refusals.inc()
                log_event(log, logging.WARNING, "mint signing failed", node=self.node_id, deposit_id=did,
                          status=outcome.status, reason=outcome.reason)
                obs = SigningFailed(did, f"{outcome.status}: {outcome.reason}")
        finally:
            self._in_flight.discard(did)
        await self.feed(chain, obs)

    def _still_signed(self, a: Relay) -> bool:
        dep = next((d for m in self.machines.values() if (d := m.get(a.deposit_id)) is not None), None)
        return dep is not None and dep.state == "signed" and dep.order == a.order \
            and self.clock() <= a.order.deadline

    async def _relay(self, a: Relay) -> None:
        """Submit the signed order; a failure (the relayer out of gas money, an endpoint down) is
        retried while the deposit is still ``signed`` with this order and the order is live —
        otherwise a signed order would wait for its expiry and a re-issue to be minted."""
        if self.relayer is None:
            return
        delay = self.cfg.retry_seconds
        while True:
            try:
                tx_hash = await trio.to_thread.run_sync(self._send_mint, a.order, a.signature)
                break
            except Exception as exc:  # a revert (already minted by another relayer) or an endpoint error
                log_event(log, logging.WARNING, "mint relay failed", node=self.node_id, deposit_id=a.deposit_id,
                          error=f"{type(exc).__name__}: {exc}", retry_in=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)
            if not self._still_signed(a):
                return
        if tx_hash:
            self.m_relays.inc()
            self.relayed.append(tx_hash)
            log_event(log, logging.INFO, "mint relayed", node=self.node_id, deposit_id=a.deposit_id, tx=tx_hash)

    def _send_mint(self, order: MintOrder, signature: bytes) -> str | None:
        if self.view.minted_on_destination(order.deposit_id):
            return None  # somebody relayed it already: a second submission would only revert
        digest = order.digest(self.cfg.gateway, self.cfg.destination_chain_id)
        if int(self.gateway.functions.actionState(digest).call()[0]) != ACTION_NONE:
            return None  # a large mint already queued (or executed) with this order: executeMint's turn
        t = (order.asset, order.source_chain_key, bytes.fromhex(order.source_txid), order.vout, order.recipient,
             order.amount, order.signer_epoch, order.nonce, order.deadline)
        return self._transact(self.gateway.functions.mint(t, signature))

    def _transact(self, fn: Any) -> str:
        assert self.relayer is not None
        w3 = self.destination
        with self._nonce_lock:  # relays run in parallel threads: two must not take the same nonce
            tx = fn.build_transaction({"from": self.relayer.address,
                                       "nonce": w3.eth.get_transaction_count(self.relayer.address, "pending"),
                                       "chainId": self.cfg.destination_chain_id})
            signed = self.relayer.sign_transaction(tx)
            tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        if int(receipt["status"]) != 1:
            raise RuntimeError(f"transaction {tx_hash.hex()} reverted")
        return "0x" + bytes(tx_hash).hex()

    # -- large mints: queued by the Gateway, executed here once their eta passed
    def _note_queued(self, chain: str, obs: Observation) -> None:
        if isinstance(obs, MintQueuedSeen):
            self._queued.setdefault(obs.deposit_id, (chain, obs.order_digest, int(obs.eta)))
            log_event(log, logging.INFO, "large mint queued", node=self.node_id, deposit_id=obs.deposit_id,
                      eta=obs.eta)
        elif isinstance(obs, MintSeen):
            self._queued.pop(obs.deposit_id, None)

    def _reload_queued(self) -> None:
        """(worker thread) After a restart: the deposits the machine holds as queued and unminted,
        with their eta read from the Gateway (the follower may not see their ``MintQueued`` again)."""
        for chain, machine in self.machines.items():
            for dep in machine.deposits.values():
                if not dep.queued or dep.order is None or dep.state not in ("signing", "signed"):
                    continue
                digest = dep.order.digest(self.cfg.gateway, self.cfg.destination_chain_id)
                try:
                    status, eta, _epoch, _tag = self.gateway.functions.actionState(digest).call()
                except Exception as exc:  # the next MintQueued observation, if any, brings it back
                    log_event(log, logging.WARNING, "queued mint unreadable", node=self.node_id,
                              deposit_id=dep.deposit_id, error=str(exc))
                    continue
                if int(status) == ACTION_QUEUED:
                    self._queued[dep.deposit_id] = (chain, "0x" + digest.hex(), int(eta))

    async def _execute_queued(self) -> None:
        """Execute every queued large mint whose eta passed on the destination chain's clock. The
        deposit's coordinator does it at once, rank r after ``r × coordinator_takeover_seconds``
        (as for proposals); each checks ``mintedDeposit`` and the action's state first, so one
        ``executeMint`` is sent for a deposit (the Gateway would refuse a second anyway)."""
        block = await trio.to_thread.run_sync(lambda: self.destination.eth.get_block("latest"))
        chain_now = int(block["timestamp"])
        now = self.clock()
        for did, (chain, _digest, eta) in list(self._queued.items()):
            if chain_now < eta or did in self._executing:
                continue
            dep = self.machines[chain].get(did)
            if dep is None or dep.order is None or dep.state == "minted" or self.machines[chain].paused:
                if dep is None or dep.state == "minted":
                    self._queued.pop(did, None)
                continue
            due = self._execute_due.setdefault(
                did, now + coordinator_rank(did, self.node_id, self.committee) * self.cfg.coordinator_takeover_seconds)
            if now < due:
                continue
            self._executing.add(did)
            self._spawn(self._execute_mint, did, dep.order)

    async def _execute_mint(self, did: str, order: MintOrder) -> None:
        try:
            tx = await trio.to_thread.run_sync(self._send_execute, order)
            if tx:
                self.m_relays.inc()
                self.relayed.append(tx)
                log_event(log, logging.INFO, "large mint executed", node=self.node_id, deposit_id=did, tx=tx)
            self._queued.pop(did, None)
        except Exception as exc:  # retried from the next step after retry_seconds
            log_event(log, logging.WARNING, "large mint execution failed", node=self.node_id, deposit_id=did,
                      error=f"{type(exc).__name__}: {exc}", retry_in=self.cfg.retry_seconds)
            self._execute_due[did] = self.clock() + self.cfg.retry_seconds
        finally:
            self._executing.discard(did)

    def _send_execute(self, order: MintOrder) -> str | None:
        if self.relayer is None or self.view.minted_on_destination(order.deposit_id):
            return None
        digest = order.digest(self.cfg.gateway, self.cfg.destination_chain_id)
        if int(self.gateway.functions.actionState(digest).call()[0]) != ACTION_QUEUED:
            return None  # executed (by another node) or vetoed by the guardian
        t = (order.asset, order.source_chain_key, bytes.fromhex(order.source_txid), order.vout, order.recipient,
             order.amount, order.signer_epoch, order.nonce, order.deadline)
        return self._transact(self.gateway.functions.executeMint(t))

    async def pause_for(self, reason: str) -> None:
        """Pause the Gateway for a reason other than a deposit erratum (the withdrawal side's
        solvency halt): the same group-signed ``Pause`` relayed by this node."""
        await self._pause(PauseChain(chain="*", deposit_id="", reason=reason))

    async def _pause(self, a: PauseChain) -> None:
        """Group-sign ``Pause(unpauseCount, deadline)`` and relay it (every node that sees the
        erratum does so; a pause is idempotent)."""
        for _attempt in range(5):
            try:
                if await trio.to_thread.run_sync(self.view.gateway_paused):
                    return
                count = await trio.to_thread.run_sync(self.view.unpause_count)
                request = PauseRequest(self.cfg.destination_chain_id, self.cfg.gateway, count,
                                       int(self.clock()) + 3600,
                                       f"erratum {a.deposit_id} on {a.chain}" if a.deposit_id else a.reason)
                outcome = await self.sign_fn(self.cfg.key_id, request.digest(), self.cfg.signer_path,
                                             client_request=encode(request))
                if outcome.ok:
                    sig = outcome.output
                    signature = encode_signature(sig.r, sig.s, sig.recovery_id)
                    if self.relayer is not None:
                        await trio.to_thread.run_sync(self._transact, self.gateway.functions.pauseWithSignature(
                            request.unpause_count, request.deadline, signature))
                    log_event(log, logging.CRITICAL, "Gateway paused", node=self.node_id, chain=a.chain,
                              deposit_id=a.deposit_id)
                    return
                reason = outcome.reason
            except Exception as exc:  # retried below: a pause must get through
                reason = f"{type(exc).__name__}: {exc}"
            log_event(log, logging.ERROR, "pause attempt failed", node=self.node_id, reason=reason)
            await trio.sleep(self.cfg.retry_seconds)

    # -- status
    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node_id, "chains": {}, "alerts": self.alerts[-20:], "dust": self.dust,
                               "relayed": self.relayed}
        for chain, m in self.machines.items():
            states: dict[str, int] = {}
            for d in m.deposits.values():
                states[d.state] = states.get(d.state, 0) + 1
            out["chains"][chain] = {"tip": m.tip, "paused": m.paused, "pause_reason": m.pause_reason,
                                    "deposits": states}
        if self.withdrawals is not None:
            out["withdrawals"] = self.withdrawals.status()
        for name, fn in self.status_extra.items():
            out[name] = fn()
        return out

    def _write_status(self) -> None:
        if self.cfg.status_file is None:
            return
        tmp = Path(str(self.cfg.status_file) + ".tmp")
        tmp.write_text(json.dumps(self.status(), sort_keys=True, default=str))
        tmp.replace(self.cfg.status_file)


def _did(deposit_id: str | None) -> bytes | None:
    return bytes.fromhex(deposit_id[2:]) if deposit_id else None
