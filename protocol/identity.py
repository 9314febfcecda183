"""Party identity keys: every protocol message is signed by its sender.

Why the protocol layer signs (and not only the transport): identifiable abort needs
*transferable* evidence. When party k receives a bad private message from j, k forwards j's
signed message in a complaint and every other party can check both that j really sent it and
that it is bad. When j sends two different broadcasts, the two signatures prove equivocation.
The node's envelopes carry these same signatures on the wire.

Signatures are ECDSA over secp256k1 (RFC 6979 nonces, libsecp256k1 via coincurve) on a
SHA-256 digest that binds the domain, session, phase, round, kind, sender, receiver and the
payload's hash.
"""

from __future__ import annotations

import hashlib

from coincurve import PrivateKey, PublicKey

from .encoding import Encoder
from .errors import InvalidInput

DOMAIN = b"fusion-prime/protocol-message/v1"


def message_digest(
    session_id: bytes, phase: str, round_no: int, kind: int, sender: int, receiver: int, payload_hash: bytes
) -> bytes:
    data = (
        Encoder()
        .bytes(DOMAIN)
        .bytes(session_id)
        .bytes(phase.encode())
        .uint(round_no)
        .uint(kind)
        .uint(sender)
        .uint(receiver)
        .bytes(payload_hash)
        .finish()
    )
    return hashlib.sha256(data).digest()


class PartyIdentity:
    """A party's long-term signing key."""

    __slots__ = ("_key",)

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> PartyIdentity:
        return cls(PrivateKey())

    @classmethod
    def from_secret(cls, secret: bytes) -> PartyIdentity:
        try:
            return cls(PrivateKey(secret))
        except ValueError as exc:
            raise InvalidInput("identity secret is not a valid secp256k1 key") from exc

    def secret_bytes(self) -> bytes:
        return self._key.secret

    @property
    def public_key(self) -> bytes:
        return self._key.public_key.format(compressed=True)

    def sign(self, digest: bytes) -> bytes:
        """DER-encoded, low-S (libsecp256k1 always normalises)."""
        return self._key.sign(digest, hasher=None)

    def __repr__(self) -> str:
        return f"PartyIdentity(public={self.public_key.hex()[:16]}…)"


def verify_signature(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    if not 8 <= len(signature) <= 72:
        return False
    try:
        return bool(PublicKey(public_key).verify(signature, digest, hasher=None))
    except (ValueError, TypeError):
        return False
