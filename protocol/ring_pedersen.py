"""Ring-Pedersen parameters (N̂, s, t) and commitments s^x·t^y mod N̂ (CGGMP21 §3.3, Def. 3.3).

Every range proof of CGGMP21 commits the prover's witness under the *verifier's* parameters,
so their soundness rests on the verifier's N̂ being a product of safe primes (no small
subgroups), t generating a large subgroup of QR(N̂), and s ∈ ⟨t⟩ — all proven once with
Π^prm, Π^mod and Π^fac during auxiliary-info generation. TSSHOCK's "c-split" attack broke
implementations that accepted t = ±1 or s ∉ Z*_N̂; ``RingPedersenParams`` refuses those.

As in the paper (Fig. 6, aux-info), each party uses its Paillier modulus N as N̂, with
t = r² mod N for a random unit r and s = t^λ mod N for a random λ ∈ Z_φ(N).
"""

from __future__ import annotations

import hashlib
import secrets

import gmpy2
from gmpy2 import mpz

from .errors import InvalidInput
from .paillier import PaillierSecretKey, crt_pow, sample_unit


class RingPedersenParams:
    __slots__ = ("n", "s", "t")

    def __init__(self, n: int, s: int, t: int) -> None:
        n, s, t = mpz(n), mpz(s), mpz(t)
        if n < 3 or n % 2 == 0:
            raise InvalidInput("ring-Pedersen modulus must be odd and > 2")
        for name, v in (("s", s), ("t", t)):
            if not 0 < v < n or gmpy2.gcd(v, n) != 1:
                raise InvalidInput(f"ring-Pedersen {name} is not in Z*_N")
        if t == 1 or t == n - 1:
            raise InvalidInput("ring-Pedersen t = ±1 generates nothing")
        if s == 1 or s == n - 1:
            raise InvalidInput("ring-Pedersen s = ±1")
        if s == t:
            raise InvalidInput("ring-Pedersen s = t")
        self.n, self.s, self.t = n, s, t

    @property
    def bits(self) -> int:
        return int(self.n.bit_length())

    def commit(self, x: int, y: int) -> mpz:
        """s^x · t^y mod N̂ for signed exponents."""
        return gmpy2.powmod(self.s, x, self.n) * gmpy2.powmod(self.t, y, self.n) % self.n

    def pow(self, base: int, exponent: int) -> mpz:
        return gmpy2.powmod(base, exponent, self.n)

    def pow_t_many(self, exponents: list[int]) -> list[mpz]:
        """t^e mod N̂ for many non-negative e at once, by a fixed-base window table.

        Π^prm's verifier raises the same base t to m ≈ 128 full-size exponents; precomputing
        t^(d·2^(6j)) once and multiplying one table entry per 6-bit window is about three
        times faster than m independent exponentiations, and gives identical results.
        """
        if len(exponents) < 16:
            return [gmpy2.powmod(self.t, e, self.n) for e in exponents]
        if any(e < 0 for e in exponents):
            raise InvalidInput("fixed-base exponents must be non-negative")
        width, n = 6, self.n
        bits = max(int(mpz(e).bit_length()) for e in exponents)
        table = []
        current = self.t
        for _ in range((bits + width - 1) // width):
            row = [mpz(1), current]
            for _ in range(2, 1 << width):
                row.append(row[-1] * current % n)
            table.append(row)
            current = row[-1] * current % n
        mask = (1 << width) - 1
        out = []
        for e in exponents:
            e, acc, i = mpz(e), mpz(1), 0
            while e:
                digit = int(e & mask)
                if digit:
                    acc = acc * table[i][digit] % n
                e >>= width
                i += 1
            out.append(acc)
        return out

    def validate_element(self, v: int, what: str) -> mpz:
        v = mpz(v)
        if not 0 < v < self.n or gmpy2.gcd(v, self.n) != 1:
            raise InvalidInput(f"{what} is not in Z*_N̂")
        return v

    def public(self) -> RingPedersenParams:
        return RingPedersenParams(self.n, self.s, self.t) if type(self) is not RingPedersenParams else self

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for v in (self.n, self.s, self.t):
            h.update(int(v).to_bytes((int(self.n).bit_length() + 7) // 8, "big"))
        return h.hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RingPedersenParams)
            and (self.n, self.s, self.t) == (other.n, other.s, other.t)
        )

    def __hash__(self) -> int:
        return hash((int(self.n), int(self.s), int(self.t)))

    def __repr__(self) -> str:
        return f"RingPedersenParams(bits={self.bits}, fp={self.fingerprint()})"


class RingPedersenSecret(RingPedersenParams):
    """The trapdoor λ (s = t^λ) and the factorisation: proves Π^prm, commits faster by CRT."""

    __slots__ = ("_lambda", "_p", "_phi", "_q", "_q_inv_p")

    def __init__(self, p: int, q: int, lam: int, t: int) -> None:
        p, q = mpz(p), mpz(q)
        n = p * q
        phi = (p - 1) * (q - 1)
        lam = mpz(lam) % phi
        q_inv_p = gmpy2.invert(q, p)
        # s = t^λ by CRT (the factors are known): a quarter of a full-size exponentiation.
        super().__init__(n, crt_pow(t, lam, p, q, q_inv_p), t)
        self._lambda, self._phi, self._p, self._q = lam, phi, p, q
        self._q_inv_p = q_inv_p

    @classmethod
    def from_paillier(cls, key: PaillierSecretKey) -> RingPedersenSecret:
        """Fig. 6: t = r² for r ← Z*_N, λ ← Z_φ(N), s = t^λ."""
        while True:
            r = sample_unit(key.n)
            t = r * r % key.n
            lam = mpz(secrets.randbelow(int(key.phi)))
            try:
                return cls(key.p, key.q, lam, t)
            except InvalidInput:  # t or s landed on ±1 or s = t: astronomically rare, redraw
                continue

    @property
    def lam(self) -> mpz:
        return self._lambda

    @property
    def phi(self) -> mpz:
        return self._phi

    def pow(self, base: int, exponent: int) -> mpz:
        return crt_pow(base, exponent, self._p, self._q, self._q_inv_p)

    def commit(self, x: int, y: int) -> mpz:
        return self.pow(self.s, x) * self.pow(self.t, y) % self.n

    def __repr__(self) -> str:
        return f"RingPedersenSecret(bits={self.bits}, fp={self.fingerprint()})"
