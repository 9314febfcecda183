"""`fusion-prime-bridge`: the bridge's command line, on top of the SDK.

The first commands talk to one node's Bridge API over TLS, pinning that node's certificate
(``--server-cert``; ``--server-name`` is the name in it, the node id). No client key is needed: the
bridge API is not privileged (``bridge/service.py`` says why).

    deposit-address --destination eip155:31338 --recipient 0x… --source bip122:0f91…  (or --asset BTC)
    status --deposit ID | --address ADDR | --recipient 0x… [--destination CHAIN] | --tx TXID --vout N --source CHAIN
    watch --deposit ID | --address ADDR        one JSON object per line, until the deposit is final
    health

Chain-side commands (no node's Bridge API is asked):

    burn --rpc URL --gateway 0x… --token 0x… --amount N --destination ADDR --key-file FILE
    deploy --rpc URL --key-file FILE --guardian 0x… --assets assets.toml --key KEYID --out deployment.json
           --wallet-target HOST:PORT --wallet-cert PEM --wallet-name NODE --client-key FILE [--devnet]
    execute-queued --rpc URL --key-file FILE --deployment deployment.json
    configure --bridge bridge.toml --deployment deployment.json --key KEYID

Output is JSON on stdout. An error is one line on stderr (``error: CODE: reason``) and exit code 2,
never a traceback; a closed pipe (``… | head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..node.commandline import OneLineParser, one_line, stdout_closed
from ..node.identity import IdentityError
from ..signer.client import WalletError
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
    p = sub.add_parser("deploy", help="deploy the Gateway and the wrapped assets with the group key as signer; "
                                      "the group signs each asset's configuration through a node's wallet API")
    p.add_argument("--rpc", required=True, help="the destination chain's JSON-RPC URL")
    p.add_argument("--key-file", required=True, help="file holding the deployer's hex private key (pays the gas; "
                                                     "it gets no power over the Gateway)")
    p.add_argument("--guardian", required=True, help="0x address that may veto queued changes and pause")
    p.add_argument("--assets", required=True, type=Path, help="TOML file of [[asset]] tables (README: Deploying "
                                                              "the bridge)")
    p.add_argument("--wallet-target", required=True, help="host:port of a node's wallet API")
    p.add_argument("--wallet-cert", required=True, help="that node's TLS certificate (PEM), pinned")
    p.add_argument("--wallet-name", required=True, help="the name in that certificate (the node id)")
    p.add_argument("--client-key", required=True, help="a wallet client key the nodes' policy lets sign with the key")
    p.add_argument("--key", required=True, help="the group key's id (32 hex digits)")
    p.add_argument("--path", default="m", help="the bridge's signer path of the key (default m)")
    p.add_argument("--admin-delay", type=int, default=2 * 86400, help="seconds a configuration change waits "
                                                                       "(default 2 days)")
    p.add_argument("--guardian-delay", type=int, default=14 * 86400, help="seconds a guardian change waits")
    p.add_argument("--large-mint-delay", type=int, default=3 * 3600, help="seconds a large mint waits")
    p.add_argument("--signer-retention", type=int, default=86400, help="seconds a rotated-out signer stays valid")
    p.add_argument("--devnet", action="store_true", help="an anvil devnet: move its clock past each delay and "
                                                         "execute the configurations at once")
    p.add_argument("--out", type=Path, required=True, help="the deployment file to write (JSON)")
    p = sub.add_parser("execute-queued", help="execute the deployment's queued asset configurations once their "
                                              "delay has passed")
    p.add_argument("--rpc", required=True, help="the destination chain's JSON-RPC URL")
    p.add_argument("--key-file", required=True, help="file holding the sender's hex private key (pays the gas)")
    p.add_argument("--deployment", required=True, type=Path, help="the file `deploy` wrote")
    p = sub.add_parser("configure", help="fill a node's bridge section (key, Gateway, assets) from a deployment; "
                                         "the running daemon picks it up")
    p.add_argument("--bridge", required=True, type=Path, help="the node's bridge.toml, rewritten in place")
    p.add_argument("--deployment", required=True, type=Path, help="the file `deploy` wrote")
    p.add_argument("--key", required=True, help="the group key's id (32 hex digits)")
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


def _group_key_id(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 16:
        raise ValueError(f"--key {text!r} is not a key id (32 hex digits)")
    return key


def _sender(key_file: str) -> Any:
    from eth_account import Account

    try:
        return Account.from_key(Path(key_file).read_text().strip())
    except ValueError:
        raise ValueError(f"{key_file} does not hold a hex private key") from None


def _deploy(args: argparse.Namespace) -> dict[str, Any]:
    """Everything is checked (assets, key, wallet, deployer's funds) before the first
    transaction; the deployment file is written even when a configuration waits in the queue."""
    from web3 import Web3

    from ..node.identity import load_identity
    from ..signer.client import WalletClient
    from .deploy import deploy_bridge, load_assets

    specs = load_assets(args.assets)
    key_id = _group_key_id(args.key)
    sender = _sender(args.key_file)
    guardian = Web3.to_checksum_address(args.guardian)
    if args.out.exists():
        raise ValueError(f"{args.out} exists: a deployment file is never overwritten")
    w3 = Web3(Web3.HTTPProvider(args.rpc, request_kwargs={"timeout": 60}))
    if w3.eth.get_balance(sender.address) == 0:
        raise ValueError(f"the deployer {sender.address} has no funds on {args.rpc}")
    identity = load_identity(Path(args.client_key))
    with WalletClient(args.wallet_target, Path(args.wallet_cert).read_bytes(), identity,
                      server_name=args.wallet_name) as wallet:
        signer = wallet.public_key(key_id, args.path).ethereum_address

        def sign_digest(digest: bytes) -> tuple[int, int, int]:
            sig = wallet.sign(key_id, digest, args.path)
            return sig.r, sig.s, sig.recovery_id

        deployment = deploy_bridge(w3, sender=sender, signer=signer, guardian=guardian, assets=specs,
                                   sign_digest=sign_digest, devnet=args.devnet, admin_delay=args.admin_delay,
                                   guardian_delay=args.guardian_delay, large_mint_delay=args.large_mint_delay,
                                   signer_retention=args.signer_retention)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text(deployment.to_json() + "\n")
    partial.replace(args.out)
    return {"gateway": deployment.gateway, "signer": signer, "tokens": deployment.tokens,
            "queued": [{"symbol": q.symbol, "eta": q.eta} for q in deployment.queued], "file": str(args.out)}


def _execute_queued(args: argparse.Namespace) -> dict[str, Any]:
    from web3 import Web3

    from .deploy import Deployment, execute_queued

    deployment = Deployment.from_json(args.deployment.read_text())
    w3 = Web3(Web3.HTTPProvider(args.rpc, request_kwargs={"timeout": 60}))
    executed, in_effect = execute_queued(w3, _sender(args.key_file), deployment)
    return {"executed": executed, "already_in_effect": in_effect}


def _configure(args: argparse.Namespace) -> dict[str, Any]:
    """Set key_id, gateway and each chain's asset in the node's bridge section, check the result
    as the daemon will read it (complete, or nothing changes), and replace the file whole: the
    daemon polls it and must never read half of it."""
    import tomllib

    import tomli_w

    from .config import BridgeConfigError, load_bridge_config
    from .deploy import Deployment

    key_id = _group_key_id(args.key)
    deployment = Deployment.from_json(args.deployment.read_text())
    data = tomllib.loads(args.bridge.read_text())
    section = data.get("bridge")
    if not isinstance(section, dict) or not isinstance(section.get("chains"), list):
        raise ValueError(f"{args.bridge}: no [bridge] section with [[bridge.chains]]")
    section["key_id"], section["gateway"] = key_id.hex(), deployment.gateway
    by_chain = {chain: deployment.tokens[symbol] for symbol, chain in deployment.source_chains.items()}
    for chain in section["chains"]:
        if chain.get("caip2") in by_chain:
            chain["asset"] = by_chain[chain["caip2"]]
    partial = args.bridge.with_name(args.bridge.name + ".partial")
    partial.unlink(missing_ok=True)  # (a crash's leftover: created afresh below, with the mode)
    # it holds RPC passwords: the copy has the file's mode from its first byte, never the umask's
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, args.bridge.stat().st_mode & 0o777)
    with os.fdopen(fd, "w") as out:
        out.write(tomli_w.dumps(data))
    try:
        bcfg = load_bridge_config(partial)
        if not bcfg.complete:
            raise ValueError(f"{args.bridge}: still incomplete after the deployment's values (a chain without "
                             "its asset?); not changed")
    except (BridgeConfigError, ValueError):
        partial.unlink()
        raise
    partial.replace(args.bridge)
    return {"bridge": str(args.bridge), "key_id": key_id.hex(), "gateway": deployment.gateway,
            "assets": {c.caip2: c.asset for c in bcfg.chains}}


def _run(args: argparse.Namespace) -> None:
    chain_only = {"burn": _burn, "deploy": _deploy, "execute-queued": _execute_queued, "configure": _configure}
    if args.command in chain_only:
        try:
            result = chain_only[args.command](args)
        except (BridgeError, OSError, ValueError, WalletError, IdentityError):
            raise
        except Exception as exc:  # web3's own (an RPC error, a revert found by gas estimation): one line too
            raise ValueError(f"{type(exc).__name__}: {exc}") from None
        _emit(result)
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
    except (BridgeError, OSError, ValueError, WalletError, IdentityError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
