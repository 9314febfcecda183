"""Bitcoin P2WPKH spends signed by a remote (threshold) key: BIP143 sighashes, fees, coin selection.

This is the canonical home of the BIP143/P2WPKH signing logic; ``bridge.chains.bitcoin.signing``
re-exports it (the bridge may import the signer SDK, never the other way round).

The signer never sees a private key. Everything that is signed goes through a
:class:`DigestSigner` — ``sign_digest(digest, path) -> Signature`` and ``public_key(path) -> Point``
— which in production is the threshold network and in tests a local key. Every signature that
comes back is checked before it is placed (right key, verifies under libsecp256k1, low-S), so a
faulty or malicious signer cannot make the SDK broadcast a transaction the network would reject.

The signing helpers are duck-typed over the transaction (``version``, ``vin[i].prevout.serialize()``,
``vin[i].sequence``, ``vout[j].serialize()``, ``locktime``): they accept this module's :class:`Tx`
and the bridge's own ``bridge.chains.bitcoin.tx.Tx`` alike.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from fusion_prime.protocol import addresses
from fusion_prime.protocol.addresses import bitcoin_network, hash160
from fusion_prime.protocol.addresses import witness_program as witness_program
from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.ecdsa import Signature
from fusion_prime.protocol.errors import InvalidInput

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_ORDER = SECP256K1_ORDER // 2

SIGHASH_ALL = 0x01
SIGHASH_NONE = 0x02
SIGHASH_SINGLE = 0x03
SIGHASH_ANYONECANPAY = 0x80
VALID_SIGHASH_TYPES = frozenset({0x01, 0x02, 0x03, 0x81, 0x82, 0x83})
_VALID_SIGHASH = VALID_SIGHASH_TYPES  # the bridge's historical private name

SEQUENCE_FINAL = 0xFFFFFFFF
#: BIP125: any input with nSequence <= 0xfffffffd signals replaceability.
SEQUENCE_RBF = 0xFFFFFFFD
#: Non-final, not replaceable: nLockTime is enforced (anti fee-sniping) but RBF is not signalled.
SEQUENCE_NO_RBF = 0xFFFFFFFE

WITNESS_SCALE_FACTOR = 4
#: Bitcoin Core's defaults (sat per 1000 vbytes).
DUST_RELAY_FEE = 3000
MIN_RELAY_FEE = 1000
#: A fee rate above this (sat/vB) is refused as a typo; Core's ``maxfeerate`` default is 0.1 BTC/kvB.
MAX_FEE_RATE = Decimal(10_000)

# A P2WPKH input once signed: witness = [DER sig + hashtype, 33-byte key]. Low-S DER is at most
# 71 bytes (r may need a 0x00 pad, low s never does), +1 sighash byte = 72.
P2WPKH_MAX_SIG_LEN = 72
P2WPKH_INPUT_BASE = 32 + 4 + 1 + 4  # outpoint, empty scriptSig, nSequence
P2WPKH_WITNESS_WEIGHT = 1 + 1 + P2WPKH_MAX_SIG_LEN + 1 + 33  # item count, sig, key


class BitcoinError(ValueError):
    """A transaction, address, amount or signature is malformed or not acceptable."""


class InputIndexError(BitcoinError, IndexError):
    """An input index outside the transaction."""


class InsufficientFunds(BitcoinError):
    """The available coins cannot pay the outputs plus the fee."""


class RemoteSignatureError(BitcoinError):
    """The remote signer returned a signature that must not be used."""


# ------------------------------------------------------------------------------------- encoding


def hash256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def ser_compact_size(n: int) -> bytes:
    if n < 0:
        raise BitcoinError("compact size cannot be negative")
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def ser_bytes(data: bytes) -> bytes:
    return ser_compact_size(len(data)) + data


class Reader:
    """A bounds-checked cursor; every failure is an ``error`` (by default :class:`BitcoinError`)
    naming what was cut short. The bridge's chain code subclasses it with its own error type."""

    error: type[ValueError] = BitcoinError
    MAX_SIZE = 0x02000000  # Core's MAX_SIZE for any CompactSize in consensus data

    def __init__(self, data: bytes, what: str = "data") -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"{self.what} truncated: need {n} bytes at offset {self.pos}, "
                               f"{len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.read(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def i32(self) -> int:
        return struct.unpack("<i", self.read(4))[0]

    def i64(self) -> int:
        return struct.unpack("<q", self.read(8))[0]

    def compact_size(self) -> int:
        first = self.u8()
        if first < 0xFD:
            n = first
        elif first == 0xFD:
            n = struct.unpack("<H", self.read(2))[0]
            if n < 0xFD:
                raise self.error(f"{self.what}: non-canonical compact size")
        elif first == 0xFE:
            n = struct.unpack("<I", self.read(4))[0]
            if n <= 0xFFFF:
                raise self.error(f"{self.what}: non-canonical compact size")
        else:
            n = struct.unpack("<Q", self.read(8))[0]
            if n <= 0xFFFFFFFF:
                raise self.error(f"{self.what}: non-canonical compact size")
        if n > self.MAX_SIZE:
            raise self.error(f"{self.what}: compact size {n} too large")
        return n

    def var_bytes(self) -> bytes:
        return self.read(self.compact_size())

    def at_end(self) -> bool:
        return self.pos == len(self.data)


# ----------------------------------------------------------------------------------- transactions


@dataclass(frozen=True)
class OutPoint:
    """A reference to an output; ``txid`` in internal (little-endian) byte order."""

    txid: bytes
    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.txid, bytes) or len(self.txid) != 32:
            raise BitcoinError("outpoint txid must be 32 bytes")
        if not isinstance(self.n, int) or not 0 <= self.n <= 0xFFFFFFFF:
            raise BitcoinError("outpoint index out of range")

    @classmethod
    def from_hex(cls, txid_hex: str, n: int) -> OutPoint:
        """From the txid as RPC shows it (big-endian hex)."""
        try:
            raw = bytes.fromhex(txid_hex)
        except (ValueError, TypeError):
            raise BitcoinError(f"txid {txid_hex!r} is not hex") from None
        return cls(raw[::-1], n)

    def serialize(self) -> bytes:
        return self.txid + struct.pack("<I", self.n)

    @property
    def txid_hex(self) -> str:
        return self.txid[::-1].hex()

    def __str__(self) -> str:
        return f"{self.txid_hex}:{self.n}"


@dataclass
class TxIn:
    prevout: OutPoint
    script_sig: bytes = b""
    sequence: int = SEQUENCE_FINAL
    witness: list[bytes] = field(default_factory=list)


@dataclass
class TxOut:
    value: int
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return struct.pack("<q", self.value) + ser_bytes(self.script_pubkey)


@dataclass
class Tx:
    """A transaction in consensus serialisation (BIP144 witness encoding when any input has one)."""

    version: int = 2
    vin: list[TxIn] = field(default_factory=list)
    vout: list[TxOut] = field(default_factory=list)
    locktime: int = 0

    def has_witness(self) -> bool:
        return any(i.witness for i in self.vin)

    def serialize(self, with_witness: bool = True) -> bytes:
        use_witness = with_witness and self.has_witness()
        out = [struct.pack("<i", self.version)]
        if use_witness:
            out.append(b"\x00\x01")
        out.append(ser_compact_size(len(self.vin)))
        for i in self.vin:
            out += [i.prevout.serialize(), ser_bytes(i.script_sig), struct.pack("<I", i.sequence)]
        out.append(ser_compact_size(len(self.vout)))
        out += [o.serialize() for o in self.vout]
        if use_witness:
            for i in self.vin:
                out.append(ser_compact_size(len(i.witness)))
                out += [ser_bytes(item) for item in i.witness]
        out.append(struct.pack("<I", self.locktime))
        return b"".join(out)

    @classmethod
    def deserialize(cls, reader: Reader, allow_witness: bool = True) -> Tx:
        tx = cls(version=reader.i32())
        flags = 0
        n_in = reader.compact_size()
        if n_in == 0 and allow_witness:
            flags = reader.u8()
            if flags != 0:
                n_in = reader.compact_size()
        tx.vin = []
        for _ in range(n_in):
            prevout = OutPoint(reader.read(32), reader.u32())
            tx.vin.append(TxIn(prevout, reader.var_bytes(), reader.u32()))
        tx.vout = []
        for _ in range(reader.compact_size()):
            value = reader.i64()
            if not 0 <= value <= MAX_MONEY:
                raise BitcoinError(f"output value {value} out of range")
            tx.vout.append(TxOut(value, reader.var_bytes()))
        if flags & 1:
            flags ^= 1
            for i in tx.vin:
                i.witness = [reader.var_bytes() for _ in range(reader.compact_size())]
            if not tx.has_witness():
                raise BitcoinError("superfluous witness record")
        if flags:
            raise BitcoinError("unknown transaction optional data")
        tx.locktime = reader.u32()
        return tx

    @classmethod
    def from_bytes(cls, data: bytes, allow_witness: bool = True) -> Tx:
        reader = Reader(data, "transaction")
        tx = cls.deserialize(reader, allow_witness)
        if not reader.at_end():
            raise BitcoinError("trailing bytes after transaction")
        return tx

    @classmethod
    def from_hex(cls, text: str) -> Tx:
        try:
            return cls.from_bytes(bytes.fromhex(text))
        except (ValueError, TypeError) as exc:
            if isinstance(exc, BitcoinError):
                raise
            raise BitcoinError("transaction is not hex") from None

    @property
    def txid(self) -> bytes:
        return hash256(self.serialize(with_witness=False))

    @property
    def txid_hex(self) -> str:
        return self.txid[::-1].hex()

    @property
    def wtxid_hex(self) -> str:
        return hash256(self.serialize())[::-1].hex()

    @property
    def weight(self) -> int:
        base = len(self.serialize(with_witness=False))
        return base * (WITNESS_SCALE_FACTOR - 1) + len(self.serialize())

    @property
    def vsize(self) -> int:
        return (self.weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR

    def copy(self) -> Tx:
        return type(self).from_bytes(self.serialize())


class TxLike(Protocol):
    """What the sighash and finalize helpers need from a transaction."""

    version: int
    vin: Any
    vout: Any
    locktime: int


# ---------------------------------------------------------------------------------- scripts, keys

OP_0, OP_1, OP_16 = 0x00, 0x51, 0x60
OP_RETURN, OP_DUP, OP_HASH160, OP_EQUAL, OP_EQUALVERIFY, OP_CHECKSIG = 0x6A, 0x76, 0xA9, 0x87, 0x88, 0xAC
def is_compressed_pubkey(data: bytes) -> bool:
    return len(data) == 33 and data[0] in (2, 3)


def p2wpkh_script(pubkey: bytes) -> bytes:
    """The scriptPubKey paying a compressed key with P2WPKH: OP_0 <hash160(key)>."""
    if not is_compressed_pubkey(pubkey):
        raise BitcoinError("P2WPKH requires a 33-byte compressed public key")
    return bytes([OP_0, 20]) + hash160(pubkey)


def p2pkh_script_code(pubkey_hash: bytes) -> bytes:
    """BIP143 scriptCode of a P2WPKH input: the P2PKH script of the key hash."""
    return bytes([OP_DUP, OP_HASH160, 20]) + pubkey_hash + bytes([OP_EQUALVERIFY, OP_CHECKSIG])


def p2wpkh_program(script_pubkey: bytes) -> bytes | None:
    """The 20-byte key hash if ``script_pubkey`` is P2WPKH, else None."""
    if len(script_pubkey) == 22 and script_pubkey[0] == OP_0 and script_pubkey[1] == 20:
        return script_pubkey[2:]
    return None


def address_to_script(address: str, network: str = "regtest") -> bytes:
    """The scriptPubKey an address pays (segwit v0/v1+, P2PKH, P2SH) on the named network.

    The decoding is :func:`fusion_prime.protocol.addresses.address_to_script`, the codec the
    bridge and the devnet use too; this is the one place its errors become :class:`BitcoinError`.
    """
    try:
        return addresses.address_to_script(address, bitcoin_network(network))
    except InvalidInput as exc:
        raise BitcoinError(str(exc)) from None


def script_to_address(script: bytes, network: str = "regtest") -> str | None:
    """The address a script pays (P2PKH, P2SH, segwit), None for anything else or an unknown network."""
    try:
        return addresses.script_to_address(script, bitcoin_network(network))
    except InvalidInput:
        return None


# ------------------------------------------------------------------------------------ BIP143


def _check_index(tx: TxLike, index: int) -> None:
    if not isinstance(index, int) or not 0 <= index < len(tx.vin):
        raise InputIndexError(f"input index {index} out of range for {len(tx.vin)} inputs")


def _check_amount(amount: int, what: str = "amount") -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount <= MAX_MONEY:
        raise BitcoinError(f"{what} {amount!r} out of range (integer satoshis, 0..21e14)")


def bip143_sighash(tx: TxLike, index: int, script_code: bytes, amount: int, hashtype: int = SIGHASH_ALL) -> bytes:
    """The BIP143 (segwit v0) signature hash of input ``index``, for any of the six sighash types.

    ``script_code`` is the serialised script without its length prefix; for P2WPKH it is the
    P2PKH script of the key hash. ``amount`` is the value of the spent output — committing to
    it is what lets an offline signer know the fee it is approving.
    """
    _check_index(tx, index)
    if hashtype not in VALID_SIGHASH_TYPES:
        raise BitcoinError(f"unsupported sighash type {hashtype:#x}")
    _check_amount(amount)
    base = hashtype & 0x1F
    anyone = bool(hashtype & SIGHASH_ANYONECANPAY)
    zero = b"\0" * 32
    hash_prevouts = zero if anyone else hash256(b"".join(i.prevout.serialize() for i in tx.vin))
    hash_sequence = (
        zero if anyone or base in (SIGHASH_NONE, SIGHASH_SINGLE)
        else hash256(b"".join(struct.pack("<I", i.sequence) for i in tx.vin))
    )
    if base not in (SIGHASH_NONE, SIGHASH_SINGLE):
        hash_outputs = hash256(b"".join(o.serialize() for o in tx.vout))
    elif base == SIGHASH_SINGLE and index < len(tx.vout):
        hash_outputs = hash256(tx.vout[index].serialize())
    else:
        hash_outputs = zero
    txin = tx.vin[index]
    preimage = b"".join([
        struct.pack("<i", tx.version), hash_prevouts, hash_sequence, txin.prevout.serialize(),
        ser_bytes(script_code), struct.pack("<q", amount), struct.pack("<I", txin.sequence), hash_outputs,
        struct.pack("<I", tx.locktime), struct.pack("<I", hashtype),
    ])
    return hash256(preimage)


def p2wpkh_sighash(tx: TxLike, index: int, pubkey: bytes, amount: int, hashtype: int = SIGHASH_ALL) -> bytes:
    """BIP143 digest for a P2WPKH input owned by ``pubkey``."""
    if not is_compressed_pubkey(pubkey):
        raise BitcoinError("P2WPKH requires a compressed public key")
    return bip143_sighash(tx, index, p2pkh_script_code(hash160(pubkey)), amount, hashtype)


def der_encode_signature(r: int, s: int) -> bytes:
    """Strict (BIP66) DER encoding of (r, s) without the sighash byte."""
    if not (0 < r < SECP256K1_ORDER and 0 < s < SECP256K1_ORDER):
        raise BitcoinError("signature values out of range")

    def enc(x: int) -> bytes:
        b = x.to_bytes((x.bit_length() + 7) // 8, "big")
        if b[0] & 0x80:
            b = b"\0" + b
        return b"\x02" + bytes([len(b)]) + b

    body = enc(r) + enc(s)
    return b"\x30" + bytes([len(body)]) + body


def is_strict_der_signature(sig: bytes) -> bool:
    """Core's IsValidSignatureEncoding (BIP66 strict DER, *including* the trailing hash type)."""
    if len(sig) < 9 or len(sig) > 73 or sig[0] != 0x30 or sig[1] != len(sig) - 3:
        return False
    len_r = sig[3]
    if 5 + len_r >= len(sig):
        return False
    len_s = sig[5 + len_r]
    if len_r + len_s + 7 != len(sig):
        return False
    if sig[2] != 0x02 or len_r == 0 or sig[4] & 0x80 or (len_r > 1 and sig[4] == 0 and not sig[5] & 0x80):
        return False
    if sig[len_r + 4] != 0x02 or len_s == 0 or sig[len_r + 6] & 0x80:
        return False
    return not (len_s > 1 and sig[len_r + 6] == 0 and not sig[len_r + 7] & 0x80)


def der_decode_signature(sig: bytes) -> tuple[int, int, int]:
    """(r, s, hashtype) of a strict-DER signature with its sighash byte; BitcoinError otherwise."""
    if not is_strict_der_signature(sig):
        raise BitcoinError("signature is not strict DER with a sighash byte")
    len_r = sig[3]
    len_s = sig[5 + len_r]
    r = int.from_bytes(sig[4 : 4 + len_r], "big")
    s = int.from_bytes(sig[6 + len_r : 6 + len_r + len_s], "big")
    if not (0 < r < SECP256K1_ORDER and 0 < s < SECP256K1_ORDER):
        raise BitcoinError("signature values out of range")
    return r, s, sig[-1]


def verify_der_signature(pubkey: bytes, digest: bytes, r: int, s: int) -> bool:
    """libsecp256k1 verification (which itself insists on low-S)."""
    from coincurve import PublicKey

    try:
        return bool(PublicKey(pubkey).verify(der_encode_signature(r, s), digest, hasher=None))
    except (ValueError, TypeError):
        return False


def finalize_p2wpkh_input(tx: TxLike, index: int, pubkey: bytes, r: int, s: int,
                          hashtype: int = SIGHASH_ALL) -> None:
    """Place a signature (r, s) produced by any signer into input ``index``'s witness.

    S is *not* normalised here on purpose: the threshold signer already returns low-S, and
    tests need to be able to build the high-S variant to exercise the mempool's policy check.
    """
    _check_index(tx, index)
    tx.vin[index].script_sig = b""
    tx.vin[index].witness = [der_encode_signature(r, s) + bytes([hashtype]), pubkey]


def sign_p2wpkh(tx: TxLike, index: int, privkey: bytes, amount: int, hashtype: int = SIGHASH_ALL,
                high_s: bool = False) -> None:
    """Sign input ``index`` as P2WPKH with a single private key (coincurve, RFC6979 nonces).

    For tests and the devnet faucet. ``high_s=True`` replaces S by n - S — still a valid ECDSA
    signature (consensus accepts it) but non-standard under Core's LOW_S policy.
    """
    from coincurve import PrivateKey

    key = PrivateKey(privkey)
    pubkey = key.public_key.format(compressed=True)
    digest = p2wpkh_sighash(tx, index, pubkey, amount, hashtype)
    compact = key.sign_recoverable(digest, hasher=None)
    r = int.from_bytes(compact[:32], "big")
    s = int.from_bytes(compact[32:64], "big")
    if s > HALF_ORDER:
        s = SECP256K1_ORDER - s
    if high_s:
        s = SECP256K1_ORDER - s
    finalize_p2wpkh_input(tx, index, pubkey, r, s, hashtype)


def sign_p2wpkh_with(tx: TxLike, index: int, pubkey: bytes, amount: int,
                     signer: Callable[[bytes], tuple[int, int]], hashtype: int = SIGHASH_ALL) -> None:
    """Sign input ``index`` through a callback ``digest -> (r, s)``; the result is verified first."""
    digest = p2wpkh_sighash(tx, index, pubkey, amount, hashtype)
    r, s = signer(digest)
    if s > HALF_ORDER:
        s = SECP256K1_ORDER - s
    if not verify_der_signature(pubkey, digest, r, s):
        raise RemoteSignatureError("remote signer returned a signature that does not verify")
    finalize_p2wpkh_input(tx, index, pubkey, r, s, hashtype)


# ------------------------------------------------------------------------ the remote signer


class DigestSigner(Protocol):
    """The threshold network as the SDK sees it (the wallet client implements this)."""

    def sign_digest(self, digest: bytes, path: str) -> Signature: ...

    def public_key(self, path: str) -> Point: ...


@dataclass(frozen=True)
class CallableSigner:
    """Adapts the two callables — ``sign_digest(digest, path) -> Signature`` (e.g.
    ``WalletClient.signer_for(key_id)``) and ``public_key(path) -> Point`` — to :class:`DigestSigner`."""

    sign: Callable[[bytes, str], Signature]
    derive_public_key: Callable[[str], Point]

    def sign_digest(self, digest: bytes, path: str) -> Signature:
        return self.sign(digest, path)

    def public_key(self, path: str) -> Point:
        return self.derive_public_key(path)


def checked_remote_signature(signer: DigestSigner, digest: bytes, path: str, expected: Point) -> Signature:
    """Ask ``signer`` to sign ``digest`` at ``path`` and refuse anything that is not a valid,
    low-S signature by ``expected`` with a correct recovery id.

    A high-S answer is normalised (n - s, recovery parity flipped) rather than refused: it is the
    same signature mathematically, and the check that follows is on the normalised form.
    """
    from coincurve import PublicKey

    if not isinstance(digest, bytes) or len(digest) != 32:
        raise BitcoinError("digest must be 32 bytes")
    sig = signer.sign_digest(digest, path)
    if not isinstance(sig, Signature):
        raise RemoteSignatureError(f"signer returned {type(sig).__name__}, not a Signature")
    if sig.public_key != expected:
        raise RemoteSignatureError(f"signer signed with a different key than the one at {path}")
    r, s, rec = sig.r, sig.s, sig.recovery_id
    if not (0 < r < SECP256K1_ORDER and 0 < s < SECP256K1_ORDER) or rec not in (0, 1, 2, 3):
        raise RemoteSignatureError("signature values out of range")
    if s > HALF_ORDER:
        s, rec = SECP256K1_ORDER - s, rec ^ 1
    pub = expected.to_bytes()
    if not verify_der_signature(pub, digest, r, s):
        raise RemoteSignatureError(f"signature from the signer does not verify under the key at {path}")
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    try:
        recovered = PublicKey.from_signature_and_message(compact + bytes([rec]), digest, hasher=None)
    except Exception:  # libsecp256k1 refuses some recovery ids outright
        recovered = None
    if recovered is None or recovered.format(compressed=True) != pub:
        raise RemoteSignatureError("signer returned a wrong recovery id")
    return Signature(r, s, rec, expected)


# ---------------------------------------------------------------------------- fees and sizes


def parse_fee_rate(rate: int | float | str | Decimal) -> Decimal:
    """A fee rate in sat/vB as a Decimal; refuses non-positive, non-finite and absurd rates."""
    if isinstance(rate, bool):
        raise BitcoinError("fee rate must be a number of sat/vB")
    try:
        value = Decimal(str(rate))
    except (InvalidOperation, ValueError):
        raise BitcoinError(f"fee rate {rate!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise BitcoinError("fee rate must be a positive number of sat/vB")
    if value > MAX_FEE_RATE:
        raise BitcoinError(f"fee rate {value} sat/vB exceeds the {MAX_FEE_RATE} sat/vB safety limit")
    return value


def fee_for_vsize(rate: int | float | str | Decimal, vsize: int) -> int:
    """ceil(rate × vsize): the fee never falls below the requested rate."""
    return math.ceil(parse_fee_rate(rate) * vsize)


def estimate_p2wpkh_weight(n_inputs: int, output_scripts: Sequence[bytes]) -> int:
    """Upper bound on the weight of a spend of ``n_inputs`` P2WPKH inputs once signed.

    Exact except for the signatures: a low-S DER signature is 71 bytes (+ sighash) at most and
    70 when r happens to be below 2^255, so the bound exceeds the truth by ≤ 1 WU per input
    (rarely 2), i.e. the estimated vsize is at most ``ceil(n_inputs / 4)`` vbytes high.
    """
    if n_inputs <= 0:
        raise BitcoinError("a transaction needs at least one input")
    outputs = sum(8 + len(ser_bytes(s)) for s in output_scripts)
    base = 4 + len(ser_compact_size(n_inputs)) + n_inputs * P2WPKH_INPUT_BASE
    base += len(ser_compact_size(len(output_scripts))) + outputs + 4
    return base * WITNESS_SCALE_FACTOR + 2 + n_inputs * P2WPKH_WITNESS_WEIGHT


def estimate_p2wpkh_vsize(n_inputs: int, output_scripts: Sequence[bytes]) -> int:
    return (estimate_p2wpkh_weight(n_inputs, output_scripts) + 3) // WITNESS_SCALE_FACTOR


def dust_threshold(script_pubkey: bytes, dust_relay_fee: int = DUST_RELAY_FEE) -> int:
    """Core's GetDustThreshold: 294 sat for P2WPKH, 546 for P2PKH at the default 3 sat/vB."""
    if script_pubkey[:1] == bytes([OP_RETURN]):
        return 0
    size = 8 + len(ser_bytes(script_pubkey))
    size += (32 + 4 + 1 + 107 // WITNESS_SCALE_FACTOR + 4) if witness_program(script_pubkey) else (32 + 4 + 1 + 107 + 4)
    return math.ceil(dust_relay_fee * size / 1000)


# --------------------------------------------------------------------------- building spends


@dataclass(frozen=True)
class Utxo:
    """A P2WPKH coin the threshold key controls at ``path``."""

    outpoint: OutPoint
    value: int
    script_pubkey: bytes
    path: str

    def __post_init__(self) -> None:
        _check_amount(self.value, "UTXO value")
        if p2wpkh_program(self.script_pubkey) is None:
            raise BitcoinError(f"UTXO {self.outpoint} is not P2WPKH")

    @classmethod
    def from_rpc(cls, entry: dict[str, Any], path: str) -> Utxo:
        """From a ``scantxoutset``/``listunspent`` entry (txid, vout, amount in BTC, scriptPubKey)."""
        try:
            amount = Decimal(str(entry["amount"])) * COIN
            if amount != amount.to_integral_value():
                raise BitcoinError("amount has more than 8 decimals")
            return cls(OutPoint.from_hex(entry["txid"], int(entry["vout"])), int(amount),
                       bytes.fromhex(entry["scriptPubKey"]), path)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            if isinstance(exc, BitcoinError):
                raise
            raise BitcoinError(f"bad UTXO entry: {exc!r}") from None


@dataclass
class UnsignedSpend:
    """A built (unsigned) transaction plus what signing and review need."""

    tx: Tx
    utxos: list[Utxo]
    fee: int
    change_index: int | None
    estimated_vsize: int

    @property
    def input_total(self) -> int:
        return sum(u.value for u in self.utxos)


def _coerce_outputs(outputs: Sequence[tuple[str | bytes, int]], network: str) -> list[TxOut]:
    if not outputs:
        raise BitcoinError("a spend needs at least one output")
    result = []
    for dest, value in outputs:
        script = dest if isinstance(dest, bytes) else address_to_script(dest, network)
        _check_amount(value, "output value")
        if value < dust_threshold(script):
            raise BitcoinError(f"output of {value} sat is dust (threshold {dust_threshold(script)} sat)")
        result.append(TxOut(value, script))
    if sum(o.value for o in result) > MAX_MONEY:
        raise BitcoinError("outputs exceed the money supply")
    return result


def select_coins(utxos: Sequence[Utxo], output_scripts: Sequence[bytes], target: int,
                 fee_rate: int | float | str | Decimal, change_script: bytes) -> tuple[list[Utxo], int, int | None]:
    """Largest-first selection. Returns (selected, fee, change value or None).

    Coins are added largest first until they pay ``target`` plus the fee of a transaction
    without change. A change output is then added if what is left after paying its own extra
    bytes is not dust; otherwise the remainder (below the change dust threshold) goes to fee.
    """
    rate = parse_fee_rate(fee_rate)
    ordered = sorted(utxos, key=lambda u: (-u.value, u.outpoint.txid, u.outpoint.n))
    if len({u.outpoint for u in ordered}) != len(ordered):
        raise BitcoinError("duplicate UTXO in the candidate set")
    chosen: list[Utxo] = []
    total = 0
    for u in ordered:
        chosen.append(u)
        total += u.value
        fee_no_change = math.ceil(rate * estimate_p2wpkh_vsize(len(chosen), output_scripts))
        if total < target + fee_no_change:
            continue
        fee_change = math.ceil(rate * estimate_p2wpkh_vsize(len(chosen), [*output_scripts, change_script]))
        change = total - target - fee_change
        if change >= dust_threshold(change_script):
            return chosen, fee_change, change
        return chosen, total - target, None
    have = sum(u.value for u in utxos)
    raise InsufficientFunds(f"insufficient funds: {have} sat available, {target} sat plus fee needed")


def build_p2wpkh_spend(utxos: Sequence[Utxo], outputs: Sequence[tuple[str | bytes, int]],
                       fee_rate: int | float | str | Decimal, change: str | bytes, *,
                       network: str = "regtest", rbf: bool = True, locktime: int = 0,
                       change_position: int | None = None) -> UnsignedSpend:
    """An unsigned version-2 spend of P2WPKH coins paying ``outputs`` at ``fee_rate`` sat/vB.

    ``outputs`` are (address or scriptPubKey, satoshis); ``change`` is where the remainder goes
    (dropped to fee when it would be dust). With ``rbf`` every input signals BIP125
    replaceability (nSequence 0xfffffffd); otherwise 0xfffffffe, which still enforces
    ``locktime``. The change output is placed at a random position unless one is given.
    """
    if not 0 <= locktime <= 0xFFFFFFFF:
        raise BitcoinError("locktime out of range")
    txouts = _coerce_outputs(outputs, network)
    change_script = change if isinstance(change, bytes) else address_to_script(change, network)
    target = sum(o.value for o in txouts)
    selected, fee, change_value = select_coins(utxos, [o.script_pubkey for o in txouts], target, fee_rate,
                                               change_script)
    change_index = None
    if change_value is not None:
        if change_position is None:
            change_position = secrets.randbelow(len(txouts) + 1)
        if not 0 <= change_position <= len(txouts):
            raise BitcoinError("change position out of range")
        txouts.insert(change_position, TxOut(change_value, change_script))
        change_index = change_position
    sequence = SEQUENCE_RBF if rbf else SEQUENCE_NO_RBF
    tx = Tx(2, [TxIn(u.outpoint, sequence=sequence) for u in selected], txouts, locktime)
    return UnsignedSpend(tx, list(selected), fee, change_index,
                         estimate_p2wpkh_vsize(len(selected), [o.script_pubkey for o in txouts]))


def sign_p2wpkh_input(tx: TxLike, index: int, utxo: Utxo, signer: DigestSigner,
                      hashtype: int = SIGHASH_ALL) -> Signature:
    """Sign one P2WPKH input through the remote signer and place the witness.

    The key at ``utxo.path`` must be the one the spent output pays; the signature is checked
    (see :func:`checked_remote_signature`) before it is used.
    """
    _check_index(tx, index)
    if tx.vin[index].prevout != utxo.outpoint:
        raise BitcoinError(f"input {index} spends {tx.vin[index].prevout}, not {utxo.outpoint}")
    key = signer.public_key(utxo.path)
    pub = key.to_bytes()
    if p2wpkh_script(pub) != utxo.script_pubkey:
        raise BitcoinError(f"the key at {utxo.path} does not own {utxo.outpoint}")
    digest = p2wpkh_sighash(tx, index, pub, utxo.value, hashtype)
    sig = checked_remote_signature(signer, digest, utxo.path, key)
    finalize_p2wpkh_input(tx, index, pub, sig.r, sig.s, hashtype)
    return sig


def sign_spend(spend: UnsignedSpend, signer: DigestSigner) -> Tx:
    """Sign every input of a built spend (SIGHASH_ALL); returns the network transaction."""
    tx = spend.tx.copy()
    for i, utxo in enumerate(spend.utxos):
        sign_p2wpkh_input(tx, i, utxo, signer)
    return tx
