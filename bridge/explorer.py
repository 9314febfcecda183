"""The bridge explorer: a read-only web page each node serves about its own view of the bridge.

What it shows, all from *this* node (its bridge database, its signer's storage, its own probes):
deposits with their confirmations and mint transaction, withdrawals with their payout txid and
every bump, reserves against supply over time (a chart), node and peer health, presignature pool
depth, recent signing sessions and the nodes they blamed. An operator compares two nodes' pages the
way a user compares two nodes' deposit addresses: nothing here is a shared truth.

How it is built, and why:

* **A stdlib ``ThreadingHTTPServer`` in daemon threads**, as the node's ``/healthz`` endpoint
  (``node/metrics.py``): every database read happens in the request's own thread, never on the
  daemon's trio loop, so a slow page cannot stall signing. The few values only the trio thread may
  read (the runtime's machines, peer probes) are copied into a snapshot by :class:`NodeWatch`, a
  trio task, every :data:`REFRESH_SECONDS`; a request reads the snapshot under a lock.
* **Read-only.** GET and HEAD only; every other method is 405 and its body is never read. URLs
  longer than :data:`MAX_URL` are refused, at most :data:`MAX_CONCURRENT_REQUESTS` are served at
  once (503 beyond), a request's socket times out after :data:`REQUEST_TIMEOUT_SECONDS`, every
  listing is capped at :data:`MAX_LIMIT` rows, and one connection carries one request.
* **Nothing secret leaves.** The views are built field by field from rows that hold no key
  material (no share, passphrase, relayer key, RPC password, admin or client key: a settlement
  account's deposit shows a fingerprint of the client key, never the key). JSON is served with
  ``<``, ``>`` and ``&`` escaped as ``\\u003c``…, so even a mis-sniffed response is not markup.
* **Escaped on the page.** The page's script renders every string with ``textContent`` (never
  ``innerHTML``) and the page is served with a Content-Security-Policy that allows only its own
  script and stylesheet: a burn destination, a refusal reason or a peer's name that contains markup
  is shown as text. Anyone can burn with any destination bytes, so such strings do arrive.
* **Loopback by default** (``[bridge.explorer] listen``), and a request whose ``Host`` is a name
  other than ``localhost`` or an allowed one is refused (403): a web page that rebinds its own
  domain to 127.0.0.1 cannot read the explorer through the victim's browser.
* **Reserves over time.** The withdrawal side judges solvency every few steps; :class:`ReserveRecorder`
  is told of each judgement (``WithdrawalRuntime.on_solvency``, on the trio thread: it only queues),
  and :class:`NodeWatch` writes a sample per asset to ``reserve_samples`` (migration 7) when a figure
  moved or ``sample_seconds`` passed, keeping the latest ``max_samples`` per asset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa

from ..node.httpd import LoggedHTTPServer
from ..node.logs import log_event
from . import db as dbm
from .derivation import SETTLEMENT_DESTINATION
from .orders import OrderError, chain_kind, to_checksum_address

log = logging.getLogger("fusion_prime.bridge.explorer")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
DEFAULT_SAMPLES = 500  # reserve samples per asset in one answer (the chart's points)
MAX_SAMPLES_SHOWN = 5000
MAX_CONCURRENT_REQUESTS = 16
REQUEST_TIMEOUT_SECONDS = 10.0
REFRESH_SECONDS = 3.0
PEER_TIMEOUT_SECONDS = 2.0
MAX_URL = 2048
MAX_QUERY_FIELDS = 8
MAX_DRAINED_BODY = 64 * 1024  # a refused request's body is read (then dropped) only up to this
RECORDER_QUEUE = 1000  # judgements waiting for the next flush (older ones are dropped first)

STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/explorer.js": ("explorer.js", "text/javascript; charset=utf-8"),
    "/explorer.css": ("explorer.css", "text/css; charset=utf-8"),
}
#: only the page's own script and stylesheet run; data is fetched from this origin only
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                    ("X-Frame-Options", "DENY"), ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                    ("Cross-Origin-Resource-Policy", "same-origin"))
READ_METHODS = frozenset({"GET", "HEAD"})
BITCOIN_DECIMALS = 8
EVM_DECIMALS = 18


class BadRequest(ValueError):
    """A query parameter this explorer does not accept: answered 400 with the message."""


# ---------------------------------------------------------------------------------- formatting


def decimals_of(chain: str) -> int:
    """Decimal places of the asset deposited on ``chain`` (its base units: satoshi, wei)."""
    try:
        return BITCOIN_DECIMALS if chain_kind(chain) == "bitcoin" else EVM_DECIMALS
    except OrderError:
        return 0


def display_amount(amount: int, decimals: int) -> str:
    """``amount`` base units in whole units, exactly, without trailing zeros (125000000, 8 → 1.25)."""
    text = f"{Decimal(int(amount)).scaleb(-decimals):f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def account_fingerprint(party_hex: str) -> str:
    """How a settlement account's client key is shown: a short hash, never the key itself."""
    return "account " + hashlib.sha256(party_hex.lower().encode()).hexdigest()[:16]


def destination_text(raw_hex: str) -> str:
    """A burn's destination bytes as a person reads them: the address text a Bitcoin burn carries,
    an EIP-55 address for 20 bytes, else hex. Anyone can burn with any bytes: this is untrusted."""
    try:
        raw = bytes.fromhex(raw_hex or "")
    except ValueError:
        return raw_hex[:200]
    if len(raw) == 20:
        return to_checksum_address(raw)
    if raw and all(0x20 <= b < 0x7F for b in raw):
        return raw.decode("ascii")[:200]
    return "0x" + raw.hex()[:400]


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + bytes(value).hex()


def _json_bytes(doc: Any) -> bytes:
    """JSON whose bytes never contain ``<``, ``>`` or ``&`` (escaped inside strings, the only place
    they can occur), so a response that a browser mis-sniffs as HTML is still not markup."""
    text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("ascii")


def _param(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _limit(params: Mapping[str, list[str]], default: int = DEFAULT_LIMIT, cap: int = MAX_LIMIT) -> int:
    text = _param(params, "limit")
    if text is None or text == "":
        return default
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise BadRequest("limit must be a positive integer")
    return min(int(text), cap)


# ---------------------------------------------------------------------------------- reserves history


@dataclasses.dataclass(frozen=True)
class ReserveSample:
    """One asset's books at one solvency judgement (base units of its source chain)."""

    at: float
    asset: str  # the wrapped token
    symbol: str  # BTC, ETH
    chain: str  # the source chain
    custody: int
    supply: int
    in_flight: int
    ledger: int
    tolerance: int
    solvent: bool
    source_height: int | None
    destination_height: int | None

    def figures(self) -> tuple[int, int, int, int, bool]:
        return self.custody, self.supply, self.in_flight, self.ledger, self.solvent


class ReserveRecorder:
    """Reserve samples over time: :meth:`offer` (any thread, returns at once) queues a judgement,
    :meth:`flush` (a worker thread) writes those worth keeping and trims each asset's history."""

    def __init__(self, db: dbm.BridgeDB, *, sample_seconds: float = 60.0, max_samples: int = 5000,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.sample_seconds, self.max_samples, self.clock = db, sample_seconds, max_samples, clock
        self._lock = threading.Lock()
        self._queue: list[ReserveSample] = []
        self._last: dict[str, ReserveSample] | None = None  # per asset, the latest written (read lazily)
        self.written = 0

    def offer(self, sample: ReserveSample) -> None:
        with self._lock:
            self._queue.append(sample)
            del self._queue[:-RECORDER_QUEUE]

    def _load_last(self, r: dbm.Reader) -> dict[str, ReserveSample]:
        t = dbm.reserve_samples
        latest = sa.select(t.c.asset, sa.func.max(t.c.seq).label("seq")).group_by(t.c.asset).subquery()
        rows = r.conn.execute(sa.select(t).join(latest, t.c.seq == latest.c.seq)).all()
        return {row._mapping["asset"]: _sample_from_row(row._mapping) for row in rows}

    def _keep(self, sample: ReserveSample, last: ReserveSample | None) -> bool:
        return last is None or sample.figures() != last.figures() or sample.at - last.at >= self.sample_seconds

    def flush(self) -> int:
        """Write the queued samples worth keeping (a figure moved since the asset's last sample, or
        ``sample_seconds`` passed); returns how many were written."""
        with self._lock:
            queued, self._queue = self._queue, []
        if self._last is None:
            with self.db.read() as r:
                self._last = self._load_last(r)
        last = dict(self._last)
        keep = []
        for sample in queued:
            if self._keep(sample, last.get(sample.asset)):
                keep.append(sample)
                last[sample.asset] = sample
        if not keep:
            return 0
        t = dbm.reserve_samples
        with self.db.transaction() as tx:
            tx.conn.execute(sa.insert(t), [dataclasses.asdict(s) for s in keep])
            for asset in {s.asset for s in keep}:
                cut = tx.conn.scalar(sa.select(t.c.seq).where(t.c.asset == asset).order_by(t.c.seq.desc())
                                     .offset(self.max_samples).limit(1))
                if cut is not None:
                    tx.conn.execute(sa.delete(t).where((t.c.asset == asset) & (t.c.seq <= cut)))
        self._last = last
        self.written += len(keep)
        return len(keep)


def _sample_from_row(m: Mapping[str, Any]) -> ReserveSample:
    return ReserveSample(**{f.name: m[f.name] for f in dataclasses.fields(ReserveSample)})


def solvency_observer(recorder: ReserveRecorder, withdrawals: Any, deposits: Any) -> Callable[[str, Any, Any], None]:
    """``WithdrawalRuntime.on_solvency`` for the daemon: turns a judgement (asset, inputs, verdict)
    into a sample, with this node's source-chain tip and the destination block the supply was read
    at. Runs on the trio thread, so it reads the machines directly; it only queues."""

    def observe(asset: str, inputs: Any, verdict: Any) -> None:
        side = withdrawals.sides[asset]
        machine = getattr(deposits, "machines", {}).get(side.chain.caip2)
        tip = getattr(machine, "tip", None)
        authorizer = withdrawals.authorizer
        through = min(authorizer.minted_through, authorizer.burned_through)
        recorder.offer(ReserveSample(
            at=recorder.clock(), asset=asset, symbol=side.chain.symbol, chain=side.chain.caip2,
            custody=int(inputs.custody), supply=int(inputs.supply), in_flight=int(inputs.in_flight),
            ledger=int(inputs.ledger), tolerance=int(inputs.tolerance), solvent=bool(verdict.ok),
            source_height=int(tip) if isinstance(tip, int) and tip >= 0 else None,
            destination_height=through if through >= 0 else None))

    return observe


# ---------------------------------------------------------------------------------- the views


class ExplorerViews:
    """The JSON documents of the explorer, each read from this node's own stores.

    * ``db``: the bridge database (deposits, withdrawals, payouts, cursors, reserve samples);
    * ``snapshot()``: what :class:`NodeWatch` last copied from the trio thread (node health, peers,
      chain tips and pauses, solvency) - a plain dict, empty before the first refresh;
    * ``storage``: the signer's storage (presignature counts through its public, thread-safe reads);
      ``key_id`` the bridge's key and ``pool_target`` the configured pool depth;
    * ``sessions_db``: the signer's database file, read through a read-only SQLite connection for
      recent sessions and blames (no sealed column is read).

    Every method returns a JSON-ready dict or raises :class:`BadRequest`; none writes anything."""

    def __init__(self, db: dbm.BridgeDB, *, node_id: str, snapshot: Callable[[], dict[str, Any]] = dict,
                 storage: Any = None, key_id: bytes | None = None, pool_target: int = 0,
                 sessions_db: Path | None = None) -> None:
        self.db, self.node_id, self.snapshot = db, node_id, snapshot
        self.storage, self.key_id, self.pool_target, self.sessions_db = storage, key_id, pool_target, sessions_db

    # -- deposits
    def deposits(self, params: Mapping[str, list[str]]) -> dict[str, Any]:
        limit = _limit(params)
        t = dbm.deposits
        query = sa.select(t)
        state = _param(params, "state")
        if state:
            if state not in dbm.STATES:
                raise BadRequest(f"state must be one of {', '.join(dbm.STATES)}")
            query = query.where(t.c.state == state)
        text = (_param(params, "q") or "").strip()
        if text:
            if len(text) > 140:
                raise BadRequest("q is too long")
            needle = text.lower()
            matches = [sa.func.lower(t.c.txid) == needle.removeprefix("0x"), sa.func.lower(t.c.txid) == needle,
                       sa.func.lower(t.c.address) == needle, sa.func.lower(t.c.recipient) == needle,
                       sa.func.lower(t.c.mint_tx) == needle]
            raw = needle.removeprefix("0x")
            if len(raw) == 64 and all(c in "0123456789abcdef" for c in raw):
                matches.append(t.c.deposit_id == bytes.fromhex(raw))
            query = query.where(sa.or_(*matches))
        query = query.order_by(t.c.updated_at.desc(), t.c.deposit_id).limit(limit)
        with self.db.read() as r:
            rows = r.conn.execute(query).all()
            counts = dict(r.conn.execute(sa.select(t.c.state, sa.func.count()).group_by(t.c.state)).all())
        return {"node": self.node_id, "deposits": [self._deposit(row._mapping) for row in rows],
                "counts": {s: int(counts.get(s, 0)) for s in dbm.STATES}}

    @staticmethod
    def _deposit(m: Mapping[str, Any]) -> dict[str, Any]:
        decimals = decimals_of(m["source_chain"])
        recipient = m["recipient"]
        if m["destination_chain"] == SETTLEMENT_DESTINATION:
            recipient = account_fingerprint(recipient)
        vout = int(m["vout"])
        native = chain_kind(m["source_chain"]) == "evm"
        return {
            "deposit_id": _hex(m["deposit_id"]), "state": m["state"], "asset": m["asset"],
            "source_chain": m["source_chain"], "txid": m["txid"], "vout": vout,
            "outpoint": m["txid"] if native else f"{m['txid']}:{vout}",
            "address": m["address"], "amount": str(int(m["amount"])),
            "amount_display": display_amount(int(m["amount"]), decimals), "recipient": recipient,
            "destination_chain": m["destination_chain"], "block_hash": m["block_hash"], "height": m["height"],
            "confirmations": int(m["confirmations"]), "required_confirmations": int(m["required_confirmations"]),
            "mint_tx": m["mint_tx"], "minted_block": m["minted_block"], "reason": m["reason"],
            "updated_at": float(m["updated_at"]),
        }

    # -- withdrawals
    def withdrawals(self, params: Mapping[str, list[str]]) -> dict[str, Any]:
        limit = _limit(params)
        w, a, p = dbm.withdrawals, dbm.account_withdrawals, dbm.payout_archive
        with self.db.read() as r:
            burns = [row._mapping for row in r.conn.execute(
                sa.select(w).order_by(w.c.updated_at.desc(), w.c.burn_id).limit(limit)).all()]
            accounts = [row._mapping for row in r.conn.execute(
                sa.select(a).order_by(a.c.updated_at.desc(), a.c.burn_id).limit(limit)).all()]
            payout_ids = sorted({m["payout_id"] for m in [*burns, *accounts] if m["payout_id"]})
            variants: dict[str, list[dict[str, Any]]] = {}
            if payout_ids:
                for row in r.conn.execute(sa.select(p.c.txid, p.c.payout_id, p.c.role, p.c.fee, p.c.replaces,
                                                    p.c.created_at).where(p.c.payout_id.in_(payout_ids))
                                          .order_by(p.c.created_at, p.c.txid)).all():
                    m = row._mapping
                    variants.setdefault(m["payout_id"], []).append({
                        "txid": m["txid"], "role": m["role"], "fee": str(int(m["fee"])), "replaces": m["replaces"],
                        "created_at": float(m["created_at"])})
        out = [self._withdrawal(m, "burn", variants) for m in burns]
        out += [self._withdrawal(m, "account", variants) for m in accounts]
        out.sort(key=lambda d: -d["updated_at"])
        return {"node": self.node_id, "withdrawals": out[:limit]}

    @staticmethod
    def _withdrawal(m: Mapping[str, Any], kind: str, variants: Mapping[str, list[dict[str, Any]]]
                    ) -> dict[str, Any]:
        decimals = decimals_of(m["source_chain"])
        payouts = variants.get(m["payout_id"] or "", [])
        doc = {
            "kind": kind, "burn_id": _hex(m["burn_id"]), "asset": m["asset"], "source_chain": m["source_chain"],
            "amount": str(int(m["amount"])), "amount_display": display_amount(int(m["amount"]), decimals),
            "destination": destination_text(m["destination"]), "state": m["state"], "payout_id": m["payout_id"],
            "txid": m["txid"], "confirmations": max(0, int(m["confirmations"] or 0)),
            "required_confirmations": int(m["required_confirmations"]), "reason": m["reason"],
            "updated_at": float(m["updated_at"]), "payouts": payouts,
            "bumps": sum(1 for v in payouts if v["replaces"]),
        }
        if kind == "burn":
            doc.update(burner=m["burner"], burn_nonce=int(m["burn_nonce"]), burn_tx=m["burn_tx"],
                       refund_tx=m["refund_tx"])
        else:  # an account withdrawal: the ledger's id, never the client's key
            doc.update(withdrawal_id=_hex(m["withdrawal_id"]), ledger_asset=m["ledger_asset"],
                       ledger_status=m["ledger_status"])
        return doc

    # -- reserves
    def reserves(self, params: Mapping[str, list[str]]) -> dict[str, Any]:
        limit = _limit(params, DEFAULT_SAMPLES, MAX_SAMPLES_SHOWN)
        t = dbm.reserve_samples
        assets = []
        with self.db.read() as r:
            kinds = r.conn.execute(sa.select(t.c.asset, sa.func.max(t.c.seq)).group_by(t.c.asset)
                                   .order_by(t.c.asset)).all()
            for asset, _ in kinds:
                rows = r.conn.execute(sa.select(t).where(t.c.asset == asset).order_by(t.c.seq.desc())
                                      .limit(limit)).all()
                samples = [_sample_from_row(row._mapping) for row in reversed(rows)]
                latest = samples[-1]
                decimals = decimals_of(latest.chain)
                assets.append({"asset": asset, "symbol": latest.symbol, "chain": latest.chain, "decimals": decimals,
                               "latest": self._sample(latest, decimals),
                               "samples": [self._sample(s, decimals) for s in samples]})
        solvency = self.snapshot().get("solvency", {})
        return {"node": self.node_id, "assets": assets, "solvency": solvency}

    @staticmethod
    def _sample(s: ReserveSample, decimals: int) -> dict[str, Any]:
        liabilities = s.supply + s.in_flight + s.ledger
        doc: dict[str, Any] = {"at": s.at, "solvent": s.solvent, "source_height": s.source_height,
                               "destination_height": s.destination_height}
        for name, value in (("custody", s.custody), ("supply", s.supply), ("in_flight", s.in_flight),
                            ("ledger", s.ledger), ("tolerance", s.tolerance), ("liabilities", liabilities)):
            doc[name] = str(value)
            doc[name + "_display"] = display_amount(value, decimals)
        return doc

    # -- health
    def health(self, params: Mapping[str, list[str]]) -> dict[str, Any]:
        snap = self.snapshot()
        doc: dict[str, Any] = {"node": self.node_id, "refreshed_at": snap.get("at"),
                               "signer": snap.get("node", {}), "peers": snap.get("peers", []),
                               "solvency": snap.get("solvency", {}), "forwarding": snap.get("forwarding")}
        tips = snap.get("chains", {})
        chains = []
        with self.db.read() as r:
            doc["schema_version"] = int(r.conn.scalar(sa.select(sa.func.max(dbm.schema_version_table.c.version)))
                                        or 0)
            head = r.get_meta(dbm.EVENT_HEAD)
            doc["event_seq"] = int(json.loads(head)["seq"]) if head else 0
            names = sorted(set(tips) | {row[0] for row in r.conn.execute(sa.select(dbm.chain_cursors.c.chain))})
            for chain in names:
                cursor = r.get_cursor(chain)
                tip = tips.get(chain, {})
                chains.append({"chain": chain, "height": cursor.height if cursor else None,
                               "block_hash": cursor.block_hash if cursor else None,
                               "updated_at": cursor.updated_at if cursor else None, "tip": tip.get("tip"),
                               "paused": bool(tip.get("paused", False)), "pause_reason": tip.get("pause_reason") or ""})
            doc["errata"] = [_hex(d.deposit_id) for d in r.deposits_in_state("erratum", limit=100)]
        doc["chains"] = chains
        doc["pool"] = self._pool()
        return doc

    def _pool(self) -> dict[str, Any]:
        """Presignature pool depth per key: what the signer holds ready (``available``) against the
        configured depth it keeps per signer set led here."""
        out: dict[str, Any] = {"target_depth": self.pool_target, "keys": []}
        if self.storage is None:
            return out
        keys = list(self.storage.list_keys())
        if self.key_id is not None and self.key_id not in keys:
            keys.insert(0, self.key_id)
        for key_id in keys[:20]:
            counts = self.storage.presignature_counts(key_id)
            out["keys"].append({
                "key_id": _hex(key_id), "bridge_key": key_id == self.key_id, "available": int(counts.available),
                "reserved": int(counts.reserved), "consumed": int(counts.consumed),
                "signer_sets": [{"signers": list(s), "available": int(n)}
                                for s, n in self.storage.presignature_sets(key_id)[:20]]})
        return out

    # -- sessions and blames
    def sessions(self, params: Mapping[str, list[str]]) -> dict[str, Any]:
        limit = _limit(params)
        doc: dict[str, Any] = {"node": self.node_id, "sessions": [], "blames": [], "counts": {}}
        if self.sessions_db is None or not Path(self.sessions_db).exists():
            return doc
        with _read_only(Path(self.sessions_db)) as conn:
            rows = conn.execute(
                "SELECT session_id, phase, coordinator, participants, state, created_at, finished_at, culprits, "
                "reason FROM sessions ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
            blamed = conn.execute(
                "SELECT session_id, phase, culprits, reason, COALESCE(finished_at, created_at) FROM sessions "
                "WHERE culprits IS NOT NULL AND culprits NOT IN ('', '[]') "
                "ORDER BY COALESCE(finished_at, created_at) DESC LIMIT 1000").fetchall()
            counts = dict(conn.execute("SELECT state, COUNT(*) FROM sessions GROUP BY state").fetchall())
        for sid, phase, coordinator, participants, state, created, finished, culprits, reason in rows:
            doc["sessions"].append({
                "session_id": _hex(sid), "phase": phase, "coordinator": coordinator,
                "participants": _names(participants), "state": state, "created_at": created, "finished_at": finished,
                "culprits": _names(culprits), "reason": (reason or "")[:300]})
        per_node: dict[str, dict[str, Any]] = {}
        for sid, phase, culprits, reason, at in blamed:
            for culprit in _names(culprits):
                entry = per_node.setdefault(culprit, {"node": culprit, "sessions": 0, "last_at": at,
                                                      "last_phase": phase, "last_session": _hex(sid),
                                                      "last_reason": (reason or "")[:300]})
                entry["sessions"] += 1
        doc["blames"] = sorted(per_node.values(), key=lambda e: (-e["sessions"], e["node"]))
        doc["counts"] = {str(k): int(v) for k, v in counts.items()}
        return doc


def _names(text: str | None) -> list[str]:
    """A ``sessions`` column of node ids (JSON list), defensively: never more than 64 names."""
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v)[:64] for v in value[:64]] if isinstance(value, list) else []


class _read_only:  # noqa: N801 - used as a context manager, named like one
    """A read-only SQLite connection to the signer's database file (closed on exit)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------------- the trio side


class NodeWatch:
    """Copies, on the trio thread, what only that thread may read into a snapshot the request
    threads read: the signer's health, each peer's answer to a Health probe (with its round trip),
    the deposit machines' tips and pauses, each asset's solvency verdict, the registration
    forwarder's counts; and writes the queued reserve samples (in a worker thread)."""

    def __init__(self, node: Any, runtime: Any, recorder: ReserveRecorder | None, *,
                 interval: float = REFRESH_SECONDS) -> None:
        self.node, self.runtime, self.recorder, self.interval = node, runtime, recorder, interval
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] = {}
        self._last_serving: dict[str, float] = {}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot

    async def run(self) -> None:
        import trio

        while True:
            try:
                snap = await self.refresh()
                with self._lock:
                    self._snapshot = snap
                if self.recorder is not None:
                    await trio.to_thread.run_sync(self.recorder.flush)
            except Exception as exc:  # a page that is a little stale is better than a stopped bridge
                log_event(log, logging.WARNING, "explorer refresh failed", error=f"{type(exc).__name__}: {exc}"[:300])
            await trio.sleep(self.interval)

    async def refresh(self) -> dict[str, Any]:
        import trio

        node = self.node
        peers: dict[str, dict[str, Any]] = {}

        async def probe(peer_id: str, address: str) -> None:
            started = trio.current_time()
            reply = await node.transport.health(peer_id, PEER_TIMEOUT_SECONDS)
            rtt = trio.current_time() - started
            entry: dict[str, Any] = {"node_id": peer_id, "address": address, "checked_at": time.time()}
            if reply is None:
                entry.update(status="unreachable")
            else:
                status = {1: "serving", 2: "draining"}.get(int(reply.status), "unknown")
                entry.update(status=status, rtt_ms=round(rtt * 1000, 1), active_sessions=int(reply.active_sessions),
                             version=reply.version[:64])
                if status == "serving":
                    self._last_serving[peer_id] = time.time()
            entry["last_serving_at"] = self._last_serving.get(peer_id)
            entry["envelopes_sent"] = counters.get(("fp_envelopes_sent_total", peer_id), 0)
            entry["delivery_failures"] = counters.get(("fp_delivery_failures_total", peer_id), 0)
            peers[peer_id] = entry

        counters = _peer_counters(node.metrics.registry)  # one pass over the registry, not one per value
        async with trio.open_nursery() as nursery:
            for peer_id, info in sorted(node.material.peers.items()):
                if peer_id != node.cfg.node_id:
                    nursery.start_soon(probe, peer_id, str(info.address))
        health = dict(node.health())
        health["presign_pool_depth"] = int(node.cfg.presign_pool_depth)
        snap: dict[str, Any] = {"at": time.time(), "node": health, "peers": [peers[p] for p in sorted(peers)]}
        runtime = self.runtime
        if runtime is not None:
            snap["chains"] = {chain: {"tip": m.tip, "paused": bool(m.paused), "pause_reason": m.pause_reason or ""}
                              for chain, m in runtime.machines.items()}
            withdrawals = getattr(runtime, "withdrawals", None)
            if withdrawals is not None:
                snap["solvency"] = {side.chain.symbol: {"asset": asset, "chain": side.chain.caip2,
                                                        "solvent": bool(side.solvent),
                                                        "reason": side.solvency_reason or ""}
                                    for asset, side in withdrawals.sides.items()}
            forwarding = runtime.status_extra.get("registration_forwarding")
            if forwarding is not None:
                f = forwarding()
                snap["forwarding"] = {"pending": f.get("pending", {}), "forwarded": f.get("forwarded", {}),
                                      "refused": len(f.get("refused", []))}
        return snap


PEER_COUNTERS = frozenset({"fp_envelopes_sent_total", "fp_delivery_failures_total"})


def _peer_counters(registry: Any) -> dict[tuple[str, str], int]:
    """(counter, peer) → value of the node's per-peer transport counters."""
    out: dict[tuple[str, str], int] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name in PEER_COUNTERS and "peer" in sample.labels:
                out[(sample.name, sample.labels["peer"])] = int(sample.value)
    return out


# ---------------------------------------------------------------------------------- HTTP


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("fusion_prime.bridge") / "explorer_static"
    return {path: (folder.joinpath(name).read_bytes(), ctype) for path, (name, ctype) in STATIC_FILES.items()}


def host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request's ``Host`` may be answered: none (not a browser), an IP literal,
    ``localhost``, or a configured name - any port (an SSH tunnel changes it)."""
    if not host_header:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    else:
        name, sep, port = host.rpartition(":")
        if sep and port.isdigit():
            host = name
    if host in ("localhost", "localhost.") or host in allowed:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Server(LoggedHTTPServer):
    request_queue_size = 32


class ExplorerServer:
    """The explorer's HTTP server on ``host:port`` (port 0: a free one), in daemon threads.

    ``views`` answers ``/api/<name>`` for each name in :data:`ROUTES`; the page is served from the
    package's ``explorer_static`` folder."""

    ROUTES = ("deposits", "withdrawals", "reserves", "health", "sessions")

    def __init__(self, views: ExplorerViews, host: str = "127.0.0.1", port: int = 0, *,
                 allowed_hosts: tuple[str, ...] | frozenset[str] = ()) -> None:
        static = _static_files()
        allowed = frozenset(h.lower() for h in allowed_hosts)
        slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        routes: dict[str, Callable[[Mapping[str, list[str]]], dict[str, Any]]] = {
            f"/api/{name}": getattr(views, name) for name in self.ROUTES}

        class Handler(BaseHTTPRequestHandler):
            server_version = "fusion-prime-explorer"
            sys_version = ""
            protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive holds a thread
            timeout = REQUEST_TIMEOUT_SECONDS

            def __getattr__(self, name: str) -> Any:
                # every method but GET and HEAD (do_POST, do_PUT, do_FOO...): 405, body unread
                if name.startswith("do_"):
                    return self._not_allowed
                raise AttributeError(name)

            def do_GET(self) -> None:
                self._serve(head=False)

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def _not_allowed(self) -> None:
                self.close_connection = True
                self._drain()
                self._send(405, _json_bytes({"error": "this explorer is read-only: GET or HEAD only"}),
                           "application/json", head=False, extra=(("Allow", "GET, HEAD"),))

            def _drain(self) -> None:
                """Read a small body before answering (closing on unread bytes resets the connection
                and the client may never see the 405); a larger one is left unread, the connection
                is closed after the answer."""
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    return
                if 0 < length <= MAX_DRAINED_BODY:
                    try:
                        self.rfile.read(length)
                    except OSError:
                        pass

            def _serve(self, *, head: bool) -> None:
                if not slots.acquire(blocking=False):
                    self._send(503, _json_bytes({"error": "busy; retry"}), "application/json", head=head,
                               extra=(("Retry-After", "1"),))
                    return
                try:
                    self._route(head)
                finally:
                    slots.release()

            def _route(self, head: bool) -> None:
                if len(self.path) > MAX_URL:
                    self._send(414, _json_bytes({"error": "URL too long"}), "application/json", head=head)
                    return
                if not host_allowed(self.headers.get("Host"), allowed):
                    self._send(403, _json_bytes({"error": "unknown Host; add it to [bridge.explorer] allowed_hosts"}),
                               "application/json", head=head)
                    return
                url = urlsplit(self.path)
                if url.path == "/favicon.ico":  # no icon: say so without a 404 in every browser console
                    self._send(204, b"", "image/x-icon", head=True)
                    return
                if url.path in static:
                    body, ctype = static[url.path]
                    self._send(200, body, ctype, head=head, cache="no-cache")
                    return
                view = routes.get(url.path)
                if view is None:
                    self._send(404, _json_bytes({"error": "not found"}), "application/json", head=head)
                    return
                try:
                    params = parse_qs(url.query, max_num_fields=MAX_QUERY_FIELDS)
                    body = _json_bytes(view(params))
                    status = 200
                except (BadRequest, ValueError) as exc:
                    body, status = _json_bytes({"error": str(exc)[:300]}), 400
                except (sa.exc.SQLAlchemyError, dbm.BridgeDBError, sqlite3.Error) as exc:
                    log_event(log, logging.ERROR, "explorer: database unavailable", path=url.path,
                              error=type(exc).__name__)
                    body, status = _json_bytes({"error": "this node's database is unavailable; retry"}), 503
                except Exception as exc:
                    log_event(log, logging.ERROR, "explorer view failed", path=url.path,
                              error=f"{type(exc).__name__}: {exc}"[:300])
                    body, status = _json_bytes({"error": "internal error (logged on this node)"}), 500
                self._send(status, body, "application/json", head=head)

            def _send(self, status: int, body: bytes, ctype: str, *, head: bool, cache: str = "no-store",
                      extra: tuple[tuple[str, str], ...] = ()) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", cache)
                for name, value in (*SECURITY_HEADERS, *extra):
                    self.send_header(name, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # a line per request is noise; failures are logged where they happen

        self._server = _Server((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fp-explorer", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    def start(self) -> ExplorerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------------------- the daemon's side


@dataclasses.dataclass
class Explorer:
    """What the daemon runs: the server (request threads), the watch (a trio task) and the recorder."""

    server: ExplorerServer
    watch: NodeWatch
    recorder: ReserveRecorder

    def stop(self) -> None:
        self.server.stop()


def start_explorer(node: Any, bcfg: Any, db: dbm.BridgeDB, runtime: Any) -> Explorer:
    """Build and start the explorer of a running bridge daemon (``bridge/daemon.py``); the caller
    runs ``explorer.watch.run`` in its nursery and calls ``explorer.stop()`` on the way out."""
    settings = bcfg.explorer
    host, port = settings.host_port
    recorder = ReserveRecorder(db, sample_seconds=settings.sample_seconds, max_samples=settings.max_samples)
    watch = NodeWatch(node, runtime, recorder)
    views = ExplorerViews(db, node_id=node.cfg.node_id, snapshot=watch.snapshot, storage=node.storage,
                          key_id=bcfg.key_id, pool_target=int(node.cfg.presign_pool_depth),
                          sessions_db=Path(node.storage.path))
    server = ExplorerServer(views, host, port, allowed_hosts=settings.allowed_hosts).start()
    withdrawals = getattr(runtime, "withdrawals", None)
    if withdrawals is not None:
        withdrawals.on_solvency = solvency_observer(recorder, withdrawals, runtime)
    return Explorer(server=server, watch=watch, recorder=recorder)
