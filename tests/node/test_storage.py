"""Storage: real SQLite files, real AES-GCM, real scrypt (at a test-only cost)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from fusion_prime.node.storage import (
    COORDINATOR_RESERVATION,
    SCHEMA_VERSION,
    KeyMaterial,
    NotFound,
    PresignatureUnavailable,
    Storage,
    StorageError,
    WrongKey,
    database_summary,
)

PASS = KeyMaterial.passphrase("correct horse battery staple")
WEAK = {"scrypt_log2_n": 10, "allow_weak_kdf": True}
KEY_ID = b"k" * 32
SIGNERS = ["alice", "bob"]


def open_store(path: Path, key: KeyMaterial = PASS, **kw) -> Storage:
    return Storage(path, key, node_id="alice", **WEAK, **kw)


def fill(store: Storage, n: int) -> list[bytes]:
    if store.key_info(KEY_ID) is None:
        store.put_key_share(KEY_ID, parties=SIGNERS, threshold=1, level="test-2048", share=b"SHARE-SECRET")
    ids = [hashlib.sha256(os.urandom(16)).digest() for _ in range(n)]
    for i, pid in enumerate(ids):
        store.put_presignature(pid, key_id=KEY_ID, signers=SIGNERS, data=b"PRESIG-%d" % i)
    return ids


def test_secrets_round_trip_and_are_encrypted_on_disk(tmp_path):
    path = tmp_path / "node.sqlite3"
    with open_store(path) as store:
        store.put_key_share(KEY_ID, parties=SIGNERS, threshold=1, level="128", share=b"VERY-SECRET-SHARE" * 4)
        store.put_aux_info(b"a" * 32, parties=SIGNERS, level="128", aux=b"PAILLIER-PRIMES" * 4)
        assert store.get_key_share(KEY_ID) == b"VERY-SECRET-SHARE" * 4
        assert store.get_aux_info(b"a" * 32) == b"PAILLIER-PRIMES" * 4
        assert store.schema_version() == SCHEMA_VERSION
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"VERY-SECRET-SHARE" not in raw and b"PAILLIER-PRIMES" not in raw
    with open_store(path) as again:  # reopen with the same passphrase
        assert again.get_key_share(KEY_ID) == b"VERY-SECRET-SHARE" * 4


def test_ciphertext_moved_to_another_row_does_not_open(tmp_path):
    path = tmp_path / "node.sqlite3"
    with open_store(path) as store:
        a, b = fill(store, 2)
        db = sqlite3.connect(path)
        blob = db.execute("SELECT data FROM presignatures WHERE presig_id = ?", (a,)).fetchone()[0]
        db.execute("UPDATE presignatures SET data = ? WHERE presig_id = ?", (blob, b))
        db.commit()
        db.close()
        with pytest.raises(StorageError, match="does not authenticate"):
            store.consume_presignature(b, b"s" * 32, key_id=KEY_ID, signers=SIGNERS)


def _fingerprint(path: Path) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
    finally:
        db.close()


def test_wrong_passphrase_is_a_clear_error_and_changes_nothing(tmp_path):
    path = tmp_path / "node.sqlite3"
    with open_store(path) as store:
        fill(store, 3)
    before = _fingerprint(path)
    with pytest.raises(WrongKey, match=r"wrong passphrase .* nothing was changed"):
        open_store(path, KeyMaterial.passphrase("not the passphrase"))
    with pytest.raises(WrongKey, match="encrypted with a passphrase"):
        open_store(path, KeyMaterial("keyfile", b"\x01" * 32))
    assert _fingerprint(path) == before


def test_key_file_source(tmp_path):
    key_path = tmp_path / "storage.key"
    KeyMaterial.create_key_file(key_path)
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    with Storage(tmp_path / "db", KeyMaterial.key_file(key_path)) as store:
        store.put_aux_info(b"x" * 32, parties=SIGNERS, level="128", aux=b"aux")
    with Storage(tmp_path / "db", KeyMaterial.key_file(key_path)) as store:
        assert store.get_aux_info(b"x" * 32) == b"aux"
    os.chmod(key_path, 0o644)
    with pytest.raises(Exception, match="too open"):
        KeyMaterial.key_file(key_path)


def test_weak_scrypt_refused_outside_tests(tmp_path):
    with pytest.raises(StorageError, match="production minimum"):
        Storage(tmp_path / "db", PASS, scrypt_log2_n=10)
    with open_store(tmp_path / "db2"):
        pass
    with pytest.raises(StorageError, match="production minimum"):  # a weak db cannot be opened in production
        Storage(tmp_path / "db2", PASS)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "db"
    open_store(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (99, 0)")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="newer than this build"):
        open_store(path)


def test_presignature_consumed_exactly_once_under_thread_race(tmp_path):
    with open_store(tmp_path / "db") as store:
        ids = fill(store, 5)
        results: list[bytes] = []
        failures: list[Exception] = []
        barrier = threading.Barrier(12)
        lock = threading.Lock()

        def racer(i: int) -> None:
            barrier.wait()
            try:
                if i % 2:  # half race for one specific presignature, half take "the next one"
                    data = store.consume_presignature(ids[0], b"s%031d" % i, key_id=KEY_ID, signers=SIGNERS)
                    got = ids[0]
                else:
                    got, data = store.consume_next_presignature(KEY_ID, SIGNERS, b"s%031d" % i)
                with lock:
                    results.append(got)
                assert data.startswith(b"PRESIG-")
            except PresignatureUnavailable as exc:
                with lock:
                    failures.append(exc)

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == sorted(ids), "every presignature handed out exactly once"
        assert len(failures) == 12 - 5
        assert store.presignature_counts(KEY_ID, SIGNERS).consumed == 5
        with pytest.raises(PresignatureUnavailable):
            store.consume_presignature(ids[0], b"late" * 8, key_id=KEY_ID, signers=SIGNERS)


def _consume_and_die(path: str, presig_id: bytes, conn) -> None:
    store = Storage(Path(path), PASS, node_id="alice", **WEAK)
    data = store.consume_presignature(presig_id, b"c" * 32, key_id=KEY_ID, signers=SIGNERS)
    conn.send(data)  # the "partial signature" leaves the process...
    os.kill(os.getpid(), signal.SIGKILL)  # ...and the node crashes without any cleanup


def test_consumed_presignature_never_returns_after_crash(tmp_path):
    path = tmp_path / "db"
    with open_store(path) as store:
        ids = fill(store, 2)
        reserved = store.reserve_presignature(KEY_ID, SIGNERS, b"r" * 32)
        assert reserved in ids
        used = next(i for i in ids if i != reserved)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_consume_and_die, args=(str(path), used, child))
    proc.start()
    assert parent.recv() == b"PRESIG-%d" % ids.index(used)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    with open_store(path) as store:
        released = store.recover_after_restart()
        assert released == 1  # the reservation (never signed with) returns to the pool
        assert store.presignature_state(used) == "consumed"
        with pytest.raises(PresignatureUnavailable):
            store.consume_presignature(used, b"d" * 32, key_id=KEY_ID, signers=SIGNERS)
        got, _ = store.consume_next_presignature(KEY_ID, SIGNERS, b"e" * 32)
        assert got == reserved
        with pytest.raises(PresignatureUnavailable, match="empty"):
            store.consume_next_presignature(KEY_ID, SIGNERS, b"f" * 32)


def test_a_mismatched_sign_proposal_refuses_without_consuming(tmp_path):
    """A proposal naming a presignature with the wrong key, signer set or epoch, or one reserved
    for another session, is refused and the presignature stays exactly as it was."""
    path = tmp_path / "db"
    with open_store(path) as store:
        free, held, own = fill(store, 3)
        other_key = b"o" * 32
        store.put_key_share(other_key, parties=SIGNERS, threshold=1, level="test-2048", share=b"OTHER")
        db = sqlite3.connect(path)
        db.execute("UPDATE presignatures SET state = 'reserved', reserved_for = ? WHERE presig_id = ?",
                   (b"mine" * 8, held))
        db.execute("UPDATE presignatures SET state = 'reserved', reserved_for = ? WHERE presig_id = ?",
                   (COORDINATOR_RESERVATION, own))
        db.commit()
        db.close()
        before = _fingerprint(path)
        attempts = [
            (free, dict(key_id=other_key, signers=SIGNERS), "another key"),
            (free, dict(key_id=KEY_ID, signers=["alice", "carol"]), "made for signers alice, bob"),
            (free, dict(key_id=KEY_ID, signers=["alice", "bob", "carol"]), "made for signers"),
            (free, dict(key_id=KEY_ID, signers=["alice"]), "made for signers"),
            (held, dict(key_id=KEY_ID, signers=SIGNERS), "reserved for another sign session"),
            (held, dict(key_id=KEY_ID, signers=SIGNERS, reservation=COORDINATOR_RESERVATION), "reserved for another"),
            (own, dict(key_id=KEY_ID, signers=SIGNERS), "reserved for another sign session"),
        ]
        for pid, kw, reason in attempts:
            with pytest.raises(PresignatureUnavailable, match=reason):
                store.consume_presignature(pid, b"evil" * 8, **kw)
        assert _fingerprint(path) == before, "nothing consumed, nothing logged"
        assert [store.presignature_state(p) for p in (free, held, own)] == ["available", "reserved", "reserved"]

        # Of an epoch that is no longer the key's current one: refused too.
        db = sqlite3.connect(path)
        db.execute("UPDATE key_shares SET epoch = 1 WHERE key_id = ?", (KEY_ID,))
        db.commit()
        db.close()
        with pytest.raises(PresignatureUnavailable, match="epoch 0, the key's current epoch is 1"):
            store.consume_presignature(free, b"evil" * 8, key_id=KEY_ID, signers=SIGNERS)
        assert store.presignature_state(free) == "available"
        db = sqlite3.connect(path)
        db.execute("UPDATE key_shares SET epoch = 0 WHERE key_id = ?", (KEY_ID,))
        db.commit()
        db.close()

        # The right session takes each: any signer order (the stored text is canonical), the
        # reservation's own session id, and the coordinator's own reservation tag.
        assert store.consume_presignature(free, b"a" * 32, key_id=KEY_ID, signers=["bob", "alice"]) == b"PRESIG-0"
        assert store.consume_presignature(held, b"mine" * 8, key_id=KEY_ID, signers=SIGNERS) == b"PRESIG-1"
        assert store.consume_presignature(own, b"c" * 32, key_id=KEY_ID, signers=SIGNERS,
                                          reservation=COORDINATOR_RESERVATION) == b"PRESIG-2"
        assert store.presignature_counts(KEY_ID).consumed == 3
        with pytest.raises(NotFound):
            store.consume_presignature(b"x" * 32, b"d" * 32, key_id=KEY_ID, signers=SIGNERS)


def test_consumed_state_is_final_even_for_raw_sql(tmp_path):
    path = tmp_path / "db"
    with open_store(path) as store:
        (pid,) = fill(store, 1)
        store.consume_presignature(pid, b"s" * 32, key_id=KEY_ID, signers=SIGNERS)
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="final"):
        db.execute("UPDATE presignatures SET state = 'available' WHERE presig_id = ?", (pid,))
    db.close()


def test_audit_log_is_append_only_and_chained(tmp_path):
    path = tmp_path / "db"
    with open_store(path) as store:
        store.session_started(b"s" * 32, phase="sign", coordinator="alice", participants=SIGNERS)
        store.session_finished(b"s" * 32, state="timeout", culprits=["bob"], reason="no round 1 message from bob")
        events = [e["event"] for e in store.audit_log()]
        assert events[-2:] == ["session-started", "session-timeout"]
        assert store.verify_audit_chain()
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit_log SET event = 'nothing happened'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit_log")
    # Someone bypassing the triggers is still caught by the hash chain.
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET detail = '{}' WHERE event = 'session-timeout'")
    db.commit()
    db.close()
    with open_store(path) as store:
        assert not store.verify_audit_chain()


def test_backup_and_restore_round_trip(tmp_path):
    live = tmp_path / "live" / "node.sqlite3"
    with open_store(live) as store:
        store.put_key_share(KEY_ID, parties=SIGNERS, threshold=1, level="128", share=b"THE-SHARE")
        store.put_aux_info(b"a" * 32, parties=SIGNERS, level="128", aux=b"THE-AUX")
        ids = fill(store, 2)
        store.backup(tmp_path / "node.backup")
    blob = (tmp_path / "node.backup").read_bytes()
    assert b"THE-SHARE" not in blob and oct((tmp_path / "node.backup").stat().st_mode & 0o777) == "0o600"

    fresh = tmp_path / "fresh" / "node.sqlite3"
    with pytest.raises(WrongKey, match="nothing was restored"):
        Storage.restore(tmp_path / "node.backup", fresh, KeyMaterial.passphrase("wrong passphrase"), **WEAK_R)
    assert not fresh.exists()
    with Storage.restore(tmp_path / "node.backup", fresh, PASS, node_id="alice", **WEAK_R) as restored:
        assert restored.get_key_share(KEY_ID) == b"THE-SHARE"
        assert restored.get_aux_info(b"a" * 32) == b"THE-AUX"
        # A backup never brings presignatures back: they might have been used after it was taken.
        assert all(restored.presignature_state(p) == "consumed" for p in ids)
        assert restored.verify_audit_chain()
        assert restored.audit_log()[-1]["event"] == "restored-from-backup"
    with pytest.raises(StorageError, match="fresh data directory"):
        Storage.restore(tmp_path / "node.backup", fresh, PASS, **WEAK_R)
    summary = database_summary(fresh)
    assert summary["keys"] == 1 and summary["node_id"] == "alice"


WEAK_R = {"allow_weak_kdf": True}


def test_transport_epoch_strictly_increases(tmp_path):
    with open_store(tmp_path / "db") as store:
        a = store.next_transport_epoch()
        b = store.next_transport_epoch()
        assert b > a
