"""A real, throwaway PostgreSQL server for tests: one cluster in a temp dir on a free loopback port.

Why a real server and not a mock: the bridge's PostgreSQL path depends on what only the server does
(row locks for claims, NUMERIC(78,0), transactional DDL, triggers), so the same test suite runs
against SQLite and against this cluster.

How it is found: the PostgreSQL 15 server binaries (``initdb``, ``pg_ctl``, ``postgres``) in
``/usr/lib/postgresql/15/bin`` (``$FP_PG_BINDIR`` overrides; ``/usr/local/bin/initdb`` on the dev
machines is only a symlink to the same files; another major version under ``/usr/lib/postgresql`` is
the last resort). ``make setup`` installs Debian's ``postgresql`` package when they are missing, so a
missing binary here is an error with that advice, never a skip.

How it runs: ``initdb`` refuses to run as root, so when the tests run as root (CI does) every server
command runs as the ``postgres`` system user through ``runuser -u postgres --`` (the user is created if
absent) and the temp dir is chowned to it. The superuser gets a random password (scram-sha-256, also
on the loopback), Unix sockets are off (no ``/tmp/.s.PGSQL.<port>`` shared between workers), and
durability settings are off because the cluster is thrown away. The postmaster is a child of the
test process with a parent-death signal (``setpriv --pdeathsig``), so even a SIGKILLed pytest does not
leave a server behind; normally :meth:`PostgresCluster.stop` does a fast shutdown and removes the dir.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from fp_guards import HANG_GUARD

from fusion_prime.node.devnet import free_port

PG_MAJOR = 15
PG_USER = "postgres"
SUPERUSER = "postgres"
_REQUIRED = ("initdb", "pg_ctl", "postgres")
_PREFIX = "fp-pg-"
_OWNER_FILE = "owner.pid"
_START_ATTEMPTS = 5
_READY_DEADLINE_S = HANG_GUARD  # a stuck server fails the session with its log, rather than hanging it


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found or started; the message says why and what to do."""


def find_bindir() -> Path:
    """The directory holding the PostgreSQL server binaries, preferring major version 15."""
    candidates: list[Path] = []
    if os.environ.get("FP_PG_BINDIR"):
        candidates.append(Path(os.environ["FP_PG_BINDIR"]))
    candidates.append(Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin"))
    for name in _REQUIRED:
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)  # follows /usr/local/bin symlinks
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates.extend(v / "bin" for v in versions)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in _REQUIRED):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        + ", ".join(str(c) for c in dict.fromkeys(candidates))
        + ". Run `make setup`, which installs Debian's `postgresql` package when they are missing "
        "(or set FP_PG_BINDIR)."
    )


def _sweep_orphans() -> None:
    """Remove clusters' temp dirs left by test processes that were killed (SIGKILL/SIGTERM skip the
    fixture's teardown; the server itself died with them through its parent-death signal). A dir
    is an orphan only when the process that made it is gone, so a sibling worker's is never touched."""
    for path in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            owner = int((path / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


def _ensure_pg_user() -> pwd.struct_passwd:
    """The ``postgres`` system user (Debian's package creates it; a bare machine may lack it)."""
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True, capture_output=True, text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise PostgresUnavailable(f"cannot create the {PG_USER!r} user (initdb refuses root): {detail}") from exc
    return pwd.getpwnam(PG_USER)


class PostgresCluster:
    """One throwaway cluster. ``start()`` returns it ready for connections; ``stop()`` is idempotent."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.base: Path | None = None
        self.port: int | None = None
        self.password = secrets.token_urlsafe(24)
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        self._owner: pwd.struct_passwd | None = _ensure_pg_user() if self._as_root else None

    # paths and commands -------------------------------------------------------------------
    @property
    def data(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def log(self) -> Path:
        assert self.base is not None
        return self.base / "server.log"

    def _cmd(self, name: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / name), *args]
        return ["runuser", "-u", PG_USER, "--", *cmd] if self._as_root else cmd

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # lifecycle ----------------------------------------------------------------------------
    def start(self) -> PostgresCluster:
        try:
            self._initdb()
            last = ""
            for _ in range(_START_ATTEMPTS):
                self.port = free_port()
                if self._launch():
                    return self
                last = self.log_tail()
                if "could not bind" not in last and "already in use" not in last:
                    break  # not a port race: retrying would fail the same way
            raise PostgresUnavailable(f"PostgreSQL ({self.bindir}) did not start; server log:\n{last}")
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        _sweep_orphans()
        self.base = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (self.base / _OWNER_FILE).write_text(str(os.getpid()))
        self._chown(self.base)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        result = subprocess.run(
            self._cmd("initdb", "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile),
                      "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync"),
            capture_output=True, text=True, check=False,
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed ({' '.join(result.args)}), exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )

    def _launch(self) -> bool:
        """Start the postmaster on ``self.port``; True once it accepts a connection, False if it exited."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": "200",
            "dynamic_shared_memory_type": "mmap",
        }
        args = ["-D", str(self.data), "-p", str(self.port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        cmd = self._cmd("postgres", *args)
        if shutil.which("setpriv"):
            # The postmaster (or runuser, which forwards SIGTERM to it) dies with this process.
            cmd = ["setpriv", "--pdeathsig", "TERM", "--", *cmd]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _READY_DEADLINE_S
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                with psycopg.connect(self.admin_dsn(), connect_timeout=5):
                    return True
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"PostgreSQL started but accepted no connection on port {self.port}; log:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (disconnects clients), then the temp dir is removed. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            subprocess.run(self._cmd("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60"),
                           capture_output=True, check=False)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._kill_postmaster()
                proc.kill()
                proc.wait()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown

    # connections and databases ------------------------------------------------------------
    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} password={self.password} dbname={dbname}"

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL of one database of this cluster, with psycopg 3 as the driver."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "fp") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        # FORCE (PostgreSQL 13+) ends sessions a failed test left open instead of failing the drop.
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def database(self, prefix: str = "fp") -> Iterator[str]:
        """A fresh, empty database for the duration of the block (its SQLAlchemy URL); dropped after."""
        name = self.create_database(prefix)
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
