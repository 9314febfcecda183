"""The settlement replica on disk: the bridge database's data-access layer (SQLite or PostgreSQL).

What is durable, and why this way:

* ``settlement_batches`` — every applied batch exactly as its coordinator signed it, append-only.
  The ledger is a deterministic function of this log (``ledger.py``), so the log *is* the replica;
  everything else is derived from it and can be rebuilt by replaying it.
* ``settlement_snapshots`` — the whole ledger every ``snapshot_every`` batches, so a restart
  replays only the batches since (not at every cycle: a snapshot of a busy ledger is tens of MB,
  and a cycle's checkpoint must not wait for it).
* ``settlement_accounts`` / ``_trades`` / ``_withdrawals`` — materialised rows for the back office's
  SQL, written in the same database transaction as the batch row: a gross trade's legs, a
  cycle's settlement, the batch that caused them, all commit together or not at all.
* ``settlement_checkpoints`` — each cycle's checkpoint as *this* node computed it, with the account
  rows under its root (what clients' balance proofs are built from); the group's signature is
  added once the threshold signing made one.

A batch is stored only after the in-memory ledger applied it; if the write fails the runtime
drops its ledger and reloads from here (the replica is never ahead of its disk for longer than
one failed write).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from .. import db as bdb
from .batch import SignedBatch
from .ledger import Applied, Ledger, LedgerParams


class StoreError(Exception):
    """The stored replica is inconsistent with itself (a gap in the log, a snapshot that does not
    replay to the stored head)."""


class SettlementStore:
    def __init__(self, db: bdb.BridgeDB, params: LedgerParams) -> None:
        self.db = db
        self.params = params

    # ------------------------------------------------------------------ loading
    def load(self, decode: Any) -> Ledger:
        """The replica as of its last stored batch: latest snapshot, then the batches after it.

        ``decode(raw) -> SignedBatch`` parses a stored batch (signatures were checked when it
        arrived; they are checked again here — a database edited by hand is not trusted either)."""
        with self.db.read() as r:
            row = r.conn.execute(sa.select(bdb.settlement_snapshots.c.seq, bdb.settlement_snapshots.c.snapshot)
                                 .order_by(bdb.settlement_snapshots.c.seq.desc()).limit(1)).first()
        ledger = Ledger.from_snapshot(bytes(row[1]), self.params) if row is not None else Ledger(self.params)
        if row is not None and ledger.seq != int(row[0]):
            raise StoreError(f"snapshot at {row[0]} holds batch {ledger.seq}")
        for signed in self.iter_batches(ledger.seq, decode):
            ledger.apply(signed.batch)  # system entries were verified when first applied
        return ledger

    def iter_batches(self, after: int, decode: Any, limit: int | None = None) -> Iterator[SignedBatch]:
        expected = after + 1
        for raw in self.raw_batches(after, limit):
            signed = decode(raw)
            if signed.batch.seq != expected:
                raise StoreError(f"batch log has a gap: expected {expected}, found {signed.batch.seq}")
            expected += 1
            yield signed

    def raw_batches(self, after: int, limit: int | None = None) -> list[bytes]:
        t = bdb.settlement_batches
        q = sa.select(t.c.signed).where(t.c.seq > after).order_by(t.c.seq)
        if limit is not None:
            q = q.limit(limit)
        with self.db.read() as r:
            return [bytes(row[0]) for row in r.conn.execute(q)]

    def batch_hash(self, seq: int) -> bytes | None:
        """The hash of the stored batch ``seq`` (None: not stored), to tell a second batch under one
        number from the first."""
        t = bdb.settlement_batches
        with self.db.read() as r:
            value = r.conn.scalar(sa.select(t.c.hash).where(t.c.seq == seq))
        return None if value is None else bytes(value)

    def head(self) -> int:
        with self.db.read() as r:
            return int(r.conn.scalar(sa.select(sa.func.max(bdb.settlement_batches.c.seq))) or 0)

    # ------------------------------------------------------------------ writing
    def append(self, signed: SignedBatch, applied: Applied, ledger: Ledger, *, events: list[tuple[str, dict]] = (),
               snapshot: bool = False, checkpoint: tuple[int, bytes, bytes, bytes] | None = None) -> None:
        """Store one applied batch and everything it changed, in one transaction - with the
        checkpoint (cycle, root, checkpoint, accounts) of the cycle it finalises: stored apart, a
        crash between the two left a finalised cycle without a checkpoint, and every later cycle,
        which chains to it, could never be finalised."""
        now = time.time()
        b = signed.batch
        with self.db.transaction() as tx:
            conn = tx.conn
            if checkpoint is not None:
                self._put_checkpoint(tx, *checkpoint)
            conn.execute(sa.insert(bdb.settlement_batches).values(
                seq=b.seq, hash=signed.hash, prev_hash=b.prev_hash, time_ms=b.time_ms, coordinator=b.coordinator,
                signed=signed.to_bytes(), outcomes=[o.to_dict() for o in applied.outcomes], stored_at=now))
            self._upsert(tx, bdb.settlement_accounts, ["party", "asset"], [
                {"party": p.hex(), "asset": a, "balance": ledger.balance(p, a), "held": ledger.held(p, a),
                 "updated_seq": b.seq} for p, a in sorted(applied.accounts)])
            self._upsert(tx, bdb.settlement_trades, ["trade_id"], [
                {"trade_id": tid.hex(), "status": t.status, "mode": t.mode, "cycle": t.cycle, "record": t.to_dict(),
                 "updated_seq": b.seq} for tid in sorted(applied.trades) if (t := ledger.trades.get(tid))])
            self._upsert(tx, bdb.settlement_withdrawals, ["withdrawal_id"], [
                {"withdrawal_id": wid.hex(), "party": w.party.hex(), "asset": w.asset, "amount": w.amount,
                 "status": w.status, "record": w.to_dict(), "updated_seq": b.seq}
                for wid in sorted(applied.withdrawals) if (w := ledger.withdrawals.get(wid))])
            if snapshot:
                conn.execute(sa.insert(bdb.settlement_snapshots).values(seq=b.seq, snapshot=ledger.to_snapshot(),
                                                                        created_at=now))
            for name, detail in events:
                tx.record_event(name, detail)

    @staticmethod
    def _upsert(tx: bdb.Transaction, table: sa.Table, keys: list[str], rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        stmt = tx._insert(table)
        cols = [c for c in rows[0] if c not in keys]
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in cols})
        tx.conn.execute(stmt, rows)

    def put_snapshot(self, ledger: Ledger) -> None:
        """The replica as it is now (a resync's result): replaces any snapshot at or after its batch."""
        t = bdb.settlement_snapshots
        with self.db.transaction() as tx:
            tx.conn.execute(sa.delete(t).where(t.c.seq >= ledger.seq))
            tx.conn.execute(sa.insert(t).values(seq=ledger.seq, snapshot=ledger.to_snapshot(), created_at=time.time()))

    def snapshot_at(self, seq: int) -> bytes | None:
        t = bdb.settlement_snapshots
        with self.db.read() as r:
            row = r.conn.execute(sa.select(t.c.snapshot).where(t.c.seq == seq)).first()
        return None if row is None else bytes(row[0])

    def record_event(self, name: str, detail: dict[str, Any]) -> None:
        with self.db.transaction() as tx:
            tx.record_event(name, detail)

    # ------------------------------------------------------------------ checkpoints
    def put_checkpoint(self, cycle: int, root: bytes, checkpoint: bytes, accounts: bytes = b"[]", *,
                       replace: bool = False) -> None:
        """This node's own checkpoint of a cycle (idempotent). A different one is refused unless
        ``replace`` (a resync recomputed it; never over a group-signed one)."""
        with self.db.transaction() as tx:
            self._put_checkpoint(tx, cycle, root, checkpoint, accounts, replace=replace)

    @staticmethod
    def _put_checkpoint(tx: bdb.Transaction, cycle: int, root: bytes, checkpoint: bytes, accounts: bytes = b"[]", *,
                        replace: bool = False) -> None:
        t = bdb.settlement_checkpoints
        old = tx.conn.execute(sa.select(t.c.checkpoint, t.c.signature).where(t.c.cycle == cycle)).first()
        if old is not None:
            if bytes(old[0]) == checkpoint:
                return
            if not replace or old[1] is not None:
                raise StoreError(f"cycle {cycle}: a different checkpoint is already stored")
            tx.conn.execute(sa.update(t).where(t.c.cycle == cycle).values(root=root, checkpoint=checkpoint,
                                                                           accounts=accounts))
            return
        tx.conn.execute(sa.insert(t).values(cycle=cycle, root=root, checkpoint=checkpoint, accounts=accounts,
                                            created_at=time.time()))

    def set_signature(self, cycle: int, signature: bytes) -> None:
        t = bdb.settlement_checkpoints
        with self.db.transaction() as tx:
            tx.conn.execute(sa.update(t).where(t.c.cycle == cycle).values(signature=signature))

    def set_published(self, cycle: int, tx_hash: str) -> None:
        t = bdb.settlement_checkpoints
        with self.db.transaction() as tx:
            tx.conn.execute(sa.update(t).where(t.c.cycle == cycle).values(published_tx=tx_hash))

    def checkpoint(self, cycle: int) -> dict[str, Any] | None:
        t = bdb.settlement_checkpoints
        with self.db.read() as r:
            row = r.conn.execute(sa.select(t).where(t.c.cycle == cycle)).first()
        return None if row is None else self._checkpoint_row(row)

    def checkpoints(self, after: int = 0, limit: int = 1000, *, signed: bool | None = None,
                    published: bool | None = None) -> list[dict[str, Any]]:
        """Checkpoints after cycle ``after`` in cycle order; ``signed``/``published`` select the
        ones with (True) or without (False) a group signature / a recorded publication - the
        backlogs ask for these, never for "the first thousand cycles", which a long-lived node
        outgrows."""
        t = bdb.settlement_checkpoints
        q = sa.select(t).where(t.c.cycle > after)
        if signed is not None:
            q = q.where(t.c.signature.is_not(None) if signed else t.c.signature.is_(None))
        if published is not None:
            q = q.where(t.c.published_tx.is_not(None) if published else t.c.published_tx.is_(None))
        with self.db.read() as r:
            rows = r.conn.execute(q.order_by(t.c.cycle).limit(limit)).all()
        return [self._checkpoint_row(row) for row in rows]

    @staticmethod
    def _checkpoint_row(row: Any) -> dict[str, Any]:
        m = row._mapping
        return {"cycle": int(m["cycle"]), "root": bytes(m["root"]), "checkpoint": bytes(m["checkpoint"]),
                "signature": bytes(m["signature"]) if m["signature"] is not None else None,
                "accounts": bytes(m["accounts"]),
                "published_tx": m["published_tx"]}

    # ------------------------------------------------------------------ reports
    def batch_outcomes(self, seq: int) -> list[dict[str, Any]]:
        t = bdb.settlement_batches
        with self.db.read() as r:
            row = r.conn.execute(sa.select(t.c.outcomes).where(t.c.seq == seq)).first()
        if row is None:
            return []
        value = row[0]
        return json.loads(value) if isinstance(value, str) else list(value)
