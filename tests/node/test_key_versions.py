"""Key-share versions and retirement in storage: real SQLite files, real AES-GCM."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from fusion_prime.node import storage as storage_module
from fusion_prime.node.storage import (
    SCHEMA_VERSION,
    KeyMaterial,
    NotFound,
    PresignatureUnavailable,
    Storage,
    StorageError,
)

PASS = KeyMaterial.passphrase("correct horse battery staple")
KEY_ID = b"k" * 16
GROUP_KEY = b"\x02" + b"G" * 32
PARTIES = ["node1", "node2", "node3"]


def open_store(path: Path) -> Storage:
    return Storage(path, PASS, node_id="node1", scrypt_log2_n=10, allow_weak_kdf=True)


def presigs(store: Storage, n: int, epoch: int = 0) -> list[bytes]:
    ids = [hashlib.sha256(os.urandom(16)).digest() for _ in range(n)]
    for pid in ids:
        store.put_presignature(pid, key_id=KEY_ID, signers=PARTIES[:2], data=b"OLD-PRESIG", epoch=epoch)
    return ids


def raw_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())


def sealed_share(path: Path) -> bytes:
    db = sqlite3.connect(path)
    try:
        return bytes(db.execute("SELECT share FROM key_shares WHERE key_id = ?", (KEY_ID,)).fetchone()[0])
    finally:
        db.close()


def test_new_version_becomes_current_and_erases_old_presignatures_atomically(tmp_path):
    path = tmp_path / "node.sqlite3"
    with open_store(path) as store:
        store.put_key_share(KEY_ID, parties=PARTIES, threshold=2, level="test-2048", share=b"SHARE-EPOCH-0",
                            public_key=GROUP_KEY)
        old_ids = presigs(store, 4)
        reserved = store.reserve_presignature(KEY_ID, PARTIES[:2], b"sign-request")
        assert reserved in old_ids
        old_ciphertext = sealed_share(path)

        invalidated = store.put_key_share_version(
            KEY_ID, epoch=1, parties=PARTIES, threshold=2, level="test-2048", share=b"SHARE-EPOCH-1",
            public_key=GROUP_KEY, session_id=b"s" * 32, aux=(b"a" * 16, PARTIES, "test-2048", b"NEW-AUX"))

        assert invalidated == 4, "available and reserved presignatures of the old epoch are all erased"
        assert store.get_key_share(KEY_ID) == b"SHARE-EPOCH-1"
        assert store.key_info(KEY_ID)["epoch"] == store.key_epoch(KEY_ID) == 1
        assert store.get_aux_info(b"a" * 16) == b"NEW-AUX"
        counts = store.presignature_counts(KEY_ID)
        assert (counts.available, counts.reserved, counts.consumed) == (0, 0, 4)
        for pid in old_ids:
            with pytest.raises(PresignatureUnavailable):
                store.consume_presignature(pid, b"t" * 32, key_id=KEY_ID, signers=PARTIES[:2])
        with pytest.raises(PresignatureUnavailable):
            store.consume_next_presignature(KEY_ID, PARTIES[:2], b"t" * 32)
        # A presign that raced the refresh (made with the old share) cannot be stored.
        with pytest.raises(StorageError, match="stale"):
            store.put_presignature(b"p" * 32, key_id=KEY_ID, signers=PARTIES[:2], data=b"X", epoch=0)
        store.put_presignature(b"q" * 32, key_id=KEY_ID, signers=PARTIES[:2], data=b"NEW", epoch=1)
        assert store.presignature_counts(KEY_ID).available == 1
        events = [e["event"] for e in store.audit_log()]
        assert "key-share-version-stored" in events and "aux-info-stored" in events
        assert store.verify_audit_chain()
    # The old version is not kept anywhere in the files: neither its ciphertext nor the erased
    # presignatures' ciphertexts.
    raw = raw_bytes(tmp_path)
    assert old_ciphertext not in raw
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM presignatures WHERE epoch = 0 AND data IS NOT NULL").fetchone()[0] == 0
    db.close()
    with open_store(path) as again:
        assert again.get_key_share(KEY_ID) == b"SHARE-EPOCH-1"


def test_old_ciphertext_put_back_does_not_open_as_the_current_version(tmp_path):
    path = tmp_path / "node.sqlite3"
    with open_store(path) as store:
        store.put_key_share(KEY_ID, parties=PARTIES, threshold=2, level="test-2048", share=b"OLD",
                            public_key=GROUP_KEY)
        old = sealed_share(path)
        store.put_key_share_version(KEY_ID, epoch=1, parties=PARTIES, threshold=2, level="test-2048", share=b"NEW",
                                    public_key=GROUP_KEY)
        db = sqlite3.connect(path)
        db.execute("UPDATE key_shares SET share = ? WHERE key_id = ?", (old, KEY_ID))
        db.commit()
        db.close()
        with pytest.raises(StorageError, match="does not authenticate"):
            store.get_key_share(KEY_ID)


def test_a_version_that_is_not_newer_or_of_another_key_changes_nothing(tmp_path):
    with open_store(tmp_path / "node.sqlite3") as store:
        store.put_key_share(KEY_ID, parties=PARTIES, threshold=2, level="test-2048", share=b"E0",
                            public_key=GROUP_KEY)
        presigs(store, 2)
        store.put_key_share_version(KEY_ID, epoch=2, parties=PARTIES, threshold=2, level="test-2048", share=b"E2",
                                    public_key=GROUP_KEY)
        presigs(store, 2, epoch=2)
        before = len(store.audit_log())
        for epoch in (1, 2):
            with pytest.raises(StorageError, match="not newer"):
                store.put_key_share_version(KEY_ID, epoch=epoch, parties=PARTIES, threshold=2, level="test-2048",
                                            share=b"BAD", public_key=GROUP_KEY)
        with pytest.raises(StorageError, match="different group key"):
            store.put_key_share_version(KEY_ID, epoch=3, parties=PARTIES, threshold=2, level="test-2048",
                                        share=b"BAD", public_key=b"\x03" + b"H" * 32)
        # A failure late in the transaction (the aux id already exists) rolls everything back.
        store.put_aux_info(b"a" * 16, parties=PARTIES, level="test-2048", aux=b"AUX")
        with pytest.raises(sqlite3.IntegrityError):
            store.put_key_share_version(KEY_ID, epoch=3, parties=PARTIES, threshold=2, level="test-2048",
                                        share=b"BAD", public_key=GROUP_KEY,
                                        aux=(b"a" * 16, PARTIES, "test-2048", b"AUX2"))
        assert store.get_key_share(KEY_ID) == b"E2" and store.key_epoch(KEY_ID) == 2
        assert store.presignature_counts(KEY_ID).available == 2, "presignatures of the current epoch survive"
        assert len(store.audit_log()) == before + 1  # only the aux info stored in between


def test_retiring_deletes_the_share_and_presignatures_and_keeps_a_public_record(tmp_path):
    path = tmp_path / "node.sqlite3"
    with open_store(path) as store:
        store.put_key_share(KEY_ID, parties=PARTIES, threshold=2, level="test-2048", share=b"LEAVING-SHARE",
                            public_key=GROUP_KEY)
        presigs(store, 3)
        old_ciphertext = sealed_share(path)
        assert store.retire_key_share(KEY_ID, session_id=b"r" * 32) == 3
        with pytest.raises(NotFound):
            store.get_key_share(KEY_ID)
        assert store.key_info(KEY_ID) is None and KEY_ID not in store.list_keys()
        assert store.presignature_counts(KEY_ID) == storage_module.PresignatureCounts()
        record = store.retired_key(KEY_ID)
        assert record["epoch"] == 0 and record["public_key"] == GROUP_KEY and record["session_id"] == b"r" * 32
        with pytest.raises(NotFound):
            store.retire_key_share(KEY_ID)
        events = [e["event"] for e in store.audit_log()]
        assert events[-1] == "key-share-retired" and "key-share-stored" in events
        assert store.verify_audit_chain()
        # Coming back to the committee later needs a newer epoch than the one retired.
        with pytest.raises(StorageError, match="retired"):
            store.put_key_share_version(KEY_ID, epoch=0, parties=PARTIES, threshold=2, level="test-2048",
                                        share=b"X", public_key=GROUP_KEY)
    assert old_ciphertext not in raw_bytes(tmp_path)
    with open_store(path) as store:
        store.put_key_share_version(KEY_ID, epoch=1, parties=PARTIES, threshold=2, level="test-2048",
                                    share=b"BACK", public_key=GROUP_KEY)
        assert store.get_key_share(KEY_ID) == b"BACK" and store.retired_key(KEY_ID) is None


def test_migration_from_schema_2_keeps_shares_at_epoch_0(tmp_path, monkeypatch):
    path = tmp_path / "node.sqlite3"
    with monkeypatch.context() as m:
        m.setattr(storage_module, "MIGRATIONS", storage_module.MIGRATIONS[:2])
        m.setattr(storage_module, "SCHEMA_VERSION", 2)
        with open_store(path) as old:
            old.put_key_share(KEY_ID, parties=PARTIES, threshold=2, level="test-2048", share=b"V2-SHARE",
                              public_key=GROUP_KEY)
            assert old.schema_version() == 2
        db = sqlite3.connect(path)  # a presignature row as the schema-2 code wrote it
        db.execute("INSERT INTO presignatures (presig_id, key_id, signers, state, created_at, data) "
                   "VALUES (?, ?, '[]', 'available', 0, x'00')", (b"p" * 32, KEY_ID))
        db.commit()
        db.close()
    with open_store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.get_key_share(KEY_ID) == b"V2-SHARE" and store.key_epoch(KEY_ID) == 0
        assert store.prime_count(1024) == 0
        assert store.put_key_share_version(KEY_ID, epoch=1, parties=PARTIES, threshold=2, level="test-2048",
                                           share=b"V4", public_key=GROUP_KEY) == 1


def test_primes_are_sealed_taken_once_and_left_out_of_backups(tmp_path):
    path = tmp_path / "node.sqlite3"
    primes = [(1 << 255) + 2 * i + 1 for i in range(3)]
    with open_store(path) as store:
        for p in primes:
            store.put_prime(256, p)
        assert store.prime_count(256) == 3 and store.prime_count(1024) == 0
        assert all(p.to_bytes(32, "big") not in raw_bytes(tmp_path) for p in primes)
        store.backup(tmp_path / "b.backup")
        taken = store.take_primes(256, 2)
        assert taken is not None and len(set(taken)) == 2 and set(taken) <= set(primes)
        assert store.take_primes(256, 2) is None, "one left: nothing is taken"
        assert store.prime_count(256) == 1
    with open_store(path) as store:
        assert store.prime_count(256) == 1, "taken primes stay deleted across a reopen"
        assert store.take_primes(256, 1) == [p for p in primes if p not in taken]
    restored = Storage.restore(tmp_path / "b.backup", tmp_path / "restored" / "node.sqlite3", PASS,
                               node_id="node1", allow_weak_kdf=True)
    with restored:
        assert restored.prime_count(256) == 0, "a backup never brings primes back"


def sealed_aux(path: Path, aux_id: bytes) -> bytes | None:
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT aux FROM aux_info WHERE aux_id = ?", (aux_id,)).fetchone()
        return None if row is None else bytes(row[0])
    finally:
        db.close()


def test_old_aux_secrets_are_erased_once_no_presignature_needs_them(tmp_path, monkeypatch):
    """Aux info holds the node's Paillier secret key: kept past a refresh, it would let whoever
    recorded a presign's K_j = enc_j(k_j) recover k_j later, so it goes when nothing needs it."""
    path = tmp_path / "node.sqlite3"
    other = b"o" * 16  # a second key on the same committee, not refreshed
    old_aux, new_aux = b"A" * 16, b"B" * 16
    with open_store(path) as store:
        for key in (KEY_ID, other):
            store.put_key_share(key, parties=PARTIES, threshold=2, level="test-2048", share=b"S", public_key=GROUP_KEY)
        store.put_aux_info(old_aux, parties=PARTIES, level="test-2048", aux=b"OLD-PAILLIER-SECRET")
        store.put_presignature(b"1" * 32, key_id=KEY_ID, signers=PARTIES[:2], data=b"P", epoch=0, aux_id=old_aux)
        store.put_presignature(b"2" * 32, key_id=other, signers=PARTIES[:2], data=b"P", epoch=0, aux_id=old_aux)
        assert store.prune_aux_info() == 0, "the newest aux info of a committee stays"
        old_sealed = sealed_aux(path, old_aux)

        store.put_key_share_version(KEY_ID, epoch=1, parties=PARTIES, threshold=2, level="test-2048", share=b"S1",
                                    public_key=GROUP_KEY, aux=(new_aux, PARTIES, "test-2048", b"NEW"))
        # The other key's presignature was made with the old aux info: it stays while usable
        # (the refreshed key's own presignature was erased by the refresh: it holds nothing).
        assert store.get_aux_info(old_aux) == b"OLD-PAILLIER-SECRET"
        sign_session = b"sign" * 8
        store.session_started(sign_session, phase="sign", coordinator="node1", participants=PARTIES[:2])
        store.consume_presignature(b"2" * 32, sign_session, key_id=other, signers=PARTIES[:2])
        assert store.prune_aux_info() == 0, "kept while the sign session runs: it may need it to blame"
        store.session_finished(sign_session, state="done")
        assert store.prune_aux_info() == 1
        with pytest.raises(NotFound):
            store.get_aux_info(old_aux)
        assert store.get_aux_info(new_aux) == b"NEW"
        assert store.latest_aux_info(PARTIES) == new_aux
        erased = [e for e in store.audit_log() if e["event"] == "aux-info-erased"]
        assert erased and erased[-1]["detail"]["aux_ids"] == [old_aux.hex()]
        assert store.verify_audit_chain()
        # A session a crash left 'running' holds its aux info for AUX_GRACE_SECONDS at most.
        store.put_presignature(b"3" * 32, key_id=other, signers=PARTIES[:2], data=b"P", epoch=0, aux_id=new_aux)
        store.put_aux_info(b"C" * 16, parties=PARTIES, level="test-2048", aux=b"NEWER")
        store.session_started(b"dead" * 8, phase="sign", coordinator="node1", participants=PARTIES[:2])
        store.consume_presignature(b"3" * 32, b"dead" * 8, key_id=other, signers=PARTIES[:2])
        assert store.prune_aux_info() == 0
        monkeypatch.setattr(storage_module, "AUX_GRACE_SECONDS", 0.0)
        assert store.prune_aux_info() == 1 and store.latest_aux_info(PARTIES) == b"C" * 16
    assert old_sealed is not None and old_sealed not in raw_bytes(tmp_path)


def test_a_refresh_of_the_only_key_erases_the_old_aux_at_once(tmp_path):
    path = tmp_path / "node.sqlite3"
    with open_store(path) as store:
        store.put_key_share(KEY_ID, parties=PARTIES, threshold=2, level="test-2048", share=b"S", public_key=GROUP_KEY)
        store.put_aux_info(b"A" * 16, parties=PARTIES, level="test-2048", aux=b"OLD")
        store.put_presignature(b"1" * 32, key_id=KEY_ID, signers=PARTIES[:2], data=b"P", epoch=0, aux_id=b"A" * 16)
        store.put_key_share_version(KEY_ID, epoch=1, parties=PARTIES, threshold=2, level="test-2048", share=b"S1",
                                    public_key=GROUP_KEY, aux=(b"B" * 16, PARTIES, "test-2048", b"NEW"))
        with pytest.raises(NotFound):
            store.get_aux_info(b"A" * 16)
        assert store.get_aux_info(b"B" * 16) == b"NEW"


def test_leaving_a_committee_erases_its_aux_info(tmp_path):
    path = tmp_path / "node.sqlite3"
    with open_store(path) as store:
        store.put_key_share(KEY_ID, parties=PARTIES, threshold=2, level="test-2048", share=b"S", public_key=GROUP_KEY)
        store.put_aux_info(b"A" * 16, parties=PARTIES, level="test-2048", aux=b"AUX-OF-THE-OLD-COMMITTEE")
        store.put_aux_info(b"C" * 16, parties=["node1", "node4"], level="test-2048", aux=b"ANOTHER-COMMITTEE")
        store.retire_key_share(KEY_ID, session_id=b"r" * 32)
        with pytest.raises(NotFound):
            store.get_aux_info(b"A" * 16)
        assert store.get_aux_info(b"C" * 16) == b"ANOTHER-COMMITTEE", "aux made ahead of a keygen stays"


def test_a_key_remembers_the_key_generation_that_made_it(tmp_path, monkeypatch):
    """Migration 8: the wallet finds a key's label in the proposal of the key generation that
    created it (every participant has it); keys from before the migration have none."""
    path = tmp_path / "node.sqlite3"
    older = b"o" * 16
    with monkeypatch.context() as m:
        m.setattr(storage_module, "MIGRATIONS", storage_module.MIGRATIONS[:7])
        m.setattr(storage_module, "SCHEMA_VERSION", 7)
        with open_store(path) as old:
            old.put_key_share(older, parties=PARTIES, threshold=2, level="test-2048", share=b"S7",
                              public_key=GROUP_KEY)
    session = b"s" * 32
    with open_store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.key_creation_proposal(older) is None
        store.stage_output(session, "keygen", b"OUTPUT", proposal=b"THE-PROPOSAL", transcript=b"t" * 32)
        store.put_key_share(KEY_ID, parties=PARTIES, threshold=2, level="test-2048", share=b"S8",
                            public_key=GROUP_KEY, session_id=session)
        store.output_confirmed(session, b"CERTIFICATE")
        assert store.key_creation_proposal(KEY_ID) == b"THE-PROPOSAL"
        assert store.key_creation_proposal(b"u" * 16) is None
