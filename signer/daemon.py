"""`python -m fusion_prime.signer.daemon`: a signer node with the wallet API.

The same node as ``fusion_prime.node.cli run`` — transport, sessions, storage, pool — with
two additions: its ``authorize`` hook is this node's wallet policy (every sign session must
carry a client request that this node's own policy allows), and a TLS gRPC server for wallets.
The node package never imports this one: the signer plugs into the node, not the reverse.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from ..node.cli import fail_logged, operator_error
from ..node.config import load_config
from ..node.daemon import Node
from ..node.logs import configure_logging
from ..node.material import storage_key
from .policy import PolicyBook, PolicyEnforcer
from .service import WalletAuthorizer, WalletServicer, start_wallet_server


async def serve(config: Path, policy: Path, wallet_listen: str, *, port_file: Path | None = None) -> None:
    cfg = load_config(config)
    book = PolicyBook.load(policy)  # a bad policy file stops the node before it opens anything
    authorizer = WalletAuthorizer(None)
    node = Node(cfg, storage_key(cfg, dict(os.environ)), authorize=authorizer.in_thread)  # creates the data dir
    enforcer = PolicyEnforcer(book, cfg.data_dir / "wallet-policy.sqlite3")
    authorizer.enforcer = enforcer
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    parser.add_argument("--policy", type=Path, required=True, help="this node's wallet policy (TOML)")
    parser.add_argument("--wallet-listen", default="127.0.0.1:0", help="address of the wallet API")
    parser.add_argument("--port-file", type=Path, help="write the bound wallet port here")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        trio.run(lambda: serve(args.config, args.policy, args.wallet_listen, port_file=args.port_file))
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        # A storage fault (damaged, truncated or foreign database, wrong key, a row that does
        # not authenticate), a bad config or policy, a missing file: logged, one clear line on
        # stderr, exit status 2 - no traceback. The database is checked at open before
        # anything is written, so a refused start changed nothing on disk. Anything else is a
        # bug and keeps its traceback.
        known = operator_error(exc)
        if known is None:
            raise
        return fail_logged(known, "fusion_prime.signer.daemon")
    return 0


if __name__ == "__main__":
    sys.exit(main())
