"""Operator command line: ``python -m fusion_prime.node.cli <command>``.

Commands
  init      create a node folder: identity key, TLS certificate, config, data dir, database
  run       start the daemon (transport + session manager + presignature pool); SIGTERM drains
  status    what the database holds (no key needed) and, if the daemon runs, its health
  backup    write an encrypted backup of the node's key shares and aux info
  restore   restore a backup into a fresh data directory
  devnet    create configs for N nodes on loopback; with --run, run them as separate processes

Errors an operator can fix (bad config, wrong passphrase, missing file) and every storage
fault (a damaged, truncated or foreign database file, a row that does not authenticate) are
printed as one clear line and exit with status 2; ``run`` also logs them. The database is
checked before anything is written, so a refused start changes nothing on disk; nothing is
printed that contains secret material.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from .config import (
    DEFAULT_PASSPHRASE_ENV,
    ConfigError,
    NodeConfig,
    PeerEntry,
    StorageKeySource,
    config_to_toml,
    load_config,
    parse_address,
)
from .identity import IdentityError, create_identity
from .material import storage_key
from .storage import KeyMaterial, Storage, StorageError, check_key, database_summary
from .tls import TLSError, create_certificate_files

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_init(args: argparse.Namespace) -> int:
    folder = Path(args.dir).resolve()
    config_path = folder / "node.toml"
    if config_path.exists():
        return _fail(f"{config_path} already exists")
    parse_address(args.listen)
    identity = create_identity(folder / "identity.key")
    create_certificate_files(args.node_id, folder / "tls.crt", folder / "tls.key")
    if args.key_file:
        KeyMaterial.create_key_file(folder / "storage.key")
        source = StorageKeySource(key_file=folder / "storage.key")
    else:
        source = StorageKeySource(passphrase_env=args.passphrase_env)
    (folder / "peers").mkdir(exist_ok=True)
    own_cert = folder / "peers" / f"{args.node_id}.crt"
    own_cert.write_bytes((folder / "tls.crt").read_bytes())
    cfg = NodeConfig(
        path=config_path, node_id=args.node_id, listen=args.listen, data_dir=folder / "data",
        identity_key=folder / "identity.key", tls_cert=folder / "tls.crt", tls_key=folder / "tls.key",
        roster=(PeerEntry(args.node_id, args.index, args.listen, identity.public_key, own_cert),),
        storage=source, metrics_listen=args.metrics, security_level=args.level,
    )
    config_path.write_text(config_to_toml(cfg))
    cfg = load_config(config_path)
    Storage(cfg.database_path, storage_key(cfg, dict(os.environ)), node_id=cfg.node_id).close()
    print(f"created {config_path}")
    print("share this roster entry (and peers/<id>.crt) with the other operators:\n")
    print(f'[[roster]]\nnode_id = "{args.node_id}"\nindex = {args.index}\naddress = "{args.listen}"\n'
          f'identity_public_key = "{identity.public_key.hex()}"\ntls_cert = "peers/{args.node_id}.crt"')
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from .daemon import Node
    from .logs import configure_logging

    configure_logging(args.log_level)
    cfg = load_config(args.config)
    node = Node(cfg, storage_key(cfg, dict(os.environ)))
    if not cfg.test_mode:
        import logging

        from .logs import log_event

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
    from .devnet import create_devnet

    base = Path(args.dir)
    nodes = create_devnet(base, args.nodes, base_port=args.base_port, test_mode=args.test_mode,
                          round_deadline_seconds=args.round_deadline)
    for node in nodes:
        print(node.config_path)
    if not args.run:
        return 0
    procs = [subprocess.Popen([sys.executable, "-m", "fusion_prime.node.cli", "run", "--config", str(n.config_path)])  # noqa: S603
             for n in nodes]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(p.wait() for p in procs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion-prime-node", description="Fusion Prime signer node")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a node folder")
    p.add_argument("--dir", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--index", type=int, default=1, help="this node's party index in the roster")
    p.add_argument("--listen", default="127.0.0.1:7001")
    p.add_argument("--metrics", default=None, help="loopback host:port for /metrics and /healthz")
    p.add_argument("--level", default="128")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--passphrase-env", default=DEFAULT_PASSPHRASE_ENV)
    key.add_argument("--key-file", action="store_true", help="generate a storage key file instead")
    p.set_defaults(func=cmd_init)

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
    p.add_argument("--run", action="store_true", help="run every node as its own process")
    p.set_defaults(func=cmd_devnet)
    return parser


OPERATOR_ERRORS = (ConfigError, StorageError, IdentityError, TLSError, ValueError, OSError)


def operator_error(exc: BaseException) -> BaseException | None:
    """The error an operator can act on (a storage fault, a bad config, a missing file...)
    in ``exc`` - looking inside exception groups, which is how a fault inside the trio
    nursery arrives - or None if ``exc`` is something else (a bug: it keeps its traceback).
    A storage error wins over the others it came with."""
    if isinstance(exc, BaseExceptionGroup):
        found = [e for e in (operator_error(inner) for inner in exc.exceptions) if e is not None]
        return next((e for e in found if isinstance(e, StorageError)), found[0] if found else None)
    return exc if isinstance(exc, OPERATOR_ERRORS) else None


def fail_logged(exc: BaseException, logger_name: str) -> int:
    """Log ``exc`` (type and message, no traceback, no secrets) if logging is configured, and
    print one clear line on stderr; exit status 2."""
    import logging

    from .logs import log_event

    what = "storage fault" if isinstance(exc, StorageError) else "cannot run"
    log_event(logging.getLogger(logger_name), logging.ERROR, what, error=type(exc).__name__,
              exc_info=(type(exc), exc, None))
    return _fail(_one_line(exc))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BaseException as exc:
        known = operator_error(exc)
        if known is None:
            raise
        if args.command == "run":
            return fail_logged(known, "fusion_prime.node.cli")
        return _fail(_one_line(known))


if __name__ == "__main__":
    sys.exit(main())
