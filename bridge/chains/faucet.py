"""``fusion-prime-faucet``: coins for a user of a local devnet (``make demo DEMO_ARGS=--stay``).

A real user pays a deposit address from a wallet of their own; on the devnet there is none, so
this pays from the devnet's keys: Bitcoin from the regtest miner's mature coinbases, ETH from an
anvil development account (anvil unlocks them). It reads the endpoints from the devnet file the
demo writes (``--devnet FILE`` or ``$FP_DEVNET``). Every command prints one JSON document; an
error is one line on stderr with exit status 2.

    fusion-prime-faucet btc-pay ADDRESS SATS          # -> {"txid": ..., "vout": 0, ...}
    fusion-prime-faucet btc-received ADDRESS          # coins at an address, with confirmations
    fusion-prime-faucet btc-address                   # a fresh regtest address (and its key file)
    fusion-prime-faucet eth-pay ADDRESS WEI [--chain source|destination]
    fusion-prime-faucet eth-balance ADDRESS [--chain source|destination]

It never touches a node: what it pays is found by the bridge exactly as a real payment would be.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from coincurve import PrivateKey

from ...node.commandline import OneLineParser, one_line
from .bitcoin.encoding import REGTEST, address_to_script, p2wpkh_script, parse_hash_hex, script_to_address
from .bitcoin.rpcclient import BitcoinRPC, BitcoinRPCError, BitcoinRPCTransportError
from .bitcoin.signing import sign_p2wpkh
from .bitcoin.tx import OutPoint, Tx, TxIn, TxOut

EXIT_ERROR = 2
COIN = 100_000_000
COINBASE_MATURITY = 100
FEE = 2_000  # sat: a one-input, two-output P2WPKH payment at ~14 sat/vB
#: the regtest miner's key (``bridge.localnet.Miner``): a devnet key everybody knows, never a secret
MINER_SECRET = (0x5EED).to_bytes(32, "big")
#: the anvil development account ETH is paid from (the network itself uses accounts 0 and 3)
ETH_ACCOUNT = 5


class FaucetError(Exception):
    """Said to the user in one line."""


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="fusion-prime-faucet", description=__doc__.splitlines()[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devnet", help="the devnet file the demo wrote (default: $FP_DEVNET)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    c = sub.add_parser("btc-pay", help="pay SATS to a regtest address from the miner's coins")
    c.add_argument("address")
    c.add_argument("sats", type=int)
    c = sub.add_parser("btc-received", help="the coins at a regtest address (confirmed and in the mempool)")
    c.add_argument("address")
    c = sub.add_parser("btc-address", help="a fresh regtest P2WPKH address; its key goes to --key-file")
    c.add_argument("--key-file", help="where to keep the key (mode 0600; default: print nothing of it)")
    for name, what in (("eth-pay", "pay WEI to an address from an anvil development account"),
                       ("eth-balance", "the ETH balance of an address")):
        c = sub.add_parser(name, help=what)
        c.add_argument("address")
        if name == "eth-pay":
            c.add_argument("wei", type=int)
        c.add_argument("--chain", choices=("source", "destination"), default="source")
    return p


def _devnet(path: str | None) -> dict[str, Any]:
    where = path or os.environ.get("FP_DEVNET")
    if not where:
        raise FaucetError("no devnet file: give --devnet FILE or set FP_DEVNET (the demo's env.sh sets it)")
    try:
        doc = json.loads(Path(where).read_text())
    except OSError as exc:
        raise FaucetError(f"{where}: {exc.strerror or exc}") from None
    except ValueError:
        raise FaucetError(f"{where}: not a devnet file (invalid JSON)") from None
    if not isinstance(doc, dict) or "bitcoin" not in doc or "evm" not in doc:
        raise FaucetError(f"{where}: not a devnet file (no bitcoin/evm endpoints)")
    return doc


def _rpc(devnet: dict[str, Any]) -> BitcoinRPC:
    b = devnet["bitcoin"]
    return BitcoinRPC(b["url"], user=b["user"], password=b["password"])


def _sat(value: Any) -> int:
    return int(Decimal(str(value)) * COIN)


def _spent_in_mempool(rpc: BitcoinRPC) -> set[tuple[str, int]]:
    """Outpoints that transactions in the mempool already spend: a second payment from one of
    them would be refused as a conflict."""
    spent: set[tuple[str, int]] = set()
    for txid in rpc.getrawmempool():
        for vin in rpc.getrawtransaction(txid, True)["vin"]:
            if "txid" in vin:
                spent.add((vin["txid"], int(vin["vout"])))
    return spent


def btc_pay(devnet: dict[str, Any], address: str, sats: int) -> dict[str, Any]:
    """Pay ``sats`` to ``address`` from one of the miner's mature coins (output 0), the change back
    to the miner. A coin another payment in the mempool spends is skipped."""
    try:
        script = address_to_script(address, REGTEST)
    except Exception as exc:  # the codec's own error names what is wrong
        raise FaucetError(f"{address}: not a regtest address ({' '.join(str(exc).split())})") from None
    if sats <= 546:
        raise FaucetError(f"{sats} sat is dust: pay more than 546")
    key = PrivateKey(MINER_SECRET)
    miner_script = p2wpkh_script(key.public_key.format(compressed=True))
    rpc = _rpc(devnet)
    miner = script_to_address(miner_script, REGTEST)
    unspents = rpc.scantxoutset("start", [f"addr({miner})"])["unspents"]
    busy = _spent_in_mempool(rpc)
    usable = [u for u in unspents if (u["txid"], int(u["vout"])) not in busy
              and (not u.get("coinbase") or int(u["confirmations"]) > COINBASE_MATURITY)
              and _sat(u["amount"]) >= sats + FEE + 1_000]
    if not usable:
        raise FaucetError(f"the miner has no mature coin of {sats + FEE + 1_000} sat or more: mine more blocks")
    coin = max(usable, key=lambda u: (int(u["confirmations"]), u["txid"]))
    value = _sat(coin["amount"])
    tx = Tx(2, [TxIn(OutPoint(parse_hash_hex(coin["txid"]), int(coin["vout"])), sequence=0xFFFFFFFD)],
            [TxOut(sats, script), TxOut(value - sats - FEE, miner_script)])
    sign_p2wpkh(tx, 0, key.secret, value)
    txid = rpc.sendrawtransaction(tx.serialize().hex())
    return {"txid": txid, "vout": 0, "address": address, "sats": sats, "fee": FEE}


def btc_received(devnet: dict[str, Any], address: str) -> dict[str, Any]:
    try:
        address_to_script(address, REGTEST)
    except Exception as exc:
        raise FaucetError(f"{address}: not a regtest address ({' '.join(str(exc).split())})") from None
    rpc = _rpc(devnet)
    coins = [{"txid": u["txid"], "vout": int(u["vout"]), "sats": _sat(u["amount"]),
              "confirmations": int(u["confirmations"])}
             for u in rpc.scantxoutset("start", [f"addr({address})"])["unspents"]]
    for txid in rpc.getrawmempool():
        tx = rpc.getrawtransaction(txid, True)
        for out in tx["vout"]:
            if out["scriptPubKey"].get("address") == address:
                coins.append({"txid": txid, "vout": int(out["n"]), "sats": _sat(out["value"]), "confirmations": 0})
    return {"address": address, "sats": sum(c["sats"] for c in coins), "coins": coins}


def btc_address(key_file: str | None) -> dict[str, Any]:
    key = PrivateKey()
    address = script_to_address(p2wpkh_script(key.public_key.format(compressed=True)), REGTEST)
    if key_file:
        path = Path(key_file)
        if path.exists() or path.is_symlink():
            raise FaucetError(f"{path} already exists; refusing to overwrite a key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.secret.hex() + "\n")
    return {"address": address, **({"key_file": key_file} if key_file else {})}


def _web3(devnet: dict[str, Any], chain: str) -> Any:
    from web3 import Web3

    chains = devnet["evm"]
    if len(chains) < 2:
        raise FaucetError("this devnet runs no EVM chains")
    return Web3(Web3.HTTPProvider(chains[0 if chain == "source" else 1]["url"], request_kwargs={"timeout": 30}))


def _evm_address(w3: Any, address: str) -> str:
    if not w3.is_address(address):
        raise FaucetError(f"{address}: not an EVM address")
    return str(w3.to_checksum_address(address))


def eth_pay(devnet: dict[str, Any], address: str, wei: int, chain: str) -> dict[str, Any]:
    if wei <= 0:
        raise FaucetError("pay a positive amount of wei")
    w3 = _web3(devnet, chain)
    to = _evm_address(w3, address)
    sender = w3.eth.accounts[ETH_ACCOUNT]
    tx = w3.eth.send_transaction({"from": sender, "to": to, "value": wei})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=60)
    return {"tx": "0x" + bytes(tx).hex(), "block": int(receipt["blockNumber"]), "to": to, "wei": str(wei),
            "chain_id": int(w3.eth.chain_id)}


def eth_balance(devnet: dict[str, Any], address: str, chain: str) -> dict[str, Any]:
    w3 = _web3(devnet, chain)
    who = _evm_address(w3, address)
    return {"address": who, "wei": str(w3.eth.get_balance(who)), "chain_id": int(w3.eth.chain_id)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "btc-address":
            out = btc_address(args.key_file)
        else:
            devnet = _devnet(args.devnet)
            if args.command == "btc-pay":
                out = btc_pay(devnet, args.address, args.sats)
            elif args.command == "btc-received":
                out = btc_received(devnet, args.address)
            elif args.command == "eth-pay":
                out = eth_pay(devnet, args.address, args.wei, args.chain)
            else:
                out = eth_balance(devnet, args.address, args.chain)
    except KeyboardInterrupt:
        return 130
    except (FaucetError, BitcoinRPCError, BitcoinRPCTransportError, OSError, ValueError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
