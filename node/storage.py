"""Durable, encrypted node state in one SQLite file per node.

What is stored, and how:

* **Secrets** (key shares, aux-info secrets, presignatures) are sealed with AES-256-GCM
  before they reach SQLite. Each ciphertext's associated data names its table and row, so a
  ciphertext copied into another row (say, an old presignature over a fresh one) fails to
  open instead of being used. Public columns (ids, parties, states) stay in clear so the
  node can schedule work and an operator can inspect status without the key.
* **The storage key** comes from scrypt (N ≥ 2^15, r = 8, p = 1, 16-byte random salt kept
  in the ``meta`` table) over the operator's passphrase, or from a 32-byte key file. A
  *key-check value* (a GCM-sealed constant) is verified before anything is written, so a
  wrong passphrase is a clear :class:`WrongKey` error and leaves the database untouched.
* **Presignatures** move ``available → reserved → consumed``; ``consumed`` is final (a
  trigger forbids leaving it) and the ciphertext is erased in the same transaction. The
  consume methods take SQLite's write lock (``BEGIN IMMEDIATE``), mark the row consumed,
  commit with ``synchronous=FULL`` and only then return the plaintext: two callers can never
  both get one presignature, and a crash after the return cannot bring it back. A crash
  can lose presignatures (reserved ones return to the pool on restart: nothing was signed
  with them yet), never reuse one. That is the Anyswap (July 2021) lesson.
* **The audit log** is append-only (triggers refuse UPDATE and DELETE) and hash-chained,
  so edits made behind SQLite's back are detectable with :meth:`Storage.verify_audit_chain`.
* **Key-share versions**: a refresh or resharing keeps the key id and raises the share's
  epoch. Only the current version is kept: :meth:`Storage.put_key_share_version` overwrites
  the old ciphertext in place (``secure_delete`` zeroes freed content, and the WAL is
  checkpointed and truncated afterwards), in the same transaction that erases every unused
  presignature of an older epoch - proactive security is only as good as the erasure of old
  shares. A node that leaves a committee retires the key (:meth:`Storage.retire_key_share`):
  share and presignatures deleted, a public record left in ``retired_keys``. Aux info is not
  versioned: it belongs to a committee, not to a key, and old entries stay for presignatures
  that still name them.
* **Pre-generated safe primes** (``prime_pool``) are sealed like shares and deleted in a
  committed transaction before they are handed out; backups leave them out.
* **Schema migrations** are ordered functions; ``schema_version`` records which ran. A
  database from a newer build is refused rather than misread.

**Connections** come from a small bounded pool (at most ``max_connections``, default
:data:`MAX_CONNECTIONS`), never from the thread: trio and grpcio replace their worker threads
all the time, and a connection per thread leaked three file descriptors (database, ``-wal``,
``-shm``) for every thread that ever touched storage, until SQLite could not open the file.

* A connection is *checked out* for exactly one unit of work and *returned* at once: one read
  statement (:meth:`Storage._conn` hands out a reader whose ``execute`` checks out, runs the
  statement, fetches every row, and returns the connection before the caller sees the rows),
  or one write transaction (:meth:`Storage._write`). So no connection is ever tied to a thread,
  and file handles and memory stay flat whatever threads come and go.
* Inside a write transaction, the thread's reads use the transaction's connection (they see
  its uncommitted rows, as before), and a nested ``_write`` reuses it too (SQLite refuses the
  nested ``BEGIN``, exactly as it did with per-thread connections).
* Writers queue on a process-wide re-entrant lock *before* checking out, so a connection is
  never parked in SQLite's busy loop while other writers of this process wait, and at most
  one pooled connection is held by a writer; readers (WAL lets them run beside the writer)
  share the rest. A thread that finds every connection busy waits for one to come back.
* Every connection gets the same PRAGMAs (``foreign_keys``, ``busy_timeout``,
  ``synchronous = FULL``, ``secure_delete``); ``BEGIN IMMEDIATE`` write semantics are
  unchanged. A connection returned with an open transaction (a failed ``COMMIT``) is rolled
  back, or closed if even that fails - the next user never inherits a transaction.
* :meth:`Storage.close` closes the idle connections and marks the busy ones, which are closed
  when they come back; a storage used after ``close()`` opens fresh ones (as before).

**Faults** are refused at open: the file must be a fusion-prime database (never initialise
over an existing non-empty file), pass ``PRAGMA quick_check``, and have an intact ``meta``
table whose key check opens with the supplied key, and every long-lived sealed row (shares,
aux info, primes: :data:`SEALED_COLUMNS`) must authenticate - all before anything is written, so a
damaged or foreign file is a clear :class:`StorageError` at start with nothing changed. Later
damage is translated too: SQLite's "malformed"/"not a database" errors become
:class:`DatabaseDamaged`, I/O failures :class:`StorageUnavailable`, and a row whose ciphertext
does not authenticate :class:`RecordCorrupt` - each a :class:`StorageError` (and still an
``sqlite3.Error`` where it came from SQLite) whose message names the file or the row, never
a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES
from Crypto.Protocol.KDF import scrypt

from .identity import read_secret_file, write_secret_file

PRODUCTION_SCRYPT_LOG2_N = 15
SCRYPT_R, SCRYPT_P = 8, 1
SEAL_VERSION = b"\x01"
KEY_CHECK_PLAINTEXT = b"fusion-prime storage key check v1"
AAD_PREFIX = b"fusion-prime/storage/v1|"
BACKUP_MAGIC = b"FPBACKUP1\n"
PRESIG_STATES = ("available", "reserved", "consumed")
SESSION_STATES = ("running", "done", "aborted", "timeout", "refused")
# What a coordinator's ``reserve_presignature`` names as ``reserved_for`` before its sign
# session exists (the session id is derived from the proposal, filled in afterwards): only a
# session this node proposed itself may consume such a reservation (see consume_presignature).
COORDINATOR_RESERVATION = b"sign-request"



@dataclass(frozen=True)
class ConfirmedSession:
    """The certificate of a session with nothing staged (a sign): every participant's signed
    confirmation of one transcript. Public data - kept so that a participant that ended the
    session without it (its relay came after that participant's deadline) can ask for it and
    end the session the same way as the others (issue 11)."""

    phase: str
    proposal: bytes
    transcript: bytes
    certificate: bytes


class StorageError(RuntimeError):
    """Base of storage errors; messages never contain secrets."""


class WrongKey(StorageError):
    """The passphrase or key file does not open this database or backup."""


class NotFound(StorageError):
    pass


class PresignatureUnavailable(StorageError):
    """No presignature to consume: none left, or this one is already consumed."""


class NotPresignatureLeader(PresignatureUnavailable):
    """A sign proposal's coordinator is not the presignature's leader (the node that
    coordinated its presign): refused, nothing consumed, nobody to blame."""


class StorageFault(StorageError):
    """The database file or a row in it is damaged or unreadable: an operator must look
    (restore from a backup, free disk space, fix permissions). Never retried silently."""


class DatabaseDamaged(StorageFault, sqlite3.DatabaseError):
    """SQLite found the file malformed, not a database, or failing its integrity check."""


class StorageUnavailable(StorageFault, sqlite3.OperationalError):
    """SQLite could not read or write the file (I/O error, disk full, cannot open)."""


class RecordCorrupt(StorageFault):
    """A sealed row (key share, aux info, presignature, prime) does not authenticate under
    this database's key: its bytes were changed, or it was copied from another row."""


MAX_CONNECTIONS = 4
# A thread waits at most this long for a pooled connection (reads take milliseconds; a write
# transaction waits at most busy_timeout = 30 s for the file lock).
POOL_WAIT_SECONDS = 120.0
# SQLite's primary result codes (the low byte of sqlite_errorcode) that mean the file itself
# is in trouble, as opposed to a constraint, a busy lock or a bug in a statement.
_DAMAGED_CODES = {11: "SQLITE_CORRUPT", 26: "SQLITE_NOTADB"}
_UNAVAILABLE_CODES = {10: "SQLITE_IOERR", 13: "SQLITE_FULL", 14: "SQLITE_CANTOPEN", 8: "SQLITE_READONLY"}


def _derive_checked(path: Path, db: Any, key: KeyMaterial, allow_weak_kdf: bool) -> bytes:
    """The storage key of the database ``db`` (at ``path``), verified against its key check.
    A ``meta`` table that cannot be read (missing rows, bytes that are not what this code
    wrote, settings out of range) is damage, not a wrong key. Reads only."""
    try:
        meta = {str(name): bytes(value) for name, value in db.execute("SELECT name, value FROM meta").fetchall()}
        kdf = meta["kdf"].decode("ascii")
        log2_n = int(meta["scrypt_log2_n"].decode("ascii"))
        salt, key_check = meta["kdf_salt"], meta["key_check"]
    except (KeyError, ValueError, TypeError):  # UnicodeDecodeError is a ValueError
        raise DatabaseDamaged(f"{path}: the meta table is damaged (key settings unreadable); "
                              "restore it from a backup; nothing was changed") from None
    if kdf not in ("scrypt", "keyfile") or not 1 <= log2_n <= 30 or len(salt) != 16:
        raise DatabaseDamaged(f"{path}: the meta table is damaged (key settings out of range); "
                              "restore it from a backup; nothing was changed")
    if kdf != key.kind:
        expected = "a passphrase" if kdf == "scrypt" else "a key file"
        raise WrongKey(f"{path} is encrypted with {expected}; supply that instead")
    if kdf == "scrypt" and log2_n < PRODUCTION_SCRYPT_LOG2_N and not allow_weak_kdf:
        raise StorageError(f"{path}: scrypt N = 2^{log2_n} is below the production minimum "
                           f"2^{PRODUCTION_SCRYPT_LOG2_N}; weaker settings exist only for tests")
    derived = key.derive(salt, log2_n)
    try:
        _unseal(derived, key_check, _aad("meta", b"key_check"))
    except ValueError:
        what = "passphrase" if kdf == "scrypt" else "key file"
        raise WrongKey(f"wrong {what} for {path}: the key check failed (or its record is damaged); "
                       "nothing was changed") from None
    return derived


def _share_aad_id(key_id: bytes, epoch: int) -> bytes:
    return Storage._share_row_id(key_id, epoch)


# The long-lived sealed columns verified at open: (table, query giving the row id, the sealed
# value and what else the AAD needs, how the AAD row id is made). Tables added later with
# long-lived sealed columns belong here. Presignatures are not in the list: they are
# short-lived, consumed once, and a damaged one is found (RecordCorrupt) when it is consumed.
SEALED_COLUMNS: tuple[tuple[str, str, Callable[[Any], bytes]], ...] = (
    ("key_shares", "SELECT key_id, share, epoch FROM key_shares", lambda r: _share_aad_id(bytes(r[0]), r[2])),
    ("aux_info", "SELECT aux_id, aux FROM aux_info", lambda r: bytes(r[0])),
    ("prime_pool", "SELECT prime_id, prime FROM prime_pool", lambda r: bytes(r[0])),
    ("session_outputs", "SELECT session_id, output FROM session_outputs WHERE output IS NOT NULL",
     lambda r: bytes(r[0])),
)


def _verify_sealed_rows(path: Path, db: Any, key: bytes) -> int:
    """Open every value of :data:`SEALED_COLUMNS` (AES-GCM verification, microseconds per row); raise
    :class:`RecordCorrupt` naming the first that does not authenticate. Returns the count."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    verified = 0
    for table, sql, row_id in SEALED_COLUMNS:
        if table not in tables:
            continue
        for row in db.execute(sql):
            rid = row_id(row)
            try:
                _unseal(key, bytes(row[1]), _aad(table, rid))
            except ValueError:
                raise RecordCorrupt(f"{path}: {table} row {rid.hex()[:16]}…: the sealed value does not "
                                    "authenticate (damaged or copied from another row); restore from a backup"
                                    ) from None
            verified += 1
    return verified


def _quick_check_problem(db: Any) -> str | None:
    """None if ``PRAGMA quick_check`` finds the file sound, else its first findings on one line."""
    lines = [line.strip() for row in db.execute("PRAGMA quick_check").fetchall() for line in str(row[0]).splitlines()]
    if lines == ["ok"]:
        return None
    findings = [line for line in lines if line and not line.startswith("***")] or ["no answer"]
    more = f" (+{len(findings) - 2} more)" if len(findings) > 2 else ""
    return "; ".join(findings[:2])[:200] + more


def _translate(exc: BaseException, path: Path) -> BaseException:
    """The StorageFault for a SQLite error that means the file is damaged or unreachable
    (``exc`` itself otherwise). The message names the file and SQLite's reason only."""
    if isinstance(exc, StorageError) or not isinstance(exc, sqlite3.Error):
        return exc
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _DAMAGED_CODES or (code == 0 and type(exc) is sqlite3.DatabaseError):
        return DatabaseDamaged(f"{path}: the database file is damaged ({exc}); restore it from a backup")
    if code in _UNAVAILABLE_CODES:
        return StorageUnavailable(f"{path}: cannot read or write the database ({exc})")
    return exc


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class KeyMaterial:
    """What the operator supplies: a passphrase, or the bytes of a key file."""

    kind: str  # "scrypt" | "keyfile"
    secret: bytes

    @classmethod
    def passphrase(cls, passphrase: str | bytes) -> KeyMaterial:
        raw = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
        if len(raw) < 8:
            raise StorageError("the storage passphrase must be at least 8 characters")
        return cls("scrypt", raw)

    @classmethod
    def key_file(cls, path: Path) -> KeyMaterial:
        raw = read_secret_file(path).strip()
        try:
            key = bytes.fromhex(raw.decode("ascii")) if len(raw) == 64 else raw
        except (UnicodeDecodeError, ValueError):
            key = raw
        if len(key) != 32:
            raise StorageError(f"{path}: a storage key file holds 32 bytes (raw or 64 hex digits)")
        return cls("keyfile", key)

    @staticmethod
    def create_key_file(path: Path) -> None:
        write_secret_file(path, secrets.token_bytes(32).hex().encode() + b"\n")

    def derive(self, salt: bytes, log2_n: int) -> bytes:
        if self.kind == "keyfile":
            # Already uniformly random; bind it to the database's salt anyway so two databases
            # sharing a key file still have unrelated keys.
            return hmac.new(self.secret, b"fusion-prime/storage-key|" + salt, hashlib.sha256).digest()
        return scrypt(self.secret, salt, 32, N=1 << log2_n, r=SCRYPT_R, p=SCRYPT_P)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"KeyMaterial(kind={self.kind})"


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(aad)
    ct, tag = cipher.encrypt_and_digest(plaintext)
    return SEAL_VERSION + nonce + ct + tag


def _unseal(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < 29 or blob[:1] != SEAL_VERSION:
        raise ValueError("malformed sealed value")
    cipher = AES.new(key, AES.MODE_GCM, nonce=blob[1:13])
    cipher.update(aad)
    return cipher.decrypt_and_verify(blob[13:-16], blob[-16:])


def _aad(table: str, row_id: bytes) -> bytes:
    return AAD_PREFIX + table.encode() + b"|" + row_id


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: ``executescript`` would COMMIT the migration's transaction
    first, and a migration must apply entirely or not at all."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise StorageError("incomplete SQL statement in a migration")


def _migration_1(db: sqlite3.Connection) -> None:
    """Core tables."""
    _execute_script(
        db,
        """
        CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE key_shares (
            key_id BLOB PRIMARY KEY,
            parties TEXT NOT NULL,
            threshold INTEGER NOT NULL CHECK (threshold >= 1),
            level TEXT NOT NULL,
            public_key BLOB,
            created_at REAL NOT NULL,
            share BLOB NOT NULL
        );
        CREATE TABLE aux_info (
            aux_id BLOB PRIMARY KEY,
            parties TEXT NOT NULL,
            level TEXT NOT NULL,
            created_at REAL NOT NULL,
            aux BLOB NOT NULL
        );
        CREATE TABLE presignatures (
            presig_id BLOB PRIMARY KEY,
            key_id BLOB NOT NULL REFERENCES key_shares(key_id),
            signers TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('available', 'reserved', 'consumed')),
            created_at REAL NOT NULL,
            reserved_at REAL,
            reserved_for BLOB,
            consumed_at REAL,
            consumed_for BLOB,
            data BLOB,
            CHECK ((state = 'consumed') = (data IS NULL))
        );
        CREATE INDEX presignatures_pool ON presignatures (key_id, signers, state, created_at);
        CREATE TABLE sessions (
            session_id BLOB PRIMARY KEY,
            phase TEXT NOT NULL,
            coordinator TEXT NOT NULL,
            participants TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('running', 'done', 'aborted', 'timeout', 'refused')),
            created_at REAL NOT NULL,
            finished_at REAL,
            culprits TEXT,
            reason TEXT
        );
        CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            event TEXT NOT NULL,
            session_id BLOB,
            detail TEXT NOT NULL,
            prev_hash BLOB NOT NULL,
            hash BLOB NOT NULL
        );
        """
    )


def _migration_2(db: sqlite3.Connection) -> None:
    """Invariants the application must not be able to break by mistake."""
    _execute_script(
        db,
        """
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        CREATE TRIGGER presignature_consumed_is_final BEFORE UPDATE ON presignatures
        WHEN OLD.state = 'consumed'
        BEGIN SELECT RAISE(ABORT, 'a consumed presignature is final'); END;
        CREATE TRIGGER presignature_no_delete BEFORE DELETE ON presignatures
        WHEN OLD.state != 'consumed'
        BEGIN SELECT RAISE(ABORT, 'only consumed presignatures may be deleted'); END;
        """
    )


def _migration_3(db: sqlite3.Connection) -> None:
    """Key-share versions (refresh and resharing keep the key id and raise the epoch) and
    retired keys (a dealer that left the committee keeps a public record, never its share)."""
    _execute_script(
        db,
        """
        ALTER TABLE key_shares ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE presignatures ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE retired_keys (
            key_id BLOB PRIMARY KEY,
            public_key BLOB,
            epoch INTEGER NOT NULL,
            retired_at REAL NOT NULL,
            session_id BLOB
        );
        """
    )


def _migration_4(db: sqlite3.Connection) -> None:
    """Pre-generated safe primes (secrets: sealed like shares, deleted when taken)."""
    _execute_script(
        db,
        """
        CREATE TABLE prime_pool (
            prime_id BLOB PRIMARY KEY,
            bits INTEGER NOT NULL,
            created_at REAL NOT NULL,
            prime BLOB NOT NULL
        );
        CREATE INDEX prime_pool_bits ON prime_pool (bits, created_at);
        """
    )


def _migration_5(db: sqlite3.Connection) -> None:
    """Which aux info a presignature was made with, so that old aux secrets (Paillier keys)
    can be erased once nothing needs them (rows from before are NULL: their aux is kept)."""
    _execute_script(db, "ALTER TABLE presignatures ADD COLUMN aux_id BLOB;")


def _migration_6(db: sqlite3.Connection) -> None:
    """Each presignature's *leader*: the node that coordinated its presign session, the only
    node that may propose a sign session with it (so coordinators on different nodes never
    collide on one). Rows from before get the first signer of their (name-sorted) set - the
    node whose pool loop made them under the old rule - identically on every node."""
    _execute_script(
        db,
        """
        ALTER TABLE presignatures ADD COLUMN leader TEXT;
        UPDATE presignatures SET leader = json_extract(signers, '$[0]') WHERE state != 'consumed';
        CREATE INDEX presignatures_leader ON presignatures (key_id, leader, state, created_at);
        """,
    )


def _migration_7(db: sqlite3.Connection) -> None:
    """Session outputs staged before their confirmation (see ``stage_output``): a node stores
    what a session produced here, durably, *before* it confirms to its peers; the output
    becomes current only with every participant's signed confirmation (the certificate, kept
    with the row), so a crash or a peer that never confirms leaves the old state usable."""
    _execute_script(
        db,
        """
        CREATE TABLE session_outputs (
            session_id   BLOB PRIMARY KEY,
            phase        TEXT NOT NULL,
            state        TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'abandoned')),
            staged_at    REAL NOT NULL,
            output       BLOB,
            proposal     BLOB NOT NULL,
            transcript   BLOB NOT NULL,
            certificate  BLOB,
            finished_at  REAL
        );
        CREATE INDEX session_outputs_state ON session_outputs (state, staged_at);
        """,
    )


def _migration_8(db: sqlite3.Connection) -> None:
    """The key generation session that created each key share: its staged proposal (kept in
    ``session_outputs``) carries the client's signed CreateKey request, so every participant -
    not only the node that served the request - can show the key's label. Rows from before are
    NULL (no label but the serving node's)."""
    _execute_script(db, "ALTER TABLE key_shares ADD COLUMN created_by BLOB;")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6, _migration_7,
    _migration_8)
# At most this long a consumed presignature's aux info stays while its sign session has not
# finished (a crash can leave a session 'running' for ever): that session may still need the
# aux secrets to name a cheater (sign round 2 identification).
AUX_GRACE_SECONDS = 600.0
SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresignatureCounts:
    available: int = 0
    reserved: int = 0
    consumed: int = 0


def _parties_text(parties: Sequence[Any]) -> str:
    return json.dumps(list(parties), separators=(",", ":"))


class _Rows(list):  # type: ignore[type-arg]
    """One read's rows, fetched in full: the connection is back in the pool already."""

    def fetchone(self) -> Any:
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        return list(self)


class _PooledReader:
    """What :meth:`Storage._conn` returns outside a write transaction: every ``execute`` is
    one statement on a connection checked out of the pool for just that statement."""

    __slots__ = ("_storage",)

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> _Rows:
        with self._storage._borrow() as db:
            cursor = db.execute(sql, parameters)
            try:
                return _Rows(cursor.fetchall())
            finally:
                cursor.close()

    def backup(self, target: sqlite3.Connection, **kwargs: Any) -> None:
        with self._storage._borrow() as db:
            db.backup(target, **kwargs)


class Storage:
    """One node's database. Thread-safe: connections come from a bounded pool (module
    docstring, "Connections"), never one per thread."""

    def __init__(
        self,
        path: Path,
        key: KeyMaterial,
        *,
        node_id: str | None = None,
        scrypt_log2_n: int = PRODUCTION_SCRYPT_LOG2_N,
        allow_weak_kdf: bool = False,
        create: bool = True,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if max_connections < 2:
            raise ValueError("max_connections must be at least 2 (one writer, one reader)")
        self.path = Path(path)
        self._allow_weak = allow_weak_kdf
        self.max_connections = max_connections
        self._pool = threading.Condition()
        self._idle: list[sqlite3.Connection] = []
        self._generation_of: dict[sqlite3.Connection, int] = {}  # every open connection
        self._opening = 0  # slots taken by connections being opened
        self._generation = 0  # close() bumps it: older connections are closed when they come back
        self._held = threading.local()  # the connection this thread is using (inside _borrow)
        self._write_lock = threading.RLock()
        self._reader = _PooledReader(self)
        self._check_kdf(scrypt_log2_n)
        existed = self.path.exists()
        if not existed and not create:
            raise StorageError(f"{self.path}: no database here")
        if not existed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open_database(key, node_id, scrypt_log2_n, existed)
        except BaseException as exc:
            self.close()
            translated = _translate(exc, self.path)
            if translated is exc:
                raise
            raise translated from exc

    def _open_database(self, key: KeyMaterial, node_id: str | None, log2_n: int, existed: bool) -> None:
        """Refuse a damaged or foreign file before anything is written (module docstring, "Faults")."""
        db = self._conn()
        if existed:
            if self.path.stat().st_size == 0:
                raise DatabaseDamaged(f"{self.path} is empty: not a fusion-prime database; restore it from a "
                                      "backup, or remove it to create a new one; nothing was changed")
            self._quick_check(db)
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if has_meta:
            self._key = self._unlock(db, key)
            stored_node = self.meta("node_id")
            if node_id is not None and stored_node is not None and stored_node != node_id.encode():
                shown = stored_node.decode("utf-8", "replace")
                raise StorageError(f"{self.path} belongs to node {shown!r}, not {node_id!r}")
            self._migrate(db)
            self._verify_sealed()
        elif existed:
            raise DatabaseDamaged(f"{self.path} is not a fusion-prime database (it has no meta table); "
                                  "refusing to initialise over it; nothing was changed")
        else:
            self._key = self._initialise(db, key, node_id, log2_n)

    def _quick_check(self, db: Any) -> None:
        problem = _quick_check_problem(db)
        if problem is not None:
            raise DatabaseDamaged(f"{self.path}: the database file is damaged - SQLite's quick_check says: "
                                  f"{problem}; refusing to open it; restore it from a backup; nothing was changed")

    def _verify_sealed(self) -> None:
        """Open every long-lived sealed value once (:func:`_verify_sealed_rows`), so a flipped
        byte in a share, aux info or prime is refused at start as :class:`RecordCorrupt`, not
        found by the first session that needs it."""
        with self._borrow() as db:
            _verify_sealed_rows(self.path, db, self._key)

    # connections ---------------------------------------------------------------------------
    def _conn(self) -> Any:
        """The connection of this thread's unit of work (inside :meth:`_write`: its
        transaction), else a reader that checks a pooled connection out per statement."""
        held = getattr(self._held, "db", None)
        return held if held is not None else self._reader

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA busy_timeout = 30000")
            # FULL: a commit is on disk when it returns. With NORMAL, WAL may lose the last
            # commits on power loss - including the one that marked a presignature consumed.
            db.execute("PRAGMA synchronous = FULL")
            # Deleted and overwritten rows (old key-share versions, retired shares, taken primes,
            # consumed presignatures) are zeroed in the file, not left in free pages.
            db.execute("PRAGMA secure_delete = ON")
        except BaseException:
            db.close()
            raise
        return db

    def _checkout(self) -> sqlite3.Connection:
        with self._pool:
            while not self._idle and len(self._generation_of) + self._opening >= self.max_connections:
                if not self._pool.wait(timeout=POOL_WAIT_SECONDS):
                    raise StorageUnavailable(f"{self.path}: every database connection stayed busy for "
                                             f"{POOL_WAIT_SECONDS:.0f} s")
            if self._idle:
                return self._idle.pop()
            self._opening += 1
            generation = self._generation
        try:
            db = self._connect()
        except BaseException:
            with self._pool:
                self._opening -= 1
                self._pool.notify()
            raise
        with self._pool:
            self._opening -= 1
            self._generation_of[db] = generation
        return db

    def _checkin(self, db: sqlite3.Connection) -> None:
        healthy = True
        if db.in_transaction:  # a failed COMMIT or ROLLBACK: never hand a transaction to the next user
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                healthy = False
        with self._pool:
            if healthy and self._generation_of.get(db) == self._generation:
                self._idle.append(db)
                self._pool.notify()
                return
            self._generation_of.pop(db, None)
            self._pool.notify()
        db.close()

    @contextmanager
    def _borrow(self) -> Iterator[sqlite3.Connection]:
        """A connection for one unit of work; re-entrant within a thread (a read inside a
        write transaction uses the transaction's connection). SQLite errors that mean the
        file is damaged or unreachable leave as :class:`StorageFault`."""
        held = getattr(self._held, "db", None)
        if held is not None:
            yield held
            return
        db = self._checkout()
        self._held.db = db
        try:
            yield db
        except sqlite3.Error as exc:
            translated = _translate(exc, self.path)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            self._held.db = None
            self._checkin(db)

    def connection_count(self) -> int:
        """Open connections (idle and in use): never more than ``max_connections``."""
        with self._pool:
            return len(self._generation_of) + self._opening

    def close(self) -> None:
        """Close the idle connections now and the busy ones when they come back."""
        with self._pool:
            idle, self._idle = self._idle, []
            for db in idle:
                self._generation_of.pop(db, None)
            self._generation += 1
            self._pool.notify_all()
        for db in idle:
            db.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from the start (``BEGIN
        IMMEDIATE``). This process's writers queue on ``_write_lock`` first, so only one of
        them holds a pooled connection at a time; a nested ``_write`` in the same thread gets
        the same connection and SQLite refuses its ``BEGIN``, as it always did."""
        with self._write_lock, self._borrow() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    # A connection that cannot roll back is closed by _checkin, not reused.
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # key handling --------------------------------------------------------------------------
    def _check_kdf(self, log2_n: int) -> None:
        if log2_n < PRODUCTION_SCRYPT_LOG2_N and not self._allow_weak:
            raise StorageError(
                f"scrypt N = 2^{log2_n} is below the production minimum 2^{PRODUCTION_SCRYPT_LOG2_N}; "
                "weaker settings exist only for tests"
            )

    def _initialise(self, db: sqlite3.Connection, key: KeyMaterial, node_id: str | None, log2_n: int) -> bytes:
        salt = secrets.token_bytes(16)
        derived = key.derive(salt, log2_n)
        db.execute("PRAGMA journal_mode = WAL")
        self._migrate(db)
        with self._write() as w:
            rows = {
                "kdf": key.kind.encode(),
                "kdf_salt": salt,
                "scrypt_log2_n": str(log2_n).encode(),
                "key_check": _seal(derived, KEY_CHECK_PLAINTEXT, _aad("meta", b"key_check")),
                "created_at": str(time.time()).encode(),
            }
            if node_id is not None:
                rows["node_id"] = node_id.encode()
            w.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", rows.items())
        self._key = derived
        self.append_audit("storage-created", detail={"schema_version": SCHEMA_VERSION, "kdf": key.kind})
        return derived

    def _unlock(self, db: Any, key: KeyMaterial) -> bytes:
        """Derive the key and check it *before* writing anything (:func:`_derive_checked`);
        the caller (``__init__``) closes the connections on any error."""
        return _derive_checked(self.path, db, key, self._allow_weak)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has schema version {current}, newer than this build's {SCHEMA_VERSION}; "
                "refusing to open it with older code"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self._write() as w:
                MIGRATIONS[version - 1](w)
                w.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time()))

    def schema_version(self) -> int:
        return self._conn().execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

    def seal(self, table: str, row_id: bytes, plaintext: bytes) -> bytes:
        return _seal(self._key, plaintext, _aad(table, row_id))

    def unseal(self, table: str, row_id: bytes, blob: bytes) -> bytes:
        try:
            return _unseal(self._key, blob, _aad(table, row_id))
        except ValueError:
            raise RecordCorrupt(f"{self.path}: {table} row {row_id.hex()[:16]}…: the sealed value does not "
                                "authenticate (damaged or copied from another row); restore from a backup") from None

    # meta ----------------------------------------------------------------------------------
    def meta(self, name: str) -> bytes | None:
        row = self._conn().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def next_transport_epoch(self) -> int:
        """A transport epoch larger than any this database has handed out, and not behind the
        clock: peers reject envelopes from an older epoch as replays, so an epoch must never
        repeat - not across restarts, and not after a restore from an old backup."""
        with self._write() as w:
            row = w.execute("SELECT value FROM meta WHERE name = 'transport_epoch'").fetchone()
            epoch = max(int(row[0]) + 1 if row else 0, time.time_ns() // 1000)
            w.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('transport_epoch', ?)", (str(epoch).encode(),))
        return epoch

    # key shares and aux info ---------------------------------------------------------------
    def put_key_share(
        self, key_id: bytes, *, parties: Sequence[str], threshold: int, level: str, share: bytes,
        public_key: bytes | None = None, session_id: bytes | None = None,
    ) -> None:
        """Store a new key's share; ``session_id`` is the key generation that made it."""
        with self._write() as w:
            w.execute(
                "INSERT INTO key_shares (key_id, parties, threshold, level, public_key, created_at, share) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, _parties_text(parties), threshold, level, public_key, time.time(),
                 self.seal("key_shares", key_id, share)),
            )
            if session_id is not None:
                w.execute("UPDATE key_shares SET created_by = ? WHERE key_id = ?", (session_id, key_id))
            self._audit(w, "key-share-stored", key_id, {"parties": list(parties), "threshold": threshold,
                                                        "session_id": session_id.hex() if session_id else None})

    def key_creation_proposal(self, key_id: bytes) -> bytes | None:
        """The proposal (a serialised ``SessionProposal``) of the key generation that created
        ``key_id`` here, or None: a key from before migration 8, or one this node first got in
        a resharing. It is public (every participant received it) and carries the client's
        signed request, which the wallet checks before it believes anything in it."""
        row = self._conn().execute(
            "SELECT o.proposal FROM key_shares AS k JOIN session_outputs AS o ON o.session_id = k.created_by "
            "WHERE k.key_id = ?", (key_id,)).fetchone()
        return None if row is None else bytes(row[0])

    @staticmethod
    def _share_row_id(key_id: bytes, epoch: int) -> bytes:
        """The AAD row id of a share: epoch 0 keeps the original form, later versions bind their
        epoch, so an old version's ciphertext cannot be passed off as the current one."""
        return key_id if epoch == 0 else key_id + b"|epoch:%d" % epoch

    def get_key_share(self, key_id: bytes) -> bytes:
        """The *current* version of this node's share (older versions are not kept)."""
        row = self._conn().execute("SELECT share, epoch FROM key_shares WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"no key share {key_id.hex()}")
        return self.unseal("key_shares", self._share_row_id(key_id, row[1]), row[0])

    def key_info(self, key_id: bytes) -> dict[str, Any] | None:
        row = self._conn().execute(
            "SELECT parties, threshold, level, public_key, created_at, epoch FROM key_shares WHERE key_id = ?",
            (key_id,),
        ).fetchone()
        if row is None:
            return None
        return {"key_id": key_id, "parties": json.loads(row[0]), "threshold": row[1], "level": row[2],
                "public_key": row[3], "created_at": row[4], "epoch": row[5]}

    def key_epoch(self, key_id: bytes) -> int | None:
        row = self._conn().execute("SELECT epoch FROM key_shares WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else int(row[0])

    def put_key_share_version(
        self, key_id: bytes, *, epoch: int, parties: Sequence[str], threshold: int, level: str, share: bytes,
        public_key: bytes, session_id: bytes | None = None,
        aux: tuple[bytes, Sequence[str], str, bytes] | None = None,
    ) -> int:
        """Make a newer version of a key share (after refresh or resharing) current.

        One transaction: the new version replaces the old one in place (the old ciphertext is
        overwritten - with ``secure_delete`` - not kept: proactive security needs old shares
        erased), every unused presignature of an older epoch is erased and marked consumed
        (they can never be used: their χ_i are shares of the old sharing), the optional new aux
        info ``(aux_id, parties, level, aux)`` is stored, and the audit log records it. If
        anything fails, nothing changes. A node that newly joins the committee gets the key
        inserted; one that held it before and retired gets it back. Returns the number of
        presignatures invalidated."""
        with self._write() as w:
            row = w.execute("SELECT epoch, public_key, parties FROM key_shares WHERE key_id = ?", (key_id,)).fetchone()
            if row is not None:
                if epoch <= row[0]:
                    raise StorageError(f"key {key_id.hex()}: epoch {epoch} is not newer than the stored {row[0]}")
                if row[1] is not None and bytes(row[1]) != public_key:
                    raise StorageError(f"key {key_id.hex()}: the new version has a different group key")
            retired = w.execute("SELECT epoch FROM retired_keys WHERE key_id = ?", (key_id,)).fetchone()
            if retired is not None and epoch <= retired[0]:
                raise StorageError(f"key {key_id.hex()}: epoch {epoch} is not newer than the retired {retired[0]}")
            sealed = self.seal("key_shares", self._share_row_id(key_id, epoch), share)
            if row is None:
                w.execute(
                    "INSERT INTO key_shares (key_id, parties, threshold, level, public_key, created_at, share, epoch) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key_id, _parties_text(parties), threshold, level, public_key, time.time(), sealed, epoch),
                )
                w.execute("DELETE FROM retired_keys WHERE key_id = ?", (key_id,))
            else:
                w.execute(
                    "UPDATE key_shares SET parties = ?, threshold = ?, level = ?, share = ?, epoch = ? "
                    "WHERE key_id = ?",
                    (_parties_text(parties), threshold, level, sealed, epoch, key_id),
                )
            invalidated = self._erase_presignatures(w, key_id, epoch, b"superseded:" + (session_id or b""))
            if aux is not None:
                self._insert_aux(w, *aux)
            left = row[2] if row is not None and row[2] != _parties_text(parties) else None
            self._prune_aux_info(w, session_id, left=left)
            self._audit(w, "key-share-version-stored", session_id, {
                "key_id": key_id.hex(), "epoch": epoch, "previous_epoch": None if row is None else row[0],
                "parties": list(parties), "threshold": threshold, "presignatures_invalidated": invalidated,
                "aux_id": aux[0].hex() if aux else None})
        self._checkpoint()
        return invalidated

    def retire_key_share(self, key_id: bytes, *, session_id: bytes | None = None) -> int:
        """This node left the key's committee (it dealt in a resharing and is not in the new
        one): delete its share and every presignature of the key, and keep only a public
        record in ``retired_keys``. Returns the number of presignatures erased."""
        with self._write() as w:
            row = w.execute("SELECT epoch, public_key FROM key_shares WHERE key_id = ?", (key_id,)).fetchone()
            if row is None:
                raise NotFound(f"no key share {key_id.hex()}")
            erased = self._erase_presignatures(w, key_id, None, b"retired:" + (session_id or b""))
            w.execute("DELETE FROM presignatures WHERE key_id = ?", (key_id,))
            parties = w.execute("SELECT parties FROM key_shares WHERE key_id = ?", (key_id,)).fetchone()[0]
            w.execute("DELETE FROM key_shares WHERE key_id = ?", (key_id,))
            self._prune_aux_info(w, session_id, left=parties)
            w.execute(
                "INSERT OR REPLACE INTO retired_keys (key_id, public_key, epoch, retired_at, session_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (key_id, row[1], row[0], time.time(), session_id),
            )
            self._audit(w, "key-share-retired", session_id,
                        {"key_id": key_id.hex(), "epoch": row[0], "presignatures_erased": erased})
        self._checkpoint()
        return erased

    def retired_key(self, key_id: bytes) -> dict[str, Any] | None:
        row = self._conn().execute(
            "SELECT public_key, epoch, retired_at, session_id FROM retired_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        if row is None:
            return None
        return {"key_id": key_id, "public_key": row[0], "epoch": row[1], "retired_at": row[2],
                "session_id": row[3]}

    def _erase_presignatures(self, w: sqlite3.Connection, key_id: bytes, below_epoch: int | None,
                             reason: bytes) -> int:
        """Mark every unused presignature of ``key_id`` (of an epoch below ``below_epoch``, or
        all) consumed and erase its ciphertext. Reserved ones too: nothing signed with them."""
        sql = ("UPDATE presignatures SET state = 'consumed', consumed_at = ?, consumed_for = ?, data = NULL "
               "WHERE key_id = ? AND state != 'consumed'")
        args: list[Any] = [time.time(), reason, key_id]
        if below_epoch is not None:
            sql, args = sql + " AND epoch < ?", [*args, below_epoch]
        return w.execute(sql, args).rowcount

    def prune_aux_info(self) -> int:
        """Erase aux info nothing needs any more; returns how many entries went. See
        :meth:`_prune_aux_info`. The daemon calls it after presigning and refreshes."""
        with self._write() as w:
            erased = self._prune_aux_info(w, None)
        if erased:
            self._checkpoint()
        return erased

    def _prune_aux_info(self, w: sqlite3.Connection, session_id: bytes | None, left: str | None = None) -> int:
        """Erase every aux-info entry that is not the newest of its committee and is not
        referenced by a presignature that may still be used (available, reserved, or consumed
        less than AUX_GRACE_SECONDS ago). With ``left`` (a committee this node no longer holds
        any key of, after a resharing), that committee's newest entry goes too.

        Why: aux info holds this node's Paillier secret key. Everyone in a presign session saw
        K_j = enc_j(k_j); a party that kept those ciphertexts and later steals an *old* Paillier
        key learns k_j, hence k, hence the key from a published signature - exactly what a
        refresh must make impossible. So old aux secrets go as old shares do.
        """
        if w.execute("SELECT 1 FROM presignatures WHERE aux_id IS NULL AND state != 'consumed' LIMIT 1").fetchone():
            return 0  # presignatures from before migration 5: which aux they need is unknown
        if left is not None and w.execute("SELECT 1 FROM key_shares WHERE parties = ? LIMIT 1", (left,)).fetchone():
            left = None  # another key still uses that committee
        newest = {bytes(row[0]) for row in w.execute(
            "SELECT aux_id FROM aux_info AS a WHERE created_at = "
            "(SELECT MAX(created_at) FROM aux_info AS b WHERE b.parties = a.parties)")}
        # A consumed presignature keeps its aux only while the sign session that took it may
        # still be running (it needs the aux secrets to name a cheater); erased ones (by a
        # refresh or retirement) and those of finished sessions need nothing.
        in_use = {bytes(row[0]) for row in w.execute(
            "SELECT DISTINCT p.aux_id FROM presignatures AS p LEFT JOIN sessions AS s "
            "ON s.session_id = p.consumed_for WHERE p.aux_id IS NOT NULL AND (p.state != 'consumed' OR "
            "(p.consumed_at > ? AND COALESCE(s.state, 'running') = 'running' "
            "AND substr(p.consumed_for, 1, 11) != CAST('superseded:' AS BLOB) "
            "AND substr(p.consumed_for, 1, 8) != CAST('retired:' AS BLOB)))", (time.time() - AUX_GRACE_SECONDS,))}
        doomed = [
            bytes(aux_id) for aux_id, parties in w.execute("SELECT aux_id, parties FROM aux_info")
            if bytes(aux_id) not in in_use and (bytes(aux_id) not in newest or parties == left)
        ]
        for aux_id in doomed:
            w.execute("DELETE FROM aux_info WHERE aux_id = ?", (aux_id,))
        if doomed:
            self._audit(w, "aux-info-erased", session_id, {"aux_ids": [a.hex() for a in doomed]})
        return len(doomed)

    def _checkpoint(self) -> None:
        """Best effort: move the WAL into the database file and truncate it, so frames holding
        old page images (old share versions) do not linger in the ``-wal`` file."""
        try:
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass

    def list_keys(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._conn().execute("SELECT key_id FROM key_shares ORDER BY created_at")]

    def put_aux_info(self, aux_id: bytes, *, parties: Sequence[str], level: str, aux: bytes) -> None:
        with self._write() as w:
            self._insert_aux(w, aux_id, parties, level, aux)

    def _insert_aux(self, w: sqlite3.Connection, aux_id: bytes, parties: Sequence[str], level: str,
                    aux: bytes) -> None:
        w.execute(
            "INSERT INTO aux_info (aux_id, parties, level, created_at, aux) VALUES (?, ?, ?, ?, ?)",
            (aux_id, _parties_text(parties), level, time.time(), self.seal("aux_info", aux_id, aux)),
        )
        self._audit(w, "aux-info-stored", aux_id, {"parties": list(parties)})

    def get_aux_info(self, aux_id: bytes) -> bytes:
        row = self._conn().execute("SELECT aux FROM aux_info WHERE aux_id = ?", (aux_id,)).fetchone()
        if row is None:
            raise NotFound(f"no aux info {aux_id.hex()}")
        return self.unseal("aux_info", aux_id, row[0])

    def latest_aux_info(self, parties: Sequence[str]) -> bytes | None:
        """The newest aux-info id for exactly this committee, if any."""
        row = self._conn().execute(
            "SELECT aux_id FROM aux_info WHERE parties = ? ORDER BY created_at DESC LIMIT 1", (_parties_text(parties),)
        ).fetchone()
        return None if row is None else bytes(row[0])

    # presignatures -------------------------------------------------------------------------
    def put_presignature(
        self, presig_id: bytes, *, key_id: bytes, signers: Sequence[str], data: bytes, epoch: int | None = None,
        aux_id: bytes | None = None, leader: str | None = None,
    ) -> None:
        """Store a fresh presignature. With ``epoch``, refuse one made with a share version that
        is no longer current (a presign that raced a refresh): it could never be used. ``aux_id``
        names the aux info it was made with (kept while the presignature may be used). ``leader``
        is the node that coordinated the presign: the only one that may propose signing with it."""
        with self._write() as w:
            if epoch is not None:
                row = w.execute("SELECT epoch FROM key_shares WHERE key_id = ?", (key_id,)).fetchone()
                if row is None or row[0] != epoch:
                    raise StorageError(
                        f"presignature for key {key_id.hex()} epoch {epoch} is stale: the current share is "
                        f"{'gone' if row is None else f'epoch {row[0]}'}")
            w.execute(
                "INSERT INTO presignatures (presig_id, key_id, signers, state, created_at, data, epoch, aux_id, "
                "leader) VALUES (?, ?, ?, 'available', ?, ?, ?, ?, ?)",
                (presig_id, key_id, _parties_text(sorted(signers)), time.time(),
                 self.seal("presignatures", presig_id, data), epoch or 0, aux_id, leader),
            )

    def reserve_presignature(self, key_id: bytes, signers: Sequence[str], session_id: bytes) -> bytes | None:
        """Coordinator side: set aside the oldest available presignature for one sign session."""
        with self._write() as w:
            row = w.execute(
                "SELECT presig_id FROM presignatures WHERE key_id = ? AND signers = ? AND state = 'available' "
                "ORDER BY created_at, presig_id LIMIT 1",
                (key_id, _parties_text(sorted(signers))),
            ).fetchone()
            if row is None:
                return None
            w.execute(
                "UPDATE presignatures SET state = 'reserved', reserved_at = ?, reserved_for = ? WHERE presig_id = ?",
                (time.time(), session_id, row[0]),
            )
            return bytes(row[0])

    def release_presignature(self, presig_id: bytes) -> None:
        """A reservation whose session never started signing goes back to the pool."""
        with self._write() as w:
            w.execute(
                "UPDATE presignatures SET state = 'available', reserved_at = NULL, reserved_for = NULL "
                "WHERE presig_id = ? AND state = 'reserved'",
                (presig_id,),
            )

    def consume_presignature(
        self, presig_id: bytes, session_id: bytes, *, key_id: bytes, signers: Sequence[str],
        reservation: bytes | None = None, coordinator: str | None = None,
    ) -> bytes:
        """Mark one presignature consumed - durably, in one transaction - then return it.

        The presignature must be what the sign session says it is: of ``key_id``, made for
        exactly ``signers`` (the session's participants), of the key's current epoch, and either
        available or reserved for this very session (``reserved_for`` = ``session_id``, or the
        caller's own ``reservation`` tag - the coordinator's, for a session it proposed itself).
        Otherwise :class:`PresignatureUnavailable` is raised and *nothing* changes: a proposal
        naming the wrong key or signer set, or someone else's reservation, must not burn it.
        Raises it too if the presignature is already consumed: the caller must then not sign.
        With ``coordinator`` (the sign session's), the presignature must be led by it (the node
        that coordinated its presign; see ``_migration_6``), else :class:`NotPresignatureLeader`
        and nothing changes. Nothing is returned until the commit is on disk."""
        short = presig_id.hex()[:16] + "…"
        with self._write() as w:
            row = w.execute(
                "SELECT p.state, p.data, p.key_id, p.signers, p.epoch, p.reserved_for, k.epoch, p.leader "
                "FROM presignatures AS p LEFT JOIN key_shares AS k ON k.key_id = p.key_id WHERE p.presig_id = ?",
                (presig_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no presignature {presig_id.hex()}")
            state, data, row_key, row_signers, row_epoch, reserved_for, key_epoch, leader = row
            if state == "consumed":
                raise PresignatureUnavailable(f"presignature {short} is already consumed")
            if bytes(row_key) != key_id:
                raise PresignatureUnavailable(f"presignature {short} belongs to another key, not {key_id.hex()}")
            if row_signers != _parties_text(sorted(signers)):
                raise PresignatureUnavailable(
                    f"presignature {short} was made for signers {', '.join(json.loads(row_signers))}, "
                    f"not {', '.join(sorted(signers))}")
            if coordinator is not None and leader is not None and leader != coordinator:
                raise NotPresignatureLeader(
                    f"presignature {short} is led by {leader}: only its leader may sign with it, not {coordinator}")
            if key_epoch is None or row_epoch != key_epoch:
                raise PresignatureUnavailable(
                    f"presignature {short} is of epoch {row_epoch}, the key's current epoch is {key_epoch}")
            if state == "reserved":  # otherwise 'available' (the table's CHECK allows only these)
                allowed = {session_id} | ({reservation} if reservation is not None else set())
                if reserved_for is None or bytes(reserved_for) not in allowed:
                    raise PresignatureUnavailable(f"presignature {short} is reserved for another sign session")
            plaintext = self.unseal("presignatures", presig_id, data)
            self._mark_consumed(w, presig_id, session_id)
        return plaintext

    def consume_next_presignature(
        self, key_id: bytes, signers: Sequence[str], session_id: bytes
    ) -> tuple[bytes, bytes]:
        """Take the oldest available presignature for (key, signers): (presig_id, data)."""
        with self._write() as w:
            row = w.execute(
                "SELECT presig_id, data FROM presignatures WHERE key_id = ? AND signers = ? AND state = 'available' "
                "ORDER BY created_at, presig_id LIMIT 1",
                (key_id, _parties_text(sorted(signers))),
            ).fetchone()
            if row is None:
                raise PresignatureUnavailable("presignature pool is empty for this key and signer set")
            presig_id = bytes(row[0])
            plaintext = self.unseal("presignatures", presig_id, row[1])
            self._mark_consumed(w, presig_id, session_id)
        return presig_id, plaintext

    def _mark_consumed(self, w: sqlite3.Connection, presig_id: bytes, session_id: bytes) -> None:
        cur = w.execute(
            "UPDATE presignatures SET state = 'consumed', consumed_at = ?, consumed_for = ?, data = NULL "
            "WHERE presig_id = ? AND state != 'consumed'",
            (time.time(), session_id, presig_id),
        )
        if cur.rowcount != 1:
            raise PresignatureUnavailable(f"presignature {presig_id.hex()[:16]}… is already consumed")
        self._audit(w, "presignature-consumed", session_id, {"presignature": presig_id.hex()})

    def presignature_state(self, presig_id: bytes) -> str | None:
        row = self._conn().execute("SELECT state FROM presignatures WHERE presig_id = ?", (presig_id,)).fetchone()
        return None if row is None else row[0]

    def presignature_counts(
        self, key_id: bytes | None = None, signers: Sequence[str] | None = None
    ) -> PresignatureCounts:
        sql, args = "SELECT state, COUNT(*) FROM presignatures WHERE 1 = 1", []
        if key_id is not None:
            sql, args = sql + " AND key_id = ?", [*args, key_id]
        if signers is not None:
            sql, args = sql + " AND signers = ?", [*args, _parties_text(sorted(signers))]
        counts = dict(self._conn().execute(sql + " GROUP BY state", args).fetchall())
        return PresignatureCounts(**{s: counts.get(s, 0) for s in PRESIG_STATES})

    def presignature_sets(self, key_id: bytes) -> list[tuple[list[str], int]]:
        """Signer sets that have available presignatures for a key, fullest first."""
        rows = self._conn().execute(
            "SELECT signers, COUNT(*) FROM presignatures WHERE key_id = ? AND state = 'available' "
            "GROUP BY signers ORDER BY COUNT(*) DESC, signers",
            (key_id,),
        ).fetchall()
        return [(json.loads(r[0]), r[1]) for r in rows]

    # presignature leaders, pool resync and quarantine (issue 12) ---------------------------
    def led_presignatures(self, key_id: bytes, leader: str) -> list[tuple[bytes, list[str]]]:
        """Available presignatures of ``key_id`` led by ``leader``, oldest first: (id, signers)."""
        rows = self._conn().execute(
            "SELECT presig_id, signers FROM presignatures WHERE key_id = ? AND leader = ? AND state = 'available' "
            "ORDER BY created_at, presig_id",
            (key_id, leader),
        ).fetchall()
        return [(bytes(r[0]), json.loads(r[1])) for r in rows]

    def reserve_presignature_id(self, presig_id: bytes, session_id: bytes) -> bool:
        """Coordinator side: reserve this one presignature if it is still available."""
        with self._write() as w:
            cur = w.execute(
                "UPDATE presignatures SET state = 'reserved', reserved_at = ?, reserved_for = ? "
                "WHERE presig_id = ? AND state = 'available'",
                (time.time(), session_id, presig_id),
            )
            return cur.rowcount == 1

    def held_presignatures(self) -> list[tuple[bytes, bytes, list[str], str | None, str]]:
        """Every presignature not consumed: (id, key id, signers, leader, state)."""
        rows = self._conn().execute(
            "SELECT presig_id, key_id, signers, leader, state FROM presignatures WHERE state != 'consumed' "
            "ORDER BY created_at, presig_id"
        ).fetchall()
        return [(bytes(r[0]), bytes(r[1]), json.loads(r[2]), r[3], r[4]) for r in rows]

    def presignature_views(self, presig_ids: Sequence[bytes]) -> dict[bytes, tuple[str, list[str], str | None]]:
        """For the resync RPC: (state, signers, leader) of each id held here (absent: unknown)."""
        out: dict[bytes, tuple[str, list[str], str | None]] = {}
        ids = list(presig_ids)
        for at in range(0, len(ids), 500):
            chunk = ids[at:at + 500]
            rows = self._conn().execute(
                "SELECT presig_id, state, signers, leader FROM presignatures WHERE presig_id IN "  # noqa: S608
                f"({', '.join('?' * len(chunk))})",  # placeholders only: the ids are bound
                chunk,
            ).fetchall()
            for r in rows:
                out[bytes(r[0])] = (r[1], json.loads(r[2]), r[3])
        return out

    def presignature_row(self, presig_id: bytes) -> tuple[str, list[str], str | None, bytes | None] | None:
        """(state, signers, leader, consumed_for) of one presignature, or None."""
        r = self._conn().execute(
            "SELECT state, signers, leader, consumed_for FROM presignatures WHERE presig_id = ?", (presig_id,)
        ).fetchone()
        return None if r is None else (r[0], json.loads(r[1]), r[2], None if r[3] is None else bytes(r[3]))

    def discard_presignature(self, presig_id: bytes, reason: str) -> bool:
        """Mark a presignature consumed without a session (its ciphertext erased, audited): a
        peer reported it consumed or unknown, or a sign session may have used it elsewhere.
        False if it was already consumed or is not held here."""
        with self._write() as w:
            cur = w.execute(
                "UPDATE presignatures SET state = 'consumed', consumed_at = ?, consumed_for = NULL, data = NULL "
                "WHERE presig_id = ? AND state != 'consumed'",
                (time.time(), presig_id),
            )
            if cur.rowcount != 1:
                return False
            self._audit(w, "presignature-discarded", None, {"presignature": presig_id.hex(), "reason": reason})
            return True

    def pool_quarantine(self) -> dict[str, Any] | None:
        """The persisted pool quarantine (``{"reason", "since"}``), or None."""
        raw = self.meta("pool_quarantine")
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return {"reason": "unreadable quarantine record", "since": 0.0}
        return doc if isinstance(doc, dict) else {"reason": "unreadable quarantine record", "since": 0.0}

    def set_pool_quarantine(self, reason: str) -> None:
        """Persist a quarantine (rollback evidence): survives a restart until a resync lifts it."""
        doc = json.dumps({"reason": reason, "since": time.time()}, separators=(",", ":")).encode()
        with self._write() as w:
            w.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('pool_quarantine', ?)", (doc,))
            self._audit(w, "pool-quarantined", None, {"reason": reason})

    def clear_pool_quarantine(self, detail: dict[str, Any]) -> bool:
        """Lift a persisted quarantine after a completed resync; False if there was none."""
        with self._write() as w:
            cur = w.execute("DELETE FROM meta WHERE name = 'pool_quarantine'")
            if cur.rowcount != 1:
                return False
            self._audit(w, "pool-resynchronised", None, detail)
            return True

    def recover_after_restart(self) -> int:
        """Return reservations to the pool (no partial signature was released from a reserved
        presignature: consumption comes first) and mark interrupted sessions aborted."""
        with self._write() as w:
            released = w.execute(
                "UPDATE presignatures SET state = 'available', reserved_at = NULL, reserved_for = NULL "
                "WHERE state = 'reserved'"
            ).rowcount
            for (session_id,) in w.execute("SELECT session_id FROM sessions WHERE state = 'running'").fetchall():
                w.execute(
                    "UPDATE sessions SET state = 'aborted', finished_at = ?, reason = ? WHERE session_id = ?",
                    (time.time(), "node restarted during the session", session_id),
                )
                self._audit(w, "session-interrupted", session_id, {"reason": "node restarted"})
        return released

    # prime pool ----------------------------------------------------------------------------
    def put_prime(self, bits: int, prime: int) -> None:
        """Store one pre-generated safe prime (sealed; never logged)."""
        prime_id = secrets.token_bytes(16)
        with self._write() as w:
            w.execute("INSERT INTO prime_pool (prime_id, bits, created_at, prime) VALUES (?, ?, ?, ?)",
                      (prime_id, bits, time.time(),
                       self.seal("prime_pool", prime_id, int(prime).to_bytes((bits + 7) // 8, "big"))))

    def prime_count(self, bits: int) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM prime_pool WHERE bits = ?", (bits,)).fetchone()[0]

    def take_primes(self, bits: int, count: int = 2) -> list[int] | None:
        """Take ``count`` primes of ``bits`` bits, or none if fewer are stored. They are deleted
        (and, with ``secure_delete``, zeroed) in a committed transaction *before* they are
        returned, so a prime is handed out once, even across a crash."""
        with self._write() as w:
            rows = w.execute(
                "SELECT prime_id, prime FROM prime_pool WHERE bits = ? ORDER BY created_at, prime_id LIMIT ?",
                (bits, count),
            ).fetchall()
            if len(rows) < count:
                return None
            primes = [int.from_bytes(self.unseal("prime_pool", bytes(r[0]), r[1]), "big") for r in rows]
            w.executemany("DELETE FROM prime_pool WHERE prime_id = ?", [(r[0],) for r in rows])
        return primes

    # sessions ------------------------------------------------------------------------------
    # staged session outputs ----------------------------------------------------------------
    def stage_output(self, session_id: bytes, phase: str, output: bytes, *, proposal: bytes,
                     transcript: bytes) -> None:
        """Store a session's output durably as *pending* (sealed), before this node confirms
        it: nothing current changes and nothing is erased until the certificate arrives. The
        proposal and the transcript digest are kept with it, so that the output can still be
        made current later - after a restart - from a certificate a peer shows."""
        with self._write() as w:
            w.execute(
                "INSERT INTO session_outputs (session_id, phase, state, staged_at, output, proposal, transcript) "
                "VALUES (?, ?, 'pending', ?, ?, ?, ?)",
                (session_id, phase, time.time(), self.seal("session_outputs", session_id, output), proposal,
                 transcript),
            )
            self._audit(w, "output-staged", session_id, {"phase": phase})

    def outputs_in_doubt(self, older_than: float = 0.0, *,
                         newer_than: float | None = None) -> list[tuple[bytes, str, bytes, bytes]]:
        """Staged outputs never made current (pending after a crash, or abandoned when a session
        ended without the certificate here - signatures of signs confirmed here among them):
        (session id, phase, proposal, transcript), oldest first; ``newer_than``: only those
        staged within that many seconds. A peer may hold the certificate that makes them current."""
        now = time.time()
        rows = self._conn().execute(
            "SELECT session_id, phase, proposal, transcript FROM session_outputs "
            "WHERE state IN ('pending', 'abandoned') AND staged_at <= ? AND staged_at >= ? ORDER BY staged_at",
            (now - older_than, 0.0 if newer_than is None else now - newer_than),
        ).fetchall()
        return [(bytes(r[0]), r[1], bytes(r[2]), bytes(r[3])) for r in rows]

    def certificate_for(self, session_id: bytes, asker: str) -> bytes:
        """The certificate of a session, for one of its participants only (b"" otherwise)."""
        row = self._conn().execute(
            "SELECT o.certificate, s.participants FROM session_outputs AS o JOIN sessions AS s "
            "ON s.session_id = o.session_id WHERE o.session_id = ? AND o.state = 'confirmed'", (session_id,)
        ).fetchone()
        if row is None or row[0] is None or asker not in json.loads(row[1]):
            return b""
        return bytes(row[0])

    def output_confirmed(self, session_id: bytes, certificate: bytes) -> None:
        """Every participant confirmed (``certificate``) and the output is now current: keep
        the certificate - what a peer that missed the end of the session can be shown - and
        erase the staged copy (the current tables hold the output now)."""
        with self._write() as w:
            w.execute(
                "UPDATE session_outputs SET state = 'confirmed', output = NULL, certificate = ?, finished_at = ? "
                "WHERE session_id = ? AND state != 'confirmed'", (certificate, time.time(), session_id))
            self._audit(w, "output-confirmed", session_id, {})

    def output_abandoned(self, session_id: bytes, reason: str) -> None:
        """The session ended without a certificate here: the staged output stays (a peer may
        hold the certificate) but is marked, and nothing current changed."""
        with self._write() as w:
            w.execute("UPDATE session_outputs SET state = 'abandoned', finished_at = ? WHERE session_id = ? "
                      "AND state = 'pending'", (time.time(), session_id))
            self._audit(w, "output-unconfirmed", session_id, {"reason": reason})

    def staged_output(self, session_id: bytes) -> tuple[str, str, bytes | None, bytes | None] | None:
        """(phase, state, output or None, certificate or None) of a staged session output."""
        row = self._conn().execute(
            "SELECT phase, state, output, certificate FROM session_outputs WHERE session_id = ?", (session_id,)
        ).fetchone()
        if row is None:
            return None
        output = self.unseal("session_outputs", session_id, row[2]) if row[2] is not None else None
        return row[0], row[1], output, None if row[3] is None else bytes(row[3])

    def session_started(self, session_id: bytes, *, phase: str, coordinator: str, participants: Sequence[str]) -> None:
        with self._write() as w:
            w.execute(
                "INSERT INTO sessions (session_id, phase, coordinator, participants, state, created_at) "
                "VALUES (?, ?, ?, ?, 'running', ?)",
                (session_id, phase, coordinator, _parties_text(participants), time.time()),
            )
            self._audit(w, "session-started", session_id,
                        {"phase": phase, "coordinator": coordinator, "participants": list(participants)})

    def session_finished(
        self, session_id: bytes, *, state: str, culprits: Sequence[str] = (), reason: str = "",
        confirmed: ConfirmedSession | None = None,
    ) -> None:
        """Record how a session ended. ``confirmed``: the certificate of a session that kept no
        staged output (signing), written in the same transaction - so a peer that ended
        without it can be shown it (``certificate_for``) at no extra commit on the sign path."""
        if state not in SESSION_STATES or state == "running":
            raise ValueError(f"not a final session state: {state}")
        now = time.time()
        with self._write() as w:
            w.execute(
                "UPDATE sessions SET state = ?, finished_at = ?, culprits = ?, reason = ? WHERE session_id = ?",
                (state, now, _parties_text(culprits), reason, session_id),
            )
            if confirmed is not None:
                w.execute(
                    "INSERT OR IGNORE INTO session_outputs (session_id, phase, state, staged_at, output, proposal, "
                    "transcript, certificate, finished_at) VALUES (?, ?, 'confirmed', ?, NULL, ?, ?, ?, ?)",
                    (session_id, confirmed.phase, now, confirmed.proposal, confirmed.transcript,
                     confirmed.certificate, now),
                )
            self._audit(w, f"session-{state}", session_id, {"culprits": list(culprits), "reason": reason})

    def session_refused(self, session_id: bytes, *, phase: str, coordinator: str, reason: str) -> None:
        with self._write() as w:
            self._audit(w, "session-refused", session_id, {"phase": phase, "coordinator": coordinator,
                                                           "reason": reason})

    def session_state(self, session_id: bytes) -> str | None:
        row = self._conn().execute("SELECT state FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        return None if row is None else row[0]

    # audit log -----------------------------------------------------------------------------
    def append_audit(self, event: str, session_id: bytes | None = None, detail: dict[str, Any] | None = None) -> None:
        with self._write() as w:
            self._audit(w, event, session_id, detail or {})

    @staticmethod
    def _audit_hash(prev: bytes, at: float, event: str, session_id: bytes | None, detail: str) -> bytes:
        body = json.dumps([repr(at), event, (session_id or b"").hex(), detail], separators=(",", ":"))
        return hashlib.sha256(prev + body.encode()).digest()

    def _audit(self, w: sqlite3.Connection, event: str, session_id: bytes | None, detail: dict[str, Any]) -> None:
        row = w.execute("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        prev = bytes(row[0]) if row else b"\x00" * 32
        at = time.time()
        detail_text = json.dumps(detail, sort_keys=True, separators=(",", ":"))
        w.execute(
            "INSERT INTO audit_log (at, event, session_id, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
            (at, event, session_id, detail_text, prev, self._audit_hash(prev, at, event, session_id, detail_text)),
        )

    def audit_log(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT seq, at, event, session_id, detail FROM audit_log ORDER BY seq"
        ).fetchall()
        return [{"seq": r[0], "at": r[1], "event": r[2], "session_id": r[3], "detail": json.loads(r[4])} for r in rows]

    def verify_audit_chain(self) -> bool:
        prev = b"\x00" * 32
        for at, event, sid, detail, prev_hash, digest in self._conn().execute(
            "SELECT at, event, session_id, detail, prev_hash, hash FROM audit_log ORDER BY seq"
        ):
            if bytes(prev_hash) != prev or bytes(digest) != self._audit_hash(prev, at, event, sid, detail):
                return False
            prev = bytes(digest)
        return True

    # backup and restore --------------------------------------------------------------------
    def backup(self, dest: Path) -> None:
        """Write an encrypted copy of the database to ``dest`` (mode 0600).

        Presignatures are *not* restorable: the copy marks every one consumed and erases it,
        because a backup taken before a presignature was used would otherwise bring it back
        after a restore (presignature reuse leaks the key). Pre-generated primes are left out
        for the same reason. Key shares and aux info, which may be used any number of times, are
        what a backup is for - only the *current* share version is kept, so a backup taken
        before a refresh or resharing restores a share of an older epoch that the rest of the
        committee no longer combines with: back up again after every refresh or resharing."""
        # Snapshot into a private temporary file (rollback-journal mode, so the image is one
        # self-contained file), scrub it, and read it back.
        with tempfile.TemporaryDirectory(dir=self.path.parent) as tmpdir:
            snap_path = Path(tmpdir) / "snapshot.sqlite3"
            snapshot = sqlite3.connect(snap_path, isolation_level=None)
            try:
                self._conn().backup(snapshot)
                snapshot.execute("PRAGMA journal_mode = DELETE")
                snapshot.execute(
                    "UPDATE presignatures SET state = 'consumed', consumed_at = ?, consumed_for = ?, data = NULL "
                    "WHERE state != 'consumed'",
                    (time.time(), b"backup"),
                )
                # Nor pre-generated primes: restored after they were used, a prime would end up
                # in two Paillier moduli, and gcd(N1, N2) factors both.
                snapshot.execute("DELETE FROM prime_pool")
                snapshot.execute("VACUUM")  # do not carry erased ciphertexts in free pages
            finally:
                snapshot.close()
            image = snap_path.read_bytes()
        header = json.dumps(
            {
                "format": "fusion-prime-backup/1",
                "node_id": (self.meta("node_id") or b"").decode(),
                "kdf": self.meta("kdf").decode(),  # type: ignore[union-attr]
                "kdf_salt": self.meta("kdf_salt").hex(),  # type: ignore[union-attr]
                "scrypt_log2_n": int(self.meta("scrypt_log2_n")),  # type: ignore[arg-type]
                "backup_salt": secrets.token_hex(16),
                "schema_version": self.schema_version(),
                "created_at": time.time(),
            },
            sort_keys=True,
        ).encode()
        backup_key = _backup_key(self._key, json.loads(header)["backup_salt"])
        blob = BACKUP_MAGIC + struct.pack(">I", len(header)) + header + _seal(backup_key, image, header)
        write_secret_file(Path(dest), blob)
        self.append_audit("backup-written", detail={"bytes": len(blob)})

    @classmethod
    def restore(
        cls, backup: Path, dest: Path, key: KeyMaterial, *, node_id: str | None = None, allow_weak_kdf: bool = False
    ) -> Storage:
        """Restore a backup into a fresh database at ``dest`` (which must not exist)."""
        dest = Path(dest)
        if dest.exists():
            raise StorageError(f"{dest} already exists; restore only into a fresh data directory")
        header, sealed = read_backup_header(backup)
        if header["kdf"] != key.kind:
            raise WrongKey(f"{backup} was made with {'a passphrase' if header['kdf'] == 'scrypt' else 'a key file'}")
        log2_n = int(header["scrypt_log2_n"])
        if key.kind == "scrypt" and log2_n < PRODUCTION_SCRYPT_LOG2_N and not allow_weak_kdf:
            raise StorageError(f"{backup}: scrypt N = 2^{log2_n} is below the production minimum")
        if node_id is not None and header["node_id"] and header["node_id"] != node_id:
            raise StorageError(f"{backup} belongs to node {header['node_id']!r}, not {node_id!r}")
        storage_key = key.derive(bytes.fromhex(header["kdf_salt"]), log2_n)
        header_bytes = json.dumps(header, sort_keys=True).encode()
        try:
            image = _unseal(_backup_key(storage_key, header["backup_salt"]), sealed, header_bytes)
        except ValueError:
            what = "passphrase" if key.kind == "scrypt" else "key file"
            raise WrongKey(f"wrong {what} for backup {backup} (or the file is damaged); nothing was restored") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".restoring")
        write_secret_file(tmp, image, overwrite=True)
        out = sqlite3.connect(tmp, isolation_level=None)
        try:
            if out.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise StorageError(f"{backup}: the restored database fails SQLite's integrity check")
            out.execute("PRAGMA journal_mode = WAL")
        finally:
            out.close()
        os.replace(tmp, dest)
        restored = cls(dest, key, node_id=node_id, scrypt_log2_n=log2_n, allow_weak_kdf=allow_weak_kdf, create=False)
        restored.append_audit("restored-from-backup", detail={"created_at": header["created_at"]})
        return restored


def _backup_key(storage_key: bytes, backup_salt_hex: str) -> bytes:
    return hmac.new(storage_key, b"fusion-prime/backup/v1|" + bytes.fromhex(backup_salt_hex), hashlib.sha256).digest()


def read_backup_header(path: Path) -> tuple[dict[str, Any], bytes]:
    blob = Path(path).read_bytes()
    if not blob.startswith(BACKUP_MAGIC) or len(blob) < len(BACKUP_MAGIC) + 4:
        raise StorageError(f"{path} is not a fusion-prime backup")
    (n,) = struct.unpack(">I", blob[len(BACKUP_MAGIC): len(BACKUP_MAGIC) + 4])
    start = len(BACKUP_MAGIC) + 4
    try:
        header = json.loads(blob[start: start + n])
    except ValueError:
        raise StorageError(f"{path}: backup header is damaged") from None
    if header.get("format") != "fusion-prime-backup/1":
        raise StorageError(f"{path}: unsupported backup format {header.get('format')!r}")
    return header, blob[start + n:]


def database_summary(path: Path) -> dict[str, Any]:
    """Counts an operator can see without the storage key (opened read-only)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DatabaseDamaged(f"{path} is empty: not a fusion-prime database")
        return _summary(path)
    except sqlite3.Error as exc:
        translated = _translate(exc, path)
        if translated is exc:
            translated = DatabaseDamaged(f"{path}: cannot read the database ({exc})")
        raise translated from exc


def check_key(path: Path, key: KeyMaterial, *, allow_weak_kdf: bool = False) -> int:
    """Raise :class:`WrongKey` unless ``key`` opens the database at ``path``, and
    :class:`RecordCorrupt` if a sealed row does not authenticate; returns how many sealed rows
    were verified. Opened read-only, nothing is written (``cli status``)."""
    path = Path(path)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return _verify_sealed_rows(path, db, _derive_checked(path, db, key, allow_weak_kdf))
        finally:
            db.close()
    except sqlite3.Error as exc:
        translated = _translate(exc, path)
        if translated is exc:
            translated = DatabaseDamaged(f"{path}: cannot read the database ({exc})")
        raise translated from exc


def _summary(path: Path) -> dict[str, Any]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        problem = _quick_check_problem(db)
        if problem is not None:
            raise DatabaseDamaged(f"{path}: the database file is damaged - SQLite's quick_check says: {problem}; "
                                  "restore it from a backup")

        def count(sql: str) -> int:
            return db.execute(sql).fetchone()[0]

        states = dict(db.execute("SELECT state, COUNT(*) FROM presignatures GROUP BY state").fetchall())
        sessions = dict(db.execute("SELECT state, COUNT(*) FROM sessions GROUP BY state").fetchall())
        node = db.execute("SELECT value FROM meta WHERE name = 'node_id'").fetchone()
        return {
            "node_id": bytes(node[0]).decode("utf-8", "replace") if node else None,
            "schema_version": count("SELECT MAX(version) FROM schema_version"),
            "keys": count("SELECT COUNT(*) FROM key_shares"),
            "aux_info": count("SELECT COUNT(*) FROM aux_info"),
            "presignatures": {s: states.get(s, 0) for s in PRESIG_STATES},
            "sessions": sessions,
            "audit_entries": count("SELECT COUNT(*) FROM audit_log"),
        }
    finally:
        db.close()
