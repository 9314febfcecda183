"""Byte-level encodings shared by the Bitcoin devnet, its RPC façade and the bridge.

Everything here is pure and deterministic: compact sizes, hashes, addresses (the protocol layer's
codec, with this module's error type), script classification (Bitcoin Core's ``TxoutType``),
script disassembly and the output-descriptor checksum. Keeping it free of I/O lets the mempool,
the index and the RPC layer agree on one definition of, say, "which address does this script
pay" — a disagreement there would make the bridge credit a deposit the node never indexed.
"""

from __future__ import annotations

import hashlib
import struct
from enum import StrEnum

# One implementation of the byte-level primitives and of the address codec: the protocol layer's
# (addresses) and the signer's (the bridge may use the signer, never the reverse). Re-exported here
# under the names the chain code has always used.
from ....protocol import addresses
from ....protocol.addresses import BITCOIN_MAINNET, BITCOIN_REGTEST, BITCOIN_SIGNET, BITCOIN_TESTNET
from ....protocol.addresses import BitcoinNetwork as Network
from ....protocol.addresses import witness_program as witness_program
from ....protocol.errors import InvalidInput
from ....signer.bitcoin import Reader
from ....signer.bitcoin import hash160 as hash160
from ....signer.bitcoin import hash256 as hash256
from ....signer.bitcoin import is_compressed_pubkey as is_compressed_pubkey
from ....signer.bitcoin import is_strict_der_signature as is_valid_der_signature_encoding
from ....signer.bitcoin import p2pkh_script_code as p2pkh_script_code
from ....signer.bitcoin import p2wpkh_script as p2wpkh_script
from ....signer.bitcoin import ser_compact_size as ser_compact_size

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN


class DecodeError(ValueError):
    """Raised when bytes or text do not decode to the expected structure."""


# --------------------------------------------------------------------------- hashing


def sha256(data: bytes) -> bytes:
    """Single SHA-256."""
    return hashlib.sha256(data).digest()


def tagged_hash(tag: str, data: bytes) -> bytes:
    """BIP340 tagged hash."""
    t = sha256(tag.encode())
    return sha256(t + t + data)


# --------------------------------------------------------------------------- compact size


class ByteReader(Reader):
    """The signer's bounds-checked reader, failing with :class:`DecodeError` for chain data."""

    error = DecodeError


def hex_to_bytes(value: object, what: str = "hex string") -> bytes:
    """Decode a hex string strictly (even length, hex digits only)."""
    if not isinstance(value, str):
        raise DecodeError(f"{what} must be a string")
    if len(value) % 2 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise DecodeError(f"{what} must be hexadecimal")
    return bytes.fromhex(value)


def parse_hash_hex(value: object, what: str = "hash") -> bytes:
    """Parse a 64-digit display-order (big-endian) hash into internal little-endian bytes."""
    if not isinstance(value, str) or len(value) != 64:
        raise DecodeError(f"{what} must be of length 64 (not {len(value) if isinstance(value, str) else 0})")
    return hex_to_bytes(value, what)[::-1]


# --------------------------------------------------------------------------- networks


# ``Network`` is the protocol layer's BitcoinNetwork: one set of parameters for every codec user.
REGTEST = BITCOIN_REGTEST
TESTNET = BITCOIN_TESTNET
SIGNET = BITCOIN_SIGNET
MAINNET = BITCOIN_MAINNET
#: by Bitcoin Core's chain names (``getblockchaininfo``'s "chain")
NETWORKS = {"regtest": REGTEST, "test": TESTNET, "signet": SIGNET, "main": MAINNET}


# --------------------------------------------------------------------------- scripts

OP_0 = 0x00
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
OP_1NEGATE = 0x4F
OP_1 = 0x51
OP_16 = 0x60
OP_RETURN = 0x6A
OP_DUP = 0x76
OP_EQUAL = 0x87
OP_EQUALVERIFY = 0x88
OP_HASH160 = 0xA9
OP_CHECKSIG = 0xAC
OP_CHECKMULTISIG = 0xAE

_OPCODE_NAMES: dict[int, str] = {
    0x00: "0", 0x4F: "-1", 0x50: "OP_RESERVED", 0x61: "OP_NOP", 0x62: "OP_VER", 0x63: "OP_IF",
    0x64: "OP_NOTIF", 0x65: "OP_VERIF", 0x66: "OP_VERNOTIF", 0x67: "OP_ELSE", 0x68: "OP_ENDIF",
    0x69: "OP_VERIFY", 0x6A: "OP_RETURN", 0x6B: "OP_TOALTSTACK", 0x6C: "OP_FROMALTSTACK",
    0x6D: "OP_2DROP", 0x6E: "OP_2DUP", 0x6F: "OP_3DUP", 0x70: "OP_2OVER", 0x71: "OP_2ROT",
    0x72: "OP_2SWAP", 0x73: "OP_IFDUP", 0x74: "OP_DEPTH", 0x75: "OP_DROP", 0x76: "OP_DUP",
    0x77: "OP_NIP", 0x78: "OP_OVER", 0x79: "OP_PICK", 0x7A: "OP_ROLL", 0x7B: "OP_ROT",
    0x7C: "OP_SWAP", 0x7D: "OP_TUCK", 0x7E: "OP_CAT", 0x7F: "OP_SUBSTR", 0x80: "OP_LEFT",
    0x81: "OP_RIGHT", 0x82: "OP_SIZE", 0x83: "OP_INVERT", 0x84: "OP_AND", 0x85: "OP_OR",
    0x86: "OP_XOR", 0x87: "OP_EQUAL", 0x88: "OP_EQUALVERIFY", 0x89: "OP_RESERVED1",
    0x8A: "OP_RESERVED2", 0x8B: "OP_1ADD", 0x8C: "OP_1SUB", 0x8D: "OP_2MUL", 0x8E: "OP_2DIV",
    0x8F: "OP_NEGATE", 0x90: "OP_ABS", 0x91: "OP_NOT", 0x92: "OP_0NOTEQUAL", 0x93: "OP_ADD",
    0x94: "OP_SUB", 0x95: "OP_MUL", 0x96: "OP_DIV", 0x97: "OP_MOD", 0x98: "OP_LSHIFT",
    0x99: "OP_RSHIFT", 0x9A: "OP_BOOLAND", 0x9B: "OP_BOOLOR", 0x9C: "OP_NUMEQUAL",
    0x9D: "OP_NUMEQUALVERIFY", 0x9E: "OP_NUMNOTEQUAL", 0x9F: "OP_LESSTHAN", 0xA0: "OP_GREATERTHAN",
    0xA1: "OP_LESSTHANOREQUAL", 0xA2: "OP_GREATERTHANOREQUAL", 0xA3: "OP_MIN", 0xA4: "OP_MAX",
    0xA5: "OP_WITHIN", 0xA6: "OP_RIPEMD160", 0xA7: "OP_SHA1", 0xA8: "OP_SHA256", 0xA9: "OP_HASH160",
    0xAA: "OP_HASH256", 0xAB: "OP_CODESEPARATOR", 0xAC: "OP_CHECKSIG", 0xAD: "OP_CHECKSIGVERIFY",
    0xAE: "OP_CHECKMULTISIG", 0xAF: "OP_CHECKMULTISIGVERIFY", 0xB0: "OP_NOP1",
    0xB1: "OP_CHECKLOCKTIMEVERIFY", 0xB2: "OP_CHECKSEQUENCEVERIFY", 0xB3: "OP_NOP4", 0xB4: "OP_NOP5",
    0xB5: "OP_NOP6", 0xB6: "OP_NOP7", 0xB7: "OP_NOP8", 0xB8: "OP_NOP9", 0xB9: "OP_NOP10",
    0xBA: "OP_CHECKSIGADD",
}
for _n in range(1, 17):
    _OPCODE_NAMES[0x50 + _n] = str(_n)


def push_data(data: bytes) -> bytes:
    """Minimal push of ``data`` (as CScript << vector<unsigned char>)."""
    n = len(data)
    if n < OP_PUSHDATA1:
        return bytes([n]) + data
    if n <= 0xFF:
        return bytes([OP_PUSHDATA1, n]) + data
    if n <= 0xFFFF:
        return bytes([OP_PUSHDATA2]) + struct.pack("<H", n) + data
    return bytes([OP_PUSHDATA4]) + struct.pack("<I", n) + data


def script_num_encode(n: int) -> bytes:
    """CScriptNum serialisation (minimal little-endian sign-magnitude)."""
    if n == 0:
        return b""
    neg = n < 0
    absn = -n if neg else n
    out = bytearray()
    while absn:
        out.append(absn & 0xFF)
        absn >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if neg else 0)
    elif neg:
        out[-1] |= 0x80
    return bytes(out)


def script_num_decode(data: bytes) -> int:
    if not data:
        return 0
    n = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(n & ~(0x80 << (8 * (len(data) - 1))))
    return n


def push_int(n: int) -> bytes:
    """CScript << int64: OP_0, OP_1NEGATE, OP_1..OP_16 or a minimal CScriptNum push."""
    if n == 0:
        return bytes([OP_0])
    if n == -1 or 1 <= n <= 16:
        return bytes([n + (OP_1 - 1)])
    return push_data(script_num_encode(n))


def _parse_script(script: bytes) -> tuple[list[tuple[int, bytes | None]], bool]:
    """Split a script into (opcode, pushed data) pairs; the flag says whether it parsed fully."""
    ops: list[tuple[int, bytes | None]] = []
    i = 0
    while i < len(script):
        op = script[i]
        i += 1
        if op > OP_PUSHDATA4:
            ops.append((op, None))
            continue
        width = {OP_PUSHDATA1: 1, OP_PUSHDATA2: 2, OP_PUSHDATA4: 4}.get(op, 0)
        if i + width > len(script):
            return ops, False
        size = op if width == 0 else int.from_bytes(script[i : i + width], "little")
        i += width
        if i + size > len(script):
            return ops, False
        ops.append((op, script[i : i + size]))
        i += size
    return ops, True


def iter_script(script: bytes) -> list[tuple[int, bytes | None]]:
    """Split a script into (opcode, pushed data) pairs; raise DecodeError if a push overruns."""
    ops, complete = _parse_script(script)
    if not complete:
        raise DecodeError("truncated push")
    return ops


def is_push_only(script: bytes) -> bool:
    """IsPushOnly: every opcode is a push or OP_1NEGATE/OP_1..OP_16 (OP_RESERVED excluded)."""
    try:
        return all(op <= OP_16 and op != 0x50 for op, _ in iter_script(script))
    except DecodeError:
        return False


_SIGHASH_NAMES = {0x01: "ALL", 0x02: "NONE", 0x03: "SINGLE", 0x81: "ALL|ANYONECANPAY",
                  0x82: "NONE|ANYONECANPAY", 0x83: "SINGLE|ANYONECANPAY"}


def script_to_asm(script: bytes, attempt_sighash_decode: bool = False) -> str:
    """Disassemble like Core's ScriptToAsmStr (small pushes as numbers, sighash suffix in sigs,
    ``[error]`` after the last opcode that parsed)."""
    ops, complete = _parse_script(script)
    parts = [_asm_op(op, d, attempt_sighash_decode) for op, d in ops]
    if not complete:
        parts.append("[error]")
    return " ".join(parts)


def _asm_op(op: int, data: bytes | None, attempt_sighash_decode: bool) -> str:
    if data is None or op == OP_0:
        return _OPCODE_NAMES.get(op, "OP_UNKNOWN")
    if len(data) <= 4:
        return str(script_num_decode(data))
    if attempt_sighash_decode and is_valid_der_signature_encoding(data):
        name = _SIGHASH_NAMES.get(data[-1])
        if name is not None:
            return data[:-1].hex() + f"[{name}]"
    return data.hex()


# --------------------------------------------------------------------------- signatures


SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def der_signature_s(sig: bytes) -> int:
    """The S value of a strictly-DER-encoded signature (with trailing sighash byte)."""
    len_r = sig[3]
    len_s = sig[5 + len_r]
    return int.from_bytes(sig[6 + len_r : 6 + len_r + len_s], "big")


def is_low_der_signature(sig: bytes) -> bool:
    """Core's IsLowDERSignature: valid encoding and S <= n/2 (BIP62 rule 5, policy LOW_S)."""
    return is_valid_der_signature_encoding(sig) and der_signature_s(sig) <= SECP256K1_ORDER // 2


def is_valid_pubkey_encoding(data: bytes) -> bool:
    """Core's IsCompressedOrUncompressedPubKey (policy STRICTENC)."""
    if len(data) == 33:
        return data[0] in (2, 3)
    if len(data) == 65:
        return data[0] == 4
    return False


# --------------------------------------------------------------------------- output types


class TxoutType(StrEnum):
    """Bitcoin Core's script type names as printed in ``scriptPubKey.type``."""

    NONSTANDARD = "nonstandard"
    PUBKEY = "pubkey"
    PUBKEYHASH = "pubkeyhash"
    SCRIPTHASH = "scripthash"
    MULTISIG = "multisig"
    NULL_DATA = "nulldata"
    ANCHOR = "anchor"
    WITNESS_V0_KEYHASH = "witness_v0_keyhash"
    WITNESS_V0_SCRIPTHASH = "witness_v0_scripthash"
    WITNESS_V1_TAPROOT = "witness_v1_taproot"
    WITNESS_UNKNOWN = "witness_unknown"


def solve(script: bytes) -> tuple[TxoutType, list[bytes]]:
    """Classify a scriptPubKey like Core's Solver; return the type and its solutions."""
    if len(script) == 23 and script[0] == OP_HASH160 and script[1] == 20 and script[22] == OP_EQUAL:
        return TxoutType.SCRIPTHASH, [script[2:22]]
    wp = witness_program(script)
    if wp is not None:
        version, prog = wp
        if version == 0 and len(prog) == 20:
            return TxoutType.WITNESS_V0_KEYHASH, [prog]
        if version == 0 and len(prog) == 32:
            return TxoutType.WITNESS_V0_SCRIPTHASH, [prog]
        if version == 1 and len(prog) == 32:
            return TxoutType.WITNESS_V1_TAPROOT, [prog]
        if version == 1 and prog == bytes.fromhex("4e73"):
            return TxoutType.ANCHOR, []
        if version != 0:
            return TxoutType.WITNESS_UNKNOWN, [bytes([version]), prog]
        return TxoutType.NONSTANDARD, []
    if script[:1] == bytes([OP_RETURN]) and is_push_only(script[1:]):
        return TxoutType.NULL_DATA, []
    if (len(script) == 35 and script[0] == 33 and script[-1] == OP_CHECKSIG) or (
        len(script) == 67 and script[0] == 65 and script[-1] == OP_CHECKSIG
    ):
        key = script[1:-1]
        if is_valid_pubkey_encoding(key):
            return TxoutType.PUBKEY, [key]
    if (
        len(script) == 25
        and script[:3] == bytes([OP_DUP, OP_HASH160, 20])
        and script[23:] == bytes([OP_EQUALVERIFY, OP_CHECKSIG])
    ):
        return TxoutType.PUBKEYHASH, [script[3:23]]
    ms = _match_multisig(script)
    if ms is not None:
        return TxoutType.MULTISIG, ms
    return TxoutType.NONSTANDARD, []


def _match_multisig(script: bytes) -> list[bytes] | None:
    if not script or script[-1] != OP_CHECKMULTISIG:
        return None
    try:
        ops = iter_script(script[:-1])
    except DecodeError:
        return None
    if len(ops) < 3:
        return None
    m_op, n_op = ops[0][0], ops[-1][0]
    if not (OP_1 <= m_op <= OP_16 and OP_1 <= n_op <= OP_16):
        return None
    keys = [d for _, d in ops[1:-1]]
    if any(d is None or not is_valid_pubkey_encoding(d) for d in keys):
        return None
    m, n = m_op - 0x50, n_op - 0x50
    if len(keys) != n or m > n:
        return None
    return [bytes([m]), *[k for k in keys if k is not None], bytes([n])]


def script_to_address(script: bytes, net: Network = REGTEST) -> str | None:
    """ExtractDestination + EncodeDestination: the address a script pays, if it has one."""
    return addresses.script_to_address(script, net)


def address_to_script(address: str, net: Network = REGTEST) -> bytes:
    """DecodeDestination + GetScriptForDestination; DecodeError (the chain code's error, translated
    here and only here) for anything invalid, saying why."""
    try:
        return addresses.address_to_script(address, net)
    except InvalidInput as exc:
        raise DecodeError(str(exc)) from None


# --------------------------------------------------------------------------- descriptors

_DESC_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
)
_DESC_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"  # the bech32 alphabet (BIP380)
_DESC_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _descsum_polymod(symbols: list[int]) -> int:
    chk = 1
    for value in symbols:
        top = chk >> 35
        chk = (chk & 0x7FFFFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _DESC_GENERATOR[i] if ((top >> i) & 1) else 0
    return chk


def _descsum_expand(s: str) -> list[int] | None:
    groups: list[int] = []
    symbols: list[int] = []
    for c in s:
        v = _DESC_INPUT_CHARSET.find(c)
        if v < 0:
            return None
        symbols.append(v & 31)
        groups.append(v >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    return symbols


def descriptor_checksum(desc: str) -> str:
    """The 8-character checksum of an output descriptor (BIP380)."""
    symbols = _descsum_expand(desc)
    if symbols is None:
        raise DecodeError(f"Invalid character in descriptor: {desc!r}")
    checksum = _descsum_polymod([*symbols, 0, 0, 0, 0, 0, 0, 0, 0]) ^ 1
    return "".join(_DESC_CHECKSUM_CHARSET[(checksum >> (5 * (7 - i))) & 31] for i in range(8))


def add_checksum(desc: str) -> str:
    return f"{desc}#{descriptor_checksum(desc)}"


def infer_descriptor(script: bytes, net: Network = REGTEST) -> str:
    """InferDescriptor without key knowledge: addr() for addressable scripts, pk()/multi() for
    bare keys, raw() for everything else — with checksum, as ``scriptPubKey.desc`` shows it."""
    kind, sol = solve(script)
    if kind == TxoutType.PUBKEY:
        return add_checksum(f"pk({sol[0].hex()})")
    if kind == TxoutType.MULTISIG:
        keys = ",".join(k.hex() for k in sol[1:-1])
        return add_checksum(f"multi({sol[0][0]},{keys})")
    addr = script_to_address(script, net)
    if addr is not None:
        return add_checksum(f"addr({addr})")
    return add_checksum(f"raw({script.hex()})")


def descriptor_scripts(desc: str, net: Network = REGTEST) -> list[bytes]:
    """The scriptPubKeys a (non-ranged) descriptor expands to.

    Supports ``addr()``, ``raw()``, and ``pk/pkh/wpkh/sh(wpkh)/combo`` over hex public keys —
    what the bridge uses to watch its own deposit addresses. A checksum, if present, is verified.
    """
    if not isinstance(desc, str):
        raise DecodeError("descriptor must be a string")
    body = desc
    if "#" in desc:
        body, _, chk = desc.partition("#")
        if len(chk) != 8:
            raise DecodeError(f"Expected 8 character checksum, not {len(chk)} characters")
        if descriptor_checksum(body) != chk:
            raise DecodeError(f"Provided checksum '{chk}' does not match computed checksum "
                              f"'{descriptor_checksum(body)}'")

    def inner(prefix: str) -> str | None:
        if body.startswith(prefix + "(") and body.endswith(")"):
            return body[len(prefix) + 1 : -1]
        return None

    if (arg := inner("addr")) is not None:
        try:
            return [address_to_script(arg, net)]
        except DecodeError:
            raise DecodeError(f"Address is not valid: {arg}") from None
    if (arg := inner("raw")) is not None:
        try:
            return [hex_to_bytes(arg)]
        except DecodeError:
            raise DecodeError("Raw script is not hex") from None
    if (arg := inner("sh")) is not None and arg.startswith("wpkh(") and arg.endswith(")"):
        key = _desc_pubkey(arg[5:-1], compressed_only=True)
        redeem = p2wpkh_script(key)
        return [bytes([OP_HASH160, 20]) + hash160(redeem) + bytes([OP_EQUAL])]
    if (arg := inner("pk")) is not None:
        key = _desc_pubkey(arg)
        return [push_data(key) + bytes([OP_CHECKSIG])]
    if (arg := inner("pkh")) is not None:
        return [p2pkh_script_code(hash160(_desc_pubkey(arg)))]
    if (arg := inner("wpkh")) is not None:
        return [p2wpkh_script(_desc_pubkey(arg, compressed_only=True))]
    if (arg := inner("combo")) is not None:
        key = _desc_pubkey(arg)
        out = [push_data(key) + bytes([OP_CHECKSIG]), p2pkh_script_code(hash160(key))]
        if is_compressed_pubkey(key):
            redeem = p2wpkh_script(key)
            out += [redeem, bytes([OP_HASH160, 20]) + hash160(redeem) + bytes([OP_EQUAL])]
        return out
    raise DecodeError(f"'{body}' is not a supported descriptor (addr, raw, pk, pkh, wpkh, sh(wpkh), combo "
                      "over hex public keys)")


def _desc_pubkey(text: str, compressed_only: bool = False) -> bytes:
    try:
        key = hex_to_bytes(text)
    except DecodeError:
        raise DecodeError(f"key '{text}' is not a hex public key (extended keys are not supported)") from None
    if not is_valid_pubkey_encoding(key):
        raise DecodeError(f"Pubkey '{text}' is invalid")
    if compressed_only and not is_compressed_pubkey(key):
        raise DecodeError("Uncompressed keys are not allowed")
    return key
