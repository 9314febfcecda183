"""The chains image's Bitcoin devnet: the project's regtest node behind its JSON-RPC server,
listening on the container's address.

    fusion-prime-bitcoin-devnet --datadir /var/lib/fusion-prime/bitcoin --host 0.0.0.0 \\
        --rpc-password-file /run/secrets/bitcoin_rpc_password

``python -m fusion_prime.bridge.chains.devnet`` does the same on loopback for one machine and
prints the password it chose; here the password comes from a compose secret and is never
printed, passed on a command line or put in the environment.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datadir", type=Path, required=True)
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a container's own address
    parser.add_argument("--port", type=int, default=18443)
    parser.add_argument("--rpc-user", default="fusion")
    parser.add_argument("--rpc-password-file", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        password = args.rpc_password_file.read_text().strip()
        if not password:
            raise ValueError(f"{args.rpc_password_file} is empty")
        node = RegtestNode(args.datadir)
        server = BitcoinRPCServer(node, host=args.host, port=args.port, user=args.rpc_user, password=password).start()
    except (OSError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(json.dumps({"bitcoin": {"url": server.url, "user": args.rpc_user, "chain": "regtest"}}), flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
        node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
