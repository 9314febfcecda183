"""Π^prm — ring-Pedersen parameters are well formed: s ∈ ⟨t⟩ (CGGMP21 §6.4, Fig. 17).

Claim: the prover knows λ with s = t^λ mod N. If s ∉ ⟨t⟩ the prover could open its
ring-Pedersen commitments two ways and forge every range proof made against these parameters
(TSSHOCK "c-split"). The challenge is one bit per round, so the level's m ≥ 80 rounds are
what make it sound.

    a_i ← Z_φ(N), A_i = t^a_i mod N (i = 1..m); e_i ∈ {0,1} from the transcript
    z_i = a_i + e_i·λ mod φ(N)
    verify: t^z_i = A_i·s^e_i mod N for every i
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from gmpy2 import mpz

from ..encoding import Decoder, Encoder
from ..levels import SecurityLevel
from ..ring_pedersen import RingPedersenParams, RingPedersenSecret
from .common import Checker, ProofContext, bind_ring_pedersen

NAME = "prm"


@dataclass(frozen=True)
class PrmProof:
    A: tuple[int, ...]
    z: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return Encoder().uints(self.A).uints(self.z).finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> PrmProof:
        dec = Decoder(data, "Π^prm proof")
        bits = 2 * level.paillier_bits
        A = tuple(mpz(v) for v in dec.uints(level.m, bits))
        z = tuple(mpz(v) for v in dec.uints(level.m, bits))
        dec.finish()
        return cls(A, z)


def _challenges(ctx: ProofContext, level: SecurityLevel, rp: RingPedersenParams, A: tuple[int, ...]) -> list[int]:
    tr = ctx.transcript(NAME, level)
    bind_ring_pedersen(tr, "params", rp)
    tr.append_ints("A", A)
    return tr.challenge_bits("e", level.m)


def prove(ctx: ProofContext, level: SecurityLevel, secret: RingPedersenSecret) -> PrmProof:
    phi = secret.phi
    a = [mpz(secrets.randbelow(int(phi))) for _ in range(level.m)]
    A = tuple(secret.pow(secret.t, ai) for ai in a)
    es = _challenges(ctx, level, secret.public(), A)
    z = tuple((ai + ei * secret.lam) % phi for ai, ei in zip(a, es, strict=True))
    return PrmProof(A, z)


def verify(ctx: ProofContext, level: SecurityLevel, rp: RingPedersenParams, proof: PrmProof) -> None:
    check = Checker(NAME)
    n = rp.n
    check.require(n.bit_length() >= level.paillier_bits, f"N̂ has fewer than {level.paillier_bits} bits")
    check.require(len(proof.A) == len(proof.z) == level.m, "wrong number of rounds")
    for i, A in enumerate(proof.A):
        check.unit(A, n, f"A_{i}")
    es = _challenges(ctx, level, rp.public(), proof.A)
    for i, z in enumerate(proof.z):
        check.require(0 <= z < n, f"round {i}: z out of range")
    powers = rp.pow_t_many(list(proof.z))
    for i, (A, e, t_to_z) in enumerate(zip(proof.A, es, powers, strict=True)):
        expected = A * rp.s % n if e else A
        check.require(t_to_z == expected, f"round {i}: t^z != A·s^e")
