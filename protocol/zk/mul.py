"""Π^mul — Paillier multiplication (CGGMP21 App. C.6, Fig. 29).

Fig. 29 in the pre-2024-10-21 numbering (``zk/__init__``), as synedrion ("Section C.6, Fig. 29")
and Safeheron ("Section C.6 (Figure 29)") cite it; not read from the paper text itself.

Used by the identification procedure after a failed δ-check: a party reveals H = enc(k·γ)
under its own key and proves, against its published K = enc(k) and G, that H is G raised to
the plaintext of K (re-randomised). Not a range proof — it needs no ring-Pedersen parameters.

Statement: the prover's key N, X = (1+N)^x·ρ_x^N mod N², any ciphertext Y under N, and
C = Y^x·ρ^N mod N². Witness: x, ρ, ρ_x.

    α, r, s ← Z*_N
    A = Y^α·r^N mod N², B = (1+N)^α·s^N mod N²
    e ← ±2^challenge_bits (from the transcript; the paper draws e ← ±q)
    z = α + e·x (over the integers), u = r·ρ^e mod N, v = s·ρ_x^e mod N
    verify: Y^z·u^N = A·C^e mod N², (1+N)^z·v^N = B·X^e mod N²

Zero knowledge. As in the paper, the mask α is drawn from Z_N only, not from a range that
dwarfs e·x by a statistical margin: z = α + e·x is within statistical distance about
|x|·2^challenge_bits / N of the simulated z = α'. That is negligible for the x this proof is
used with (a secp256k1 scalar k, so 2^(256+128) / 2^3071 at the 128-bit level), but the proof
must not be used with witnesses x anywhere near N / 2^challenge_bits.

Size bound (not in the paper): the verifier rejects |z| > 2^(challenge_bits+1)·N before any
exponentiation. An honest prover always satisfies it for |x| < N (|α| < N, |e·x| < 2^c·N), so
it changes neither completeness nor soundness; it only bounds the verifier's work.

If the prover holds C = enc(x·y; ρ_c) and Y = enc(y; ρ_y) rather than ρ, the witness is
ρ = ρ_c·ρ_y^(-x) mod N, or, with the secret key, ``recover_randomness(C·Y^(-x) mod N²)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gmpy2 import mpz

from ..encoding import Decoder, Encoder
from ..levels import SecurityLevel
from ..paillier import PaillierPublicKey, sample_unit
from .common import Checker, ProofContext, bind_paillier, paillier_raw

NAME = "mul"


@dataclass(frozen=True)
class MulStatement:
    """Public values: the prover's key N; X = enc_N(x), Y, and C = Y^x·ρ^N, all under N."""

    N: PaillierPublicKey
    X: int
    Y: int
    C: int


@dataclass(frozen=True)
class MulProof:
    A: int
    B: int
    z: int
    u: int
    v: int

    def to_bytes(self) -> bytes:
        return Encoder().uint(self.A).uint(self.B).int(self.z).uint(self.u).uint(self.v).finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> MulProof:
        dec = Decoder(data, "Π^mul proof")
        bits = level.max_int_bits()
        fields = (dec.uint(bits), dec.uint(bits), dec.int(bits), dec.uint(bits), dec.uint(bits))
        dec.finish()
        return cls(*(mpz(f) for f in fields))


def _challenge(ctx: ProofContext, level: SecurityLevel, st: MulStatement, A: int, B: int) -> mpz:
    tr = ctx.transcript(NAME, level)
    bind_paillier(tr, "N", st.N)
    tr.append_ints("X,Y,C", (st.X, st.Y, st.C))
    tr.append_ints("A,B", (A, B))
    return mpz(tr.challenge_pm("e", level.challenge_bits))


def z_bound(level: SecurityLevel, key: PaillierPublicKey) -> mpz:
    """|z| ≤ 2^(challenge_bits+1)·N: always met by an honest prover with |x| < N."""
    return (mpz(1) << (level.challenge_bits + 1)) * key.n


def prove(
    ctx: ProofContext,
    level: SecurityLevel,
    st: MulStatement,
    x: int,
    rho: int,
    rho_x: int,
) -> MulProof:
    """``st.N`` should be the prover's secret key: every exponentiation then uses CRT."""
    N = st.N
    alpha = sample_unit(N.n)
    r = sample_unit(N.n)
    s = sample_unit(N.n)
    A = N.pow_n2(st.Y, alpha) * N.rho_to_n(r) % N.n2
    B = paillier_raw(N, alpha, s)
    e = _challenge(ctx, level, st, A, B)
    return MulProof(
        A=A,
        B=B,
        z=alpha + e * mpz(x),
        u=r * N.pow_n(rho, e) % N.n,
        v=s * N.pow_n(rho_x, e) % N.n,
    )


def verify(ctx: ProofContext, level: SecurityLevel, st: MulStatement, proof: MulProof) -> None:
    check = Checker(NAME)
    N = st.N
    check.ciphertext(N, st.X, "X")
    check.ciphertext(N, st.Y, "Y")
    check.ciphertext(N, st.C, "C")
    check.ciphertext(N, proof.A, "A")
    check.ciphertext(N, proof.B, "B")
    check.unit(proof.u, N.n, "u")
    check.unit(proof.v, N.n, "v")
    check.in_range(proof.z, z_bound(level, N), "z")
    e = _challenge(ctx, level, st, proof.A, proof.B)
    check.require(
        N.pow_n2(st.Y, proof.z) * N.rho_to_n(proof.u) % N.n2 == proof.A * N.pow_n2(st.C, e) % N.n2,
        "Y^z·u^N != A·C^e",
    )
    check.require(
        paillier_raw(N, proof.z, proof.v) == proof.B * N.pow_n2(st.X, e) % N.n2,
        "(1+N)^z·v^N != B·X^e",
    )
