"""Addresses of a (possibly derived) group public key, and the one Bitcoin address↔script codec.

Pure encodings of a public key, needed wherever a key is shown to a person (the wallet API, the
demo, deposit addresses), and the strict decoders (BIP173/BIP350, Base58Check) behind
:func:`address_to_script` / :func:`script_to_address` - the only codec: the signer SDK, the
bridge and the Bitcoin devnet all call it (each translating :class:`InvalidInput` to its own
error type once), so an address one side accepts the other cannot refuse, nor map to another
script. Network parameters (:class:`BitcoinNetwork`) are passed in, never guessed from the text.
It lives here, the lowest layer, because the signer may not import the bridge. Keccak-256 and
RIPEMD-160 come from pycryptodome (OpenSSL 3 builds may lack RIPEMD-160 in hashlib).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from Crypto.Hash import RIPEMD160, keccak

from .curve import Point
from .errors import InvalidInput


@dataclass(frozen=True)
class BitcoinNetwork:
    """What tells one network's addresses from another's: the bech32 prefix and Base58 version bytes."""

    name: str
    hrp: str
    p2pkh_prefix: int
    p2sh_prefix: int


BITCOIN_MAINNET = BitcoinNetwork("mainnet", "bc", 0x00, 0x05)
BITCOIN_TESTNET = BitcoinNetwork("testnet", "tb", 0x6F, 0xC4)
BITCOIN_SIGNET = BitcoinNetwork("signet", "tb", 0x6F, 0xC4)
BITCOIN_REGTEST = BitcoinNetwork("regtest", "bcrt", 0x6F, 0xC4)
BITCOIN_NETWORKS = {n.name: n for n in (BITCOIN_MAINNET, BITCOIN_TESTNET, BITCOIN_SIGNET, BITCOIN_REGTEST)}
BECH32_HRP = {name: n.hrp for name, n in BITCOIN_NETWORKS.items()}
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def hash160(data: bytes) -> bytes:
    return RIPEMD160.new(hashlib.sha256(data).digest()).digest()


def ethereum_address(key: Point) -> str:
    """EIP-55 checksummed address: last 20 bytes of keccak256(X || Y)."""
    raw = keccak256(key.to_uncompressed()[1:])[-20:].hex()
    check = keccak256(raw.encode()).hex()
    return "0x" + "".join(c.upper() if int(check[i], 16) >= 8 else c for i, c in enumerate(raw))


def bitcoin_network(name: str) -> BitcoinNetwork:
    """The parameters of ``mainnet``, ``testnet``, ``signet`` or ``regtest``."""
    try:
        return BITCOIN_NETWORKS[name]
    except (KeyError, TypeError):
        raise InvalidInput(f"unknown Bitcoin network {name!r} (one of {', '.join(BITCOIN_NETWORKS)})") from None


def p2wpkh_address(key: Point, network: str = "regtest") -> str:
    """BIP173 bech32 v0 address of hash160(compressed key)."""
    return bech32_segwit(bitcoin_network(network).hrp, 0, hash160(key.to_bytes()))


def _hash256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def b58check(data: bytes) -> str:
    payload = data + _hash256(data)[:4]
    n = int.from_bytes(payload, "big")
    out = ""
    while n:
        n, rem = divmod(n, 58)
        out = _B58[rem] + out
    return "1" * (len(payload) - len(payload.lstrip(b"\x00"))) + out


def bech32_polymod(values: Iterable[int]) -> int:
    """The BIP173 checksum polymod (bech32 and bech32m differ only in the final constant)."""
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def bech32_segwit(hrp: str, version: int, program: bytes) -> str:
    """BIP173 (v0, bech32) / BIP350 (v1+, bech32m) encoding of a witness program."""
    acc, bits, data = 0, 0, [version]
    for byte in program:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            data.append((acc >> bits) & 31)
    if bits:
        data.append((acc << (5 - bits)) & 31)
    const = 1 if version == 0 else 0x2BC830A3
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    poly = bech32_polymod(expanded + data + [0] * 6) ^ const
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[d] for d in data + checksum)


def b58check_decode(text: str) -> bytes:
    """Base58Check payload (Core's DecodeBase58Check); InvalidInput says what is wrong."""
    if not isinstance(text, str) or not text or len(text) > 100 or any(c not in _B58 for c in text):
        raise InvalidInput("not a base58 string")
    n = 0
    for c in text:
        n = n * 58 + _B58.index(c)
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    data = b"\0" * (len(text) - len(text.lstrip("1"))) + body
    if len(data) < 4 or _hash256(data[:-4])[:4] != data[-4:]:
        raise InvalidInput("base58 checksum mismatch")
    return data[:-4]


def segwit_decode(hrp: str, addr: str) -> tuple[int, bytes]:
    """(witness version, program) of a segwit address for ``hrp`` with every BIP173/BIP350 rule
    enforced; InvalidInput gives the reason a person can act on."""
    if not isinstance(addr, str) or len(addr) > 90:
        raise InvalidInput("bech32 address longer than 90 characters")
    if any(ord(c) < 33 or ord(c) > 126 for c in addr):
        raise InvalidInput("bech32 address has characters outside US-ASCII 33-126")
    if addr.lower() != addr and addr.upper() != addr:
        raise InvalidInput("bech32 address mixes upper and lower case")
    addr = addr.lower()
    pos = addr.rfind("1")
    if pos < 1 or addr[:pos] != hrp:
        raise InvalidInput(f"address is not for this network (expected prefix {hrp!r})")
    if pos + 7 > len(addr) or any(c not in _BECH32 for c in addr[pos + 1 :]):
        raise InvalidInput("invalid bech32 data part")
    data = [_BECH32.find(c) for c in addr[pos + 1 :]]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    const = bech32_polymod(expanded + data)
    if const not in (1, 0x2BC830A3):
        raise InvalidInput("bech32 checksum mismatch")
    data = data[:-6]
    if not data or data[0] > 16:
        raise InvalidInput("invalid witness version")
    version = data[0]
    if (version == 0) != (const == 1):
        raise InvalidInput("witness v0 must use bech32, v1+ bech32m")
    acc, bits, prog = 0, 0, []
    for v in data[1:]:
        acc = (acc << 5) | v
        bits += 5
        while bits >= 8:
            bits -= 8
            prog.append((acc >> bits) & 0xFF)
    if bits >= 5 or (acc << (8 - bits)) & 0xFF:
        raise InvalidInput("invalid bech32 padding")
    if not 2 <= len(prog) <= 40 or (version == 0 and len(prog) not in (20, 32)):
        raise InvalidInput("invalid witness program length")
    return version, bytes(prog)


# ------------------------------------------------------------------------------ address <-> script


def witness_program(script: bytes) -> tuple[int, bytes] | None:
    """(version, program) if ``script`` is a witness program per BIP141, else None."""
    if not 4 <= len(script) <= 42 or script[1] + 2 != len(script):
        return None
    if script[0] == 0x00:
        return 0, script[2:]
    if 0x51 <= script[0] <= 0x60:  # OP_1 .. OP_16
        return script[0] - 0x50, script[2:]
    return None


def _p2pkh(key_hash: bytes) -> bytes:
    return b"\x76\xa9\x14" + key_hash + b"\x88\xac"  # OP_DUP OP_HASH160 <20> OP_EQUALVERIFY OP_CHECKSIG


def _p2sh(script_hash: bytes) -> bytes:
    return b"\xa9\x14" + script_hash + b"\x87"  # OP_HASH160 <20> OP_EQUAL


def _networks_named(match: Iterable[BitcoinNetwork]) -> str:
    return "/".join(n.name for n in match)


def address_to_script(address: str, network: BitcoinNetwork) -> bytes:
    """The scriptPubKey ``address`` pays on ``network`` (Core's DecodeDestination +
    GetScriptForDestination): any valid segwit version, P2PKH or P2SH. InvalidInput says why not -
    including "an address of another network", which a loose decoder would turn into lost coins."""
    if not isinstance(address, str) or not address:
        raise InvalidInput("address must be a non-empty string")
    shown = repr(address if len(address) <= 100 else address[:100] + "...")
    lower = address.lower()
    if lower.startswith(network.hrp + "1"):
        version, program = segwit_decode(network.hrp, address)
        return bytes([version + 0x50 if version else 0x00, len(program)]) + program
    others = [n for n in BITCOIN_NETWORKS.values() if n.hrp != network.hrp and lower.startswith(n.hrp + "1")]
    if others:
        raise InvalidInput(f"{shown} is a {_networks_named(others)} address, not a {network.name} one (wrong network)")
    try:
        payload = b58check_decode(address)
    except InvalidInput as exc:
        raise InvalidInput(f"{shown} is not a valid {network.name} address: {exc}") from None
    if len(payload) == 21:
        if payload[0] == network.p2pkh_prefix:
            return _p2pkh(payload[1:])
        if payload[0] == network.p2sh_prefix:
            return _p2sh(payload[1:])
        others = [n for n in BITCOIN_NETWORKS.values() if payload[0] in (n.p2pkh_prefix, n.p2sh_prefix)]
        if others:
            raise InvalidInput(f"{shown} is a {_networks_named(others)} address, not a {network.name} one "
                               "(wrong network)")
    raise InvalidInput(f"{shown} is not a valid {network.name} address (Base58Check payload of {len(payload)} bytes, "
                       f"version {payload[:1].hex() or 'none'})")


def script_to_address(script: bytes, network: BitcoinNetwork) -> str | None:
    """The address ``script`` pays on ``network`` (Core's ExtractDestination + EncodeDestination):
    P2PKH, P2SH, witness v0 of 20 or 32 bytes, any v1+ program; None when it has none."""
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return b58check(bytes([network.p2pkh_prefix]) + script[3:23])
    if len(script) == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return b58check(bytes([network.p2sh_prefix]) + script[2:22])
    program = witness_program(script)
    if program is None or (program[0] == 0 and len(program[1]) not in (20, 32)):
        return None
    return bech32_segwit(network.hrp, *program)
