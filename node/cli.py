"""Operator command line: ``python -m fusion_prime.node.cli <command>`` (``fusion-prime-node``).

Commands
  init      create a node folder: identity key, TLS certificate, config, data dir, database
  roster    export this node's roster entry; add the entries other operators sent (checked)
  run       start the daemon (transport + session manager + presignature pool); SIGTERM drains
  status    what the database holds (no key needed) and, if the daemon runs, its health
  backup    write an encrypted backup of the node's key shares and aux info
  restore   restore a backup into a fresh data directory
  devnet    create configs for N nodes on loopback; with --run, run them as separate processes

Errors an operator can fix (bad config, wrong passphrase, missing file, a port in use) and every
storage fault (a damaged, truncated or foreign database file, a row that does not authenticate)
are printed as one clear line and exit with status 2; ``run`` also logs them. The database is
checked before anything is written, so a refused start changes nothing on disk; nothing is
printed that contains secret material. ``init`` checks every argument before it writes and
builds the folder beside its destination, renaming it into place only when complete: a failed
init leaves nothing behind, and the same command succeeds once the cause is fixed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..protocol.errors import InsecureParameters
from ..protocol.levels import level_by_name
from .commandline import EXIT_USAGE, OneLineParser, one_line, stdout_closed
from .config import (
    DEFAULT_PASSPHRASE_ENV,
    NODE_ID_RE,
    ConfigError,
    NodeConfig,
    PeerEntry,
    RosterEntryError,
    StorageKeySource,
    add_roster_entries,
    check_advertised,
    config_to_toml,
    export_roster_entry,
    is_loopback,
    is_unspecified,
    load_config,
    parse_address,
)
from .identity import IdentityError, create_identity
from .logs import configure_logging, log_event  # before .material (grpc): see logs.py
from .material import storage_key
from .storage import KeyMaterial, Storage, StorageError, check_key, database_summary
from .tls import TLSError, create_certificate_files

EXIT_INTERRUPTED = 130


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


class InitError(ValueError):
    """An ``init`` argument is unusable; raised before anything is written."""


@dataclass(frozen=True)
class InitPlan:
    """Everything ``init`` will write, decided (and checked) before the first file exists."""

    folder: Path
    node_id: str
    index: int
    listen: str
    advertise: str
    advertise_host: str
    metrics: str | None
    level: str
    test_mode: bool
    key_file: bool
    passphrase_env: str


def plan_init(args: argparse.Namespace, environ: dict[str, str]) -> InitPlan:
    """Check every ``init`` argument and the environment; raise :class:`InitError` with the
    first problem. Nothing is created here, so a refusal leaves nothing to clean up."""
    folder = Path(args.dir).resolve()
    if not NODE_ID_RE.match(args.node_id):
        raise InitError(f"--node-id {args.node_id!r}: 1-63 chars of a-z, 0-9 and '-', not starting with '-'")
    if not 1 <= args.index < 2**31:
        raise InitError(f"--index {args.index}: a party index is a positive integer")
    try:
        listen_host, _ = parse_address(args.listen)
    except ValueError as exc:
        raise InitError(f"--listen {args.listen!r}: {exc}") from None
    if args.advertise is None and is_unspecified(listen_host):
        raise InitError(f"--listen {args.listen} binds every address of this host; give --advertise HOST:PORT, "
                        "the address the other nodes dial (and the certificate names)")
    advertise = args.advertise or args.listen
    try:
        advertise_host, _ = check_advertised(advertise)
    except ValueError as exc:
        raise InitError(f"--advertise: {exc}") from None
    if args.metrics is not None:
        try:
            metrics_host, _ = parse_address(args.metrics)
        except ValueError as exc:
            raise InitError(f"--metrics {args.metrics!r}: {exc}") from None
        if not is_loopback(metrics_host):
            raise InitError(f"--metrics {args.metrics!r}: /metrics and /healthz listen on loopback only")
    try:
        level = level_by_name(args.level)
    except InsecureParameters as exc:
        raise InitError(f"--level {args.level!r}: {exc}") from None
    if level.test_only and not args.test_mode:
        raise InitError(f"--level {args.level!r} is a test-only level (small Paillier moduli); "
                        "add --test-mode for a test network")
    if (folder / "node.toml").exists():
        raise InitError(f"{folder / 'node.toml'} already exists")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InitError(f"{folder} exists and is not an empty folder; init creates a new node folder")
    if not args.key_file:
        value = environ.get(args.passphrase_env)
        if not value:
            raise InitError(f"the storage passphrase is read from ${args.passphrase_env}, which is not set "
                            "(set it, or use --key-file for a generated storage key file)")
        try:
            KeyMaterial.passphrase(value)
        except StorageError as exc:
            raise InitError(str(exc)) from None
    return InitPlan(folder, args.node_id, args.index, args.listen, advertise, advertise_host, args.metrics,
                    args.level, args.test_mode, args.key_file, args.passphrase_env)


def build_node_folder(plan: InitPlan, environ: dict[str, str]) -> NodeConfig:
    """Create the node folder of ``plan``: built in a temporary sibling (same file system) and
    renamed into place only once the database opened with the new config, so the folder either
    exists complete or not at all."""
    plan.folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{plan.folder.name}.init-", dir=plan.folder.parent))
    try:
        identity = create_identity(staging / "identity.key")
        create_certificate_files(plan.node_id, staging / "tls.crt", staging / "tls.key", hosts=[plan.advertise_host])
        if plan.key_file:
            KeyMaterial.create_key_file(staging / "storage.key")
            source = StorageKeySource(key_file=staging / "storage.key")
        else:
            source = StorageKeySource(passphrase_env=plan.passphrase_env)
        (staging / "peers").mkdir()
        own_cert = staging / "peers" / f"{plan.node_id}.crt"
        shutil.copyfile(staging / "tls.crt", own_cert)
        cfg = NodeConfig(
            path=staging / "node.toml", node_id=plan.node_id, listen=plan.listen, data_dir=staging / "data",
            identity_key=staging / "identity.key", tls_cert=staging / "tls.crt", tls_key=staging / "tls.key",
            roster=(PeerEntry(plan.node_id, plan.index, plan.advertise, identity.public_key, own_cert),),
            storage=source, metrics_listen=plan.metrics, security_level=plan.level, test_mode=plan.test_mode,
        )
        (staging / "node.toml").write_text(config_to_toml(cfg))
        cfg = load_config(staging / "node.toml")
        Storage(cfg.database_path, storage_key(cfg, environ), node_id=cfg.node_id).close()
        os.rename(staging, plan.folder)  # onto a missing or empty folder: atomic
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_config(plan.folder / "node.toml")


def cmd_init(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    cfg = build_node_folder(plan_init(args, environ), environ)
    entry = export_roster_entry(cfg)
    print(f"created {cfg.path}: node {cfg.node_id!r}, index {cfg.me.index}, peers dial {cfg.me.address}, "
          f"binds {cfg.listen}")
    print(f"certificate SHA-256 {entry.fingerprint}")
    print("next: send this node's roster entry (below; or `roster export`) to the other operators, and add "
          f"theirs with: fusion-prime-node roster add --config {cfg.path} FILE...\n")
    print(entry.to_toml(), end="")
    return 0


def cmd_roster_export(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    entry = export_roster_entry(cfg)
    if args.out:
        out = Path(args.out)
        if out.exists():
            return _fail(f"{out} already exists")
        out.write_text(entry.to_toml())
        print(f"wrote {cfg.node_id}'s roster entry to {out}", file=sys.stderr)
    else:
        print(entry.to_toml(), end="")
    print(f"certificate SHA-256 {entry.fingerprint} (the other operators compare it with you out of band)",
          file=sys.stderr)
    return 0


def _read_entry(name: str) -> tuple[str, str]:
    if name == "-":
        return "<stdin>", sys.stdin.read()
    try:
        return name, Path(name).read_text()
    except UnicodeDecodeError:
        raise RosterEntryError(f"{name}: not a roster entry (not text)") from None


def cmd_roster_add(args: argparse.Namespace) -> int:
    documents = [_read_entry(name) for name in args.entries]
    results = add_roster_entries(Path(args.config), documents)
    for r in results:
        d = r.document
        what = "added" if r.added else "unchanged (already in the roster)"
        print(f"{what}: {d.node_id} (index {d.index}, {d.address}) from {r.source}, "
              f"certificate SHA-256 {d.fingerprint}")
    cfg = load_config(args.config)
    print(f"roster of {cfg.path}: " + ", ".join(f"{e.node_id}@{e.address}" for e in cfg.roster))
    if any(r.added for r in results):
        print("compare each fingerprint with its operator out of band; then send SIGHUP to a running daemon "
              "(systemctl reload fusion-prime-signer, or docker compose kill -s SIGHUP <service>) to adopt the roster")
    return 0


def cmd_roster_list(args: argparse.Namespace) -> int:
    from .config import RosterEntryDocument

    cfg = load_config(args.config)
    for e in cfg.roster:
        me = " (this node)" if e.node_id == cfg.node_id else ""
        print(f"{e.node_id}{me}: index {e.index}, {e.address}, identity {e.identity_public_key.hex()}, "
              f"certificate SHA-256 {RosterEntryDocument.of_peer(e).fingerprint}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from .daemon import Node

    configure_logging(args.log_level)
    cfg = load_config(args.config)
    node = Node(cfg, storage_key(cfg, dict(os.environ)))
    if not cfg.test_mode:
        import logging

        log_event(logging.getLogger("fusion_prime.node.cli"), logging.WARNING,
                  "running without a wallet policy: every roster peer's proposal is accepted; "
                  "production nodes run python -m fusion_prime.signer.daemon", node=cfg.node_id)
    trio.run(lambda: node.run(handle_signals=True))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if not cfg.database_path.exists():
        return _fail(f"no database at {cfg.database_path} (run init or restore first)")
    doc: dict[str, object] = {"config": str(cfg.path), "database": database_summary(cfg.database_path)}
    # The storage key, if this process can have it (a key file, or the passphrase variable set),
    # is checked against the database's key check and every sealed row is authenticated -
    # read-only, nothing is written and no plaintext is kept or shown.
    environ = dict(os.environ)
    if cfg.storage.key_file is not None or environ.get(cfg.storage.passphrase_env or ""):
        verified = check_key(cfg.database_path, storage_key(cfg, environ), allow_weak_kdf=cfg.test_mode)
        doc["storage_key"] = f"ok ({verified} sealed rows authenticate)"
    else:
        doc["storage_key"] = f"not checked (${cfg.storage.passphrase_env} is not set)"
    if cfg.metrics_listen:
        host, port = parse_address(cfg.metrics_listen)
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as resp:
                doc["daemon"] = json.loads(resp.read())
        except OSError as exc:
            doc["daemon"] = {"status": "not running", "detail": str(exc)}
    print(json.dumps(doc, indent=2, default=str))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    with Storage(cfg.database_path, storage_key(cfg, dict(os.environ)), node_id=cfg.node_id,
                 scrypt_log2_n=cfg.storage.scrypt_log2_n, allow_weak_kdf=cfg.test_mode, create=False) as store:
        store.backup(Path(args.out))
    print(f"backup written to {args.out} (presignatures are never included)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    Storage.restore(Path(args.backup), cfg.database_path, storage_key(cfg, dict(os.environ)), node_id=cfg.node_id,
                    allow_weak_kdf=cfg.test_mode).close()
    print(f"restored {args.backup} into {cfg.database_path}")
    return 0


def cmd_devnet(args: argparse.Namespace) -> int:
    from .devnet import create_devnet, free_ports
    from .identity import load_identity

    base = Path(args.dir)
    nodes = create_devnet(base, args.nodes, base_port=args.base_port, test_mode=args.test_mode,
                          round_deadline_seconds=args.round_deadline)
    for node in nodes:
        print(node.config_path)
    if not args.run:
        return 0
    # Each node runs as the signer daemon with its wallet API: a devnet without one could never
    # create a key. One client key may sign and create keys on every node; the policy file is
    # written by the wallet CLI (node/ does not import signer/: the daemon and its policy loader
    # live above it) and checked by the same loader the daemon uses.
    client_key = base / "client.key"
    client = load_identity(client_key) if client_key.exists() else create_identity(client_key)
    policy = base / "policy.toml"
    subprocess.run([sys.executable, "-m", "fusion_prime.signer.cli", "policy", "init", "--out", str(policy),  # noqa: S603
                    "--sign-client", client.public_key.hex(), "--admin-client", client.public_key.hex(),
                    "--force"], check=True, stdout=subprocess.DEVNULL)
    wallet_ports = free_ports(len(nodes))
    procs = [subprocess.Popen([sys.executable, "-m", "fusion_prime.signer.daemon", "--config", str(n.config_path),  # noqa: S603
                               "--policy", str(policy), "--wallet-listen", f"127.0.0.1:{port}"])
             for n, port in zip(nodes, wallet_ports, strict=True)]
    first = nodes[0]
    print(f"wallet API: {', '.join(f'{n.node_id} 127.0.0.1:{p}' for n, p in zip(nodes, wallet_ports, strict=True))}")
    print(f"client key: {client_key}")
    threshold = len(nodes) // 2 + 1  # a majority signs
    print(f"try:  fusion-prime-wallet --target 127.0.0.1:{wallet_ports[0]} --server-cert {first.folder / 'tls.crt'} "
          f"--server-name {first.node_id} --client-key {client_key} "
          f"create-key --threshold {threshold} --parties {len(nodes)}", flush=True)

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(p.wait() for p in procs)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fusion-prime-node", description="Fusion Prime signer node")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a node folder")
    p.add_argument("--dir", required=True, help="the node folder to create (missing or empty)")
    p.add_argument("--node-id", required=True)
    p.add_argument("--index", type=int, default=1, help="this node's party index in the roster")
    p.add_argument("--listen", default="127.0.0.1:7001", help="host:port the node binds (may be 0.0.0.0:PORT)")
    p.add_argument("--advertise", default=None,
                   help="host:port the other nodes dial; the certificate names this host (default: --listen)")
    p.add_argument("--metrics", default=None, help="loopback host:port for /metrics and /healthz")
    p.add_argument("--level", default="128")
    p.add_argument("--test-mode", action="store_true", help="allow a test-only security level (test networks)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--passphrase-env", default=DEFAULT_PASSPHRASE_ENV,
                     help="variable holding the storage passphrase (default %(default)s)")
    key.add_argument("--key-file", action="store_true", help="generate a storage key file instead")
    p.set_defaults(func=cmd_init)

    roster = sub.add_parser("roster", help="exchange and merge roster entries").add_subparsers(
        dest="roster_command", required=True)
    p = roster.add_parser("export", help="print this node's roster entry (one self-contained document)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="write it to this new file instead of stdout")
    p.set_defaults(func=cmd_roster_export)
    p = roster.add_parser("add", help="check entries other operators sent and merge them into the config")
    p.add_argument("--config", required=True)
    p.add_argument("entries", nargs="+", metavar="FILE", help="roster entry documents ('-' reads stdin)")
    p.set_defaults(func=cmd_roster_add)
    p = roster.add_parser("list", help="show the roster with certificate fingerprints")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_roster_list)

    for name, func, helptext in (("run", cmd_run, "start the daemon"), ("status", cmd_status, "show status")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", required=True)
        if name == "run":
            p.add_argument("--log-level", default="INFO")
        p.set_defaults(func=func)

    p = sub.add_parser("backup", help="write an encrypted backup")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="restore a backup into a fresh data directory")
    p.add_argument("--config", required=True)
    p.add_argument("--backup", required=True)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("devnet", help="create (and optionally run) an N-node loopback network")
    p.add_argument("--dir", required=True)
    p.add_argument("--nodes", "-n", type=int, default=3)
    p.add_argument("--base-port", type=int, default=None)
    p.add_argument("--round-deadline", type=float, default=10.0)
    p.add_argument("--test-mode", action="store_true", help="test-only security level (small moduli)")
    p.add_argument("--run", action="store_true",
                   help="run every node as its own signer daemon with its wallet API (a client key and "
                        "a policy are written beside the nodes)")
    p.set_defaults(func=cmd_devnet)
    return parser


OPERATOR_ERRORS = (ConfigError, StorageError, IdentityError, TLSError, ValueError, OSError)
# grpcio reports a port it cannot bind as a bare RuntimeError with this text (the transport
# wraps it in a TransportError that repeats it).
_GRPC_BIND_FAILED = re.compile(r"Failed to bind to address (\S+?);")


class PortUnavailable(OSError):
    """A server could not bind its address (in use, or not an address of this host)."""


def operator_error(exc: BaseException) -> BaseException | None:
    """The error an operator can act on (a storage fault, a bad config, a missing file, a port
    in use...) in ``exc`` - looking inside exception groups, which is how a fault inside the
    trio nursery arrives - or None if ``exc`` is something else (a bug: it keeps its
    traceback). A storage error wins over the others it came with."""
    if isinstance(exc, BaseExceptionGroup):
        found = [e for e in (operator_error(inner) for inner in exc.exceptions) if e is not None]
        return next((e for e in found if isinstance(e, StorageError)), found[0] if found else None)
    if isinstance(exc, RuntimeError):
        bind = _GRPC_BIND_FAILED.search(str(exc))
        if bind is not None:
            return PortUnavailable(f"cannot listen on {bind.group(1)}: the port is in use, or the address "
                                   "is not one of this host's")
        from .transport import TransportError

        if isinstance(exc, TransportError):
            return exc
    return exc if isinstance(exc, OPERATOR_ERRORS) else None


def fail_logged(exc: BaseException, logger_name: str) -> int:
    """Log ``exc`` (type and message, no traceback, no secrets) if logging is configured, and
    print one clear line on stderr; exit status 2."""
    import logging

    what = "storage fault" if isinstance(exc, StorageError) else "cannot run"
    log_event(logging.getLogger(logger_name), logging.ERROR, what, error=type(exc).__name__,
              exc_info=(type(exc), exc, None))
    return _fail(one_line(exc))


def closed_stdout() -> int:
    """The reader of stdout went away (``status | head``): point stdout at /dev/null so the
    interpreter's final flush cannot raise again, and say so in one line."""
    stdout_closed()
    return _fail("the output was closed before it was complete (broken pipe)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return status
    except BrokenPipeError:
        return closed_stdout()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as exc:
        known = operator_error(exc)
        if known is None:
            raise
        if args.command == "run":
            return fail_logged(known, "fusion_prime.node.cli")
        return _fail(one_line(known))


if __name__ == "__main__":
    sys.exit(main())
