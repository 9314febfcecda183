"""Transactions and blocks in Bitcoin's consensus serialisation, and their RPC JSON shapes.

The kernel parses and validates blocks itself; this module exists because the block builder,
the mempool and the RPC façade need to *construct* and *inspect* them (weights, txids, witness
commitments, Core's ``TxToUniv`` JSON) without a round-trip through C for every field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import Decimal

from ....signer import bitcoin as signer_btc
from ....signer.bitcoin import SEQUENCE_FINAL as SEQUENCE_FINAL
from ....signer.bitcoin import WITNESS_SCALE_FACTOR as WITNESS_SCALE_FACTOR
from ....signer.bitcoin import TxIn as TxIn
from ....signer.bitcoin import TxOut as TxOut
from .encoding import (
    COIN,
    REGTEST,
    ByteReader,
    DecodeError,
    Network,
    hash256,
    infer_descriptor,
    script_to_address,
    script_to_asm,
    ser_compact_size,
    solve,
)

#: BIP141 witness-commitment header: OP_RETURN, push 36, 0xaa21a9ed.
WITNESS_COMMITMENT_HEADER = bytes.fromhex("6a24aa21a9ed")


# The data model and its serialisation are the signer's (one implementation for signing and
# for the chain). What the chain adds is Core's parsing rules and error type: a node must parse
# transactions that consensus will then reject with a precise reason (e.g. an output above
# MAX_MONEY is "bad-txns-vout-toolarge", not a decode error), and decoding failures map to
# RPC error -22 through DecodeError.


@dataclass(frozen=True)
class OutPoint(signer_btc.OutPoint):
    """A reference to a transaction output; ``txid`` in internal (little-endian) byte order."""

    def is_null(self) -> bool:
        return self.txid == b"\0" * 32 and self.n == 0xFFFFFFFF


class Tx(signer_btc.Tx):
    """A mutable transaction; call :meth:`serialize`/:attr:`txid` after edits (no caching)."""

    @classmethod
    def deserialize(cls, reader: ByteReader, allow_witness: bool = True) -> Tx:  # type: ignore[override]
        """Read one transaction the way Core's UnserializeTransaction does (witness-aware)."""
        tx = cls(version=reader.i32())
        flags = 0
        vin_count = reader.compact_size()
        if vin_count == 0 and allow_witness:
            flags = reader.u8()
            if flags != 0:
                vin_count = reader.compact_size()
        tx.vin = [cls._read_input(reader) for _ in range(vin_count)]
        tx.vout = [TxOut(reader.i64(), reader.var_bytes()) for _ in range(reader.compact_size())]
        if flags & 1:
            flags ^= 1
            for i in tx.vin:
                i.witness = [reader.var_bytes() for _ in range(reader.compact_size())]
            if not tx.has_witness():
                raise DecodeError("Superfluous witness record")
        if flags:
            raise DecodeError("Unknown transaction optional data")
        tx.locktime = reader.u32()
        return tx

    @staticmethod
    def _read_input(reader: ByteReader) -> TxIn:
        prev = OutPoint(reader.read(32), reader.u32())
        script = reader.var_bytes()
        return TxIn(prev, script, reader.u32())

    @classmethod
    def from_bytes(cls, data: bytes, allow_witness: bool = True) -> Tx:
        """Parse a complete transaction; trailing bytes are an error."""
        reader = ByteReader(data)
        tx = cls.deserialize(reader, allow_witness)
        if not reader.at_end():
            raise DecodeError("trailing bytes after transaction")
        return tx

    @classmethod
    def from_hex(cls, text: object) -> Tx:  # type: ignore[override]
        """DecodeHexTx: the RPC entry point for raw transactions."""
        if not isinstance(text, str) or len(text) % 2:
            raise DecodeError("TX decode failed")
        try:
            data = bytes.fromhex(text)
        except ValueError:
            raise DecodeError("TX decode failed") from None
        return cls.from_bytes(data)

    @property
    def wtxid(self) -> bytes:
        return hash256(self.serialize(with_witness=True))

    @property
    def wtxid_hex(self) -> str:
        return self.wtxid[::-1].hex()

    def is_coinbase(self) -> bool:
        prevout = self.vin[0].prevout if len(self.vin) == 1 else None
        return prevout is not None and prevout.txid == b"\0" * 32 and prevout.n == 0xFFFFFFFF


# ---------------------------------------------------------------------------------- blocks


@dataclass
class BlockHeader:
    version: int
    prev_hash: bytes
    merkle_root: bytes
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        return (struct.pack("<i", self.version) + self.prev_hash + self.merkle_root
                + struct.pack("<III", self.time, self.bits, self.nonce))

    @classmethod
    def from_bytes(cls, data: bytes) -> BlockHeader:
        if len(data) != 80:
            raise DecodeError("block header must be 80 bytes")
        version = struct.unpack_from("<i", data, 0)[0]
        time_, bits, nonce = struct.unpack_from("<III", data, 68)
        return cls(version, data[4:36], data[36:68], time_, bits, nonce)

    @property
    def hash(self) -> bytes:
        return hash256(self.serialize())

    @property
    def hash_hex(self) -> str:
        return self.hash[::-1].hex()


@dataclass
class Block:
    header: BlockHeader
    txs: list[Tx]

    def serialize(self, with_witness: bool = True) -> bytes:
        return (self.header.serialize() + ser_compact_size(len(self.txs))
                + b"".join(t.serialize(with_witness) for t in self.txs))

    @classmethod
    def from_bytes(cls, data: bytes) -> Block:
        reader = ByteReader(data)
        header = BlockHeader.from_bytes(reader.read(80))
        txs = [Tx.deserialize(reader) for _ in range(reader.compact_size())]
        if not reader.at_end():
            raise DecodeError("trailing bytes after block")
        return cls(header, txs)

    @property
    def weight(self) -> int:
        return len(self.serialize(False)) * (WITNESS_SCALE_FACTOR - 1) + len(self.serialize(True))


def merkle_root(hashes: list[bytes]) -> bytes:
    """Bitcoin's merkle root (duplicating the last hash on odd levels)."""
    if not hashes:
        return b"\0" * 32
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hash256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def witness_commitment(txs: list[Tx], reserved_value: bytes = b"\0" * 32) -> bytes:
    """BIP141 commitment: hash256(witness merkle root || witness reserved value)."""
    wtxids = [b"\0" * 32] + [t.wtxid for t in txs[1:]]
    return hash256(merkle_root(wtxids) + reserved_value)


def bits_to_target(bits: int) -> int:
    """Decode compact ``nBits`` into the 256-bit target (arith_uint256::SetCompact)."""
    exponent = bits >> 24
    mantissa = bits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def block_work(bits: int) -> int:
    """GetBlockProof: expected hashes to find a block at this target."""
    target = bits_to_target(bits)
    return (1 << 256) // (target + 1) if target else 0


def difficulty(bits: int) -> float:
    """GetDifficulty: the target of difficulty 1 over this block's target."""
    shift = (bits >> 24) & 0xFF
    diff = float(0x0000FFFF) / float(bits & 0x00FFFFFF)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


# ---------------------------------------------------------------------------------- JSON


def btc_amount(sats: int) -> Decimal:
    """Satoshis as an exact BTC Decimal (Core's ValueFromAmount prints 8 decimals)."""
    return (Decimal(sats) / COIN).quantize(Decimal("0.00000001"))


def script_pubkey_json(script: bytes, net: Network = REGTEST) -> dict[str, object]:
    """ScriptToUniv with ``include_address`` as Core prints ``vout[].scriptPubKey``."""
    out: dict[str, object] = {
        "asm": script_to_asm(script),
        "desc": infer_descriptor(script, net),
        "hex": script.hex(),
    }
    addr = script_to_address(script, net)
    if addr is not None:
        out["address"] = addr
    out["type"] = str(solve(script)[0])
    return out


def tx_to_json(
    tx: Tx,
    net: Network = REGTEST,
    prevouts: list[TxOut] | None = None,
    include_hex: bool = True,
    verbosity_prevout: bool = False,
) -> dict[str, object]:
    """Core's TxToUniv. With ``prevouts`` (undo data) a ``fee`` is added; with
    ``verbosity_prevout`` each input also shows its spent output (getblock verbosity 3)."""
    vin: list[dict[str, object]] = []
    for idx, i in enumerate(tx.vin):
        entry: dict[str, object]
        if tx.is_coinbase():
            entry = {"coinbase": i.script_sig.hex()}
        else:
            entry = {
                "txid": i.prevout.txid_hex,
                "vout": i.prevout.n,
                "scriptSig": {"asm": script_to_asm(i.script_sig, True), "hex": i.script_sig.hex()},
            }
        if i.witness:
            entry["txinwitness"] = [w.hex() for w in i.witness]
        if verbosity_prevout and prevouts is not None and not tx.is_coinbase():
            p = prevouts[idx]
            entry["prevout"] = {"generated": False, "height": None, "value": btc_amount(p.value),
                                "scriptPubKey": script_pubkey_json(p.script_pubkey, net)}
        entry["sequence"] = i.sequence
        vin.append(entry)
    out: dict[str, object] = {
        "txid": tx.txid_hex,
        "hash": tx.wtxid_hex,
        "version": tx.version,
        "size": len(tx.serialize()),
        "vsize": tx.vsize,
        "weight": tx.weight,
        "locktime": tx.locktime,
        "vin": vin,
        "vout": [
            {"value": btc_amount(o.value), "n": n, "scriptPubKey": script_pubkey_json(o.script_pubkey, net)}
            for n, o in enumerate(tx.vout)
        ],
    }
    if prevouts is not None and not tx.is_coinbase():
        out["fee"] = btc_amount(sum(p.value for p in prevouts) - sum(o.value for o in tx.vout))
    if include_hex:
        out["hex"] = tx.serialize().hex()
    return out
