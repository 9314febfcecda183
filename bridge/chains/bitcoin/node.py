"""An embedded Bitcoin regtest node whose blocks are validated by Bitcoin Core's own engine.

libbitcoinkernel (through py-bitcoinkernel) validates and connects every block, reorgs included.
What bitcoind adds around it and the kernel does not ship is written here: the block builder
(BIP34 height, halving subsidy, BIP141 witness commitment, merkle root, proof of work), a mempool
applying Core's consensus and relay-policy checks, a UTXO/tx/address index fed from the kernel's
connect/disconnect notifications, reorgs on demand, ``invalidateblock``/``reconsiderblock`` and
persistence across restarts.

Block acceptance is never judged by ``process_block``'s return value — it reports "new block"
even for blocks that later fail validation. The node looks at the ``block_checked`` callback and
at the resulting tip instead.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pbk
from pbk.script import PrecomputedTransactionData

from .encoding import COIN, REGTEST, Network, push_int
from .index import ChainIndex, Coin, HeaderInfo
from .policy import (
    COINBASE_MATURITY,
    DEFAULT_ANCESTOR_LIMIT,
    DEFAULT_DESCENDANT_LIMIT,
    MAX_BLOCK_SIGOPS_COST,
    MAX_BLOCK_WEIGHT,
    MAX_REPLACEMENT_CANDIDATES,
    MAX_STANDARD_TX_SIGOPS_COST,
    SEQUENCE_LOCKTIME_DISABLE_FLAG,
    SEQUENCE_LOCKTIME_GRANULARITY,
    SEQUENCE_LOCKTIME_MASK,
    SEQUENCE_LOCKTIME_TYPE_FLAG,
    PolicySettings,
    TxValidationError,
    are_inputs_standard,
    check_signature_policy,
    check_transaction,
    fee_for,
    is_final_tx,
    is_standard_tx,
    signals_rbf,
    sigop_cost,
)
from .tx import (
    WITNESS_COMMITMENT_HEADER,
    Block,
    BlockHeader,
    OutPoint,
    Tx,
    TxIn,
    TxOut,
    bits_to_target,
    merkle_root,
    witness_commitment,
)

log = logging.getLogger(__name__)

REGTEST_BITS = 0x207FFFFF
REGTEST_HALVING_INTERVAL = 150
BLOCK_VERSION = 0x20000000
#: Weight the block builder keeps free for the coinbase (Core's DEFAULT_BLOCK_RESERVED_WEIGHT).
COINBASE_RESERVED_WEIGHT = 8000
_CONSENSUS_FLAGS = pbk.ScriptVerificationFlags.ALL


class ChainError(Exception):
    """A request the chain cannot satisfy; ``code`` is the Bitcoin Core RPC error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BlockNotFound(ChainError):
    def __init__(self) -> None:
        super().__init__(-5, "Block not found")


@dataclass
class MempoolEntry:
    """A transaction in the mempool and the context its policy decisions were made in."""

    tx: Tx
    txid: bytes
    wtxid: bytes
    fee: int
    vsize: int
    weight: int
    time: int
    height: int
    prevouts: list[TxOut]
    sigop_cost: int
    parents: set[bytes] = field(default_factory=set)

    @property
    def feerate(self) -> float:
        """sat/vB."""
        return self.fee / self.vsize


def block_subsidy(height: int, halving_interval: int = REGTEST_HALVING_INTERVAL) -> int:
    """GetBlockSubsidy: 50 BTC halved every ``halving_interval`` blocks, zero after 64 halvings."""
    halvings = height // halving_interval
    if halvings >= 64:
        return 0
    return (50 * COIN) >> halvings


def check_proof_of_work(header: BlockHeader) -> bool:
    return int.from_bytes(header.hash, "little") <= bits_to_target(header.bits)


class RegtestNode:
    """A persistent regtest chain. All public methods are thread-safe (one node-wide lock,
    the moral equivalent of ``cs_main``)."""

    def __init__(
        self,
        datadir: str | Path,
        *,
        policy: PolicySettings | None = None,
        clock: Callable[[], float] = time.time,
        network: Network = REGTEST,
        persist_mempool: bool = True,
    ) -> None:
        self.datadir = Path(datadir)
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.policy = policy or PolicySettings()
        self.network = network
        self._clock = clock
        self._persist_mempool = persist_mempool
        self._lock = threading.RLock()
        self._index = ChainIndex(self.datadir / "index.sqlite")
        self._mempool: dict[bytes, MempoolEntry] = {}
        self._spent_by: dict[OutPoint, bytes] = {}
        self._wtxids: set[bytes] = set()
        self._fee_samples: deque[tuple[int, float, int]] = deque(maxlen=20_000)
        self._callbacks_live = False
        self._cb_connected: list[tuple[Block, int]] = []
        self._cb_disconnected: list[tuple[Block, int]] = []
        self._cb_checked: dict[bytes, tuple[pbk.ValidationMode, pbk.BlockValidationResult]] = {}
        self._cb_error: BaseException | None = None
        self._callbacks = pbk.ValidationInterfaceCallbacks(
            block_checked=self._on_block_checked,
            block_connected=self._on_block_connected,
            block_disconnected=self._on_block_disconnected,
        )
        self._chainman: pbk.ChainstateManager | None = None
        self._closed = False
        with self._lock:
            self._open_kernel()
            self._sync_index_with_kernel()
            if self._persist_mempool:
                self._load_mempool()

    # ================================================================== lifecycle
    @property
    def _kernel_dir(self) -> Path:
        return self.datadir / "kernel"

    def _open_kernel(self, path: Path | None = None, live: bool = True) -> pbk.ChainstateManager:
        target = path or self._kernel_dir
        self._index.begin()
        self._callbacks_live = live
        try:
            chainman = pbk.load_chainman(target, pbk.ChainType.REGTEST, self._callbacks)
        finally:
            # The genesis block is connected while the kernel loads; keep the index in step.
            if live:
                self._drain_callbacks()
            self._index.commit()
        if path is None:
            self._chainman = chainman
        return chainman

    def _close_kernel(self) -> None:
        if self._chainman is not None:
            self._chainman.__del__()
            self._chainman = None
            gc.collect()

    def close(self) -> None:
        """Flush the mempool to disk and release the kernel (its datadir is exclusive)."""
        with self._lock:
            if self._closed:
                return
            if self._persist_mempool:
                self._save_mempool()
            self._close_kernel()
            self._index.close()
            self._closed = True

    def __enter__(self) -> RegtestNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def chainman(self) -> pbk.ChainstateManager:
        if self._chainman is None:
            raise ChainError(-1, "node is closed")
        return self._chainman

    # ================================================================== kernel callbacks
    # Callbacks run synchronously inside process_block on the calling thread; exceptions cannot
    # propagate through C, so they are captured and re-raised after the kernel call returns.
    def _on_block_checked(self, _ud: object, block: pbk.Block, state: pbk.BlockValidationState) -> None:
        try:
            self._cb_checked[bytes(block.block_hash)] = (state.validation_mode, state.block_validation_result)
        except BaseException as exc:
            self._cb_error = self._cb_error or exc

    def _on_block_connected(self, _ud: object, block: pbk.Block, entry: pbk.BlockTreeEntry) -> None:
        if not self._callbacks_live:
            return
        try:
            raw = bytes(block)
            parsed = Block.from_bytes(raw)
            height = entry.height
            if self._index.active_hash(height) == parsed.header.hash:
                return  # replayed notification (kernel reload): already indexed
            self._index.add_header(parsed, height, len(raw))
            self._connect_in_index(parsed, height)
            self._cb_connected.append((parsed, height))
        except BaseException as exc:
            self._cb_error = self._cb_error or exc

    def _on_block_disconnected(self, _ud: object, block: pbk.Block, entry: pbk.BlockTreeEntry) -> None:
        if not self._callbacks_live:
            return
        try:
            parsed = Block.from_bytes(bytes(block))
            self._index.disconnect_block(parsed, entry.height)
            self._cb_disconnected.append((parsed, entry.height))
        except BaseException as exc:
            self._cb_error = self._cb_error or exc

    def _connect_in_index(self, block: Block, height: int) -> None:
        if height == 0:
            # Core never adds the genesis coinbase to the UTXO set; it is unspendable.
            self._index._db.execute("INSERT OR REPLACE INTO active(height, hash) VALUES (0, ?)", (block.header.hash,))
            return
        self._index.connect_block(block, height)

    def _drain_callbacks(self) -> tuple[list[tuple[Block, int]], list[tuple[Block, int]]]:
        connected, disconnected = self._cb_connected, self._cb_disconnected
        self._cb_connected, self._cb_disconnected = [], []
        err, self._cb_error = self._cb_error, None
        if err is not None:
            raise RuntimeError(f"index update from kernel notification failed: {err}") from err
        return connected, disconnected

    # ================================================================== index/kernel reconciliation
    def _kernel_active(self, height: int) -> bytes:
        return bytes(self.chainman.get_active_chain().block_tree_entries[height].block_hash)

    def _read_raw_block(self, block_hash: bytes) -> bytes | None:
        entries = self.chainman.block_tree_entries
        key = pbk.BlockHash(block_hash)
        if key in entries:
            try:
                return bytes(self.chainman.blocks[entries[key]])
            except RuntimeError:
                pass
        return self._index.invalid_raw(block_hash)

    def _sync_index_with_kernel(self) -> tuple[list[tuple[Block, int]], list[tuple[Block, int]]]:
        """Bring the index to the kernel's active chain (after a crash, reload or rebuild)."""
        kchain = self.chainman.get_active_chain()
        k_height = kchain.height
        tip = self._index.tip()
        fork = -1
        if tip is not None:
            fork = min(tip[0], k_height)
            while fork >= 0 and self._index.active_hash(fork) != self._kernel_active(fork):
                fork -= 1
        disconnected: list[tuple[Block, int]] = []
        connected: list[tuple[Block, int]] = []
        self._index.begin()
        try:
            if tip is not None:
                for height in range(tip[0], fork, -1):
                    block_hash = self._index.active_hash(height)
                    assert block_hash is not None
                    raw = self._read_raw_block(block_hash)
                    if raw is None:
                        raise RuntimeError(f"cannot read block {block_hash[::-1].hex()} to disconnect it")
                    block = Block.from_bytes(raw)
                    if height == 0:
                        self._index._db.execute("DELETE FROM active WHERE height=0")
                    else:
                        self._index.disconnect_block(block, height)
                    disconnected.append((block, height))
            for height in range(fork + 1, k_height + 1):
                entry = kchain.block_tree_entries[height]
                raw = bytes(self.chainman.blocks[entry])
                block = Block.from_bytes(raw)
                self._index.add_header(block, height, len(raw))
                self._connect_in_index(block, height)
                connected.append((block, height))
            self._index.commit()
        except BaseException:
            self._index.rollback()
            raise
        if connected or disconnected:
            log.info("index synced to kernel: %d disconnected, %d connected", len(disconnected), len(connected))
        return connected, disconnected

    # ================================================================== chain queries
    @property
    def height(self) -> int:
        with self._lock:
            tip = self._index.tip()
            return -1 if tip is None else tip[0]

    @property
    def tip_hash(self) -> bytes:
        with self._lock:
            tip = self._index.tip()
            assert tip is not None
            return tip[1]

    @property
    def index(self) -> ChainIndex:
        """Read access to the index for the RPC layer (callers hold :meth:`locked`)."""
        return self._index

    def locked(self) -> threading.RLock:
        return self._lock

    def header_count(self) -> int:
        with self._lock:
            return self.chainman.best_entry.height

    def header_info(self, block_hash: bytes) -> HeaderInfo:
        with self._lock:
            info = self._index.header(block_hash)
            if info is None:
                raise BlockNotFound()
            return info

    def block_hash_at(self, height: int) -> bytes:
        with self._lock:
            h = self._index.active_hash(height)
            if h is None:
                raise ChainError(-8, "Block height out of range")
            return h

    def is_active(self, block_hash: bytes) -> bool:
        with self._lock:
            return self._index.active_height(block_hash) is not None

    def read_block(self, block_hash: bytes) -> Block:
        with self._lock:
            if self._index.header(block_hash) is None:
                raise BlockNotFound()
            raw = self._read_raw_block(block_hash)
            if raw is None:
                raise ChainError(-1, "Block not available (pruned data)")
            return Block.from_bytes(raw)

    def read_raw_block(self, block_hash: bytes) -> bytes:
        with self._lock:
            if self._index.header(block_hash) is None:
                raise BlockNotFound()
            raw = self._read_raw_block(block_hash)
            if raw is None:
                raise ChainError(-1, "Block not available (pruned data)")
            return raw

    def median_time_past(self, block_hash: bytes) -> int:
        """GetMedianTimePast of the block: median time of it and its ten predecessors."""
        with self._lock:
            times: list[int] = []
            cur: bytes | None = block_hash
            while cur is not None and len(times) < 11:
                info = self._index.header(cur)
                if info is None:
                    break
                times.append(info.header.time)
                cur = info.prev if info.height > 0 else None
            if not times:
                raise BlockNotFound()
            times.sort()
            return times[len(times) // 2]

    def block_undo(self, block_hash: bytes) -> list[Coin] | None:
        with self._lock:
            return self._index.undo_coins(block_hash)

    def size_on_disk(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self._kernel_dir / "blocks"):
            for f in files:
                with contextlib.suppress(OSError):
                    total += (Path(root) / f).stat().st_size
        return total

    # ================================================================== mempool: queries
    def mempool_entries(self) -> list[MempoolEntry]:
        with self._lock:
            return list(self._mempool.values())

    def mempool_entry(self, txid: bytes) -> MempoolEntry | None:
        with self._lock:
            return self._mempool.get(txid)

    def mempool_descendants(self, txid: bytes) -> list[bytes]:
        with self._lock:
            return sorted(self._descendants({txid}) - {txid})

    def mempool_ancestors(self, txid: bytes) -> set[bytes]:
        with self._lock:
            return self._ancestors(self._mempool[txid].parents) if txid in self._mempool else set()

    def mempool_spender(self, outpoint: OutPoint) -> bytes | None:
        with self._lock:
            return self._spent_by.get(outpoint)

    def _descendants(self, roots: set[bytes]) -> set[bytes]:
        out: set[bytes] = set()
        stack = list(roots)
        while stack:
            txid = stack.pop()
            if txid in out or txid not in self._mempool:
                continue
            out.add(txid)
            entry = self._mempool[txid]
            for n in range(len(entry.tx.vout)):
                child = self._spent_by.get(OutPoint(txid, n))
                if child is not None:
                    stack.append(child)
        return out

    def _ancestors(self, parents: Iterable[bytes]) -> set[bytes]:
        out: set[bytes] = set()
        stack = list(parents)
        while stack:
            txid = stack.pop()
            if txid in out or txid not in self._mempool:
                continue
            out.add(txid)
            stack.extend(self._mempool[txid].parents)
        return out

    def signals_rbf(self, txid: bytes) -> bool:
        """BIP125 replaceability as Core reports it: the tx or an unconfirmed ancestor opts in."""
        with self._lock:
            entry = self._mempool.get(txid)
            if entry is None:
                return False
            ancestors = self._ancestors(entry.parents)
            return signals_rbf(entry.tx) or any(signals_rbf(self._mempool[a].tx) for a in ancestors)

    # ================================================================== mempool: acceptance
    def accept_to_mempool(self, tx: Tx, *, test_only: bool = False, bypass_limits: bool = False) -> MempoolEntry:
        """AcceptToMemoryPool: consensus + policy checks; raise :class:`TxValidationError` on reject.

        ``test_only`` runs every check and returns the entry without changing the mempool
        (``testmempoolaccept``). ``bypass_limits`` skips fee-rate floors, as Core does when it
        re-adds transactions from blocks disconnected by a reorg.
        """
        with self._lock:
            return self._accept(tx, test_only=test_only, bypass_limits=bypass_limits)

    def _accept(self, tx: Tx, *, test_only: bool, bypass_limits: bool) -> MempoolEntry:
        check_transaction(tx)
        if tx.is_coinbase():
            raise TxValidationError("coinbase", "consensus")
        is_standard_tx(tx, self.policy)
        tip = self._index.tip()
        assert tip is not None
        next_height = tip[0] + 1
        mtp = self.median_time_past(tip[1])
        if not is_final_tx(tx, next_height, mtp):
            raise TxValidationError("non-final")
        txid, wtxid = tx.txid, tx.wtxid
        if wtxid in self._wtxids:
            raise TxValidationError("txn-already-in-mempool", "already-in-mempool")
        if txid in self._mempool:
            raise TxValidationError("txn-same-nonwitness-data-in-mempool")

        # --- inputs: mempool parents first, then the confirmed UTXO set
        prevouts: list[TxOut] = []
        coins: list[Coin] = []
        parents: set[bytes] = set()
        conflicts: set[bytes] = set()
        for txin in tx.vin:
            p = txin.prevout
            if p in self._spent_by:
                conflicts.add(self._spent_by[p])
            parent = self._mempool.get(p.txid)
            if parent is not None:
                if p.n >= len(parent.tx.vout):
                    raise TxValidationError("bad-txns-inputs-missingorspent", "missing-inputs")
                out = parent.tx.vout[p.n]
                coins.append(Coin(out.value, out.script_pubkey, next_height, False))
                parents.add(p.txid)
                continue
            coin = self._index.coin(p)
            if coin is None:
                # Core: if any output of this very tx is unspent, it is already confirmed.
                if self._index.has_unspent_outputs(txid):
                    raise TxValidationError("txn-already-known", "already-in-chain")
                raise TxValidationError("bad-txns-inputs-missingorspent", "missing-inputs")
            coins.append(coin)
        prevouts = [c.txout for c in coins]

        # --- Consensus::CheckTxInputs
        for coin in coins:
            if coin.coinbase and next_height - coin.height < COINBASE_MATURITY:
                raise TxValidationError("bad-txns-premature-spend-of-coinbase", "consensus",
                                        f"tried to spend coinbase at depth {next_height - coin.height}")
        value_in = sum(c.value for c in coins)
        value_out = sum(o.value for o in tx.vout)
        if value_in < value_out:
            raise TxValidationError("bad-txns-in-belowout", "consensus",
                                    f"value in ({value_in / COIN:.8f}) < value out ({value_out / COIN:.8f})")
        fee = value_in - value_out
        self._check_sequence_locks(tx, coins, next_height, tip[1])

        are_inputs_standard(tx, prevouts)
        sigops = sigop_cost(tx, prevouts)
        if sigops > MAX_STANDARD_TX_SIGOPS_COST:
            raise TxValidationError("bad-txns-too-many-sigops", "policy", str(sigops))
        vsize = tx.vsize
        min_fee = fee_for(self.policy.min_relay_fee, vsize)
        if not bypass_limits and fee < min_fee:
            raise TxValidationError("min relay fee not met", "policy", f"{fee} < {min_fee}")

        # --- package limits (ancestors / descendants)
        ancestors = self._ancestors(parents)
        if len(ancestors) + 1 > DEFAULT_ANCESTOR_LIMIT:
            raise TxValidationError("too-long-mempool-chain", "policy",
                                    f"too many unconfirmed ancestors [limit: {DEFAULT_ANCESTOR_LIMIT}]")
        for a in ancestors:
            if len(self._descendants({a})) + 1 > DEFAULT_DESCENDANT_LIMIT:
                raise TxValidationError("too-long-mempool-chain", "policy",
                                        f"too many descendants for tx {a[::-1].hex()} [limit: "
                                        f"{DEFAULT_DESCENDANT_LIMIT}]")

        # --- replacement (BIP125 rules as Core 28 applies them; full-RBF by default)
        evicted: set[bytes] = set()
        if conflicts:
            evicted = self._check_replacement(tx, txid, fee, vsize, parents, conflicts, ancestors)

        # --- scripts: consensus first so a consensus failure is reported as "mandatory"
        self._verify_scripts(tx, prevouts)
        check_signature_policy(tx, prevouts)

        entry = MempoolEntry(tx, txid, wtxid, fee, vsize, tx.weight, int(self._clock()), next_height, prevouts,
                             sigops, parents)
        if not test_only:
            for victim in evicted:
                self._remove_entry(victim)
            self._add_entry(entry)
        return entry

    def _check_sequence_locks(self, tx: Tx, coins: list[Coin], next_height: int, tip_hash: bytes) -> None:
        """BIP68 relative lock-times, evaluated for inclusion in the next block."""
        if tx.version < 2:
            return
        min_height, min_time = -1, -1
        for txin, coin in zip(tx.vin, coins, strict=True):
            seq = txin.sequence
            if seq & SEQUENCE_LOCKTIME_DISABLE_FLAG:
                continue
            coin_height = min(coin.height, next_height)
            if seq & SEQUENCE_LOCKTIME_TYPE_FLAG:
                anc_height = max(coin_height - 1, 0)
                anc_hash = self._index.active_hash(anc_height)
                assert anc_hash is not None
                coin_time = self.median_time_past(anc_hash)
                lock_seconds = (seq & SEQUENCE_LOCKTIME_MASK) << SEQUENCE_LOCKTIME_GRANULARITY
                min_time = max(min_time, coin_time + lock_seconds - 1)
            else:
                min_height = max(min_height, coin_height + (seq & SEQUENCE_LOCKTIME_MASK) - 1)
        if min_height >= next_height or min_time >= self.median_time_past(tip_hash):
            raise TxValidationError("non-BIP68-final")

    def _check_replacement(self, tx: Tx, txid: bytes, fee: int, vsize: int, parents: set[bytes],
                           conflicts: set[bytes], ancestors: set[bytes]) -> set[bytes]:
        if not self.policy.full_rbf:
            for c in conflicts:
                entry = self._mempool[c]
                if not (signals_rbf(entry.tx) or any(signals_rbf(self._mempool[a].tx)
                                                     for a in self._ancestors(entry.parents))):
                    raise TxValidationError("txn-mempool-conflict")
        evicted = self._descendants(conflicts)
        if len(evicted) > MAX_REPLACEMENT_CANDIDATES:
            raise TxValidationError("too many potential replacements", "policy",
                                    f"rejecting replacement {txid[::-1].hex()}; too many potential "
                                    f"replacements ({len(evicted)} > {MAX_REPLACEMENT_CANDIDATES})")
        if ancestors & evicted:
            raise TxValidationError("bad-txns-spends-conflicting-tx", "policy",
                                    f"{txid[::-1].hex()} spends conflicting transaction")
        conflict_parents: set[bytes] = set()
        for c in conflicts:
            conflict_parents |= self._mempool[c].parents
        if parents - conflict_parents:
            raise TxValidationError("replacement-adds-unconfirmed", "policy",
                                    f"replacement {txid[::-1].hex()} adds unconfirmed input")
        for c in conflicts:
            old = self._mempool[c]
            if fee * old.vsize <= old.fee * vsize:
                raise TxValidationError("insufficient fee", "policy",
                                        f"rejecting replacement {txid[::-1].hex()}; new feerate "
                                        f"{fee / vsize:.8f} <= old feerate {old.fee / old.vsize:.8f}")
        evicted_fees = sum(self._mempool[e].fee for e in evicted)
        if fee < evicted_fees:
            raise TxValidationError("insufficient fee", "policy",
                                    f"rejecting replacement {txid[::-1].hex()}, less fees than conflicting "
                                    f"txs; {fee} < {evicted_fees}")
        required = fee_for(self.policy.incremental_relay_fee, vsize)
        if fee - evicted_fees < required:
            raise TxValidationError("insufficient fee", "policy",
                                    f"rejecting replacement {txid[::-1].hex()}, not enough additional fees to "
                                    f"relay; {fee - evicted_fees} < {required}")
        return evicted

    def _verify_scripts(self, tx: Tx, prevouts: list[TxOut]) -> None:
        """Run every input through libbitcoinkernel's interpreter with all consensus flags.

        Flags matter: with none, the kernel's verifier accepts any witness (segwit is then
        anyone-can-spend), so a forgotten flag would silently accept theft.
        """
        ktx = pbk.Transaction(tx.serialize())
        spent = [pbk.TransactionOutput(pbk.ScriptPubkey(p.script_pubkey), p.value) for p in prevouts]
        txdata = PrecomputedTransactionData(ktx, spent)
        for i, p in enumerate(prevouts):
            try:
                ok = pbk.ScriptPubkey(p.script_pubkey).verify(p.value, ktx, txdata, i, _CONSENSUS_FLAGS)
            except pbk.ScriptVerifyException as exc:
                raise TxValidationError("mandatory-script-verify-flag-failed", "consensus",
                                        f"input {i}: {exc}") from None
            if not ok:
                raise TxValidationError(
                    f"mandatory-script-verify-flag-failed (script verification failed for input {i})", "consensus")

    def _add_entry(self, entry: MempoolEntry) -> None:
        self._mempool[entry.txid] = entry
        self._wtxids.add(entry.wtxid)
        for txin in entry.tx.vin:
            self._spent_by[txin.prevout] = entry.txid

    def _remove_entry(self, txid: bytes) -> None:
        entry = self._mempool.pop(txid, None)
        if entry is None:
            return
        self._wtxids.discard(entry.wtxid)
        for txin in entry.tx.vin:
            if self._spent_by.get(txin.prevout) == txid:
                del self._spent_by[txin.prevout]
        for other in self._mempool.values():
            other.parents.discard(txid)

    def remove_from_mempool(self, txid: bytes) -> bool:
        """Drop a transaction and its descendants (Core's ``removeRecursive``)."""
        with self._lock:
            if txid not in self._mempool:
                return False
            for t in self._descendants({txid}):
                self._remove_entry(t)
            return True

    # ---------------------------------------------------------------- mempool after chain changes
    def _update_mempool(self, connected: list[tuple[Block, int]], disconnected: list[tuple[Block, int]]) -> None:
        if not disconnected:
            for block, height in connected:
                self._remove_for_block(block, height)
            return
        # A reorg: like Core's MaybeUpdateMempoolForReorg, resubmit the disconnected transactions
        # (oldest block first) ahead of the existing mempool, then re-check everything against the
        # new tip; confirmed ones are skipped, conflicted or now-immature ones fall out.
        resurrect = [tx for block, _h in reversed(disconnected) for tx in block.txs[1:]]
        existing = [e.tx for e in self._mempool.values()]
        self._mempool.clear()
        self._spent_by.clear()
        self._wtxids.clear()
        for tx in resurrect + existing:
            if self._index.tx_location(tx.txid) is not None:
                continue
            try:
                self._accept(tx, test_only=False, bypass_limits=True)
            except TxValidationError as exc:
                log.info("dropping %s from mempool after reorg: %s", tx.txid_hex, exc)

    def _remove_for_block(self, block: Block, height: int) -> None:
        """removeForBlock: drop mined transactions and anything conflicting with them."""
        for tx in block.txs[1:]:
            entry = self._mempool.get(tx.txid)
            if entry is not None:
                self._fee_samples.append((height, entry.feerate, height - entry.height + 1))
                self._remove_entry(tx.txid)
            for txin in tx.vin:
                other = self._spent_by.get(txin.prevout)
                if other is not None and other != tx.txid:
                    for t in self._descendants({other}):
                        self._remove_entry(t)

    # ---------------------------------------------------------------- persistence of the mempool
    def _save_mempool(self) -> None:
        path = self.datadir / "mempool.json"
        tmp = path.with_suffix(".tmp")
        data = [{"hex": e.tx.serialize().hex(), "time": e.time} for e in self._mempool.values()]
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def _load_mempool(self) -> None:
        path = self.datadir / "mempool.json"
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable mempool.json: %s", exc)
            return
        for item in data if isinstance(data, list) else []:
            try:
                self._accept(Tx.from_hex(item["hex"]), test_only=False, bypass_limits=False)
            except (TxValidationError, ValueError, KeyError, TypeError) as exc:
                log.info("not reloading mempool tx: %s", exc)

    # ================================================================== fee estimation
    def estimate_fee(self, target: int, conservative: bool = False) -> float | None:
        """A fee rate (sat/vB) that confirmed within ``target`` blocks for most recent transactions.

        A deliberately small estimator: over the last 100 blocks, the ``target``-block success
        set's 15th (economical) or 5th (conservative) percentile fee rate, floored at the min relay
        fee. It needs 10 samples before it answers — like Core it says "no data" rather than guess.
        """
        with self._lock:
            tip = self.height
            samples = sorted(rate for h, rate, waited in self._fee_samples if h > tip - 100 and waited <= target)
            if len(samples) < 10:
                return None
            pct = 0.05 if conservative else 0.15
            rate = samples[int(len(samples) * pct)]
            return max(rate, self.policy.min_relay_fee / 1000)

    # ================================================================== block building
    def create_block(
        self,
        coinbase_script: bytes,
        txs: list[Tx] | None = None,
        *,
        prev: bytes | None = None,
        block_time: int | None = None,
        extra_nonce: int = 0,
    ) -> Block:
        """Assemble and grind a block on ``prev`` (default: the tip).

        ``txs=None`` takes transactions from the mempool by ancestor fee rate; an explicit list is
        used as given (generateblock semantics: policy is not applied, consensus still is).
        """
        with self._lock:
            parent = self._index.header(prev if prev is not None else self.tip_hash)
            if parent is None:
                raise BlockNotFound()
            if parent.invalid:
                raise ChainError(-25, "cannot build on an invalid block")
            height = parent.height + 1
            fees = 0
            if txs is None:
                selected = self._select_for_block()
                txs = [e.tx for e in selected]
                fees = sum(e.fee for e in selected)
            else:
                fees = self._fees_of_explicit(txs, parent.hash)
            mtp = self.median_time_past(parent.hash)
            t = block_time if block_time is not None else max(mtp + 1, int(self._clock()))
            coinbase = Tx(
                version=2,
                vin=[TxIn(OutPoint(b"\0" * 32, 0xFFFFFFFF), push_int(height) + push_int(extra_nonce),
                          0xFFFFFFFF, [b"\0" * 32])],
                vout=[TxOut(block_subsidy(height) + fees, coinbase_script)],
                locktime=0,
            )
            all_txs = [coinbase, *txs]
            commitment = witness_commitment(all_txs)
            coinbase.vout.append(TxOut(0, WITNESS_COMMITMENT_HEADER + commitment))
            header = BlockHeader(BLOCK_VERSION, parent.hash, merkle_root([t.txid for t in all_txs]), t,
                                 REGTEST_BITS, 0)
            while not check_proof_of_work(header):
                header.nonce += 1
                if header.nonce > 0xFFFFFFFF:
                    raise ChainError(-1, "nonce space exhausted")
            return Block(header, all_txs)

    def _fees_of_explicit(self, txs: list[Tx], parent_hash: bytes) -> int:
        """Fees of explicitly given transactions, resolving inputs from the UTXO set (tip only)
        and earlier transactions in the list. Unknown inputs count as zero fee; the kernel will
        then reject the block, which is the answer the caller needs."""
        if parent_hash != self.tip_hash:
            return 0
        created: dict[OutPoint, int] = {}
        total = 0
        for tx in txs:
            value_in = 0
            for txin in tx.vin:
                if txin.prevout in created:
                    value_in += created[txin.prevout]
                    continue
                coin = self._index.coin(txin.prevout)
                if coin is None:
                    return 0
                value_in += coin.value
            for n, out in enumerate(tx.vout):
                created[OutPoint(tx.txid, n)] = out.value
            total += max(value_in - sum(o.value for o in tx.vout), 0)
        return total

    def _select_for_block(self) -> list[MempoolEntry]:
        """Ancestor-feerate ordering, parents always before children, within weight and sigops."""
        scored: list[tuple[float, int, bytes]] = []
        order = {txid: i for i, txid in enumerate(self._mempool)}
        for txid, entry in self._mempool.items():
            anc = self._ancestors(entry.parents)
            fee = entry.fee + sum(self._mempool[a].fee for a in anc)
            size = entry.vsize + sum(self._mempool[a].vsize for a in anc)
            scored.append((-fee / size, order[txid], txid))
        scored.sort()
        chosen: list[MempoolEntry] = []
        included: set[bytes] = set()
        weight = COINBASE_RESERVED_WEIGHT
        sigops = 400
        for _score, _o, txid in scored:
            if txid in included:
                continue
            package = sorted(self._ancestors(self._mempool[txid].parents) - included, key=order.__getitem__)
            package.append(txid)
            pw = sum(self._mempool[t].weight for t in package)
            ps = sum(self._mempool[t].sigop_cost for t in package)
            if weight + pw > MAX_BLOCK_WEIGHT or sigops + ps > MAX_BLOCK_SIGOPS_COST:
                continue
            for t in package:
                chosen.append(self._mempool[t])
                included.add(t)
            weight += pw
            sigops += ps
        return chosen

    # ================================================================== block submission
    def submit_block(self, block: Block) -> str | None:
        """Hand a block to the kernel. Returns None if it became (part of) the active chain,
        ``"duplicate"``, ``"inconclusive"`` (stored on a side branch), or a rejection reason."""
        with self._lock:
            block_hash = block.header.hash
            known = self._index.header(block_hash)
            if known is not None:
                return "duplicate-invalid" if known.invalid else "duplicate"
            raw = block.serialize()
            self._cb_checked = {}
            self._index.begin()
            self._callbacks_live = True
            kernel_error: Exception | None = None
            try:
                try:
                    self.chainman.process_block(pbk.Block(raw))
                except pbk.ProcessBlockException as exc:
                    kernel_error = exc
                connected, disconnected = self._drain_callbacks()
                entries = self.chainman.block_tree_entries
                key = pbk.BlockHash(block_hash)
                checked = self._cb_checked.get(block_hash)
                for h, (mode, _res) in self._cb_checked.items():
                    if mode != pbk.ValidationMode.VALID and self._index.header(h) is not None:
                        self._index.set_invalid([h, *self._index.descendants(h)], True)
                rejected = kernel_error is not None or (checked is not None and checked[0] != pbk.ValidationMode.VALID)
                if not rejected and key in entries:
                    self._index.add_header(block, entries[key].height, len(raw))
                self._index.commit()
            except BaseException:
                self._index.rollback()
                self._sync_index_with_kernel()
                raise
            self._update_mempool(connected, disconnected)
            if rejected:
                reason = checked[1].name.lower() if checked is not None else "invalid"
                return f"rejected: {reason}"
            if self._index.active_height(block_hash) is not None:
                return None
            return "inconclusive"

    def generate(self, n: int, coinbase_script: bytes) -> list[bytes]:
        """Mine ``n`` blocks on the tip paying ``coinbase_script`` (generatetoaddress)."""
        if not 0 <= n <= 100_000:
            raise ChainError(-8, "nblocks out of range")
        hashes: list[bytes] = []
        with self._lock:
            for _ in range(n):
                block = self.create_block(coinbase_script)
                result = self.submit_block(block)
                if result is not None:
                    raise ChainError(-1, f"ProcessNewBlock, block not accepted: {result}")
                hashes.append(block.header.hash)
        return hashes

    def mine_branch(self, from_hash: bytes, n: int, coinbase_script: bytes,
                    txs: list[Tx] | None = None) -> list[bytes]:
        """Mine ``n`` blocks on top of ``from_hash`` (not necessarily the tip) — a competing branch.

        ``txs`` go into the first block of the branch; the rest are empty. Once the branch has
        more work than the active chain the kernel reorganises to it, the index follows through
        the disconnect/connect notifications and disconnected transactions return to the mempool.
        """
        if n < 1:
            raise ChainError(-8, "a branch needs at least one block")
        hashes: list[bytes] = []
        with self._lock:
            prev = from_hash
            for i in range(n):
                body = list(txs or []) if i == 0 else []
                nonce = 1
                while True:
                    block = self.create_block(coinbase_script, body, prev=prev, extra_nonce=nonce)
                    if self._index.header(block.header.hash) is None:
                        break
                    nonce += 1  # same branch point mined before with identical content
                result = self.submit_block(block)
                if result is not None and result != "inconclusive":
                    raise ChainError(-25, f"branch block not accepted: {result}")
                hashes.append(block.header.hash)
                prev = block.header.hash
        return hashes

    # ================================================================== invalidate / reconsider
    def invalidate_block(self, block_hash: bytes) -> None:
        """invalidateblock: mark a block and its descendants invalid and reorg away from them.

        libbitcoinkernel has no invalidation call, so the node replays every still-valid block
        into a fresh kernel datadir (Bitcoin Core's own validation again), swaps it in and
        reconciles the index. The invalidated blocks' bytes are kept for ``reconsiderblock``.
        """
        with self._lock:
            info = self._index.header(block_hash)
            if info is None:
                raise BlockNotFound()
            if info.height == 0:
                raise ChainError(-1, "The genesis block cannot be invalidated")
            victims = [block_hash, *self._index.descendants(block_hash)]
            self._index.begin()
            for h in victims:
                if self._index.invalid_raw(h) is None:
                    raw = self._read_raw_block(h)
                    if raw is not None:
                        self._index.store_invalid_raw(h, raw)
            self._index.set_invalid(victims, True)
            self._index.commit()
            self._rebuild_kernel()

    def reconsider_block(self, block_hash: bytes) -> None:
        """reconsiderblock: clear invalidity of a block, its ancestors and descendants and let
        the kernel pick the most-work chain again."""
        with self._lock:
            info = self._index.header(block_hash)
            if info is None:
                raise BlockNotFound()
            targets = [block_hash, *self._index.descendants(block_hash)]
            cur = info
            while cur.height > 0 and cur.invalid:
                parent = self._index.header(cur.prev)
                if parent is None or not parent.invalid:
                    break
                targets.append(parent.hash)
                cur = parent
            pending: list[tuple[int, bytes, bytes]] = []
            self._index.begin()
            for h in targets:
                hi = self._index.header(h)
                raw = self._index.pop_invalid_raw(h)
                if hi is not None and raw is not None:
                    pending.append((hi.height, h, raw))
            self._index.set_invalid(targets, False)
            # Forget the headers of blocks about to be resubmitted so submit_block does not see
            # them as duplicates; blocks the kernel itself rejected (no stored bytes) stay known.
            self._index._db.executemany("DELETE FROM headers WHERE hash=?", [(h,) for _, h, _ in pending])
            self._index.commit()
            for _height, _hash, raw in sorted(pending, key=lambda p: p[0]):
                self.submit_block(Block.from_bytes(raw))

    def _rebuild_kernel(self) -> None:
        valid = [h for h in self._index.valid_headers_by_height() if h.height > 0]
        raws = []
        for h in valid:
            raw = self._read_raw_block(h.hash)
            if raw is None:
                raise RuntimeError(f"cannot read block {h.hash[::-1].hex()} for the rebuild")
            raws.append(raw)
        rebuild = self.datadir / "kernel.rebuild"
        shutil.rmtree(rebuild, ignore_errors=True)
        fresh = self._open_kernel(rebuild, live=False)
        for raw in raws:
            with contextlib.suppress(pbk.ProcessBlockException):
                fresh.process_block(pbk.Block(raw))
        fresh.__del__()
        del fresh
        self._close_kernel()
        old = self.datadir / "kernel.old"
        shutil.rmtree(old, ignore_errors=True)
        self._kernel_dir.rename(old)
        rebuild.rename(self._kernel_dir)
        shutil.rmtree(old, ignore_errors=True)
        self._open_kernel(live=False)
        self._callbacks_live = True
        connected, disconnected = self._sync_index_with_kernel()
        self._update_mempool(connected, disconnected)
