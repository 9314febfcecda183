"""`fusion-prime-signer` (`python -m fusion_prime.signer.daemon`): a signer node with the wallet API.

Commands
  run       (the default: ``fusion-prime-signer --config ... --policy ...`` still works) the same
            node as ``fusion_prime.node.cli run`` - transport, sessions, storage, pool - with two
            additions: its ``authorize`` hook is this node's wallet policy (every session that
            creates, changes or uses a key must carry a client request that this node's own
            policy allows), and a TLS gRPC server for wallets.
  backup    copy the wallet policy state (idempotency records, rate windows, labels) to a file;
            safe while the daemon runs
  restore   put such a copy back into a data directory that has no state file (daemon stopped)

The node package never imports this one: the signer plugs into the node, not the reverse.
Errors an operator can fix (usage, config, policy, storage, a missing file) are one line on
stderr and exit status 2, no traceback; ``run`` also logs them. Anything else is a bug: one line
and exit status 1, its traceback only inside the JSON log line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import trio

from ..node.cli import fail_logged, operator_error
from ..node.commandline import EXIT_USAGE, OneLineParser, one_line
from ..node.config import load_config
from ..node.daemon import Node
from ..node.logs import configure_logging, log_event
from ..node.material import storage_key
from .cli import EXIT_REMOTE
from .policy import PolicyBook, PolicyEnforcer, backup_state, restore_state
from .service import WalletAuthorizer, WalletServicer, start_wallet_server

log = logging.getLogger("fusion_prime.signer.daemon")
STATE_FILE = "wallet-policy.sqlite3"
COMMANDS = ("run", "backup", "restore")
EXIT_INTERNAL = EXIT_REMOTE  # not the operator's to fix: the same status as a failed remote call


def state_path(config: Path) -> tuple[str, Path]:
    """(node id, the wallet policy state file) of the node configured in ``config``."""
    cfg = load_config(config)
    return cfg.node_id, cfg.data_dir / STATE_FILE


async def serve(config: Path, policy: Path, wallet_listen: str, *, port_file: Path | None = None) -> None:
    cfg = load_config(config)
    book = PolicyBook.load(policy)  # a bad policy file stops the node before it opens anything
    authorizer = WalletAuthorizer(None)
    node = Node(cfg, storage_key(cfg, dict(os.environ)), authorize=authorizer.in_thread)  # creates the data dir
    state = cfg.data_dir / STATE_FILE
    fresh_state = not state.exists()
    enforcer = PolicyEnforcer(book, state)
    authorizer.enforcer = enforcer
    if fresh_state and node.storage.list_keys():
        # A node restored from its backup without the wallet state: the other participants still
        # enforce theirs, but this node forgot which request ids it answered and what each
        # client used of its window.
        log_event(log, logging.WARNING, "wallet policy state is new but this node holds keys: idempotency "
                  "records and rate windows start empty here (restore the state backup first: "
                  "fusion-prime-signer restore)", state=str(state))
    server = None
    try:
        async with trio.open_nursery() as nursery:
            # the node runs until SIGTERM/SIGINT (or node.stop()); the nursery waits for it
            await nursery.start(lambda task_status: node.run(handle_signals=True, task_status=task_status))
            servicer = WalletServicer(node, enforcer, trio.lowlevel.current_trio_token())
            server, port = start_wallet_server(servicer, wallet_listen, cfg.tls_cert.read_bytes(),
                                               cfg.tls_key.read_bytes())
            if port_file is not None:
                port_file.write_text(str(port))
    finally:
        if server is not None:
            server.stop(grace=1.0)
        enforcer.close()


def cmd_backup(args: argparse.Namespace) -> int:
    node_id, state = state_path(args.config)
    counts = backup_state(state, args.out, node_id=node_id)
    print(f"wallet policy state of {node_id} written to {args.out} ({counts['authorised']} authorised requests, "
          f"{counts['authorised_sessions']} sign sessions)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    node_id, state = state_path(args.config)
    restored = restore_state(args.backup, state, node_id=node_id)
    print(f"wallet policy state of {node_id} restored into {state} ({restored['authorised']} authorised requests; "
          "requests answered after the backup was taken are unknown to this node)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fusion-prime-signer", description=__doc__.splitlines()[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the node with its wallet API (the default command)")
    p.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    p.add_argument("--policy", type=Path, required=True, help="this node's wallet policy (TOML)")
    p.add_argument("--wallet-listen", default="127.0.0.1:0", help="address of the wallet API")
    p.add_argument("--port-file", type=Path, help="write the bound wallet port here")
    p.add_argument("--log-level", default="INFO")
    p = sub.add_parser("backup", help="copy the wallet policy state (the daemon may be running)")
    p.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    p.add_argument("--out", type=Path, required=True, help="the backup file to write (must not exist)")
    p = sub.add_parser("restore", help="restore the wallet policy state (daemon stopped, no state file)")
    p.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    p.add_argument("--backup", type=Path, required=True, help="a file written by 'backup'")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # the original form: options only
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        try:
            return cmd_backup(args) if args.command == "backup" else cmd_restore(args)
        except Exception as exc:
            known = operator_error(exc)
            if known is None:
                print(f"error: internal error ({type(exc).__name__}: {one_line(exc)})", file=sys.stderr)
                return EXIT_INTERNAL
            print(f"error: {one_line(known)}", file=sys.stderr)
            return EXIT_USAGE
    try:
        configure_logging(args.log_level)
        trio.run(lambda: serve(args.config, args.policy, args.wallet_listen, port_file=args.port_file))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        # A storage fault (damaged, truncated or foreign database, wrong key, a row that does
        # not authenticate), a bad config or policy, a missing file: logged, one clear line on
        # stderr, exit status 2 - no traceback. The database is checked at open before
        # anything is written, so a refused start changed nothing on disk. Anything else is a
        # bug: its traceback goes to the JSON log (one line, for whoever debugs it), the
        # operator gets one line and exit status 1.
        known = operator_error(exc)
        if known is not None:
            return fail_logged(known, "fusion_prime.signer.daemon")
        log_event(log, logging.ERROR, "signer daemon failed", error=type(exc).__name__,
                  exc_info=(type(exc), exc, exc.__traceback__))
        print(f"error: internal error ({type(exc).__name__}: {one_line(exc)}); the log has the details",
              file=sys.stderr)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
