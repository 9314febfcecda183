"""A local stand-in for the threshold network: one coincurve key with BIP32-style public derivation.

It implements the SDK's signing interface exactly — ``sign_digest(digest, path) -> Signature`` and
``public_key(path) -> Point`` — with the child key x + tweak that ``protocol.hd.derive`` computes,
so every helper is exercised through the same calls the threshold network answers. Variants
misbehave on purpose (wrong key, high-S, wrong recovery id) to test that answers are checked.
"""

from __future__ import annotations

import hashlib

import pbk
from coincurve import PrivateKey
from pbk.script import PrecomputedTransactionData

from fusion_prime.protocol.curve import Point, Q
from fusion_prime.protocol.ecdsa import Signature
from fusion_prime.protocol.hd import derive


class LocalDigestSigner:
    def __init__(self, seed: bytes = b"fusion-prime signer tests") -> None:
        digest = hashlib.sha512(seed).digest()
        self.secret = int.from_bytes(digest[:32], "big") % Q
        self.chain_code = digest[32:]
        self.group_key = Point.base_mul(self.secret)
        self.calls: list[tuple[bytes, str]] = []

    def public_key(self, path: str) -> Point:
        return derive(self.group_key, self.chain_code, path).public_key

    def private_key(self, path: str) -> bytes:
        d = derive(self.group_key, self.chain_code, path)
        return ((self.secret + d.tweak) % Q).to_bytes(32, "big")

    def sign_digest(self, digest: bytes, path: str) -> Signature:
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        self.calls.append((digest, path))
        sig = PrivateKey(self.private_key(path)).sign_recoverable(digest, hasher=None)
        r, s, rec = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
        return Signature(r, s, rec, self.public_key(path))


class WrongKeySigner(LocalDigestSigner):
    """Signs with the key of another path but claims the right one."""

    def sign_digest(self, digest: bytes, path: str) -> Signature:
        good = super().sign_digest(digest, "m/999")
        return Signature(good.r, good.s, good.recovery_id, self.public_key(path))


class HighSSigner(LocalDigestSigner):
    """Returns n - s (valid ECDSA, not low-S) with the recovery parity flipped accordingly."""

    def sign_digest(self, digest: bytes, path: str) -> Signature:
        good = super().sign_digest(digest, path)
        return Signature(good.r, Q - good.s, good.recovery_id ^ 1, good.public_key)


class BadRecoverySigner(LocalDigestSigner):
    def sign_digest(self, digest: bytes, path: str) -> Signature:
        good = super().sign_digest(digest, path)
        return Signature(good.r, good.s, good.recovery_id ^ 1, good.public_key)


def kernel_verify(raw_tx: bytes, spent: list[tuple[int, bytes]]) -> bool:
    """libbitcoinkernel's script interpreter on every input, with all consensus flags."""
    try:
        ktx = pbk.Transaction(raw_tx)
        if len(ktx.inputs) != len(spent):
            return False  # (a mismatch aborts the kernel's precomputation: a different transaction)
        outs = [pbk.TransactionOutput(pbk.ScriptPubkey(script), value) for value, script in spent]
        txdata = PrecomputedTransactionData(ktx, outs)
        for i, (value, script) in enumerate(spent):
            if not pbk.ScriptPubkey(script).verify(value, ktx, txdata, i, pbk.ScriptVerificationFlags.ALL):
                return False
    except Exception:  # unparsable, or the interpreter raised: either way not valid
        return False
    return True
