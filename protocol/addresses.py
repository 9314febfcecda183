"""Addresses of a (possibly derived) group public key: Ethereum, Bitcoin P2WPKH, Base58Check.

These are pure encodings of a public key, needed wherever a key is shown to a person (the
wallet API, the demo, deposit addresses). Keccak-256 and RIPEMD-160 come from pycryptodome
(OpenSSL 3 builds may lack RIPEMD-160 in hashlib).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from Crypto.Hash import RIPEMD160, keccak

from .curve import Point
from .errors import InvalidInput

BECH32_HRP = {"mainnet": "bc", "testnet": "tb", "signet": "tb", "regtest": "bcrt"}
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


def p2wpkh_address(key: Point, network: str = "regtest") -> str:
    """BIP173 bech32 v0 address of hash160(compressed key)."""
    try:
        hrp = BECH32_HRP[network]
    except KeyError:
        raise InvalidInput(f"unknown Bitcoin network {network!r}") from None
    return bech32_segwit(hrp, 0, hash160(key.to_bytes()))


def b58check(data: bytes) -> str:
    payload = data + hashlib.sha256(hashlib.sha256(data).digest()).digest()[:4]
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
