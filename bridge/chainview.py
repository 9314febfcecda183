"""The real :class:`~fusion_prime.bridge.mint_policy.ChainView`: this node's own chain connections.

Every answer comes from an endpoint this operator runs (its Bitcoin node over the Bitcoin Core
JSON-RPC client, its EVM nodes over web3) and from its own bridge database — never from the
coordinator's proposal. That is the whole point: a coordinator that lies about a deposit is
refused by every node whose chain view disagrees.

* Bitcoin outputs: ``gettxout`` for an unspent output (script, value, confirmations in the best
  chain, mempool excluded); an output that is no longer unspent (swept later) is looked up with
  ``getrawtransaction`` in the block this node recorded for the deposit, and its depth from
  ``getblockheader`` — a block that left the best chain reports ``confirmations = -1`` and the
  output is then treated as absent.
* EVM deposits: the transaction and its receipt, the receipt's block checked to still be the
  canonical block at that height (a reorged-out transaction is absent), depth from the head.
* The Gateway: ``mintedDeposit`` and ``signerSchedule`` on the destination chain.
* What this node co-signed: ``mint-cosigned`` events in its own append-only event log.
* Settlement account deposits (never minted): its own deposit rows, address registrations and
  ``settlement-credited`` events.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from web3 import Web3

from .chains.bitcoin.rpcclient import BitcoinRPC, BitcoinRPCError
from .db import BridgeDB, Reader
from .derivation import SETTLEMENT_DESTINATION
from .mint_policy import BitcoinOutput, EvmDeposit
from .orders import MintOrder, deposit_id

COSIGNED_EVENT = "mint-cosigned"
REFUSED_EVENT = "mint-refused"
COIN = 100_000_000

_ARTIFACTS = Path(__file__).resolve().parents[1] / "contracts" / "artifacts"


def artifact(name: str) -> dict[str, Any]:
    """A compiled contract (ABI and bytecode) from ``contracts/artifacts``."""
    return json.loads((_ARTIFACTS / f"{name}.json").read_text())


def gateway_contract(w3: Web3, address: str) -> Any:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact("Gateway")["abi"])


def _sat(value: Any) -> int:
    return int((Decimal(str(value)) * COIN).to_integral_exact())


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value)
    return text if text.startswith("0x") else "0x" + text


class NodeChainView:
    """This node's view of the source chains, the Gateway and its own records.

    Thread-safe enough for its use: the authorize hook calls it from a worker thread; the web3
    HTTP providers and :class:`BitcoinRPC` (one connection per thread) are safe to share.
    """

    def __init__(self, db: BridgeDB, *, bitcoin: BitcoinRPC | None, source_evm: Web3 | None,
                 destination: Web3, gateway: str, bitcoin_chains: Sequence[str] = ()) -> None:
        self.db = db
        self.bitcoin_chains = list(bitcoin_chains)
        self._reader: Reader | None = None
        self.bitcoin = bitcoin
        self.source_evm = source_evm
        self.destination = destination
        self.gateway = gateway_contract(destination, gateway)

    def within(self, reader: Reader) -> NodeChainView:
        """The same view reading this node's records through ``reader`` (an open transaction),
        so a check and the record of its outcome are one atomic step."""
        bound = copy.copy(self)
        bound._reader = reader
        return bound

    def _read(self, fn: Any) -> Any:
        if self._reader is not None:
            return fn(self._reader)
        with self.db.read() as reader:
            return fn(reader)

    # -- Bitcoin
    def bitcoin_output(self, txid: str, vout: int) -> BitcoinOutput | None:
        if self.bitcoin is None:
            return None
        unspent = self.bitcoin.call("gettxout", txid, vout, False)
        if unspent is not None:
            spk = unspent["scriptPubKey"]
            return BitcoinOutput(script_pubkey=bytes.fromhex(spk["hex"]), address=spk.get("address"),
                                 value_sat=_sat(unspent["value"]), confirmations=int(unspent["confirmations"]),
                                 block_hash=str(unspent["bestblock"]))
        block_hash = self._recorded_block(txid, vout)
        if block_hash is None:
            return None
        try:
            header = self.bitcoin.call("getblockheader", block_hash)
            if int(header["confirmations"]) < 1:
                return None
            tx = self.bitcoin.get_raw_transaction(txid, True, block_hash)
        except BitcoinRPCError:
            return None
        outs = tx.get("vout", [])
        if not 0 <= vout < len(outs):
            return None
        spk = outs[vout]["scriptPubKey"]
        return BitcoinOutput(script_pubkey=bytes.fromhex(spk["hex"]), address=spk.get("address"),
                             value_sat=_sat(outs[vout]["value"]), confirmations=int(header["confirmations"]),
                             block_hash=block_hash)

    def _recorded_block(self, txid: str, vout: int) -> str | None:
        """The block this node's watcher recorded the output in (for outputs no longer unspent)."""
        for chain in self.bitcoin_chains:
            did = deposit_id(chain, txid, vout)
            row = self._read(lambda r, did=did: r.get_deposit(did))
            if row is not None and row.block_hash:
                return row.block_hash
        return None

    # -- EVM
    def evm_deposit(self, tx_hash: str, index: int) -> EvmDeposit | None:
        w3 = self.source_evm
        if w3 is None:
            return None
        h = _hex(tx_hash)
        try:
            tx = w3.eth.get_transaction(h)
            receipt = w3.eth.get_transaction_receipt(h)
        except Exception:  # web3 raises TransactionNotFound (and others) for an unknown hash
            return None
        if receipt is None or receipt.get("blockNumber") is None:
            return None
        number = int(receipt["blockNumber"])
        canonical = w3.eth.get_block(number)
        if _hex(canonical["hash"]) != _hex(receipt["blockHash"]):
            return None  # the receipt's block is not the canonical one at its height any more
        head = int(w3.eth.block_number)
        to = tx.get("to")
        return EvmDeposit(to=Web3.to_checksum_address(to) if to else "0x" + "00" * 20, value_wei=int(tx["value"]),
                          confirmations=head - number + 1, status=int(receipt["status"]))

    # -- the Gateway
    def minted_on_destination(self, deposit_id: bytes) -> bool:
        return bytes(self.gateway.functions.mintedDeposit(deposit_id).call()) != bytes(32)

    def gateway_signer_epoch(self) -> int:
        return int(self.gateway.functions.signerSchedule().call()[1])

    def unpause_count(self) -> int:
        return int(self.gateway.functions.unpauseCount().call())

    def gateway_paused(self) -> bool:
        return bool(self.gateway.functions.paused().call())

    # -- this node's own record
    def cosigned_orders(self, deposit_id: bytes) -> Sequence[MintOrder]:
        # stored as the canonical encoding: the event log's JSON turns ints >= 2^53 into strings
        events = self._read(lambda r: r.events(deposit_id))
        return [MintOrder.from_bytes(bytes.fromhex(e.detail["order"])) for e in events if e.event == COSIGNED_EVENT]

    def settlement_deposit(self, deposit_id: bytes, address: str | None) -> str | None:
        from .settlement.funding import credited_deposits

        def look(r: Reader) -> str | None:
            row = r.get_deposit(deposit_id)
            if row is not None and row.destination_chain == SETTLEMENT_DESTINATION:
                return f"is recorded as a deposit to the settlement account of {row.recipient}"
            if credited_deposits(r, [deposit_id]):
                return "was credited to a settlement account"
            if address:
                for spelling in {address, address.lower()}:
                    registered = r.get_address(spelling)
                    if registered is not None and registered.destination_chain == SETTLEMENT_DESTINATION:
                        return f"pays {registered.address}, the settlement account deposit address of " \
                               f"{registered.recipient}"
            return None

        return self._read(look)
