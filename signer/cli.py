"""`python -m fusion_prime.signer.cli`: the wallet command line, on top of the SDK.

Every command talks to one node over TLS (pinning that node's certificate) and signs its
request with the client key read from ``--client-key`` (a file holding the 32-byte secret in
hex, mode 0600). Output is JSON on stdout; errors go to stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..protocol.errors import InvalidInput
from ..protocol.identity import PartyIdentity
from .client import WalletClient, WalletError


def _client(args: argparse.Namespace) -> WalletClient:
    secret = bytes.fromhex(Path(args.client_key).read_text().strip())
    return WalletClient(args.target, Path(args.server_cert).read_bytes(), PartyIdentity.from_secret(secret),
                        server_name=args.server_name)


def _key(text: str) -> bytes:
    key = bytes.fromhex(text)
    if len(key) != 16:
        raise InvalidInput("key id must be 32 hex characters")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port of a node's wallet API")
    parser.add_argument("--server-cert", required=True, help="that node's TLS certificate (PEM)")
    parser.add_argument("--server-name", help="the node id in its certificate")
    parser.add_argument("--client-key", required=True, help="file with the client secret key (hex)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("keys", help="list keys")
    p = sub.add_parser("pubkey", help="public key and addresses at a path")
    p.add_argument("--key", required=True)
    p.add_argument("--path", default="m")
    p.add_argument("--network", default="regtest")
    p = sub.add_parser("sign-digest", help="sign a 32-byte digest (hex) at a path")
    p.add_argument("--key", required=True)
    p.add_argument("--digest", required=True)
    p.add_argument("--path", default="m")
    p.add_argument("--request-id")
    p = sub.add_parser("create-key", help="generate a new t-of-n key")
    p.add_argument("--threshold", type=int, required=True)
    p.add_argument("--parties", type=int, required=True)
    p.add_argument("--label", default="")
    args = parser.parse_args(argv)
    try:
        with _client(args) as w:
            if args.command == "keys":
                out = [{"key_id": k.key_id.hex(), "threshold": k.threshold, "parties": list(k.parties),
                        "public_key": k.group_public_key.hex(), "presignatures": k.presignatures_available}
                       for k in w.list_keys()]
            elif args.command == "pubkey":
                r = w.public_key(_key(args.key), args.path, args.network)
                out = {"public_key": r.public_key.hex(), "ethereum_address": r.ethereum_address,
                       "bitcoin_address": r.bitcoin_address, "path": r.path}
            elif args.command == "sign-digest":
                sig = w.sign(_key(args.key), bytes.fromhex(args.digest), args.path, request_id=args.request_id)
                out = {"r": f"{sig.r:064x}", "s": f"{sig.s:064x}", "recovery_id": sig.recovery_id,
                       "public_key": sig.public_key.to_bytes().hex()}
            else:
                r = w.create_key(args.threshold, args.parties, args.label)
                out = {"key_id": r.key_id.hex(), "public_key": r.group_public_key.hex(), "threshold": r.threshold,
                       "parties": list(r.parties)}
    except (WalletError, InvalidInput, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
