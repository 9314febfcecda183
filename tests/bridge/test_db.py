"""The bridge database, the same suite on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import dataclasses
import threading
import time

import psycopg
import pytest
import sqlalchemy as sa

from fusion_prime.bridge import db as bdb
from fusion_prime.bridge.db import (
    SCHEMA_VERSION,
    BridgeDB,
    Conflict,
    Deposit,
    DepositAddress,
    IllegalTransition,
    InvalidRecord,
    NotFound,
    SchemaTooNew,
    StaleState,
    open_database,
)

BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
ANVIL_SRC = "eip155:31337"
ANVIL_DST = "eip155:31338"
RECIPIENT = "0x" + "aa" * 20
OTHER_RECIPIENT = "0x" + "bb" * 20
MAX = 2**256 - 1


def address(n: int = 0, recipient: str = RECIPIENT) -> DepositAddress:
    return DepositAddress(address=f"bcrt1qdeposit{n:04d}", asset="BTC", source_chain=BTC, destination_chain=ANVIL_DST,
                          recipient=recipient, path=(7, 0, n))


def deposit(n: int = 0, addr: DepositAddress | None = None, **fields) -> Deposit:
    addr = addr or address(0)
    values = dict(deposit_id=n.to_bytes(32, "big"), asset=addr.asset, source_chain=addr.source_chain,
                  txid=f"{n:064x}", vout=n % 3, address=addr.address, amount=100_000 + n, recipient=addr.recipient,
                  destination_chain=addr.destination_chain, block_hash="11" * 32, height=100 + n,
                  required_confirmations=6)
    values.update(fields)
    return Deposit(**values)


def with_address(db: BridgeDB, n: int = 0, **fields) -> Deposit:
    """A new deposit to a freshly registered address."""
    addr = db.register_address(address(0))
    return db.upsert_deposit(deposit(n, addr, **fields))


def snapshot(db: BridgeDB) -> tuple:
    """Everything observable, to show that a refused write left nothing behind."""
    with db.read() as r:
        rows = tuple(tuple(r.conn.execute(sa.select(t).order_by(*t.primary_key.columns)).all())
                     for t in (bdb.deposit_addresses, bdb.deposits, bdb.chain_cursors, bdb.meta))
    return rows, tuple(db.events())


def signed_fields(n: int = 0) -> dict:
    return {"order_digest": bytes([n + 1]) * 32, "order_json": '{"amount":"1"}', "signature": b"\x1b" * 65}


# --- schema and migrations ------------------------------------------------------------------------

def test_fresh_database_is_migrated_to_the_current_schema(bridge_db: BridgeDB) -> None:
    assert bridge_db.schema_version() == SCHEMA_VERSION
    inspector = sa.inspect(bridge_db.engine)
    for table in bdb.metadata.sorted_tables:
        reflected = {c["name"] for c in inspector.get_columns(table.name)}
        assert {c.name for c in table.columns} == reflected, table.name
    assert bridge_db.events() == []
    assert bridge_db.verify_event_chain()


def test_forward_migration_keeps_data_and_adds_invariants(db_url: str) -> None:
    old = open_database(db_url, schema_version=1)
    try:
        assert old.schema_version() == 1
        dep = with_address(old)
    finally:
        old.close()
    new = open_database(db_url)
    try:
        assert new.schema_version() == SCHEMA_VERSION
        assert new.get_deposit(dep.deposit_id) == dep
        assert new.verify_event_chain()
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), new.engine.begin() as conn:
            conn.execute(sa.update(bdb.bridge_events).values(event="edited"))
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), new.engine.begin() as conn:
            conn.execute(sa.delete(bdb.deposits))
        assert new.get_deposit(dep.deposit_id) == dep
    finally:
        new.close()


def test_migrating_twice_and_concurrently_is_harmless(db_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def opener() -> None:
        try:
            barrier.wait()
            open_database(db_url).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    db = open_database(db_url)
    try:
        with db.read() as r:
            versions = r.conn.scalars(sa.select(bdb.schema_version_table.c.version)).all()
        assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
    finally:
        db.close()


def test_a_database_from_a_newer_build_is_refused(bridge_db: BridgeDB, db_url: str) -> None:
    with bridge_db.engine.begin() as conn:
        conn.execute(sa.insert(bdb.schema_version_table).values(version=SCHEMA_VERSION + 1, applied_at=0.0))
    bridge_db.close()
    with pytest.raises(SchemaTooNew):
        open_database(db_url)


def test_survives_close_and_reopen(db_url: str) -> None:
    db = open_database(db_url)
    dep = with_address(db, 1)
    db.set_cursor(BTC, 120, "22" * 32)
    db.update_deposit(dep.deposit_id, state="confirmed", confirmations=6)
    before = db.events()
    db.close()

    db = open_database(db_url)
    try:
        assert db.get_deposit(dep.deposit_id).state == "confirmed"
        assert db.get_cursor(BTC).height == 120
        assert dataclasses.replace(db.get_address(dep.address), created_at=0.0) == address(0)
        assert db.events() == before
        assert db.verify_event_chain()
        assert db.claim_deposit(dep.deposit_id) is not None  # the chain goes on where it stopped
        assert [e.seq for e in db.events()] == list(range(1, len(before) + 2))
        assert db.verify_event_chain()
    finally:
        db.close()


# --- addresses ------------------------------------------------------------------------------------

def test_address_registration_is_idempotent(bridge_db: BridgeDB) -> None:
    first = bridge_db.register_address(address(0))
    again = bridge_db.register_address(address(0))
    assert first == again and first.path == (7, 0, 0) and first.created_at > 0
    assert bridge_db.get_address(first.address) == first
    assert [e.event for e in bridge_db.events()] == ["address-registered"]
    assert bridge_db.get_address("bcrt1qnothere") is None


def test_address_conflicts_are_refused_with_nothing_written(bridge_db: BridgeDB) -> None:
    bridge_db.register_address(address(0))
    before = snapshot(bridge_db)
    with pytest.raises(Conflict):  # the same address for another recipient
        bridge_db.register_address(address(0, recipient=OTHER_RECIPIENT))
    with pytest.raises(Conflict):  # another address for the same recipient and chains
        bridge_db.register_address(dataclasses.replace(address(0), address="bcrt1qsomethingelse"))
    with pytest.raises(InvalidRecord):
        bridge_db.register_address(dataclasses.replace(address(1), destination_chain="ethereum"))
    assert snapshot(bridge_db) == before


# --- deposits -------------------------------------------------------------------------------------

def test_deposit_round_trip_and_queries(bridge_db: BridgeDB) -> None:
    addr = bridge_db.register_address(address(0))
    pending = bridge_db.upsert_deposit(deposit(3, addr, block_hash=None, height=None))
    mined = bridge_db.upsert_deposit(deposit(2, addr, state="confirming", confirmations=2))
    full = bridge_db.upsert_deposit(deposit(1, addr, state="confirmed", confirmations=6))
    full = bridge_db.update_deposit(full.deposit_id, state="signing")
    full = bridge_db.update_deposit(full.deposit_id, state="signed", **signed_fields(1))
    assert bridge_db.get_deposit(full.deposit_id) == full
    assert full.signature == b"\x1b" * 65 and full.order_json == '{"amount":"1"}'
    assert bridge_db.get_deposit(b"\x99" * 32) is None
    assert [d.deposit_id for d in bridge_db.deposits_by_address(addr.address)] == [
        full.deposit_id, mined.deposit_id, pending.deposit_id]  # by height, unmined last
    assert bridge_db.deposits_in_state("confirming") == [mined]
    assert bridge_db.deposits_in_state("seen", source_chain=ANVIL_SRC) == []
    assert bridge_db.deposits_in_state("signed", limit=1) == [full]
    assert [e.event for e in bridge_db.events(full.deposit_id)] == ["deposit-confirmed", "deposit-signing",
                                                                    "deposit-signed"]


def test_whole_lifecycle_is_audited(bridge_db: BridgeDB) -> None:
    dep = with_address(bridge_db)
    did = dep.deposit_id
    for confirmations in range(1, 6):
        bridge_db.update_deposit(did, state="confirming", confirmations=confirmations)
    bridge_db.update_deposit(did, state="confirmed", confirmations=6)
    assert bridge_db.claim_deposit(did) is not None
    bridge_db.update_deposit(did, state="signed", expect_state="signing", **signed_fields())
    bridge_db.update_deposit(did, state="minted", mint_tx="0x" + "cd" * 32, minted_block=42)
    final = bridge_db.update_deposit(did, state="erratum", reason="reorganised out after mint at 105")
    assert final.state == "erratum" and final.mint_tx == "0x" + "cd" * 32 and final.minted_block == 42
    events = bridge_db.events(did)
    assert [e.event for e in events] == (["deposit-seen", "deposit-confirming"] + ["deposit-updated"] * 4
                                         + ["deposit-confirmed", "deposit-signing", "deposit-signed",
                                            "deposit-minted", "deposit-erratum"])
    assert events[-1].detail == {"from": "minted", "to": "erratum",
                                 "changes": {"state": "erratum", "reason": "reorganised out after mint at 105"}}
    assert bridge_db.verify_event_chain()


def test_repeating_a_write_changes_nothing(bridge_db: BridgeDB) -> None:
    dep = with_address(bridge_db)
    before = snapshot(bridge_db)
    assert bridge_db.upsert_deposit(deposit(0, address(0))) == dep
    assert bridge_db.update_deposit(dep.deposit_id, state="seen") == dep
    assert snapshot(bridge_db) == before


ILLEGAL = [
    ("seen", "signing"), ("seen", "minted"), ("confirming", "signed"), ("confirmed", "seen"),
    ("minted", "confirmed"), ("minted", "reorged"), ("erratum", "confirmed"), ("dust", "signing"),
]


@pytest.mark.parametrize(("start", "target"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transitions_are_refused_with_nothing_written(bridge_db: BridgeDB, start: str, target: str) -> None:
    path = {"seen": [], "confirming": ["confirming"], "confirmed": ["confirmed"], "dust": ["dust"],
            "minted": ["confirmed", "minted"], "erratum": ["confirmed", "minted", "erratum"]}[start]
    dep = with_address(bridge_db)
    for state in path:
        bridge_db.update_deposit(dep.deposit_id, state=state, mint_tx="0x01", reason="because")
    before = snapshot(bridge_db)
    with pytest.raises(IllegalTransition):
        bridge_db.update_deposit(dep.deposit_id, state=target, **signed_fields(), mint_tx="0x02", reason="r")
    with pytest.raises(IllegalTransition):
        bridge_db.upsert_deposit(dataclasses.replace(bridge_db.get_deposit(dep.deposit_id), state=target,
                                                     **signed_fields(), mint_tx="0x02", reason="r"))
    assert snapshot(bridge_db) == before


def test_a_refusal_rolls_back_the_whole_transaction(bridge_db: BridgeDB) -> None:
    dep = with_address(bridge_db)
    before = snapshot(bridge_db)
    with pytest.raises(IllegalTransition), bridge_db.transaction() as tx:
        tx.register_address(address(1, recipient=OTHER_RECIPIENT))
        tx.set_cursor(BTC, 5, "33" * 32)
        tx.update_deposit(dep.deposit_id, state="confirmed")
        assert tx.get_deposit(dep.deposit_id).state == "confirmed"  # a transaction reads its own writes
        tx.update_deposit(dep.deposit_id, state="seen")
    assert snapshot(bridge_db) == before


def test_new_deposits_start_early_and_final_states_are_frozen(bridge_db: BridgeDB) -> None:
    bridge_db.register_address(address(0))
    with pytest.raises(IllegalTransition):
        bridge_db.upsert_deposit(deposit(1, state="signing"))
    dep = bridge_db.upsert_deposit(deposit(2, state="confirmed"))
    bridge_db.update_deposit(dep.deposit_id, state="minted", mint_tx="0x01")
    with pytest.raises(IllegalTransition):
        bridge_db.update_deposit(dep.deposit_id, minted_block=7)
    with pytest.raises(InvalidRecord):  # each state says what it needs on the row
        bridge_db.update_deposit(dep.deposit_id, state="erratum")
    with pytest.raises(InvalidRecord):
        bridge_db.update_deposit(dep.deposit_id, amount=1)
    with pytest.raises(NotFound):
        bridge_db.update_deposit(b"\x42" * 32, state="confirmed")
    with pytest.raises(StaleState):
        bridge_db.update_deposit(dep.deposit_id, expect_state="signed", state="erratum", reason="x")


def test_what_a_deposit_pays_cannot_change(bridge_db: BridgeDB) -> None:
    dep = with_address(bridge_db, 1)
    other = bridge_db.register_address(address(1, recipient=OTHER_RECIPIENT))
    before = snapshot(bridge_db)
    for field, value in [("amount", dep.amount + 1), ("recipient", OTHER_RECIPIENT), ("vout", 2),
                         ("destination_chain", ANVIL_SRC), ("txid", "ff" * 32)]:
        with pytest.raises(Conflict):
            bridge_db.upsert_deposit(dataclasses.replace(dep, **{field: value}))
    with pytest.raises(Conflict):  # the same outpoint under another deposit id
        bridge_db.upsert_deposit(dataclasses.replace(dep, deposit_id=b"\x77" * 32))
    with pytest.raises(Conflict):  # an address this node never registered
        bridge_db.upsert_deposit(deposit(5, dataclasses.replace(address(9), address="bcrt1qunknown")))
    with pytest.raises(Conflict):  # a deposit crediting someone other than the address's recipient
        bridge_db.upsert_deposit(deposit(6, dataclasses.replace(other, recipient=RECIPIENT)))
    assert snapshot(bridge_db) == before


def test_one_order_digest_belongs_to_one_deposit(bridge_db: BridgeDB) -> None:
    a = with_address(bridge_db, 1, state="confirmed")
    b = bridge_db.upsert_deposit(deposit(2, address(0), state="confirmed"))
    bridge_db.update_deposit(a.deposit_id, state="signing", order_digest=b"\x05" * 32)
    before = snapshot(bridge_db)
    with pytest.raises(Conflict):
        bridge_db.update_deposit(b.deposit_id, state="signing", order_digest=b"\x05" * 32)
    assert snapshot(bridge_db) == before


@pytest.mark.parametrize("amount", [0, 1, 2**53 + 1, 2**63, 2**64 + 1, 2**255, MAX - 1, MAX])
def test_amounts_up_to_2_256_round_trip_exactly(bridge_db: BridgeDB, amount: int) -> None:
    dep = with_address(bridge_db, 1, amount=amount)
    assert bridge_db.get_deposit(dep.deposit_id).amount == amount
    assert type(bridge_db.get_deposit(dep.deposit_id).amount) is int
    assert bridge_db.events(dep.deposit_id)[0].detail["deposit"]["amount"] in (amount, str(amount))
    with bridge_db.read() as r:  # and the column itself holds the exact value
        raw = r.conn.scalar(sa.select(sa.cast(bdb.deposits.c.amount, sa.Text)))
    assert raw == str(amount)


@pytest.mark.parametrize("amount", [2**256, -1, 1.0, True])
def test_amounts_out_of_range_are_refused(bridge_db: BridgeDB, amount: object) -> None:
    bridge_db.register_address(address(0))
    before = snapshot(bridge_db)
    with pytest.raises(InvalidRecord):
        bridge_db.upsert_deposit(deposit(1, amount=amount))
    assert snapshot(bridge_db) == before


# --- concurrency ----------------------------------------------------------------------------------

def _race(n: int, target) -> list:
    """Run ``target(i)`` in n threads released together; return results (exceptions re-raised)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_two_concurrent_claimers_exactly_one_wins(bridge_db: BridgeDB) -> None:
    bridge_db.register_address(address(0))
    for n in range(12):
        dep = bridge_db.upsert_deposit(deposit(n, state="confirmed", confirmations=6))
        results = _race(2, lambda i, dep=dep: bridge_db.claim_deposit(dep.deposit_id, order_json=f"claimer {i}"))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        stored = bridge_db.get_deposit(dep.deposit_id)
        assert stored.state == "signing" and stored.order_json == winners[0].order_json
        assert [e.event for e in bridge_db.events(dep.deposit_id)] == ["deposit-confirmed", "deposit-signing"]
    assert bridge_db.verify_event_chain()


def test_concurrent_first_sightings_record_one_deposit(bridge_db: BridgeDB) -> None:
    bridge_db.register_address(address(0))
    for n in range(8):
        results = _race(2, lambda _i, n=n: bridge_db.upsert_deposit(deposit(n)))
        assert results[0] == results[1] or results[0].deposit_id == results[1].deposit_id
        assert [e.event for e in bridge_db.events(n.to_bytes(32, "big"))] == ["deposit-seen"]
    assert bridge_db.verify_event_chain()


def test_concurrent_writers_keep_one_linear_event_chain(bridge_db: BridgeDB) -> None:
    addr = bridge_db.register_address(address(0))
    for n in range(4):
        bridge_db.upsert_deposit(deposit(n, addr))

    def walk(i: int) -> None:
        did = i.to_bytes(32, "big")
        for confirmations in range(1, 8):
            bridge_db.update_deposit(did, state="confirming", confirmations=confirmations)
            bridge_db.set_cursor(f"eip155:{1000 + i}", confirmations, f"{confirmations:064x}")

    _race(4, walk)
    events = bridge_db.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(events) == 1 + 4 + 4 * 7 * 2
    assert bridge_db.verify_event_chain()


def test_a_waiting_claimer_sees_the_winners_commit(pg_url: str) -> None:
    """PostgreSQL: the second claimer provably blocks on the first's row lock, then loses."""
    db = open_database(pg_url)
    try:
        bridge_db = db
        dep = with_address(bridge_db, state="confirmed")
        result: list = []
        with bridge_db.transaction() as tx:
            assert tx.claim_deposit(dep.deposit_id) is not None
            second = threading.Thread(target=lambda: result.append(bridge_db.claim_deposit(dep.deposit_id)))
            second.start()
            with psycopg.connect(db.engine.url.render_as_string(hide_password=False).replace("+psycopg", ""),
                                 autocommit=True) as mon:  # a fresh pg_stat_activity snapshot per query
                while second.is_alive():
                    waiting = mon.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                          "AND datname = current_database()").fetchone()[0]
                    if waiting:
                        break
                    time.sleep(0.01)
            assert second.is_alive(), "the second claimer should be waiting for the row lock"
        second.join()
        assert result == [None]
        assert bridge_db.get_deposit(dep.deposit_id).state == "signing"
    finally:
        db.close()


def test_nested_transactions_in_one_thread_are_refused(bridge_db: BridgeDB) -> None:
    with bridge_db.transaction(), pytest.raises(bdb.BridgeDBError, match="already open"):
        bridge_db.get_deposit(b"\x00" * 32)


# --- cursors, meta, events ------------------------------------------------------------------------

def test_cursors(bridge_db: BridgeDB) -> None:
    assert bridge_db.get_cursor(BTC) is None
    bridge_db.set_cursor(BTC, 10, "0a" * 32)
    bridge_db.set_cursor(BTC, 10, "0a" * 32)  # no change, no event
    bridge_db.set_cursor(BTC, 11, "0b" * 32)
    rewound = bridge_db.set_cursor(BTC, 9, "f9" * 32)  # a reorg
    assert bridge_db.get_cursor(BTC) == rewound and rewound.height == 9
    assert bridge_db.get_cursor(ANVIL_SRC) is None
    details = [e.detail for e in bridge_db.events() if e.event == "cursor-set"]
    assert [d["height"] for d in details] == [10, 11, 9]
    assert details[-1]["previous"] == {"height": 11, "block_hash": "0b" * 32}
    with pytest.raises(InvalidRecord):
        bridge_db.set_cursor("bitcoin", 1, "00")


def test_meta_and_free_events(bridge_db: BridgeDB) -> None:
    bridge_db.set_meta("paused:" + ANVIL_DST, "erratum 0x01")
    assert bridge_db.get_meta("paused:" + ANVIL_DST) == "erratum 0x01"
    with pytest.raises(InvalidRecord):
        bridge_db.set_meta(bdb.EVENT_HEAD, "{}")
    bridge_db.record_event("mint-refused", {"reason": "amount differs", "proposed": 2**200}, b"\x0f" * 32)
    last = bridge_db.events()[-1]
    assert (last.event, last.deposit_id, last.detail) == (
        "mint-refused", b"\x0f" * 32, {"reason": "amount differs", "proposed": str(2**200)})
    assert bridge_db.events(after_seq=last.seq - 1) == [last]
    assert bridge_db.verify_event_chain()


TAMPERS = {
    "edit detail": "UPDATE bridge_events SET detail = '{\"from\":null}' WHERE seq = 2",
    "rename event": "UPDATE bridge_events SET event = 'deposit-confirmed' WHERE seq = 2",
    "move deposit": "UPDATE bridge_events SET deposit_id = NULL WHERE seq = 2",
    "backdate": "UPDATE bridge_events SET at = at - 1 WHERE seq = 3",
    "delete middle": "DELETE FROM bridge_events WHERE seq = 2",
    "truncate tail": "DELETE FROM bridge_events WHERE seq = (SELECT max(seq) FROM bridge_events)",
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampered_event_log_is_detected(bridge_db: BridgeDB, tamper: str) -> None:
    dep = with_address(bridge_db)
    bridge_db.update_deposit(dep.deposit_id, state="confirmed", confirmations=6)
    bridge_db.claim_deposit(dep.deposit_id)
    assert bridge_db.verify_event_chain()
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), bridge_db.engine.begin() as conn:
        conn.exec_driver_sql(TAMPERS[tamper])  # the application cannot do it by mistake...
    with bridge_db.engine.begin() as conn:  # ...someone with the database's own access can
        if bridge_db.dialect == "postgresql":
            conn.exec_driver_sql("ALTER TABLE bridge_events DISABLE TRIGGER bridge_events_append_only")
        else:
            conn.exec_driver_sql("DROP TRIGGER bridge_events_no_update")
            conn.exec_driver_sql("DROP TRIGGER bridge_events_no_delete")
        conn.exec_driver_sql(TAMPERS[tamper])
    assert not bridge_db.verify_event_chain()


# --- engine specifics -----------------------------------------------------------------------------

def test_sqlite_connections_are_durable(tmp_path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'b.sqlite3'}")
    try:
        with db.read() as r:
            pragmas = [r.conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in
                       ("journal_mode", "synchronous", "foreign_keys")]
        assert pragmas == ["wal", 2, 1]  # synchronous=2 is FULL
    finally:
        db.close()
    with pytest.raises(InvalidRecord):
        open_database("sqlite://")
    with pytest.raises(InvalidRecord):
        open_database("mysql://localhost/bridge")


def test_postgresql_urls_use_psycopg3(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    db = open_database(plain)
    try:
        assert db.engine.dialect.driver == "psycopg" and db.schema_version() == SCHEMA_VERSION
        with db.read() as r:
            assert r.conn.exec_driver_sql("SHOW server_version_num").scalar() >= "150000"
            kind = r.conn.exec_driver_sql(
                "SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns "
                "WHERE table_name = 'deposits' AND column_name = 'amount'").one()
        assert tuple(kind) == ("numeric", 78, 0)
    finally:
        db.close()
    with pytest.raises(InvalidRecord):
        open_database(pg_url.replace("+psycopg", "+psycopg2"))


# --- withdrawals (migration 4) ---------------------------------------------------------------------

def _withdrawal_row(n: int, **fields) -> dict:
    row = dict(burn_id=n.to_bytes(32, "big"), asset="0x" + "cc" * 20, source_chain=BTC, burn_nonce=n,
               burner=RECIPIENT, amount=MAX, destination=b"bcrt1qpayee".hex(), burn_block=7, burn_tx="0x" + "ee" * 32,
               state="observed", confirmations=0, required_confirmations=1)
    row.update(fields)
    return row


def test_withdrawal_rows_mirror_states_and_keep_the_burn_facts(bridge_db: BridgeDB) -> None:
    with bridge_db.transaction() as tx:
        tx.put_withdrawal(_withdrawal_row(1))
    with bridge_db.transaction() as tx:  # a later state; the burn's own facts cannot be rewritten
        tx.put_withdrawal(_withdrawal_row(1, state="broadcast", txid="ab" * 32, amount=5, burner=OTHER_RECIPIENT))
    with bridge_db.read() as r:
        row = r.get_withdrawal((1).to_bytes(32, "big"))
        assert row is not None and row["state"] == "broadcast" and row["txid"] == "ab" * 32
        assert row["amount"] == MAX and row["burner"] == RECIPIENT, "uint256 amounts survive; facts are fixed"
        assert [w["burn_nonce"] for w in r.withdrawals_by_burner(RECIPIENT.upper().replace("0X", "0x"))] == [1]
    with pytest.raises(sa.exc.IntegrityError), bridge_db.transaction() as tx:  # one row per (asset, nonce)
        tx.put_withdrawal(_withdrawal_row(2, burn_nonce=1))


def test_payout_archive_keeps_every_variant_once_and_is_append_only(bridge_db: BridgeDB) -> None:
    with bridge_db.transaction() as tx:
        assert tx.archive_payout(txid="aa" * 32, payout_id="0x" + "01" * 32, source_chain=BTC, role="coordinator",
                                 burn_ids=["0x" + "02" * 32], inputs=["cc" * 32 + ":0"], fee=500, proposal="00")
    with bridge_db.transaction() as tx:  # the same variant again adds only its signed form
        assert not tx.archive_payout(txid="aa" * 32, payout_id="0x" + "01" * 32, source_chain=BTC, role="cosigned",
                                     burn_ids=[], inputs=[], fee=0, raw="0200")
        assert tx.archive_payout(txid="bb" * 32, payout_id="0x" + "01" * 32, source_chain=BTC, role="coordinator",
                                 burn_ids=["0x" + "02" * 32], inputs=["cc" * 32 + ":0"], fee=900, replaces="aa" * 32)
    with bridge_db.read() as r:
        first = r.archived_payout("aa" * 32)
        assert first is not None and first["role"] == "coordinator" and first["raw"] == "0200"
        assert [p["txid"] for p in r.archived_payouts(BTC)] == ["aa" * 32, "bb" * 32]
    assert [e.event for e in bridge_db.events()].count("payout-archived") == 2
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), bridge_db.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM payout_archive")
