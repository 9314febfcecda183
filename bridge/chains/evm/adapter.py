"""EVM chain adapter over web3.py: reorg-aware block/log following, EIP-1559 fees, and an
account whose transactions are signed remotely (by the threshold signer).

The bridge mints on deposits and releases on burns, so the two failure modes that matter are
acting on a log that is later reorganised away and reusing or skipping a nonce. The follower
therefore tracks every recent block *hash*, not just heights, reports logs only once they are
``confirmations`` deep, and reports as *orphaned* every log whose block left the canonical chain
(including ones already confirmed, which would mean the depth was too shallow for that chain).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from coincurve import PublicKey
from eth_account.typed_transactions import TypedTransaction
from eth_utils import keccak, to_checksum_address
from web3 import Web3

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def connect(url: str, timeout: float = 10.0) -> Web3:
    """A web3 instance for an HTTP endpoint, checked to answer before it is returned."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"unsupported endpoint {url!r}: only http(s) is supported")
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    w3.eth.chain_id  # noqa: B018 - fail fast on a dead or non-EVM endpoint
    return w3


@dataclass(frozen=True)
class LogEvent:
    """One log, identified by (block hash, log index) so a reorged copy is a different event."""

    block_number: int
    block_hash: str
    transaction_hash: str
    log_index: int
    address: str
    topics: tuple[str, ...]
    data: bytes

    @classmethod
    def from_web3(cls, log: Any) -> LogEvent:
        return cls(
            block_number=int(log["blockNumber"]),
            block_hash=_hex(log["blockHash"]),
            transaction_hash=_hex(log["transactionHash"]),
            log_index=int(log["logIndex"]),
            address=to_checksum_address(log["address"]),
            topics=tuple(_hex(t) for t in log["topics"]),
            data=bytes(log["data"]),
        )


@dataclass(frozen=True)
class Reorg:
    """A detected reorganisation: blocks above ``common_ancestor`` were replaced."""

    common_ancestor: int
    old_hashes: tuple[str, ...]
    depth: int


@dataclass
class FollowUpdate:
    """What changed since the last :meth:`LogFollower.poll`."""

    head: int
    new_logs: list[LogEvent] = field(default_factory=list)  # seen in new canonical blocks (unconfirmed)
    confirmed: list[LogEvent] = field(default_factory=list)  # reached the confirmation depth now
    orphaned: list[LogEvent] = field(default_factory=list)  # their block left the canonical chain
    orphaned_confirmed: list[LogEvent] = field(default_factory=list)  # subset already reported confirmed
    reorgs: list[Reorg] = field(default_factory=list)


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value)
    return text if text.startswith("0x") else "0x" + text


class LogFollower:
    """Follow a chain's canonical blocks and the logs matching ``addresses``/``topics``.

    Not thread-safe by design: one follower belongs to one watcher loop.
    """

    def __init__(self, w3: Web3, *, addresses: Iterable[str] = (), topics: list[Any] | None = None,
                 confirmations: int = 12, start_block: int | None = None, history: int = 256) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be >= 1 (1 means the head block counts)")
        if history < confirmations:
            raise ValueError("history must cover at least the confirmation depth")
        self.w3 = w3
        self.addresses = [to_checksum_address(a) for a in addresses]
        self.topics = topics
        self.confirmations = confirmations
        self.history = history
        self._next = start_block
        self._hashes: dict[int, str] = {}
        self._logs: dict[int, list[LogEvent]] = {}
        self._confirmed_upto = -1

    def _block(self, number: int) -> tuple[str, str]:
        b = self.w3.eth.get_block(number)
        return _hex(b["hash"]), _hex(b["parentHash"])

    def _fetch_logs(self, block_hash: str) -> list[LogEvent]:
        params: dict[str, Any] = {"blockHash": block_hash}
        if self.addresses:
            params["address"] = self.addresses
        if self.topics:
            params["topics"] = self.topics
        return sorted((LogEvent.from_web3(x) for x in self.w3.eth.get_logs(params)), key=lambda e: e.log_index)

    def _rollback(self, update: FollowUpdate, ancestor: int) -> None:
        dropped = sorted(n for n in self._hashes if n > ancestor)
        update.reorgs.append(Reorg(ancestor, tuple(self._hashes[n] for n in dropped), len(dropped)))
        for n in dropped:
            logs = self._logs.pop(n, [])
            update.orphaned += logs
            if n <= self._confirmed_upto:
                update.orphaned_confirmed += logs
            del self._hashes[n]
        self._confirmed_upto = min(self._confirmed_upto, ancestor)
        self._next = ancestor + 1

    def _find_ancestor(self) -> int:
        """Highest tracked height whose hash is still canonical (-1 if none is)."""
        for n in sorted(self._hashes, reverse=True):
            if self._block(n)[0] == self._hashes[n]:
                return n
        return min(self._hashes, default=0) - 1

    def poll(self, max_blocks: int = 1000) -> FollowUpdate:
        """Catch up with the chain head (at most ``max_blocks`` new blocks per call)."""
        head = int(self.w3.eth.block_number)
        update = FollowUpdate(head=head)
        if self._next is None:
            self._next = max(head - self.confirmations + 1, 0)
        # 1. is what we tracked still canonical? (covers reorgs to a shorter or equal chain too)
        if self._hashes:
            top = max(self._hashes)
            if top > head or self._block(top)[0] != self._hashes[top]:
                self._rollback(update, min(self._find_ancestor(), head))
        # 2. walk forward, checking parent links; a mismatch mid-walk is a reorg during the poll
        n = self._next
        fetched = 0
        while n <= head and fetched < max_blocks:
            block_hash, parent = self._block(n)
            if n - 1 in self._hashes and self._hashes[n - 1] != parent:
                self._rollback(update, self._find_ancestor())
                n = self._next
                continue
            logs = self._fetch_logs(block_hash)
            self._hashes[n] = block_hash
            self._logs[n] = logs
            update.new_logs += logs
            n += 1
            fetched += 1
        self._next = n
        # 3. confirmations
        tip = n - 1
        confirmed_height = tip - self.confirmations + 1
        for h in range(self._confirmed_upto + 1, confirmed_height + 1):
            update.confirmed += self._logs.get(h, [])
        self._confirmed_upto = max(self._confirmed_upto, confirmed_height)
        # 4. forget history beyond the window
        for old in [h for h in self._hashes if h < tip - self.history]:
            self._hashes.pop(old, None)
            self._logs.pop(old, None)
        return update


@dataclass(frozen=True)
class FeeQuote:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    base_fee: int


def estimate_eip1559_fees(w3: Web3, blocks: int = 10, percentile: float = 50.0,
                          base_fee_multiplier: int = 2, min_priority_fee: int = 1) -> FeeQuote:
    """EIP-1559 fees from ``eth_feeHistory``: the median recent tip and ``2 x`` the next base fee.

    Doubling the base fee keeps the transaction includable through six consecutive full blocks
    (each may raise the base fee by 12.5%), which is what wallets do and what a custody
    withdrawal needs: overpaying is refunded, underpaying stalls a signed nonce.
    """
    if not 1 <= blocks <= 1024 or not 0 <= percentile <= 100:
        raise ValueError("blocks must be 1..1024 and percentile 0..100")
    hist = w3.eth.fee_history(blocks, "latest", [percentile])
    base_next = int(hist["baseFeePerGas"][-1])
    tips = sorted(int(r[0]) for r in hist.get("reward", []) if r and int(r[0]) > 0)
    priority = tips[len(tips) // 2] if tips else min_priority_fee
    priority = max(priority, min_priority_fee)
    return FeeQuote(base_next * base_fee_multiplier + priority, priority, base_next)


#: A remote signer: 32-byte digest -> (r, s, recovery id). The threshold network's signing API.
DigestSigner = Callable[[bytes], tuple[int, int, int]]


class RemoteSignerAccount:
    """An account whose key lives elsewhere; builds, signs (via callback) and sends EIP-1559 txs.

    Nonces are allocated locally under a lock (so concurrent withdrawals never share one) and
    resynchronised from the node's pending count when the node disagrees. Every signature is
    checked to recover to this account before broadcast.
    """

    def __init__(self, w3: Web3, address: str, signer: DigestSigner, chain_id: int | None = None) -> None:
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.signer = signer
        self.chain_id = chain_id if chain_id is not None else int(w3.eth.chain_id)
        self._lock = threading.Lock()
        self._next_nonce: int | None = None

    def _allocate_nonce(self) -> int:
        pending = int(self.w3.eth.get_transaction_count(self.address, "pending"))
        if self._next_nonce is None or self._next_nonce < pending:
            self._next_nonce = pending
        nonce = self._next_nonce
        self._next_nonce += 1
        return nonce

    def resync_nonce(self) -> None:
        with self._lock:
            self._next_nonce = None

    def build(self, to: str | None, value: int = 0, data: bytes = b"", gas: int | None = None,
              fees: FeeQuote | None = None, nonce: int | None = None) -> dict[str, Any]:
        if value < 0:
            raise ValueError("value must be non-negative")
        fees = fees or estimate_eip1559_fees(self.w3)
        tx: dict[str, Any] = {
            "type": 2, "chainId": self.chain_id, "nonce": nonce if nonce is not None else 0,
            "maxFeePerGas": fees.max_fee_per_gas, "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            "value": value, "data": bytes(data), "accessList": [],
        }
        if to is not None:
            tx["to"] = to_checksum_address(to)
        if gas is None:
            est = {"from": self.address, "value": value, "data": "0x" + bytes(data).hex()}
            if to is not None:
                est["to"] = tx["to"]
            gas = int(self.w3.eth.estimate_gas(est) * 12 // 10)
        tx["gas"] = gas
        return tx

    def sign(self, tx: dict[str, Any]) -> bytes:
        """Serialise the signed transaction; refuses signatures that do not recover to us."""
        unsigned = TypedTransaction.from_dict(tx)
        digest = unsigned.hash()
        r, s, rec = self.signer(bytes(digest))
        if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2 and rec in (0, 1)):
            raise ValueError("remote signer returned an out-of-range or high-S signature")
        sig65 = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([rec])
        pub = PublicKey.from_signature_and_message(sig65, bytes(digest), hasher=None)
        recovered = to_checksum_address(keccak(pub.format(compressed=False)[1:])[-20:])
        if recovered != self.address:
            raise ValueError(f"signature recovers to {recovered}, not {self.address}")
        signed = TypedTransaction.from_dict({**tx, "v": rec, "r": r, "s": s})
        return signed.encode()

    def send(self, to: str | None, value: int = 0, data: bytes = b"", gas: int | None = None,
             fees: FeeQuote | None = None) -> str:
        """Allocate a nonce, sign remotely and broadcast; returns the transaction hash."""
        with self._lock:
            nonce = self._allocate_nonce()
            try:
                raw = self.sign(self.build(to, value, data, gas, fees, nonce))
                tx_hash = self.w3.eth.send_raw_transaction(raw)
            except Exception:
                # The nonce was not consumed on chain: forget local state and re-read it next time.
                self._next_nonce = None
                raise
            return _hex(tx_hash)
