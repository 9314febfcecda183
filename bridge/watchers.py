"""Chain followers: turn this node's own chain endpoints into :mod:`~fusion_prime.bridge.deposits`
observations.

* :class:`BlockFollower` walks a source chain block by block and remembers each block's *hash*
  (restored from the deposit machine's persisted headers after a restart), so a reorganisation is
  found by comparing stored hashes with the endpoint's: every stored block that is no longer in the
  best chain is reported as :class:`BlockDisconnected` (top down) before the new branch's blocks
  are reported as :class:`BlockConnected`, each with the outputs paying a *registered* deposit
  address. Sources: :class:`BitcoinBlocks` (Bitcoin Core JSON-RPC, ``getblock`` verbosity 2) and
  :class:`EvmBlocks` (web3: top-level value transfers of successful transactions).
* A deposit address registered only *after* the block paying it was scanned would be missed by
  the walk: the runtime re-reads the recent blocks it holds for just the new addresses (see
  ``BridgeRuntime._rescan_new_addresses``), through ``block(hash, lookup)``.
* :class:`MintFollower` follows the Gateway's ``Minted``/``MintQueued`` logs on the destination
  chain with the EVM adapter's reorg-aware :class:`LogFollower`.

Followers are blocking (RPC) and single-threaded; the runtime runs them in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from web3 import Web3

from .chains.bitcoin.rpcclient import BitcoinRPC
from .chains.evm.adapter import LogEvent, LogFollower
from .db import DepositAddress
from .deposits import BlockConnected, BlockDisconnected, DepositOutput, MintQueuedSeen, MintSeen
from .orders import EVM_NATIVE_VOUT
from .withdrawals import Burn, BurnSeen, RefundSeen

MINTED_TOPIC = "0xbb777238ebf6b4266eef25713f7136598089f6c2198bf6590fcd7095a8fad8ba"
MINT_QUEUED_TOPIC = "0xe12dc33135382f6a1b3b955c0e440fcc2fe64b4a9f69ca663610dbbb03bc6525"
COIN = 100_000_000

#: address -> its registration (or None when this node never registered it)
Lookup = Callable[[str], DepositAddress | None]


class BlockSource(Protocol):
    def tip(self) -> int: ...

    def block_hash(self, height: int) -> str: ...

    def block(self, block_hash: str, lookup: Lookup | None = None) -> tuple[str, list[DepositOutput]]:
        """(parent hash, outputs paying registered deposit addresses — or the addresses
        ``lookup`` knows, when given: a rescan for newly registered addresses)."""
        ...


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value)
    return text if text.startswith("0x") else "0x" + text


class BitcoinBlocks:
    """A Bitcoin chain through the Bitcoin Core JSON-RPC client (devnet or bitcoind alike)."""

    def __init__(self, rpc: BitcoinRPC, source_chain: str, lookup: Lookup) -> None:
        self.rpc, self.source_chain, self.lookup = rpc, source_chain, lookup

    def tip(self) -> int:
        return self.rpc.get_block_count()

    def block_hash(self, height: int) -> str:
        return self.rpc.get_block_hash(height)

    def block(self, block_hash: str, lookup: Lookup | None = None) -> tuple[str, list[DepositOutput]]:
        lookup = lookup or self.lookup
        block = self.rpc.get_block(block_hash, 2)
        outputs = []
        for tx in block["tx"]:
            for out in tx["vout"]:
                address = out["scriptPubKey"].get("address")
                reg = lookup(address) if address else None
                if reg is None or reg.source_chain != self.source_chain:
                    continue
                amount = int((Decimal(str(out["value"])) * COIN).to_integral_exact())
                outputs.append(DepositOutput(txid=tx["txid"], vout=int(out["n"]), address=address, amount=amount,
                                             destination_chain=reg.destination_chain, recipient=reg.recipient))
        return str(block.get("previousblockhash", "00" * 32)), outputs


class EvmBlocks:
    """An EVM source chain: successful top-level value transfers to registered deposit addresses
    (``vout = EVM_NATIVE_VOUT``: the transaction's own transfer, see ``bridge/orders.py``)."""

    def __init__(self, w3: Web3, source_chain: str, lookup: Lookup) -> None:
        self.w3, self.source_chain, self.lookup = w3, source_chain, lookup

    def tip(self) -> int:
        return int(self.w3.eth.block_number)

    def block_hash(self, height: int) -> str:
        return _hex(self.w3.eth.get_block(height)["hash"])

    def block(self, block_hash: str, lookup: Lookup | None = None) -> tuple[str, list[DepositOutput]]:
        lookup = lookup or self.lookup
        block = self.w3.eth.get_block(block_hash, full_transactions=True)
        outputs = []
        for tx in block["transactions"]:
            to, value = tx.get("to"), int(tx["value"])
            if not to or value <= 0:
                continue
            reg = lookup(Web3.to_checksum_address(to))
            if reg is None or reg.source_chain != self.source_chain:
                continue
            if int(self.w3.eth.get_transaction_receipt(tx["hash"])["status"]) != 1:
                continue  # a reverted transaction moved nothing
            outputs.append(DepositOutput(txid=_hex(tx["hash"]), vout=EVM_NATIVE_VOUT,
                                         address=Web3.to_checksum_address(to), amount=value,
                                         destination_chain=reg.destination_chain, recipient=reg.recipient))
        return _hex(block["parentHash"]), outputs


class BlockFollower:
    """Reorg-aware follower of one source chain (see the module docstring)."""

    def __init__(self, source: BlockSource, headers: dict[int, str] | None = None, start_height: int | None = None,
                 window: int = 2016) -> None:
        self.source = source
        self.headers: dict[int, str] = dict(headers or {})
        self.start_height = start_height
        self.window = window

    def rewind(self, height: int) -> None:
        """Forget blocks from ``height`` up: the next poll reports them again (a machine's Rescan)."""
        for h in [h for h in self.headers if h >= height]:
            del self.headers[h]
        if not self.headers:
            self.start_height = height if self.start_height is None else min(self.start_height, height)

    def poll(self, max_blocks: int = 200) -> list[BlockConnected | BlockDisconnected]:
        out: list[BlockConnected | BlockDisconnected] = []
        tip = self.source.tip()
        while self.headers:
            top = max(self.headers)
            if top <= tip and self.source.block_hash(top) == self.headers[top]:
                break
            out.append(BlockDisconnected(top, self.headers.pop(top)))
        if self.headers:
            start = max(self.headers) + 1
        else:
            start = tip if self.start_height is None else min(self.start_height, tip + 1)
            if out:  # everything we knew was reorganised away: re-walk from below it
                start = min(start, min(d.height for d in out if isinstance(d, BlockDisconnected)))
        for height in range(start, min(tip, start + max_blocks - 1) + 1):
            block_hash = self.source.block_hash(height)
            parent, outputs = self.source.block(block_hash)
            if height - 1 in self.headers and self.headers[height - 1] != parent:
                break  # the chain moved under us mid-walk; the next poll sees the reorg
            self.headers[height] = block_hash
            out.append(BlockConnected(height, block_hash, parent, tuple(outputs)))
        if self.headers:
            floor = max(self.headers) - self.window
            for h in [h for h in self.headers if h < floor]:
                del self.headers[h]
        return out


@dataclass(frozen=True)
class MintedOutput:
    """What a ``Minted`` log says was deposited: the source output that now backs the tokens (the
    withdrawal side's custody coins come from here, so every node knows the same ones)."""

    chain_key: bytes  # the Gateway's source chain key (bridge/orders.chain_key)
    txid: str  # 64 hex, RPC display order
    vout: int
    recipient: str
    amount: int


@dataclass(frozen=True)
class RoutedMint:
    """A destination observation and the wrapped asset it concerns (which source chain's machine)."""

    asset: str
    observation: MintSeen | MintQueuedSeen
    output: MintedOutput | None = None


class MintFollower:
    """``Minted``/``MintQueued`` of one Gateway, at ``confirmations`` depth on the destination chain."""

    def __init__(self, w3: Web3, gateway: str, *, confirmations: int = 1, start_block: int = 0) -> None:
        self.follower = LogFollower(w3, addresses=[gateway], topics=[[MINTED_TOPIC, MINT_QUEUED_TOPIC]],
                                    confirmations=confirmations, start_block=start_block)

    def poll(self) -> tuple[list[RoutedMint], int, list[str]]:
        """(confirmed mint observations, head, warnings about confirmed logs that were orphaned)."""
        update = self.follower.poll()
        out = []
        for log in update.confirmed:
            topic = log.topics[0].lower()
            words = [log.data[i:i + 32] for i in range(0, len(log.data), 32)]
            if topic == MINTED_TOPIC:
                deposit = "0x" + log.topics[1][2:].rjust(64, "0")
                asset = Web3.to_checksum_address("0x" + log.topics[2][-40:])
                recipient = Web3.to_checksum_address("0x" + log.topics[3][-40:])
                output = MintedOutput(chain_key=bytes(words[1]), txid=bytes(words[2]).hex(),
                                      vout=int.from_bytes(words[3], "big"), recipient=recipient,
                                      amount=int.from_bytes(words[0], "big"))
                out.append(RoutedMint(asset, MintSeen(deposit_id=deposit, tx_hash=log.transaction_hash,
                                                      block=log.block_number,
                                                      order_digest="0x" + words[5].hex()), output))
            elif topic == MINT_QUEUED_TOPIC:
                deposit = "0x" + log.topics[2][2:].rjust(64, "0")
                asset = Web3.to_checksum_address("0x" + log.topics[3][-40:])
                out.append(RoutedMint(asset, MintQueuedSeen(deposit_id=deposit, order_digest=log.topics[1],
                                                            eta=int.from_bytes(words[2], "big"))))
        warnings = [f"confirmed Gateway log {x.transaction_hash}#{x.log_index} was orphaned by a destination reorg"
                    for x in update.orphaned_confirmed]
        return out, update.head, warnings


# ---------------------------------------------------------------------------------- burns

BURNED_TOPIC = "0xc21a03c470a4b06280d2f3a058144f7b0c5148ed5fa22707fa16b2add0c6a893"
REFUNDED_TOPIC = "0x44ee92ec08683eee6190b64578736fc1071a786aa2cd3ac8846469f585a4d74b"
#: the longest destination the Gateway accepts (a Bitcoin address of up to 90 characters)
MAX_DESTINATION = 90


@dataclass(frozen=True)
class RoutedBurn:
    """A burn-side observation of the Gateway and the wrapped asset it concerns."""

    asset: str
    observation: BurnSeen | RefundSeen


def decode_burn_log(log: LogEvent) -> RoutedBurn | None:
    """A ``Burned``/``Refunded`` log as an observation; None for anything malformed (a Gateway
    log that does not decode is reported by the caller, never guessed at)."""
    topic = log.topics[0].lower() if log.topics else ""
    if len(log.topics) != 4:
        return None
    burn_id = "0x" + log.topics[1][2:].rjust(64, "0").lower()
    asset = Web3.to_checksum_address("0x" + log.topics[2][-40:])
    burner = Web3.to_checksum_address("0x" + log.topics[3][-40:])
    data = log.data
    if topic == BURNED_TOPIC:
        if len(data) < 128:
            return None
        nonce, amount, offset, length = (int.from_bytes(data[i:i + 32], "big") for i in range(0, 128, 32))
        if offset != 96 or length > MAX_DESTINATION or len(data) < 128 + length:
            return None
        destination = data[128:128 + length]
        try:
            burn = Burn(burn_id=burn_id, nonce=nonce, asset=asset, burner=burner, amount=amount,
                        destination=destination, block=log.block_number, tx_hash=log.transaction_hash)
        except ValueError:
            return None
        return RoutedBurn(asset, BurnSeen(burn))
    if topic == REFUNDED_TOPIC:
        return RoutedBurn(asset, RefundSeen(burn_id=burn_id, tx_hash=log.transaction_hash))
    return None


class BurnFollower:
    """``Burned``/``Refunded`` of one Gateway at ``confirmations`` depth on the destination chain.

    The reorg-aware :class:`LogFollower` reports a log only once its block is ``confirmations``
    deep, i.e. it re-reads the log there. :meth:`rescan` re-reads a block range in one
    ``eth_getLogs`` (a nonce gap: the machine ignores what it already has)."""

    def __init__(self, w3: Web3, gateway: str, *, confirmations: int = 1, start_block: int = 0) -> None:
        self.w3, self.gateway, self.confirmations = w3, gateway, confirmations
        self.follower = LogFollower(w3, addresses=[gateway], topics=[[BURNED_TOPIC, REFUNDED_TOPIC]],
                                    confirmations=confirmations, start_block=start_block)

    def poll(self) -> tuple[list[RoutedBurn], int, list[str]]:
        """(observations at depth, the highest block read at depth, warnings)."""
        update = self.follower.poll()
        out, warnings = [], []
        for log in update.confirmed:
            routed = decode_burn_log(log)
            if routed is None:
                warnings.append(f"undecodable Gateway burn log {log.transaction_hash}#{log.log_index}")
            else:
                out.append(routed)
        warnings += [f"confirmed Gateway burn log {x.transaction_hash}#{x.log_index} was orphaned by a "
                     "destination reorg" for x in update.orphaned_confirmed]
        return out, update.head - self.confirmations + 1, warnings

    def rescan(self, from_block: int) -> list[RoutedBurn]:
        top = int(self.w3.eth.block_number) - self.confirmations + 1
        if top < from_block:
            return []
        logs = self.w3.eth.get_logs({"fromBlock": from_block, "toBlock": top, "address": self.gateway,
                                     "topics": [[BURNED_TOPIC, REFUNDED_TOPIC]]})
        return [r for r in (decode_burn_log(LogEvent.from_web3(x)) for x in logs) if r is not None]
