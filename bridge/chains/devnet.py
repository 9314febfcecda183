"""``python -m fusion_prime.bridge.chains.devnet``: a Bitcoin regtest devnet and two anvil chains.

Prints one JSON line with the endpoints (and the Bitcoin RPC credentials) on stdout, then runs
until SIGINT/SIGTERM, shutting everything down in reverse order. The node devnet starts it
beside the signer nodes and reads that line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path

from .bitcoin.node import RegtestNode
from .bitcoin.rpcserver import BitcoinRPCServer
from .evm.anvil import AnvilProcess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datadir", type=Path, help="Bitcoin devnet datadir (default: a temporary directory)")
    parser.add_argument("--btc-port", type=int, default=0, help="Bitcoin RPC port (0 = any free port)")
    parser.add_argument("--rpc-user", default="fusion")
    parser.add_argument("--rpc-password", default=None, help="default: random, printed in the JSON line")
    parser.add_argument("--source-chain-id", type=int, default=31337)
    parser.add_argument("--dest-chain-id", type=int, default=31338)
    parser.add_argument("--no-evm", action="store_true", help="start only the Bitcoin devnet")
    args = parser.parse_args(argv)
    if args.source_chain_id == args.dest_chain_id:
        parser.error("the two EVM chains need different chain ids")

    tmp = None
    datadir = args.datadir
    if datadir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fusion-btc-devnet-")
        datadir = Path(tmp.name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    anvils: list[AnvilProcess] = []
    node = RegtestNode(datadir)
    server = BitcoinRPCServer(node, port=args.btc_port, user=args.rpc_user, password=args.rpc_password).start()
    try:
        if not args.no_evm:
            for chain_id in (args.source_chain_id, args.dest_chain_id):
                anvils.append(AnvilProcess(chain_id).start())
        info = {
            "bitcoin": {"url": server.url, "user": server.user, "password": server.password,
                        "chain": "regtest", "datadir": str(datadir)},
            "evm": [{"url": a.url, "chain_id": a.chain_id} for a in anvils],
        }
        print(json.dumps(info), flush=True)
        stop.wait()
    finally:
        for a in reversed(anvils):
            a.stop()
        server.stop()
        node.close()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
