"""Safe-prime generation with a combined sieve.

CGGMP21 needs Paillier-Blum moduli N = p·q whose factors are safe primes (p = 2p'+1), so that
ring-Pedersen parameters live in a group with no small subgroups. Safe primes are rare (about
one odd number in 4·10^5 at 1536 bits is q with 2q+1 also prime), so almost all of the work is
rejecting candidates. The combined sieve rejects q whenever *either* q or 2q+1 has a factor
below the sieve bound — one pass over an interval marks both conditions — and only the few
survivors pay for a modular exponentiation. A safe prime is automatically ≡ 3 (mod 4), i.e.
a Blum prime.

The sieve has two stages over a window of ``WINDOW`` candidates q = q_w + 2·δ:

* odd primes r < ``WINDOW`` (each marks many δ) in pure Python, with strided slice stores;
* odd primes ``WINDOW`` < r < bound (each marks at most one δ per condition per window) in
  numpy. The bound grows with the size of the prime (:func:`sieve_bound`), up to
  ``DEEP_SIEVE_MAX``: the survivor fraction falls like 1/(ln bound)^2, and the survivors a search meets
  (and the price of each one's Fermat test) grow with the size, while the deep stage costs
  about the same at any size.

The deep stage needs q0 mod r for some 10^5..10^6 primes r. It reduces q0 once per group of
``_GROUP`` primes by the group's product (gmpy2), then finishes each group's residue mod its
primes by Horner over 32-bit limbs in uint64 (acc < r < 2^23, so acc·2^32 + limb < 2^55). That
is done once per random start; the next window's offsets follow by a vectorised add.

Search: from each random start q0 (odd, top two bits set) up to ``WINDOWS_PER_START``
consecutive windows are scanned, and the first safe prime q0 ≤ q < q0 + 2·WINDOW·16 (a span
of 2^20 in q) is taken; with none there, a fresh random start is drawn. This is the usual
incremental search (Brandt–Damgård): a safe prime is picked with probability proportional to
the gap before it, truncated at the span, which costs the output a few bits of entropy out of
~1530. The span is about the mean gap between safe primes at 1536 bits (~9·10^5 in q), so roughly
30% of the searches at that size need a second start (the deep stage's set-up, ~60 ms, is
paid again); the former search drew a fresh start for every window (a span of 2^16).

Primality: q gets a Fermat test to base 2 (cheap reject), then Miller–Rabin with random bases
plus BPSW; p = 2q+1 is then *proven* prime by Pocklington's criterion (q prime, q > √p,
2^(p-1) ≡ 1 mod p and gcd(2^2 - 1, p) = 1), so p needs a single exponentiation.
"""

from __future__ import annotations

import math
import secrets
import threading

import gmpy2
import numpy as np
from gmpy2 import mpz

WINDOW = 1 << 15  # candidates q = q0 + 2·δ for δ in [0, WINDOW)
DEEP_SIEVE_MAX = 1 << 23  # the largest bound :func:`sieve_bound` returns
WINDOWS_PER_START = 16  # consecutive windows scanned from one random start
MILLER_RABIN_ROUNDS = 32
_GROUP = 16  # deep primes per product reduced by gmpy2 (16 primes < 2^23: ≤ 368 bits)


def sieve_bound(bits: int) -> int:
    """The sieve bound for safe primes of ``bits`` bits, chosen by measurement on this design.

    Going deeper costs the deep stage per random start (gmpy2 + numpy: ~7 ms at 2^20, ~30 ms at
    2^22, ~60 ms at 2^23) plus ~1-2 ms per window, and saves Fermat tests: from 2^17 to 2^23
    about 45% of them, ~2500 × 0.93 ms on average at 1536 bits but ~1200 × 0.33 ms at 1024 bits,
    so the best bound grows with the size.
    """
    if bits >= 1400:
        return DEEP_SIEVE_MAX
    if bits >= 900:
        return 1 << 22
    if bits >= 600:
        return 1 << 20
    return 1 << 17


def _odd_primes_below(bound: int) -> list[int]:
    flags = bytearray([1]) * bound
    flags[0:2] = b"\x00\x00"
    for i in range(2, int(bound**0.5) + 1):
        if flags[i]:
            flags[i * i :: i] = bytes(len(range(i * i, bound, i)))
    return [i for i in range(3, bound) if flags[i]]


# For each small prime r < WINDOW: 2^-1 mod r and (r-1)/2, the residue of q that makes 2q+1 ≡ 0.
_SIEVE_TABLE = [(r, (r + 1) // 2, (r - 1) // 2) for r in _odd_primes_below(WINDOW)]


class _DeepTable:
    """Odd primes WINDOW < r < DEEP_SIEVE_MAX in groups of ``_GROUP``, with each group's product."""

    def __init__(self) -> None:
        flags = np.ones(DEEP_SIEVE_MAX, dtype=np.bool_)
        flags[:2] = False
        flags[4::2] = False
        for i in range(3, math.isqrt(DEEP_SIEVE_MAX) + 1, 2):
            if flags[i]:
                flags[i * i :: 2 * i] = False
        primes = np.flatnonzero(flags[WINDOW + 1 :]).astype(np.uint64) + np.uint64(WINDOW + 1)
        self.count = len(primes)
        groups = -(-self.count // _GROUP)
        # pad the last group with copies of the largest prime; their residues are dropped
        padded = np.concatenate([primes, np.full(groups * _GROUP - self.count, primes[-1], dtype=np.uint64)])
        self.grouped = padded.reshape(groups, _GROUP)
        self.products = [mpz(math.prod(row)) for row in self.grouped.tolist()]
        self.limbs = -(-max(m.bit_length() for m in self.products) // 32)
        r = primes.astype(np.int64)
        self.r = r
        self.inv2 = (r + 1) // 2  # 2^-1 mod r
        self.quarter = (r * r - 1) // 4 % r  # -4^-1 mod r

    def residues(self, q0: mpz, count: int) -> np.ndarray:
        """q0 mod r for the first ``count`` deep primes, as int64."""
        groups = -(-count // _GROUP)
        nbytes = 4 * self.limbs
        raw = b"".join([int(q0 % m).to_bytes(nbytes, "little") for m in self.products[:groups]])
        limbs = np.frombuffer(raw, dtype="<u4").reshape(groups, self.limbs)
        moduli = self.grouped[:groups]
        acc = np.zeros((groups, _GROUP), dtype=np.uint64)
        for j in range(self.limbs - 1, -1, -1):
            np.left_shift(acc, np.uint64(32), out=acc)
            np.bitwise_or(acc, limbs[:, j : j + 1], out=acc)
            np.remainder(acc, moduli, out=acc)
        return acc.reshape(-1)[:count].astype(np.int64)


_deep_table: _DeepTable | None = None
_deep_table_lock = threading.Lock()


def _get_deep_table() -> _DeepTable:
    global _deep_table
    with _deep_table_lock:
        if _deep_table is None:
            _deep_table = _DeepTable()
        return _deep_table


class _DeepSieve:
    """The numpy stage for odd primes WINDOW < r < bound, from one start q0 over consecutive windows.

    For each such r it keeps the next δ (relative to the current window) where r | q and where
    r | 2q+1. As r > WINDOW, each hits a window at most once; a hit moves on by r, and every
    offset moves back by WINDOW when the window advances.
    """

    def __init__(self, q0: mpz, bound: int) -> None:
        if bound > DEEP_SIEVE_MAX:
            raise ValueError(f"the deep sieve's table stops at {DEEP_SIEVE_MAX}")
        table = _get_deep_table()
        count = int(np.searchsorted(table.r, bound))
        r = table.r[:count]
        res = table.residues(q0, count)
        # q0 + 2δ ≡ 0 (mod r)             ⇔  δ ≡ -q0 · 2^-1
        n1 = (r - res) * table.inv2[:count] % r
        # 2(q0 + 2δ) + 1 ≡ 0 (mod r)      ⇔  δ ≡ -q0 · 2^-1 - 4^-1
        n2 = n1 + table.quarter[:count]
        n2 -= r * (n2 >= r)
        self.next = np.concatenate([n1, n2]).astype(np.int32)
        self.step = np.concatenate([r, r]).astype(np.int32)

    def mark(self, marks: np.ndarray) -> None:
        """Mark this window's δ in ``marks`` (uint8, length WINDOW), then move to the next window."""
        hit = self.next < WINDOW
        marks[self.next[hit]] = 1
        np.add(self.next, self.step, out=self.next, where=hit)
        self.next -= WINDOW


def _sieve_small(q0: mpz) -> bytearray:
    """Mark δ where q0 + 2δ or 2(q0 + 2δ) + 1 has an odd factor below WINDOW."""
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


def _sieve_window(q0: mpz, bound: int) -> bytearray:
    """Mark δ where q0 + 2δ or 2(q0 + 2δ) + 1 has an odd factor below max(``bound``, WINDOW)."""
    marks = _sieve_small(q0)
    if bound > WINDOW:
        _DeepSieve(q0, bound).mark(np.frombuffer(marks, dtype=np.uint8))
    return marks


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


def random_safe_prime(bits: int) -> int:
    """A random safe prime p = 2q+1 of exactly ``bits`` bits with its top two bits set.

    Setting the top two bits makes the product of two such primes exactly 2·bits long. The
    search (and so the distribution) is an incremental one from random starts: see the module
    docstring.
    """
    if bits < 64:
        raise ValueError("safe primes below 64 bits are not supported")
    qbits = bits - 1
    top = mpz(3) << (qbits - 2)
    limit = mpz(1) << qbits
    bound = sieve_bound(bits)
    while True:
        q0 = mpz(secrets.randbits(qbits - 2)) | top | 1
        deep = _DeepSieve(q0, bound) if bound > WINDOW else None
        for w in range(WINDOWS_PER_START):
            qw = q0 + 2 * WINDOW * w
            if qw >= limit:
                break  # ran past qbits bits: a fresh start
            marks = _sieve_small(qw)
            flags = np.frombuffer(marks, dtype=np.uint8)
            if deep is not None:
                deep.mark(flags)
            for delta in np.flatnonzero(flags == 0).tolist():
                q = qw + 2 * delta
                if q >= limit:
                    break
                if gmpy2.powmod(2, q - 1, q) == 1:
                    p = 2 * q + 1
                    if gmpy2.powmod(2, p - 1, p) == 1 and is_probable_prime(q):
                        # Pocklington: q prime, q > sqrt(p), 2^(p-1) = 1, gcd(2^2-1, p) = 1.
                        if gmpy2.gcd(3, p) == 1:
                            return int(p)


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
