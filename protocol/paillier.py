"""Paillier encryption (Paillier 1999) with the generator g = 1 + N, as CGGMP21 uses it.

``enc(m; ρ) = (1 + N)^m · ρ^N mod N²``. Plaintexts are integers in (-N/2, N/2) — the protocols
encrypt signed values and decrypt them back as signed integers, which is what makes the MtA
range arguments work. Ciphertexts received from anyone are checked to lie in Z*_{N²}.

``PaillierSecretKey`` extends ``PaillierPublicKey``: everything a public key does, a secret key
does faster, with the Chinese remainder theorem over p² and q² (about 3–4× faster for ρ^N,
the dominant cost). Code that holds the secret key simply passes it where a public key is
expected. The secret key's ``repr`` shows only the public modulus' fingerprint.
"""

from __future__ import annotations

import hashlib
import secrets
from math import gcd

import gmpy2
from gmpy2 import mpz

from .errors import InsecureParameters, InvalidInput
from .primes import is_probable_prime, random_safe_prime


def sample_unit(n: int) -> mpz:
    """Uniform element of Z*_n (rejection sampling from the OS generator)."""
    bits = int(n).bit_length()
    while True:
        r = mpz(secrets.randbits(bits))
        if 0 < r < n and gmpy2.gcd(r, n) == 1:
            return r


def crt_pow(base: int, exponent: int, p: mpz, q: mpz, q_inv_p: mpz) -> mpz:
    """base^exponent mod p·q by the Chinese remainder theorem, for whoever knows the factors.

    For units, exponents reduce mod p-1 and q-1 (Fermat), negative ones included, so each half
    costs an exponentiation of half the size; non-units fall back to the plain computation."""
    base, n = mpz(base), p * q
    if gmpy2.gcd(base, n) != 1:
        return gmpy2.powmod(base, exponent, n)
    ap = gmpy2.powmod(base, mpz(exponent) % (p - 1), p)
    aq = gmpy2.powmod(base, mpz(exponent) % (q - 1), q)
    return aq + q * ((ap - aq) * q_inv_p % p)


class PaillierPublicKey:
    __slots__ = ("half_n", "n", "n2")

    def __init__(self, n: int) -> None:
        n = mpz(n)
        if n < 3 or n % 2 == 0:
            raise InvalidInput("Paillier modulus must be an odd integer > 2")
        self.n = n
        self.n2 = n * n
        self.half_n = n // 2

    @property
    def bits(self) -> int:
        return int(self.n.bit_length())

    def fingerprint(self) -> str:
        return hashlib.sha256(int(self.n).to_bytes((self.bits + 7) // 8, "big")).hexdigest()[:16]

    def public_key(self) -> PaillierPublicKey:
        return PaillierPublicKey(self.n) if type(self) is not PaillierPublicKey else self

    # arithmetic, overridden with CRT by the secret key ------------------------------------
    def pow_n2(self, base: int, exponent: int) -> mpz:
        """base^exponent mod N² (negative exponents invert)."""
        return gmpy2.powmod(base, exponent, self.n2)

    def pow_n(self, base: int, exponent: int) -> mpz:
        return gmpy2.powmod(base, exponent, self.n)

    def rho_to_n(self, rho: int) -> mpz:
        """ρ^N mod N², the randomiser of an encryption."""
        return self.pow_n2(rho, self.n)

    # encryption ---------------------------------------------------------------------------
    def check_plaintext(self, m: int) -> None:
        if not -self.half_n <= m <= self.half_n:
            raise InvalidInput("Paillier plaintext out of range")

    def encrypt_with(self, m: int, rho: int) -> mpz:
        """enc(m; ρ) for a signed m with |m| ≤ N/2 and ρ ∈ Z*_N."""
        self.check_plaintext(m)
        gm = (1 + mpz(m) % self.n * self.n) % self.n2  # (1+N)^m = 1 + m·N mod N²
        return gm * self.rho_to_n(rho) % self.n2

    def encrypt(self, m: int) -> tuple[mpz, mpz]:
        """Returns (ciphertext, ρ); the caller keeps ρ only if a proof needs it."""
        rho = sample_unit(self.n)
        return self.encrypt_with(m, rho), rho

    def validate_ciphertext(self, c: int) -> mpz:
        """Reject anything outside Z*_{N²} (zero, multiples of a factor, ≥ N²)."""
        c = mpz(c)
        if not 0 < c < self.n2 or gmpy2.gcd(c, self.n) != 1:
            raise InvalidInput("ciphertext is not in Z*_{N^2}")
        return c

    def add(self, c1: int, c2: int) -> mpz:
        """enc(m1 + m2) from enc(m1), enc(m2)."""
        return mpz(c1) * c2 % self.n2

    def mul(self, c: int, k: int) -> mpz:
        """enc(k·m) from enc(m), for a signed integer k."""
        return self.pow_n2(c, k)

    def to_bytes(self) -> bytes:
        return int(self.n).to_bytes((self.bits + 7) // 8, "big")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PaillierPublicKey) and self.n == other.n

    def __hash__(self) -> int:
        return hash(int(self.n))

    def __repr__(self) -> str:
        return f"PaillierPublicKey(bits={self.bits}, fp={self.fingerprint()})"


class PaillierSecretKey(PaillierPublicKey):
    """The factors p, q of N; decryption and CRT-accelerated arithmetic."""

    __slots__ = ("_hp", "_hq", "_p", "_p2", "_phi", "_phi_p2", "_phi_q2", "_q", "_q2", "_q2_inv_p2", "_q_inv_p")

    def __init__(self, p: int, q: int) -> None:
        p, q = mpz(p), mpz(q)
        if p == q:
            raise InvalidInput("Paillier primes must be distinct")
        super().__init__(p * q)
        self._p, self._q = p, q
        self._p2, self._q2 = p * p, q * q
        self._phi = (p - 1) * (q - 1)
        self._phi_p2 = p * (p - 1)  # φ(p²)
        self._phi_q2 = q * (q - 1)
        self._q2_inv_p2 = gmpy2.invert(self._q2, self._p2)
        self._q_inv_p = gmpy2.invert(q, p)
        # CRT decryption constants: with g = 1+N, L_p(g^(p-1) mod p²) = (p-1)·q ≡ -q (mod p).
        self._hp = gmpy2.invert(-q % p, p)
        self._hq = gmpy2.invert(-p % q, q)

    @classmethod
    def generate(cls, bits: int, primes: tuple[int, int] | None = None) -> PaillierSecretKey:
        """A Paillier-Blum key from two safe primes of bits/2 bits (fresh unless given)."""
        if primes is None:
            primes = (random_safe_prime(bits // 2), random_safe_prime(bits // 2))
        key = cls(*primes)
        if key.bits != bits:
            raise InsecureParameters(f"modulus has {key.bits} bits, expected {bits}")
        return key

    @property
    def p(self) -> mpz:
        return self._p

    @property
    def q(self) -> mpz:
        return self._q

    @property
    def phi(self) -> mpz:
        return self._phi

    def public_key(self) -> PaillierPublicKey:
        return PaillierPublicKey(self.n)

    def _crt_n2(self, a_p2: mpz, a_q2: mpz) -> mpz:
        # Garner: x = a_q2 + q²·((a_p2 - a_q2)·(q²)^-1 mod p²)
        return a_q2 + self._q2 * ((a_p2 - a_q2) * self._q2_inv_p2 % self._p2)

    def pow_n2(self, base: int, exponent: int) -> mpz:
        base = mpz(base)
        if gmpy2.gcd(base, self.n) != 1:
            return gmpy2.powmod(base, exponent, self.n2)
        # Units only: exponents reduce mod φ(p²) and φ(q²) (Euler), negative ones included.
        ap = gmpy2.powmod(base, mpz(exponent) % self._phi_p2, self._p2)
        aq = gmpy2.powmod(base, mpz(exponent) % self._phi_q2, self._q2)
        return self._crt_n2(ap, aq)

    def pow_n(self, base: int, exponent: int) -> mpz:
        return crt_pow(base, exponent, self._p, self._q, self._q_inv_p)

    def rho_to_n(self, rho: int) -> mpz:
        return self.pow_n2(rho, self.n)

    def decrypt(self, c: int) -> int:
        """The signed plaintext in (-N/2, N/2] of a ciphertext in Z*_{N²}."""
        c = self.validate_ciphertext(c)
        # Paillier's CRT decryption: m_p = L_p(c^(p-1) mod p²)·h_p mod p, L_p(u) = (u-1)/p.
        p, q = self._p, self._q
        mp = (gmpy2.powmod(c, p - 1, self._p2) - 1) // p * self._hp % p
        mq = (gmpy2.powmod(c, q - 1, self._q2) - 1) // q * self._hq % q
        m = mq + q * ((mp - mq) * self._q_inv_p % p)
        return int(m - self.n if m > self.half_n else m)

    def recover_randomness(self, c: int) -> mpz:
        """ρ with c = enc(m; ρ): needed by the identification proofs (Π^dec)."""
        c = self.validate_ciphertext(c)
        m = self.decrypt(c)
        rho_n = c * gmpy2.invert((1 + mpz(m) % self.n * self.n) % self.n2, self.n2) % self.n2
        return self.pow_n(rho_n % self.n, gmpy2.invert(self.n, self._phi))

    def check_factors(self) -> None:
        """Refuse to hold a key that is not a product of two distinct safe (Blum) primes."""
        for f in (self._p, self._q):
            if f % 4 != 3 or not is_probable_prime(f) or not is_probable_prime((f - 1) // 2):
                raise InsecureParameters("Paillier factor is not a safe prime")
        if gcd(int(self.n), int(self._phi)) != 1:
            raise InsecureParameters("gcd(N, φ(N)) != 1")

    def __repr__(self) -> str:
        return f"PaillierSecretKey(bits={self.bits}, fp={self.fingerprint()})"
