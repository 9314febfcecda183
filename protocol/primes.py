"""Safe-prime generation with a combined sieve.

CGGMP21 needs Paillier-Blum moduli N = p·q whose factors are safe primes (p = 2p'+1), so that
ring-Pedersen parameters live in a group with no small subgroups. Safe primes are rare (about
one odd number in 10^5 at 1536 bits is q with 2q+1 also prime), so almost all of the work is
rejecting candidates. The combined sieve rejects q whenever *either* q or 2q+1 has a factor
below ``SIEVE_BOUND`` — one pass over an interval marks both conditions — and only the few
survivors pay for a modular exponentiation. A safe prime is automatically ≡ 3 (mod 4), i.e.
a Blum prime.

Primality: q gets a Fermat test to base 2 (cheap reject), then Miller–Rabin with random bases
plus BPSW; p = 2q+1 is then *proven* prime by Pocklington's criterion (q prime, q > √p,
2^(p-1) ≡ 1 mod p and gcd(2^2 - 1, p) = 1), so p needs a single exponentiation.
"""

from __future__ import annotations

import secrets

import gmpy2
from gmpy2 import mpz

SIEVE_BOUND = 1 << 17
WINDOW = 1 << 15  # candidates q = q0 + 2·δ for δ in [0, WINDOW)
MILLER_RABIN_ROUNDS = 32


def _odd_primes_below(bound: int) -> list[int]:
    flags = bytearray([1]) * bound
    flags[0:2] = b"\x00\x00"
    for i in range(2, int(bound**0.5) + 1):
        if flags[i]:
            flags[i * i :: i] = bytes(len(range(i * i, bound, i)))
    return [i for i in range(3, bound) if flags[i]]


_SMALL_PRIMES = _odd_primes_below(SIEVE_BOUND)
# For each small prime r: 2^-1 mod r and (r-1)/2, the residue of q that makes 2q+1 ≡ 0.
_SIEVE_TABLE = [(r, (r + 1) // 2, (r - 1) // 2) for r in _SMALL_PRIMES]


def is_probable_prime(n: int) -> bool:
    """Miller–Rabin (random bases) and BPSW: for numbers we did not choose ourselves too."""
    n = mpz(n)
    if n < 2:
        return False
    if not gmpy2.is_bpsw_prp(n):
        return False
    for _ in range(MILLER_RABIN_ROUNDS):
        base = mpz(secrets.randbelow(int(n) - 3) + 2) if n > 4 else mpz(2)
        if not gmpy2.is_strong_prp(n, base):
            return False
    return True


def _sieve_window(q0: mpz) -> bytearray:
    """Mark δ where q0 + 2δ or 2(q0 + 2δ) + 1 has a small factor."""
    marks = bytearray(WINDOW)
    for r, inv2, half in _SIEVE_TABLE:
        qr = int(q0 % r)
        # q0 + 2δ ≡ 0 (mod r)          ⇔  δ ≡ -qr · 2^-1
        d = (-qr * inv2) % r
        marks[d::r] = b"\x01" * len(range(d, WINDOW, r))
        # 2(q0 + 2δ) + 1 ≡ 0 (mod r)   ⇔  q0 + 2δ ≡ (r-1)/2  ⇔  δ ≡ ((r-1)/2 - qr) · 2^-1
        d = ((half - qr) * inv2) % r
        marks[d::r] = b"\x01" * len(range(d, WINDOW, r))
    return marks


def random_safe_prime(bits: int) -> int:
    """A uniformly placed safe prime p = 2q+1 of exactly ``bits`` bits with its top two bits set.

    Setting the top two bits makes the product of two such primes exactly 2·bits long.
    """
    if bits < 64:
        raise ValueError("safe primes below 64 bits are not supported")
    qbits = bits - 1
    top = mpz(3) << (qbits - 2)
    while True:
        q0 = mpz(secrets.randbits(qbits - 2)) | top | 1
        marks = _sieve_window(q0)
        delta = marks.find(0)
        while delta != -1:
            q = q0 + 2 * delta
            if q.bit_length() == qbits and gmpy2.powmod(2, q - 1, q) == 1:
                p = 2 * q + 1
                if gmpy2.powmod(2, p - 1, p) == 1 and is_probable_prime(q):
                    # Pocklington: q prime, q > sqrt(p), 2^(p-1) = 1, gcd(2^2-1, p) = 1.
                    if gmpy2.gcd(3, p) == 1:
                        return int(p)
            delta = marks.find(0, delta + 1)


def naive_safe_prime(bits: int) -> int:
    """The textbook loop (next prime until (p-1)/2 is prime too): kept as the benchmark baseline."""
    top = mpz(3) << (bits - 2)
    while True:
        p = gmpy2.next_prime(mpz(secrets.randbits(bits - 2)) | top)
        while p.bit_length() == bits:
            if p % 4 == 3 and gmpy2.is_prime((p - 1) // 2, 25):
                return int(p)
            p = gmpy2.next_prime(p)


def is_safe_prime(p: int) -> bool:
    return p > 7 and p % 4 == 3 and is_probable_prime((p - 1) // 2) and is_probable_prime(p)
