"""The settlement replica on disk, on SQLite and on a real PostgreSQL server (``bridge_db``).

What must hold: a batch and everything it changed commit together or not at all; the batch log
is append-only at the database level; a replica loaded from disk (snapshot + replay of the signed
log, every signature checked again) equals the one in memory; an edited log is refused.
"""

from __future__ import annotations

import hashlib
import time

import pytest
import sqlalchemy as sa

from fusion_prime.bridge import db as bdb
from fusion_prime.bridge.settlement.batch import GENESIS_HASH, Batch, Credit, decode_batch, sign_batch
from fusion_prime.bridge.settlement.instructions import (
    AFFIRM,
    GROSS,
    OPEN_ACCOUNT,
    SUBMIT_TRADE,
    InstructionBody,
    sign_instruction,
    trade_legs,
)
from fusion_prime.bridge.settlement.ledger import Ledger, LedgerParams
from fusion_prime.bridge.settlement.store import SettlementStore, StoreError
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.identity import PartyIdentity

PARAMS = LedgerParams(("BTC", "ETH"), cycle_ms=1000, dispute_window_ms=0)
COORD = PartyIdentity.generate()
KEYS = {"node1": COORD.public_key}
A, B = PartyIdentity.generate(), PartyIdentity.generate()
NOW = int(time.time() * 1000)


def _decode(raw: bytes):  # type: ignore[no-untyped-def]
    return decode_batch(raw, KEYS)


def _script() -> list[list]:
    legs = trade_legs([(A.public_key, "BTC", -10), (B.public_key, "BTC", 10), (A.public_key, "ETH", 7),
                       (B.public_key, "ETH", -7)])
    sub = sign_instruction(A, InstructionBody(SUBMIT_TRADE, A.public_key, "t1", NOW, legs=legs, mode=GROSS,
                                              deadline_ms=NOW + 60_000))
    tid = sub.body.new_trade_id
    return [
        [sign_instruction(p, InstructionBody(OPEN_ACCOUNT, p.public_key, "open", NOW)) for p in (A, B)]
        + [Credit(hashlib.sha256(b"d1").digest(), A.public_key, "BTC", 100),
           Credit(hashlib.sha256(b"d2").digest(), B.public_key, "ETH", 50)],
        [sub, sign_instruction(A, InstructionBody(AFFIRM, A.public_key, "a", NOW, trade_id=tid))],
        [sign_instruction(B, InstructionBody(AFFIRM, B.public_key, "a", NOW, trade_id=tid))],
    ]


def _run(store: SettlementStore, ledger: Ledger, scripts: list[list], snapshot_at: int = 0) -> list:
    out = []
    for i, entries in enumerate(scripts):
        signed = sign_batch(COORD, Batch(ledger.seq + 1, ledger.head, NOW + i, "node1", tuple(entries)))
        applied = ledger.apply(signed.batch)
        store.append(signed, applied, ledger, snapshot=signed.batch.seq == snapshot_at)
        out.append(signed)
    return out


def test_replica_reloads_identically_and_materialised_rows_match(bridge_db: bdb.BridgeDB) -> None:
    store, ledger = SettlementStore(bridge_db, PARAMS), Ledger(PARAMS)
    _run(store, ledger, _script(), snapshot_at=2)  # snapshot mid-way: load = snapshot + replay of batch 3
    loaded = store.load(_decode)
    assert loaded.to_snapshot() == ledger.to_snapshot()
    assert store.head() == 3
    with bridge_db.read() as r:
        rows = {(row.party, row.asset): (row.balance, row.held)
                for row in r.conn.execute(sa.select(bdb.settlement_accounts))}
        trades = {row.trade_id: row.status for row in r.conn.execute(sa.select(bdb.settlement_trades))}
    assert rows[(A.public_key.hex(), "BTC")] == (90, 0) and rows[(B.public_key.hex(), "BTC")] == (10, 0)
    assert rows[(A.public_key.hex(), "ETH")] == (7, 0) and rows[(B.public_key.hex(), "ETH")] == (43, 0)
    assert list(trades.values()) == ["settled"]


def test_a_failed_write_leaves_nothing_half_written(bridge_db: bdb.BridgeDB) -> None:
    store, ledger = SettlementStore(bridge_db, PARAMS), Ledger(PARAMS)
    first = _run(store, ledger, _script()[:1])[0]
    # the same batch again (a second writer, a retry after a lost answer): the row exists, the
    # transaction fails as a whole - no accounts row is touched by the failed attempt
    other = Ledger(PARAMS)
    applied = other.apply(first.batch)
    other.accounts[(A.public_key, "BTC")] = (999, 0, 0)
    with pytest.raises(sa.exc.IntegrityError):
        store.append(first, applied, other)
    with bridge_db.read() as r:
        balance = r.conn.scalar(sa.select(bdb.settlement_accounts.c.balance).where(
            bdb.settlement_accounts.c.party == A.public_key.hex(), bdb.settlement_accounts.c.asset == "BTC"))
    assert balance == 100
    assert store.load(_decode).to_snapshot() == ledger.to_snapshot()


def test_batch_log_is_append_only(bridge_db: bdb.BridgeDB) -> None:
    store, ledger = SettlementStore(bridge_db, PARAMS), Ledger(PARAMS)
    _run(store, ledger, _script())
    for stmt in (sa.update(bdb.settlement_batches).values(time_ms=0), sa.delete(bdb.settlement_batches)):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), bridge_db.transaction() as tx:
            tx.conn.execute(stmt)
    assert store.head() == 3


def test_an_edited_batch_is_refused_on_load(bridge_db: bdb.BridgeDB) -> None:
    store, ledger = SettlementStore(bridge_db, PARAMS), Ledger(PARAMS)
    signed = _run(store, ledger, _script())
    # rebuild the store in a fresh database whose batch 2 was re-signed by someone else
    mallory = PartyIdentity.generate()
    forged = sign_batch(mallory, signed[1].batch)
    with pytest.raises(InvalidInput, match="not signed by its coordinator"):
        _decode(forged.to_bytes())
    # a gap in the log is detected
    with pytest.raises(StoreError, match="gap"):
        list(store.iter_batches(0, lambda raw: _decode(raw) if _decode(raw).batch.seq != 2 else signed[2]))


def test_checkpoint_rows_are_never_silently_replaced(bridge_db: bdb.BridgeDB) -> None:
    store = SettlementStore(bridge_db, PARAMS)
    store.put_checkpoint(1, b"\x01" * 32, b"first")
    store.put_checkpoint(1, b"\x01" * 32, b"first")  # idempotent
    with pytest.raises(StoreError):
        store.put_checkpoint(1, b"\x02" * 32, b"second")
    store.put_checkpoint(1, b"\x02" * 32, b"second", replace=True)  # a resync recomputed it
    store.set_signature(1, b"\x05" * 65)
    with pytest.raises(StoreError):  # never over a group-signed one
        store.put_checkpoint(1, b"\x03" * 32, b"third", replace=True)
    row = store.checkpoint(1)
    assert row is not None and row["checkpoint"] == b"second" and row["signature"] == b"\x05" * 65
    assert [r["cycle"] for r in store.checkpoints()] == [1]


def test_genesis_batch_must_chain_from_genesis(bridge_db: bdb.BridgeDB) -> None:
    ledger = Ledger(PARAMS)
    signed = sign_batch(COORD, Batch(1, hashlib.sha256(b"other").digest(), NOW, "node1", ()))
    from fusion_prime.bridge.settlement.ledger import BatchRefused

    with pytest.raises(BatchRefused, match="previous hash"):
        ledger.apply(signed.batch)
    assert ledger.head == GENESIS_HASH and ledger.seq == 0
