"""The devnet's chain index: headers, active chain, UTXO set, undo data, tx and address indexes.

libbitcoinkernel keeps its own UTXO set but exposes no lookups into it, so the mempool, the RPC
façade and the bridge need a second copy. It is fed from the kernel's ``block_connected`` /
``block_disconnected`` notifications, stored in SQLite next to the kernel's data directory, and
written in one SQLite transaction per kernel call so that a crash leaves either the old or the
new state — and :meth:`ChainIndex.tip` lets the node detect and repair any divergence at start.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from .encoding import ByteReader, ser_compact_size
from .tx import Block, BlockHeader, OutPoint, TxOut, block_work

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS headers (
    hash BLOB PRIMARY KEY, prev BLOB NOT NULL, height INTEGER NOT NULL, header BLOB NOT NULL,
    chainwork TEXT NOT NULL, ntx INTEGER NOT NULL, size INTEGER NOT NULL,
    strippedsize INTEGER NOT NULL, weight INTEGER NOT NULL, invalid INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS headers_prev ON headers(prev);
CREATE TABLE IF NOT EXISTS active (height INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS utxo (
    txid BLOB NOT NULL, n INTEGER NOT NULL, value INTEGER NOT NULL, script BLOB NOT NULL,
    height INTEGER NOT NULL, coinbase INTEGER NOT NULL, PRIMARY KEY (txid, n)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS utxo_script ON utxo(script);
CREATE TABLE IF NOT EXISTS undo (hash BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txindex (txid BLOB PRIMARY KEY, block BLOB NOT NULL, pos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS script_history (
    script BLOB NOT NULL, txid BLOB NOT NULL, block BLOB NOT NULL, height INTEGER NOT NULL,
    direction TEXT NOT NULL, value INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS script_history_script ON script_history(script);
CREATE INDEX IF NOT EXISTS script_history_block ON script_history(block);
CREATE TABLE IF NOT EXISTS invalid_blocks (hash BLOB PRIMARY KEY, raw BLOB NOT NULL);
"""


@dataclass(frozen=True)
class Coin:
    """An unspent output with the context consensus needs (height, coinbase maturity)."""

    value: int
    script_pubkey: bytes
    height: int
    coinbase: bool

    @property
    def txout(self) -> TxOut:
        return TxOut(self.value, self.script_pubkey)


@dataclass(frozen=True)
class HeaderInfo:
    """One known block (active or not) as the RPC façade reports it."""

    hash: bytes
    prev: bytes
    height: int
    header: BlockHeader
    chainwork: int
    ntx: int
    size: int
    strippedsize: int
    weight: int
    invalid: bool


def _encode_undo(coins: list[Coin]) -> bytes:
    out = [ser_compact_size(len(coins))]
    for c in coins:
        out += [struct.pack("<qIB", c.value, c.height, int(c.coinbase)), ser_compact_size(len(c.script_pubkey)),
                c.script_pubkey]
    return b"".join(out)


def _decode_undo(data: bytes) -> list[Coin]:
    r = ByteReader(data)
    coins = []
    for _ in range(r.compact_size()):
        value, height, cb = struct.unpack("<qIB", r.read(13))
        coins.append(Coin(value, r.var_bytes(), height, bool(cb)))
    return coins


class ChainIndex:
    """SQLite-backed index; every method assumes the caller holds the node lock."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        self._in_tx = False

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ transactions
    def begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def commit(self) -> None:
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    def rollback(self) -> None:
        if self._in_tx:
            self._db.execute("ROLLBACK")
            self._in_tx = False

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ headers
    def add_header(self, block: Block, height: int, raw_size: int) -> None:
        """Record a block the kernel accepted (on any branch); chain work accumulates from its parent."""
        h = block.header
        parent = self.header(h.prev_hash)
        work = block_work(h.bits) + (parent.chainwork if parent else 0)
        stripped = len(block.serialize(with_witness=False))
        self._db.execute(
            "INSERT OR IGNORE INTO headers(hash, prev, height, header, chainwork, ntx, size, strippedsize, weight)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (h.hash, h.prev_hash, height, h.serialize(), f"{work:064x}", len(block.txs), raw_size, stripped,
             stripped * 3 + raw_size),
        )

    def header(self, block_hash: bytes) -> HeaderInfo | None:
        row = self._db.execute(
            "SELECT hash, prev, height, header, chainwork, ntx, size, strippedsize, weight, invalid"
            " FROM headers WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            return None
        return HeaderInfo(bytes(row[0]), bytes(row[1]), row[2], BlockHeader.from_bytes(bytes(row[3])),
                          int(row[4], 16), row[5], row[6], row[7], row[8], bool(row[9]))

    def children(self, block_hash: bytes) -> list[bytes]:
        return [bytes(r[0]) for r in self._db.execute("SELECT hash FROM headers WHERE prev=?", (block_hash,))]

    def descendants(self, block_hash: bytes) -> list[bytes]:
        """All known blocks building on ``block_hash`` (breadth first, excluding itself)."""
        out: list[bytes] = []
        frontier = [block_hash]
        while frontier:
            nxt: list[bytes] = []
            for h in frontier:
                nxt += self.children(h)
            out += nxt
            frontier = nxt
        return out

    def set_invalid(self, hashes: list[bytes], invalid: bool) -> None:
        self._db.executemany("UPDATE headers SET invalid=? WHERE hash=?", [(int(invalid), h) for h in hashes])

    def valid_headers_by_height(self) -> list[HeaderInfo]:
        rows = self._db.execute("SELECT hash FROM headers WHERE invalid=0 ORDER BY height").fetchall()
        out = [self.header(bytes(r[0])) for r in rows]
        return [h for h in out if h is not None]

    def tips(self) -> list[HeaderInfo]:
        """Known blocks without known children (getchaintips)."""
        rows = self._db.execute(
            "SELECT h.hash FROM headers h WHERE NOT EXISTS (SELECT 1 FROM headers c WHERE c.prev = h.hash)"
        ).fetchall()
        return [h for r in rows if (h := self.header(bytes(r[0]))) is not None]

    # ------------------------------------------------------------------ invalid block store
    def store_invalid_raw(self, block_hash: bytes, raw: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO invalid_blocks(hash, raw) VALUES (?, ?)", (block_hash, raw))

    def pop_invalid_raw(self, block_hash: bytes) -> bytes | None:
        row = self._db.execute("SELECT raw FROM invalid_blocks WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            return None
        self._db.execute("DELETE FROM invalid_blocks WHERE hash=?", (block_hash,))
        return bytes(row[0])

    def invalid_raw(self, block_hash: bytes) -> bytes | None:
        row = self._db.execute("SELECT raw FROM invalid_blocks WHERE hash=?", (block_hash,)).fetchone()
        return None if row is None else bytes(row[0])

    # ------------------------------------------------------------------ active chain
    def tip(self) -> tuple[int, bytes] | None:
        row = self._db.execute("SELECT height, hash FROM active ORDER BY height DESC LIMIT 1").fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def active_hash(self, height: int) -> bytes | None:
        row = self._db.execute("SELECT hash FROM active WHERE height=?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def active_height(self, block_hash: bytes) -> int | None:
        row = self._db.execute("SELECT height FROM active WHERE hash=?", (block_hash,)).fetchone()
        return None if row is None else row[0]

    # ------------------------------------------------------------------ connect / disconnect
    def connect_block(self, block: Block, height: int) -> list[Coin]:
        """Apply a block to the UTXO set and indexes; returns the spent coins (its undo data).

        A missing input would mean the index diverged from the kernel, which already validated
        the block; that is a bug to surface loudly, never something to paper over.
        """
        block_hash = block.header.hash
        tip = self.tip()
        if tip is not None and (tip[0] != height - 1 or tip[1] != block.header.prev_hash):
            raise RuntimeError(f"index tip {tip} does not match parent of block at height {height}")
        spent: list[Coin] = []
        history: list[tuple[bytes, bytes, bytes, int, str, int]] = []
        for pos, tx in enumerate(block.txs):
            txid = tx.txid
            if not tx.is_coinbase():
                for txin in tx.vin:
                    p = txin.prevout
                    row = self._db.execute(
                        "SELECT value, script, height, coinbase FROM utxo WHERE txid=? AND n=?", (p.txid, p.n)
                    ).fetchone()
                    if row is None:
                        raise RuntimeError(f"index is missing coin {p} spent in block {block.header.hash_hex}")
                    coin = Coin(row[0], bytes(row[1]), row[2], bool(row[3]))
                    spent.append(coin)
                    self._db.execute("DELETE FROM utxo WHERE txid=? AND n=?", (p.txid, p.n))
                    history.append((coin.script_pubkey, txid, block_hash, height, "spend", coin.value))
            rows = []
            for n, out in enumerate(tx.vout):
                if out.script_pubkey[:1] == b"\x6a":
                    continue  # provably unspendable: Core never adds OP_RETURN outputs to the UTXO set
                rows.append((txid, n, out.value, out.script_pubkey, height, int(tx.is_coinbase())))
                history.append((out.script_pubkey, txid, block_hash, height, "receive", out.value))
            # BIP30 duplicates cannot occur post-BIP34, but OR REPLACE keeps the index total anyway.
            self._db.executemany("INSERT OR REPLACE INTO utxo VALUES (?,?,?,?,?,?)", rows)
            self._db.execute("INSERT OR REPLACE INTO txindex(txid, block, pos) VALUES (?,?,?)", (txid, block_hash, pos))
        self._db.executemany("INSERT INTO script_history VALUES (?,?,?,?,?,?)", history)
        self._db.execute("INSERT OR REPLACE INTO undo(hash, data) VALUES (?, ?)", (block_hash, _encode_undo(spent)))
        self._db.execute("INSERT INTO active(height, hash) VALUES (?, ?)", (height, block_hash))
        return spent

    def disconnect_block(self, block: Block, height: int) -> None:
        """Undo :meth:`connect_block` for the current tip."""
        block_hash = block.header.hash
        tip = self.tip()
        if tip != (height, block_hash):
            raise RuntimeError(f"cannot disconnect {block.header.hash_hex}: it is not the index tip {tip}")
        row = self._db.execute("SELECT data FROM undo WHERE hash=?", (block_hash,)).fetchone()
        if row is None:
            raise RuntimeError(f"no undo data for {block.header.hash_hex}")
        spent = _decode_undo(bytes(row[0]))
        for tx in reversed(block.txs):
            txid = tx.txid
            self._db.execute("DELETE FROM utxo WHERE txid=?", (txid,))
            self._db.execute("DELETE FROM txindex WHERE txid=? AND block=?", (txid, block_hash))
            if tx.is_coinbase():
                continue
            for txin in reversed(tx.vin):
                coin = spent.pop()
                self._db.execute("INSERT OR REPLACE INTO utxo VALUES (?,?,?,?,?,?)",
                                 (txin.prevout.txid, txin.prevout.n, coin.value, coin.script_pubkey, coin.height,
                                  int(coin.coinbase)))
        if spent:
            raise RuntimeError(f"undo data of {block.header.hash_hex} does not match its inputs")
        self._db.execute("DELETE FROM script_history WHERE block=?", (block_hash,))
        self._db.execute("DELETE FROM active WHERE height=?", (height,))

    def undo_coins(self, block_hash: bytes) -> list[Coin] | None:
        row = self._db.execute("SELECT data FROM undo WHERE hash=?", (block_hash,)).fetchone()
        return None if row is None else _decode_undo(bytes(row[0]))

    # ------------------------------------------------------------------ queries
    def coin(self, outpoint: OutPoint) -> Coin | None:
        row = self._db.execute("SELECT value, script, height, coinbase FROM utxo WHERE txid=? AND n=?",
                               (outpoint.txid, outpoint.n)).fetchone()
        return None if row is None else Coin(row[0], bytes(row[1]), row[2], bool(row[3]))

    def has_unspent_outputs(self, txid: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM utxo WHERE txid=? LIMIT 1", (txid,)).fetchone() is not None

    def tx_location(self, txid: bytes) -> tuple[bytes, int] | None:
        row = self._db.execute("SELECT block, pos FROM txindex WHERE txid=?", (txid,)).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def utxos_for_scripts(self, scripts: list[bytes]) -> list[tuple[OutPoint, Coin]]:
        out: list[tuple[OutPoint, Coin]] = []
        for script in dict.fromkeys(scripts):
            for row in self._db.execute(
                "SELECT txid, n, value, script, height, coinbase FROM utxo WHERE script=? ORDER BY height, txid, n",
                (script,),
            ):
                out.append((OutPoint(bytes(row[0]), row[1]), Coin(row[2], bytes(row[3]), row[4], bool(row[5]))))
        return out

    def utxo_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM utxo").fetchone()[0]

    def balance(self, script: bytes) -> int:
        return self._db.execute("SELECT COALESCE(SUM(value), 0) FROM utxo WHERE script=?", (script,)).fetchone()[0]

    def history(self, script: bytes) -> list[tuple[str, int, str, int]]:
        """(txid hex, height, direction, value) of confirmed activity on ``script``, oldest first."""
        rows = self._db.execute(
            "SELECT txid, height, direction, value FROM script_history WHERE script=? ORDER BY height, rowid",
            (script,)).fetchall()
        return [(bytes(r[0])[::-1].hex(), r[1], r[2], r[3]) for r in rows]
