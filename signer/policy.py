"""Per-key signing policy, checked by *every* participating node against its own copy.

A node operator writes the policy file (TOML) of its node; the policy of a key says which
clients may ask for signatures, how many signatures a client may obtain per time window,
how many operator approvals a request needs and whose approvals count. Nothing in a request
or from another node can widen it.

State that must survive restarts — which requests were authorised (idempotency: one request
id, one charge to the window, whatever the coordinator does), for which sign sessions, and how
much of each window is used — lives in the node's own SQLite file next to its data, written
before the node agrees to sign. One sign request may run in at most MAX_SESSIONS_PER_REQUEST
distinct sign sessions (the coordinator retries a failed sign with another signer set): a
compromised coordinator cannot turn one request into any number of signatures.

Example::

    [default]
    clients = ["02ab..."]          # hex compressed public keys
    max_signatures_per_window = 100
    window_seconds = 3600
    approvals_required = 0
    approvers = []
    create_key_clients = ["02ab..."]  # may also refresh and reshare keys

    [keys."<key id hex>"]
    clients = ["03cd..."]
    approvals_required = 1
    approvers = ["02ef..."]

Reads (ListKeys, GetPublicKey) are answered only to clients the file names: a key
administrator (``create_key_clients``) sees every key, any other client the keys whose policy
lists it. ``fusion-prime-wallet policy init`` writes a file of this form (:func:`render_policy`).

Backup: the state file is the node's *other* database. ``fusion-prime-signer backup`` copies it
consistently while the daemon runs (:func:`backup_state`), ``fusion-prime-signer restore`` puts
it back into a data directory that has none (:func:`restore_state`); README "Backup and restore"
says what a restored (older) state means for idempotency and windows.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol.errors import InvalidInput
from .requests import ADMIN_KINDS, KIND_LIST_KEYS, KIND_PUBLIC_KEY, KIND_SIGN, VerifiedRequest

# Sign sessions one client request may be authorised for: the coordinator's attempts (Node.sign
# retries a failed session with another signer set, attempts=3). Asked again for a session it
# was already authorised for, a node answers as before (idempotent).
MAX_SESSIONS_PER_REQUEST = 3


class PolicyRefusal(Exception):
    """The request is authentic but this node's policy forbids it; the message says why."""


def _keys(values: object, what: str) -> frozenset[bytes]:
    if not isinstance(values, list):
        raise InvalidInput(f"policy: {what} must be a list of hex public keys")
    out = set()
    for v in values:
        try:
            key = bytes.fromhex(str(v))
        except ValueError:
            raise InvalidInput(f"policy: {what} entry {v!r} is not hex") from None
        if len(key) != 33 or key[0] not in (2, 3):
            raise InvalidInput(f"policy: {what} entry is not a 33-byte compressed public key")
        out.add(key)
    return frozenset(out)


@dataclass(frozen=True)
class KeyPolicy:
    clients: frozenset[bytes] = frozenset()
    max_signatures_per_window: int = 0  # 0: no signing at all
    window_seconds: int = 3600
    approvals_required: int = 0
    approvers: frozenset[bytes] = frozenset()

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], base: KeyPolicy | None = None) -> KeyPolicy:
        base = base or cls()
        known = {"clients", "max_signatures_per_window", "window_seconds", "approvals_required", "approvers",
                 "create_key_clients"}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"policy: unknown settings {sorted(unknown)}")
        policy = cls(
            clients=_keys(data["clients"], "clients") if "clients" in data else base.clients,
            max_signatures_per_window=int(data.get("max_signatures_per_window", base.max_signatures_per_window)),
            window_seconds=int(data.get("window_seconds", base.window_seconds)),
            approvals_required=int(data.get("approvals_required", base.approvals_required)),
            approvers=_keys(data["approvers"], "approvers") if "approvers" in data else base.approvers,
        )
        if policy.window_seconds <= 0 or policy.max_signatures_per_window < 0 or policy.approvals_required < 0:
            raise InvalidInput("policy: window must be positive and limits non-negative")
        if policy.approvals_required > len(policy.approvers):
            raise InvalidInput("policy: more approvals required than there are approvers")
        return policy


@dataclass(frozen=True)
class PolicyBook:
    default: KeyPolicy = field(default_factory=KeyPolicy)
    keys: Mapping[str, KeyPolicy] = field(default_factory=dict)
    create_key_clients: frozenset[bytes] = frozenset()

    @classmethod
    def load(cls, path: Path) -> PolicyBook:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"policy file {path}: {exc}") from None
        default_data = data.get("default", {})
        default = KeyPolicy.from_mapping(default_data)
        keys = {k.lower(): KeyPolicy.from_mapping(v, default) for k, v in data.get("keys", {}).items()}
        creators = _keys(default_data.get("create_key_clients", []), "create_key_clients")
        return cls(default, keys, creators)

    def for_key(self, key_id: bytes) -> KeyPolicy:
        return self.keys.get(key_id.hex(), self.default)

    def knows(self, client: bytes) -> bool:
        """True if the file names ``client`` as a key administrator or as a client of some key
        (approvers are operators, not API clients)."""
        return client in self.create_key_clients or client in self.default.clients or \
            any(client in p.clients for p in self.keys.values())

    def may_see(self, client: bytes, key_id: bytes) -> bool:
        """Whether ListKeys shows ``key_id`` to ``client`` and GetPublicKey answers it: the
        keys it may sign with, and every key for an administrator (who creates and reshares
        them)."""
        return client in self.create_key_clients or client in self.for_key(key_id).clients


class PolicyEnforcer:
    """Checks verified requests against this node's policy and records what it authorised."""

    def __init__(self, book: PolicyBook, db_path: Path) -> None:
        self.book = book
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
            self._create_tables()
        except sqlite3.Error as exc:  # damaged, foreign, or beside another file's -wal/-shm
            raise InvalidInput(f"wallet policy state {db_path} cannot be opened: {exc}"
                               f"{_leftovers_hint(db_path)}") from None

    def _create_tables(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS authorised (client BLOB NOT NULL, request_id TEXT NOT NULL, "
                "body BLOB NOT NULL, key_id BLOB NOT NULL, at REAL NOT NULL, result BLOB, "
                "PRIMARY KEY (client, request_id))"
            )
            # Added later; the file has no schema version: an older file simply gains the table
            # (its requests have no sessions recorded yet and count from zero).
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS authorised_sessions (client BLOB NOT NULL, request_id TEXT NOT NULL, "
                "session_id BLOB NOT NULL, at REAL NOT NULL, PRIMARY KEY (client, request_id, session_id))"
            )
            # Added later, like authorised_sessions: the label a CreateKey served here gave its key.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS key_labels (key_id BLOB PRIMARY KEY, label TEXT NOT NULL, "
                "client BLOB NOT NULL, request_id TEXT NOT NULL, at REAL NOT NULL)"
            )

    def check_read(self, request: VerifiedRequest) -> None:
        """A read (ListKeys, GetPublicKey) is allowed for a client this policy names, and a
        public key only for a key it may see; nothing is recorded. Raises PolicyRefusal."""
        body = request.body
        if body.kind not in (KIND_LIST_KEYS, KIND_PUBLIC_KEY):
            raise PolicyRefusal(f"a {body.kind!r} request is not a read")
        if not self.book.knows(body.client):
            raise PolicyRefusal("client is not named in this node's wallet policy")
        if body.kind == KIND_PUBLIC_KEY and not self.book.may_see(body.client, body.key_id):
            raise PolicyRefusal("client is not allowed to use this key")

    def check(self, request: VerifiedRequest, *, now: float | None = None, session_id: bytes | None = None) -> bool:
        """Authorise (and durably record) a request; True when it was already authorised with
        the same body (an idempotent repeat). Raises PolicyRefusal with the reason otherwise.

        ``session_id`` names the sign session the request is checked for (a participant's
        check of a proposal): a sign request is authorised for at most
        MAX_SESSIONS_PER_REQUEST distinct sessions, and the same session asked again is an
        idempotent repeat. Without it (the coordinator's check before any session exists)
        nothing is bound to a session."""
        body = request.body
        now = time.time() if now is None else now
        if body.kind in ADMIN_KINDS:  # create, refresh, reshare: key administration
            if body.client not in self.book.create_key_clients:
                action = {"create-key": "create", "refresh": "refresh", "reshare": "reshare"}[body.kind]
                raise PolicyRefusal(f"client may not {action} keys (not in create_key_clients)")
            return self._record(request, now, count_against=None)
        policy = self.book.for_key(body.key_id)
        if body.client not in policy.clients:
            raise PolicyRefusal("client is not allowed to use this key")
        approved = len(request.approvers & policy.approvers)
        if approved < policy.approvals_required:
            raise PolicyRefusal(f"{approved} of {policy.approvals_required} required operator approvals")
        sign = body.kind == KIND_SIGN
        return self._record(request, now, count_against=policy if sign else None,
                            session_id=session_id if sign else None)

    def _record(self, request: VerifiedRequest, now: float, count_against: KeyPolicy | None,
                session_id: bytes | None = None) -> bool:
        body = request.body
        encoded = body.identity()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT body FROM authorised WHERE client = ? AND request_id = ?",
                                       (body.client, body.request_id)).fetchone()
                if row is not None:
                    if bytes(row[0]) != encoded:
                        raise PolicyRefusal("request id already used for a different request")
                    if session_id is not None:
                        self._bind_session(body.client, body.request_id, session_id, now)
                    self._db.execute("COMMIT")
                    return True
                if count_against is not None:
                    used = self._charged(body.client, body.key_id, now - count_against.window_seconds)
                    if used >= count_against.max_signatures_per_window:
                        raise PolicyRefusal(
                            f"limit reached: {count_against.max_signatures_per_window} signatures per "
                            f"{count_against.window_seconds} s")
                self._db.execute("INSERT INTO authorised (client, request_id, body, key_id, at) VALUES (?,?,?,?,?)",
                                 (body.client, body.request_id, encoded, body.key_id, now))
                if session_id is not None:
                    self._bind_session(body.client, body.request_id, session_id, now)
                self._db.execute("COMMIT")
                return False
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _bind_session(self, client: bytes, request_id: str, session_id: bytes, now: float) -> None:
        """Record that this request is authorised for ``session_id`` (inside _record's
        transaction), refusing a session beyond MAX_SESSIONS_PER_REQUEST."""
        key = (client, request_id)
        if self._db.execute("SELECT 1 FROM authorised_sessions WHERE client = ? AND request_id = ? "
                            "AND session_id = ?", (*key, session_id)).fetchone():
            return  # the same session asked again: idempotent
        used = self._db.execute("SELECT COUNT(*) FROM authorised_sessions WHERE client = ? AND request_id = ?",
                                key).fetchone()[0]
        if used >= MAX_SESSIONS_PER_REQUEST:
            raise PolicyRefusal(f"request {request_id!r} was already authorised for {used} sign sessions "
                                f"(at most {MAX_SESSIONS_PER_REQUEST}); the client must send a new request")
        self._db.execute("INSERT INTO authorised_sessions (client, request_id, session_id, at) VALUES (?,?,?,?)",
                         (*key, session_id, now))

    def sessions_of(self, client: bytes, request_id: str) -> list[bytes]:
        """The sign sessions a request was authorised for, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT session_id FROM authorised_sessions WHERE client = ? AND request_id = ? "
                                    "ORDER BY at, session_id", (client, request_id)).fetchall()
        return [bytes(r[0]) for r in rows]

    def store_result(self, request: VerifiedRequest, result: bytes) -> None:
        with self._lock:
            self._db.execute("UPDATE authorised SET result = ? WHERE client = ? AND request_id = ?",
                             (result, request.body.client, request.body.request_id))

    def stored_result(self, client: bytes, request_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM authorised WHERE client = ? AND request_id = ?",
                                   (client, request_id)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def record_label(self, request: VerifiedRequest, key_id: bytes) -> None:
        """Remember the label of a key created by ``request`` (the first one recorded stays)."""
        body = request.body
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO key_labels (key_id, label, client, request_id, at) "
                             "VALUES (?,?,?,?,?)", (key_id, body.label, body.client, body.request_id, time.time()))

    def labels(self) -> dict[bytes, str]:
        with self._lock:
            rows = self._db.execute("SELECT key_id, label FROM key_labels").fetchall()
        return {bytes(r[0]): r[1] for r in rows}

    def used_in_window(self, client: bytes, key_id: bytes, *, now: float | None = None) -> int:
        """Sign requests of ``client`` under ``key_id`` charged to its current window."""
        now = time.time() if now is None else now
        with self._lock:
            return self._charged(client, key_id, now - self.book.for_key(key_id).window_seconds)

    def _charged(self, client: bytes, key_id: bytes, since: float) -> int:
        """Requests of ``client`` under ``key_id`` authorised after ``since`` (lock held)."""
        return int(self._db.execute("SELECT COUNT(*) FROM authorised WHERE client = ? AND key_id = ? AND at > ?",
                                    (client, key_id, since)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------- writing a policy file
def render_policy(*, sign_clients: Iterable[bytes], admin_clients: Iterable[bytes], max_signatures_per_window: int,
                  window_seconds: int, approvals_required: int = 0, approvers: Iterable[bytes] = ()) -> str:
    """The text of a policy file with one ``[default]`` section (what ``policy init`` writes).
    The caller validates it with :meth:`PolicyBook.load`, the daemon's own loader."""

    def keys(values: Iterable[bytes]) -> str:
        return "[" + ", ".join(f'"{v.hex()}"' for v in sorted(set(values))) + "]"

    return (
        "# Fusion Prime wallet policy (signer/policy.py documents every setting).\n"
        "# Every node checks its own copy: give each node the file its operator agrees to.\n"
        "[default]\n"
        f"clients = {keys(sign_clients)}\n"
        f"max_signatures_per_window = {int(max_signatures_per_window)}\n"
        f"window_seconds = {int(window_seconds)}\n"
        f"approvals_required = {int(approvals_required)}\n"
        f"approvers = {keys(approvers)}\n"
        f"create_key_clients = {keys(admin_clients)}\n"
    )


# --------------------------------------------------------------------- backup and restore
STATE_BACKUP_FORMAT = "fusion-prime-wallet-state/1"
_STATE_TABLES = ("authorised", "authorised_sessions")


def _leftovers(db_path: Path) -> list[Path]:
    """The -wal and -shm files of ``db_path`` (SQLite's WAL mode). Left behind without their
    main file - moved away while another process still had it open - they would be applied to
    whatever file takes its name."""
    return [p for p in (Path(f"{db_path}-wal"), Path(f"{db_path}-shm")) if p.exists()]


def _leftovers_hint(db_path: Path) -> str:
    found = _leftovers(db_path)
    return f" (move {' and '.join(str(p) for p in found)} away with the file they belong to)" if found else ""


def backup_state(db_path: Path, dest: Path, *, node_id: str) -> dict[str, int]:
    """Copy the policy state file to ``dest`` (mode 0600), consistently even while the daemon
    writes it (SQLite's online backup reads one snapshot). The copy is one self-contained
    SQLite file carrying its format and node id. Returns the row counts copied.

    The state holds no secret (client public keys, request bodies, the signatures handed out,
    times); it is what keeps idempotency and the rate windows across a restore."""
    if not db_path.exists():
        raise InvalidInput(f"{db_path}: no wallet policy state here (has the signer daemon ever run?)")
    if dest.exists():
        raise InvalidInput(f"{dest} already exists; refusing to overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".tmp")[1])
    try:
        os.chmod(tmp, 0o600)
        source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        target = sqlite3.connect(tmp, isolation_level=None)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
            target.execute("CREATE TABLE backup_info (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            target.executemany("INSERT INTO backup_info VALUES (?, ?)",
                               [("format", STATE_BACKUP_FORMAT), ("node_id", node_id),
                                ("created_at", repr(time.time()))])
            counts = {t: int(target.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])  # noqa: S608 (fixed names)
                      for t in _STATE_TABLES}
        except sqlite3.DatabaseError as exc:
            raise InvalidInput(f"{db_path}: cannot copy the wallet policy state: {exc}") from None
        finally:
            target.close()
            source.close()
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def restore_state(backup: Path, db_path: Path, *, node_id: str) -> dict[str, object]:
    """Put a state backup in place as ``db_path``, which must not exist (the daemon is stopped
    and the old file, if any, moved away by the operator: a restore never overwrites newer
    records by accident). Checks the format, the node id and SQLite's integrity first; returns
    what was restored (row counts, the backup's creation time)."""
    if db_path.exists():
        raise InvalidInput(f"{db_path} already exists; stop the daemon and move it away to restore over it")
    if _leftovers(db_path):
        raise InvalidInput(f"{db_path} has no main file but SQLite files of an older one are there"
                           f"{_leftovers_hint(db_path)}")
    if not backup.is_file():
        raise InvalidInput(f"{backup}: no such backup file")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(db_path.name + ".restoring")
    tmp.unlink(missing_ok=True)
    try:
        source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        target = sqlite3.connect(tmp, isolation_level=None)
        try:
            source.backup(target)
            if target.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise InvalidInput(f"{backup}: fails SQLite's integrity check; nothing was restored")
            info = dict(target.execute("SELECT name, value FROM backup_info").fetchall())
            if info.get("format") != STATE_BACKUP_FORMAT:
                raise InvalidInput(f"{backup}: not a wallet policy state backup ({info.get('format')!r})")
            if info.get("node_id") != node_id:
                raise InvalidInput(f"{backup} belongs to node {info.get('node_id')!r}, not {node_id!r}")
            counts: dict[str, object] = {
                t: int(target.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])  # noqa: S608 (fixed names)
                for t in _STATE_TABLES}
            target.execute("DROP TABLE backup_info")
            target.execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as exc:
            raise InvalidInput(f"{backup}: not a readable wallet policy state backup ({exc})") from None
        finally:
            target.close()
            source.close()
        os.chmod(tmp, 0o600)
        os.replace(tmp, db_path)
    finally:
        tmp.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
    counts["backup_created_at"] = float(info["created_at"])
    return counts
