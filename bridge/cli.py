"""`python -m fusion_prime.bridge.cli`: the bridge's command line, on top of the SDK.

Every command talks to one node's Bridge API over TLS, pinning that node's certificate
(``--server-cert``; ``--server-name`` is the name in it, the node id). No client key is needed: the
bridge API is not privileged (``bridge/service.py`` says why).

    deposit-address --destination eip155:31338 --recipient 0x… --source bip122:0f91…  (or --asset BTC)
    status --deposit ID | --address ADDR | --recipient 0x… [--destination CHAIN] | --tx TXID --vout N --source CHAIN
    watch --deposit ID | --address ADDR        one JSON object per line, until the deposit is final
    health

Output is JSON on stdout. An error is one line on stderr (``error: CODE: reason``) and exit code 2,
never a traceback; a closed pipe (``… | head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..node.commandline import OneLineParser, one_line, stdout_closed
from .client import BridgeClient, BridgeError, to_dict

EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fusion-prime-bridge", description=__doc__.splitlines()[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="host:port of a node's Bridge API (every command but burn)")
    parser.add_argument("--server-cert", help="that node's TLS certificate (PEM), pinned")
    parser.add_argument("--server-name", help="the name in the certificate (the node id)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per unary call (default 30)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("deposit-address", help="the deposit address for a recipient (registered with the node)")
    p.add_argument("--destination", required=True, help="CAIP-2 of the EVM chain that mints, e.g. eip155:31338")
    p.add_argument("--recipient", required=True, help="0x address that receives fpBTC/fpETH")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", help="CAIP-2 of the chain you deposit on")
    source.add_argument("--asset", help="what you deposit (BTC, ETH) when one chain carries it")
    p = sub.add_parser("status", help="deposits by id, outpoint, address or recipient")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--deposit", help="deposit id (64 hex digits)")
    which.add_argument("--address", help="deposit address: every deposit to it")
    which.add_argument("--recipient", help="0x recipient: every deposit minting to it")
    which.add_argument("--tx", help="source transaction id (with --vout and --source)")
    p.add_argument("--vout", type=int, help="output index (EVM native transfer: 4294967295)")
    p.add_argument("--source", help="CAIP-2 of the source chain (with --tx)")
    p.add_argument("--destination", help="only deposits minting on this chain (with --recipient)")
    p = sub.add_parser("watch", help="follow deposits as they progress (JSON lines)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--deposit", help="deposit id (64 hex digits): until it is minted, dust or erratum")
    which.add_argument("--address", help="deposit address: its deposits, including ones not sent yet")
    p.add_argument("--until", metavar="STATE", help="end once a deposit reaches STATE (e.g. minted); a deposit that "
                                                    "ends otherwise (dust, erratum) is an error")
    p = sub.add_parser("withdrawal", help="burns and their payouts: by burn id or by burner")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--burn", help="burn id (64 hex digits, from the Burned event)")
    which.add_argument("--burner", help="0x account that burned: its burns, newest first")
    p.add_argument("--until", metavar="STATE", help="with --burn: ask again every second until the withdrawal "
                                                    "reaches STATE (e.g. confirmed); a refund instead is an error")
    p.add_argument("--wait-seconds", type=float, default=600.0,
                   help="with --until: give up after this long (default 600)")
    p = sub.add_parser("burn", help="burn fpBTC/fpETH on the Gateway to be paid on its home chain (your EVM "
                                    "key signs; no node is asked)")
    p.add_argument("--rpc", required=True, help="the destination chain's JSON-RPC URL")
    p.add_argument("--gateway", required=True, help="the Gateway's address")
    p.add_argument("--token", required=True, help="the wrapped token's address (fpBTC, fpETH)")
    p.add_argument("--amount", required=True, type=int, help="base units to burn (sat for fpBTC, wei for fpETH)")
    p.add_argument("--destination", required=True, help="where to be paid: a Bitcoin address, or a 0x address")
    p.add_argument("--key-file", required=True, help="file holding your EVM account's hex private key")
    p = sub.add_parser("prove-reserves", help="a fresh proof-of-reserves report (JSON) to verify with "
                                              "python -m fusion_prime.bridge.reserves verify")
    p.add_argument("--out", help="write the report here (default: stdout)")
    sub.add_parser("health", help="the node's bridge health (chain heads, routes, errata)")
    return parser


def _emit(data: Any, *, lines: bool = False) -> None:
    text = json.dumps(data, separators=(",", ":")) if lines else json.dumps(data, indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _burn(args: argparse.Namespace) -> dict[str, Any]:
    """Send ``Gateway.burn(token, amount, destination)`` from the caller's own account."""
    from eth_account import Account
    from web3 import Web3
    from web3.logs import DISCARD

    from .chainview import gateway_contract

    w3 = Web3(Web3.HTTPProvider(args.rpc, request_kwargs={"timeout": 60}))
    account = Account.from_key(Path(args.key_file).read_text().strip())
    gateway = gateway_contract(w3, args.gateway)
    destination = args.destination.encode() if not args.destination.startswith("0x") else \
        bytes.fromhex(args.destination[2:])
    tx = gateway.functions.burn(Web3.to_checksum_address(args.token), args.amount, destination).build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address, "pending")})
    sent = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(sent, timeout=120)
    if int(receipt["status"]) != 1:
        raise ValueError(f"burn transaction 0x{bytes(sent).hex()} reverted")
    (event,) = gateway.events.Burned().process_receipt(receipt, errors=DISCARD)
    return {"burn_id": "0x" + bytes(event["args"]["burnId"]).hex(), "burn_nonce": int(event["args"]["burnNonce"]),
            "amount": str(args.amount), "destination": args.destination, "tx": "0x" + bytes(sent).hex()}


#: where a deposit's life ends without a mint
DEPOSIT_ENDS = ("dust", "erratum")
#: where a withdrawal's life ends without a payout
REFUND_STATES = ("refunding", "refund_signed", "refunded")


def _withdrawal_until(bridge: BridgeClient, burn_id: str, state: str, wait_seconds: float) -> dict[str, Any]:
    """Ask for one burn's withdrawal until it reaches ``state``: the burn may not be observed yet
    (NOT_FOUND while its block gains depth), and a payout moves through several states."""
    deadline = time.monotonic() + wait_seconds
    seen = "not observed yet"
    while True:
        try:
            status = bridge.withdrawal(burn_id)
        except BridgeError as exc:
            if exc.code != "NOT_FOUND":
                raise
        else:
            seen = status.state
            if status.state == state:
                return to_dict(status)
            if status.state in REFUND_STATES and state not in REFUND_STATES:
                raise BridgeError("FAILED_PRECONDITION", f"the burn is being refunded ({status.reason}), not paid")
        if time.monotonic() >= deadline:
            raise BridgeError("DEADLINE_EXCEEDED", f"the withdrawal did not reach {state} within {wait_seconds:g} s "
                                                   f"(last seen: {seen})")
        time.sleep(1.0)


def _run(args: argparse.Namespace) -> None:
    if args.command == "burn":
        _emit(_burn(args))
        return
    if not args.target or not args.server_cert:
        raise BridgeError("INVALID_ARGUMENT", "--target and --server-cert name the node to ask")
    cert = Path(args.server_cert).read_bytes()
    with BridgeClient(args.target, cert, server_name=args.server_name, timeout=args.timeout) as bridge:
        if args.command == "deposit-address":
            _emit(to_dict(bridge.deposit_address(args.destination, args.recipient, source=args.source,
                                                 asset=args.asset)))
        elif args.command == "status":
            if args.tx is None and (args.vout is not None or args.source is not None):
                raise BridgeError("INVALID_ARGUMENT", "--vout and --source go with --tx")
            if args.destination is not None and args.recipient is None:
                raise BridgeError("INVALID_ARGUMENT", "--destination goes with --recipient")
            if args.deposit is not None:
                _emit(to_dict(bridge.deposit(args.deposit)))
            elif args.tx is not None:
                if args.vout is None or args.source is None:
                    raise BridgeError("INVALID_ARGUMENT", "--tx needs --vout and --source")
                _emit(to_dict(bridge.deposit(outpoint=(args.source, args.tx, args.vout))))
            else:
                found = bridge.deposits(address=args.address, recipient=args.recipient, destination=args.destination)
                _emit([to_dict(d) for d in found])
        elif args.command == "watch":
            for update in bridge.watch(args.deposit, address=args.address):
                _emit(to_dict(update), lines=True)
                state = update.deposit.state
                if args.until is not None and state == args.until:
                    return
                if args.until is not None and state in DEPOSIT_ENDS:
                    raise BridgeError("FAILED_PRECONDITION", f"the deposit ended {state}, not {args.until}")
        elif args.command == "prove-reserves":
            report = bridge.prove_reserves()
            if args.out:
                Path(args.out).write_text(report + "\n")
            else:
                sys.stdout.write(report + "\n")
        elif args.command == "withdrawal":
            if args.until is not None and args.burn is None:
                raise BridgeError("INVALID_ARGUMENT", "--until goes with --burn")
            if args.until is not None:
                _emit(_withdrawal_until(bridge, args.burn, args.until, args.wait_seconds))
            elif args.burn is not None:
                _emit(to_dict(bridge.withdrawal(args.burn)))
            else:
                _emit([to_dict(w) for w in bridge.withdrawals(args.burner)])
        else:
            _emit(to_dict(bridge.health()))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        stdout_closed()
        return 0
    except KeyboardInterrupt:
        return 130
    except (BridgeError, OSError, ValueError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
