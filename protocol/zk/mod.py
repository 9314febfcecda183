"""Π^mod — Paillier-Blum modulus (CGGMP21 §6.3, Fig. 16).

Claim: N = p·q with p ≡ q ≡ 3 (mod 4) and gcd(N, φ(N)) = 1. Together with Π^fac this is what
stops BitForge (CVE-2023-33241): a modulus with small factors, a prime power, or a prime
would let its owner read other parties' secrets out of MtA ciphertexts.

    prover: w ← Z_N with Jacobi (w|N) = -1; challenges y_1..y_m ← Z*_N (transcript, distinct)
    for each i: (a_i, b_i) ∈ {0,1}² such that y'_i = (-1)^a_i·w^b_i·y_i is a quadratic residue,
                x_i = y'_i^(1/4) mod N,  z_i = y_i^(N^-1 mod φ(N)) mod N
    verify: N odd and composite, (w|N) = -1, and for every i:
            z_i^N = y_i (mod N),  x_i^4 = (-1)^a_i·w^b_i·y_i (mod N)
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from ..encoding import Decoder, Encoder
from ..errors import InvalidProof
from ..levels import SecurityLevel
from ..paillier import PaillierSecretKey
from ..primes import is_probable_prime
from .common import Checker, ProofContext

NAME = "mod"


@dataclass(frozen=True)
class ModProof:
    w: int
    x: tuple[int, ...]
    a: tuple[int, ...]
    b: tuple[int, ...]
    z: tuple[int, ...]

    def to_bytes(self) -> bytes:
        enc = Encoder().uint(self.w).uints(self.x)
        return enc.bytes(bytes(self.a)).bytes(bytes(self.b)).uints(self.z).finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> ModProof:
        dec = Decoder(data, "Π^mod proof")
        bits = 2 * level.paillier_bits
        w = mpz(dec.uint(bits))
        x = tuple(mpz(v) for v in dec.uints(level.m, bits))
        a, b = dec.bytes(level.m), dec.bytes(level.m)
        z = tuple(mpz(v) for v in dec.uints(level.m, bits))
        dec.finish()
        if any(v not in (0, 1) for v in a + b):
            raise InvalidProof(NAME, "a_i, b_i must be bits")
        return cls(w, x, tuple(a), tuple(b), z)


def _challenges(ctx: ProofContext, level: SecurityLevel, n: int, w: int) -> list[int]:
    tr = ctx.transcript(NAME, level)
    tr.append_int("N", n)
    tr.append_int("w", w)
    return tr.challenge_units("y", n, level.m)


def _fourth_root_mod_prime(a: mpz, p: mpz) -> mpz:
    # p ≡ 3 (mod 4): a^((p+1)/4) is the square root of a QR that is itself a QR.
    e = (p + 1) // 4
    return gmpy2.powmod(a, e * e % (p - 1), p)


def prove(ctx: ProofContext, level: SecurityLevel, key: PaillierSecretKey) -> ModProof:
    n, p, q = key.n, key.p, key.q
    while True:
        w = mpz(secrets.randbelow(int(n)))
        if gmpy2.jacobi(w, n) == -1:
            break
    ys = _challenges(ctx, level, n, w)
    n_inv = gmpy2.invert(n, key.phi)
    q_inv_p = gmpy2.invert(q, p)
    wp, wq = gmpy2.legendre(w, p), gmpy2.legendre(w, q)
    xs, a_bits, b_bits, zs = [], [], [], []
    for y in ys:
        y = mpz(y)
        yp, yq = gmpy2.legendre(y, p), gmpy2.legendre(y, q)
        for a in (0, 1):
            for b in (0, 1):
                sign = -1 if a else 1
                if sign * (wp if b else 1) * yp == 1 and sign * (wq if b else 1) * yq == 1:
                    break
            else:
                continue
            break
        y_prime = ((-1) ** a) * (w if b else 1) * y % n
        rp = _fourth_root_mod_prime(y_prime % p, p)
        rq = _fourth_root_mod_prime(y_prime % q, q)
        xs.append(rq + q * ((rp - rq) * q_inv_p % p))
        a_bits.append(a)
        b_bits.append(b)
        zs.append(key.pow_n(y, n_inv))
    return ModProof(w, tuple(xs), tuple(a_bits), tuple(b_bits), tuple(zs))


def verify(ctx: ProofContext, level: SecurityLevel, n: int, proof: ModProof) -> None:
    check = Checker(NAME)
    n = mpz(n)
    check.require(n.bit_length() >= level.paillier_bits, f"N has fewer than {level.paillier_bits} bits")
    check.require(n % 2 == 1, "N is even")
    check.require(not is_probable_prime(n), "N is prime")
    check.require(not gmpy2.is_square(n), "N is a perfect square")
    check.require(
        len(proof.x) == len(proof.z) == len(proof.a) == len(proof.b) == level.m, "wrong number of rounds"
    )
    check.require(0 < proof.w < n and gmpy2.jacobi(proof.w, n) == -1, "w does not have Jacobi symbol -1")
    ys = _challenges(ctx, level, n, proof.w)
    for i, y in enumerate(ys):
        x, z, a, b = proof.x[i], proof.z[i], proof.a[i], proof.b[i]
        check.require(0 < x < n and 0 < z < n, f"round {i}: response out of range")
        check.require(gmpy2.powmod(z, n, n) == y, f"round {i}: z^N != y")
        expected = (n - y if a else y) * (proof.w if b else 1) % n
        check.require(gmpy2.powmod(x, 4, n) == expected, f"round {i}: x^4 != (-1)^a w^b y")
