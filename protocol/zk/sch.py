"""Π^sch — Schnorr proof of knowledge of a discrete logarithm (CGGMP21 App. C.1, Fig. 22).

Statement X = x·G. The prover's commitment A = α·G can be made ahead of time: in key
generation it is committed in round 1, before ``rid`` (and hence the challenge) is known,
which is why ``commit`` and ``prove`` are separate steps.

    e ← H(context, X, A) ∈ Z_q,   z = α + e·x mod q,   verify z·G = A + e·X.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..curve import Point, Q, random_scalar
from ..encoding import Decoder, Encoder
from ..levels import SecurityLevel
from .common import Checker, ProofContext, decode_point, encode_point

NAME = "sch"


@dataclass(frozen=True)
class SchnorrCommitment:
    """The prover's secret nonce α and its public image A = α·G."""

    alpha: int
    A: Point

    def __repr__(self) -> str:
        return f"SchnorrCommitment(A={self.A!r})"


@dataclass(frozen=True)
class SchnorrProof:
    A: Point
    z: int

    def to_bytes(self) -> bytes:
        enc = Encoder()
        encode_point(enc, self.A)
        return enc.uint(self.z).finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> SchnorrProof:
        dec = Decoder(data, "Π^sch proof")
        A = decode_point(dec)
        z = dec.uint(256)
        dec.finish()
        if z >= Q:
            raise Checker(NAME).fail("z is not a scalar")
        return cls(A, z)


def commit() -> SchnorrCommitment:
    alpha = random_scalar()
    return SchnorrCommitment(alpha, Point.base_mul(alpha))


def _challenge(ctx: ProofContext, level: SecurityLevel, X: Point, A: Point) -> int:
    tr = ctx.transcript(NAME, level)
    tr.append_point("X", X)
    tr.append_point("A", A)
    return tr.challenge_scalar("e")


def prove(
    ctx: ProofContext,
    level: SecurityLevel,
    X: Point,
    x: int,
    commitment: SchnorrCommitment | None = None,
) -> SchnorrProof:
    commitment = commitment or commit()
    e = _challenge(ctx, level, X, commitment.A)
    return SchnorrProof(commitment.A, (commitment.alpha + e * x) % Q)


def verify(ctx: ProofContext, level: SecurityLevel, X: Point, proof: SchnorrProof) -> None:
    check = Checker(NAME)
    check.point(X, "X")
    check.point(proof.A, "A")
    check.require(0 <= proof.z < Q, "z is not a scalar")
    e = _challenge(ctx, level, X, proof.A)
    check.require(Point.base_mul(proof.z) == proof.A + X * e, "z·G != A + e·X")
