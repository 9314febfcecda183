"""Π^mul* — multiplication Paillier vs group (CGGMP21 App. C.6, Fig. 31), used by the signing
identification. Fig. 31 in the pre-2024-10-21 numbering (``zk/__init__``), as synedrion
("Section C.6, Fig. 31") and Safeheron ("Section C.6 (Figure 31)") cite it; not read from the
paper text itself.

Statement: the prover's key N0, ciphertexts C and D = C^x·ρ^N0 mod N0² under N0, and
X = x·G; the verifier's ring-Pedersen (N̂, s, t). Claim: D encrypts x·dec(C) for the discrete
log x of X, with x ∈ ±2^ℓ (up to ε). Signing's identification uses it for Ĥ_i = K_i^(w_i)·ρ^N,
the encryption of k_i·w_i, against the public W_i = w_i·G.

    α ← ±2^(ℓ+ε), r ← Z*_N0, γ ← ±2^(ℓ+ε)·N̂, m ← ±2^ℓ·N̂
    A = C^α·r^N0 mod N0², B_x = α·G, E = s^α t^γ, S = s^x t^m  (mod N̂)
    z1 = α + e·x, z2 = γ + e·m, w = r·ρ^e mod N0
    verify: z1 ∈ ±2^(ℓ+ε); C^z1·w^N0 = A·D^e mod N0²; z1·G = B_x + e·X; s^z1 t^z2 = E·S^e
"""

from __future__ import annotations

from dataclasses import dataclass

from gmpy2 import mpz

from ..curve import Point
from ..encoding import Decoder, Encoder
from ..levels import SecurityLevel
from ..paillier import PaillierPublicKey, sample_unit
from ..ring_pedersen import RingPedersenParams
from .common import (
    Checker,
    ProofContext,
    bind_paillier,
    bind_ring_pedersen,
    decode_point,
    encode_point,
    sample_pm,
    sample_pm_bits,
)

NAME = "mul*"


@dataclass(frozen=True)
class MulStarStatement:
    N0: PaillierPublicKey
    C: int
    D: int
    X: Point


@dataclass(frozen=True)
class MulStarProof:
    A: int
    Bx: Point
    E: int
    S: int
    z1: int
    z2: int
    w: int

    def to_bytes(self) -> bytes:
        enc = Encoder().uint(self.A)
        encode_point(enc, self.Bx)
        return enc.uint(self.E).uint(self.S).int(self.z1).int(self.z2).uint(self.w).finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> MulStarProof:
        d = Decoder(data, "Π^mul* proof")
        bits = level.max_int_bits()
        A = mpz(d.uint(bits))
        Bx = decode_point(d)
        E, S = mpz(d.uint(bits)), mpz(d.uint(bits))
        z1, z2, w = mpz(d.int(bits)), mpz(d.int(bits)), mpz(d.uint(bits))
        d.finish()
        return cls(A, Bx, E, S, z1, z2, w)


def _challenge(ctx: ProofContext, level: SecurityLevel, st: MulStarStatement, aux: RingPedersenParams,
               A: int, Bx: Point, E: int, S: int) -> mpz:
    tr = ctx.transcript(NAME, level)
    bind_paillier(tr, "N0", st.N0)
    bind_ring_pedersen(tr, "aux", aux)
    tr.append_ints("C,D", (st.C, st.D))
    tr.append_point("X", st.X)
    tr.append_int("A", A)
    tr.append_point("Bx", Bx)
    tr.append_ints("E,S", (E, S))
    return mpz(tr.challenge_pm("e", level.challenge_bits))


def prove(ctx: ProofContext, level: SecurityLevel, st: MulStarStatement, aux: RingPedersenParams,
          x: int, rho: int) -> MulStarProof:
    """``st.N0`` should be the prover's secret key (CRT)."""
    l_eps = level.ell + level.epsilon
    alpha = sample_pm_bits(l_eps)
    r = sample_unit(st.N0.n)
    gamma = sample_pm((mpz(1) << l_eps) * aux.n)
    m = sample_pm((mpz(1) << level.ell) * aux.n)
    A = st.N0.pow_n2(st.C, alpha) * st.N0.rho_to_n(r) % st.N0.n2
    Bx = Point.base_mul(alpha)
    E, S = aux.commit(alpha, gamma), aux.commit(x, m)
    e = _challenge(ctx, level, st, aux, A, Bx, E, S)
    return MulStarProof(A, Bx, E, S, alpha + e * x, gamma + e * m, r * st.N0.pow_n(rho, e) % st.N0.n)


def verify(ctx: ProofContext, level: SecurityLevel, st: MulStarStatement, aux: RingPedersenParams,
           proof: MulStarProof) -> None:
    check = Checker(NAME)
    N0 = st.N0
    check.ciphertext(N0, st.C, "C")
    check.ciphertext(N0, st.D, "D")
    check.point(st.X, "X")
    check.ciphertext(N0, proof.A, "A")
    check.point(proof.Bx, "Bx")
    check.unit(proof.E, aux.n, "E")
    check.unit(proof.S, aux.n, "S")
    check.unit(proof.w, N0.n, "w")
    check.in_range(proof.z1, mpz(1) << (level.ell + level.epsilon), "z1")
    e = _challenge(ctx, level, st, aux, proof.A, proof.Bx, proof.E, proof.S)
    check.require(N0.pow_n2(st.C, proof.z1) * N0.rho_to_n(proof.w) % N0.n2 == proof.A * N0.pow_n2(st.D, e) % N0.n2,
                  "C^z1·w^N0 != A·D^e")
    check.require(Point.base_mul(proof.z1) == proof.Bx + st.X * e, "z1·G != Bx + e·X")
    check.require(aux.commit(proof.z1, proof.z2) == proof.E * aux.pow(proof.S, e) % aux.n, "s^z1 t^z2 != E·S^e")
