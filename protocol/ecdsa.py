"""Plain ECDSA over secp256k1: the signature object the protocols return, and verification.

Verification is done here from the curve equations (u1·G + u2·X) rather than through
libsecp256k1, so that the protocol's own acceptance check does not depend on the signature
already being low-S; tests verify independently with coincurve and eth-account.
"""

from __future__ import annotations

from dataclasses import dataclass

from coincurve.ecdsa import cdata_to_der, deserialize_compact

from .curve import HALF_Q, Point, Q
from .errors import InvalidInput


@dataclass(frozen=True)
class Signature:
    r: int
    s: int
    recovery_id: int
    public_key: Point

    def to_compact(self) -> bytes:
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big")

    def to_recoverable(self) -> bytes:
        """r || s || v with v ∈ {0, 1, 2, 3} (libsecp256k1's recoverable format)."""
        return self.to_compact() + bytes([self.recovery_id])

    def to_der(self) -> bytes:
        return cdata_to_der(deserialize_compact(self.to_compact()))

    @property
    def is_low_s(self) -> bool:
        return self.s <= HALF_Q


def verify(public_key: Point, digest: bytes, r: int, s: int) -> bool:
    if len(digest) != 32:
        raise InvalidInput("digest must be 32 bytes")
    if not (0 < r < Q and 0 < s < Q) or public_key.is_identity:
        return False
    e = int.from_bytes(digest, "big") % Q
    w = pow(s, -1, Q)
    point = Point.base_mul(e * w % Q) + public_key * (r * w % Q)
    return not point.is_identity and point.x % Q == r


def normalize(R: Point, r: int, s: int, public_key: Point) -> Signature:
    """Low-S form (BIP62/EIP-2) with the matching recovery id."""
    x, y = R.xy()
    recovery_id = (y & 1) | (2 if x >= Q else 0)
    if s > HALF_Q:
        s = Q - s
        recovery_id ^= 1
    return Signature(r, s, recovery_id, public_key)
