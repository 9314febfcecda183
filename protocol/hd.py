"""BIP32 non-hardened derivation from the group key (public derivation + the additive tweak).

One key generation serves unlimited deposit addresses: child public keys are computed from
the group's extended public key (X, chain code) exactly as BIP32 CKDpub does, and the child
private key is x + Σ I_L — an additive tweak that signing applies without touching any
share (see ``sign``). Hardened indices need the private key and cannot exist here.

Presignatures combined with additive derivation are attackable (Groth & Shoup, eprint
2021/1330, §7): ``sign`` re-randomises the presignature with the tweak and the message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from .addresses import b58check
from .curve import Point, Q
from .errors import InvalidInput

HARDENED = 0x80000000
MAX_DEPTH = 255


@dataclass(frozen=True)
class DerivedKey:
    public_key: Point
    chain_code: bytes
    tweak: int  # child private key = group private key + tweak (mod q)
    path: tuple[int, ...]


def parse_path(path: str | Sequence[int]) -> tuple[int, ...]:
    """``"m/0/1/44"`` or a sequence of ints; hardened steps are refused with a clear error."""
    if isinstance(path, str):
        parts = path.strip().split("/")
        if not parts or parts[0] != "m":
            raise InvalidInput("derivation path must start with 'm'")
        out = []
        for part in parts[1:]:
            if part.endswith(("'", "h", "H")):
                raise InvalidInput("hardened derivation is impossible for a threshold key")
            if not part.isdigit():
                raise InvalidInput(f"bad derivation path element {part!r}")
            out.append(int(part))
        indices = tuple(out)
    else:
        indices = tuple(path)
    if len(indices) > MAX_DEPTH:
        raise InvalidInput("derivation path too deep")
    for i in indices:
        if not isinstance(i, int) or not 0 <= i < HARDENED:
            raise InvalidInput("derivation index must be a non-hardened integer in [0, 2^31)")
    return indices


def derive(group_key: Point, chain_code: bytes, path: str | Sequence[int]) -> DerivedKey:
    """BIP32 CKDpub along ``path``, accumulating the additive tweak."""
    indices = parse_path(path)
    if len(chain_code) != 32:
        raise InvalidInput("chain code must be 32 bytes")
    key, chain, tweak = group_key, chain_code, 0
    for index in indices:
        digest = hmac.new(chain, key.to_bytes() + index.to_bytes(4, "big"), hashlib.sha512).digest()
        il = int.from_bytes(digest[:32], "big")
        if il >= Q:
            raise InvalidInput(f"BIP32 index {index} is invalid for this key (I_L >= n); use the next index")
        child = key + Point.base_mul(il)
        if child.is_identity:
            raise InvalidInput(f"BIP32 index {index} gives the point at infinity; use the next index")
        key, chain, tweak = child, digest[32:], (tweak + il) % Q
    return DerivedKey(key, chain, tweak, indices)


def xpub(group_key: Point, chain_code: bytes, version: bytes = bytes.fromhex("0488b21e")) -> str:
    """The root extended public key (depth 0), Base58Check — what wallets import."""
    data = version + b"\x00" + b"\x00" * 4 + b"\x00" * 4 + chain_code + group_key.to_bytes()
    return b58check(data)
