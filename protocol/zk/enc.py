"""Π^enc — Paillier encryption in range (CGGMP21 §6.1, Fig. 14; numbering: see ``zk/__init__``).

Statement: the prover's Paillier key N0, a ciphertext K = (1+N0)^k·ρ^N0 mod N0², and the
verifier's ring-Pedersen parameters (N̂, s, t). Claim: the plaintext k lies in ±2^ℓ (up to
the slack ε). Presigning uses it (round 1) to show K_i encrypts an honest-sized nonce k_i, which
is what keeps the later MtA sums from wrapping modulo N (the Alpha-Rays class of attacks); G_i
is not proven with Π^enc — its plaintext is bounded by the round-2 Π^log* against Γ_i.

    α ← ±2^(ℓ+ε), μ ← ±2^ℓ·N̂, r ← Z*_N0, γ ← ±2^(ℓ+ε)·N̂
    S = s^k t^μ, A = (1+N0)^α r^N0, C = s^α t^γ
    e ← ±2^challenge_bits (from the transcript)
    z1 = α + e·k, z2 = r·ρ^e mod N0, z3 = γ + e·μ
    verify: z1 ∈ ±2^(ℓ+ε); (1+N0)^z1·z2^N0 = A·K^e mod N0²; s^z1 t^z3 = C·S^e mod N̂
"""

from __future__ import annotations

from dataclasses import dataclass

from gmpy2 import mpz

from ..encoding import Decoder, Encoder
from ..levels import SecurityLevel
from ..paillier import PaillierPublicKey, sample_unit
from ..ring_pedersen import RingPedersenParams
from .common import (
    Checker,
    ProofContext,
    bind_paillier,
    bind_ring_pedersen,
    paillier_raw,
    sample_pm,
    sample_pm_bits,
)

NAME = "enc"


@dataclass(frozen=True)
class EncProof:
    S: int
    A: int
    C: int
    z1: int
    z2: int
    z3: int

    def to_bytes(self) -> bytes:
        enc = Encoder().uint(self.S).uint(self.A).uint(self.C)
        return enc.int(self.z1).uint(self.z2).int(self.z3).finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> EncProof:
        dec = Decoder(data, "Π^enc proof")
        bits = level.max_int_bits()
        fields = (dec.uint(bits), dec.uint(bits), dec.uint(bits), dec.int(bits), dec.uint(bits), dec.int(bits))
        dec.finish()
        return cls(*(mpz(f) for f in fields))


def _challenge(
    ctx: ProofContext,
    level: SecurityLevel,
    N0: PaillierPublicKey,
    K: int,
    aux: RingPedersenParams,
    S: int,
    A: int,
    C: int,
) -> mpz:
    tr = ctx.transcript(NAME, level)
    bind_paillier(tr, "N0", N0)
    bind_ring_pedersen(tr, "aux", aux)
    tr.append_int("K", K)
    tr.append_ints("commitment", (S, A, C))
    return mpz(tr.challenge_pm("e", level.challenge_bits))


def prove(
    ctx: ProofContext,
    level: SecurityLevel,
    N0: PaillierPublicKey,
    K: int,
    aux: RingPedersenParams,
    k: int,
    rho: int,
) -> EncProof:
    eps = level.ell + level.epsilon
    alpha = sample_pm_bits(eps)
    mu = sample_pm((mpz(1) << level.ell) * aux.n)
    r = sample_unit(N0.n)
    gamma = sample_pm((mpz(1) << eps) * aux.n)
    S = aux.commit(k, mu)
    A = paillier_raw(N0, alpha, r)
    C = aux.commit(alpha, gamma)
    e = _challenge(ctx, level, N0, K, aux, S, A, C)
    z1 = alpha + e * k
    z2 = r * N0.pow_n(rho, e) % N0.n
    z3 = gamma + e * mu
    return EncProof(S, A, C, z1, z2, z3)


def verify(
    ctx: ProofContext,
    level: SecurityLevel,
    N0: PaillierPublicKey,
    K: int,
    aux: RingPedersenParams,
    proof: EncProof,
) -> None:
    check = Checker(NAME)
    check.ciphertext(N0, K, "K")
    check.unit(proof.S, aux.n, "S")
    check.unit(proof.C, aux.n, "C")
    check.ciphertext(N0, proof.A, "A")
    check.unit(proof.z2, N0.n, "z2")
    check.in_range(proof.z1, mpz(1) << (level.ell + level.epsilon), "z1")
    e = _challenge(ctx, level, N0, K, aux, proof.S, proof.A, proof.C)
    check.require(
        paillier_raw(N0, proof.z1, proof.z2) == proof.A * N0.pow_n2(K, e) % N0.n2,
        "(1+N0)^z1·z2^N0 != A·K^e",
    )
    check.require(
        aux.commit(proof.z1, proof.z3) == proof.C * aux.pow(proof.S, e) % aux.n,
        "s^z1·t^z3 != C·S^e",
    )

