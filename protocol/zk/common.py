"""What every proof module shares: the proof context, sampling, range checks, encoding.

Each proof's challenge is derived from a transcript that starts with ``ProofContext``: the
proof's name, the session id, the prover's index and the security level — so a proof made
for one session, one prover or one proof type is worthless anywhere else — followed by every
public parameter and statement element, then the prover's first message.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from ..curve import Point
from ..encoding import Decoder, Encoder
from ..errors import InvalidInput, InvalidProof
from ..levels import SecurityLevel
from ..paillier import PaillierPublicKey
from ..ring_pedersen import RingPedersenParams
from ..transcript import Transcript

PROTOCOL = "fusion-prime/cggmp21/v1"


@dataclass(frozen=True)
class ProofContext:
    """Who proves what, where: bound into every challenge."""

    session_id: bytes
    prover: int

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, bytes) or not 16 <= len(self.session_id) <= 128:
            raise InvalidInput("session id must be 16 to 128 bytes")
        if not isinstance(self.prover, int) or self.prover <= 0:
            raise InvalidInput("prover index must be a positive integer")

    def transcript(self, proof_name: str, level: SecurityLevel) -> Transcript:
        tr = Transcript(f"{PROTOCOL}/{proof_name}")
        tr.append_bytes("session-id", self.session_id)
        tr.append_int("prover", self.prover)
        bind_level(tr, level)
        return tr


def bind_level(tr: Transcript, level: SecurityLevel) -> None:
    tr.append_bytes("level", level.name.encode())
    tr.append_ints(
        "level-params",
        (level.paillier_bits, level.ell, level.ell_prime, level.epsilon, level.challenge_bits, level.m),
    )


def bind_paillier(tr: Transcript, label: str, key: PaillierPublicKey) -> None:
    tr.append_int(label, key.n)


def bind_ring_pedersen(tr: Transcript, label: str, rp: RingPedersenParams) -> None:
    tr.append_ints(label, (rp.n, rp.s, rp.t))


# sampling -------------------------------------------------------------------------------------
def sample_pm(bound: int) -> mpz:
    """Uniform integer in [-bound, bound] from the OS generator."""
    return mpz(secrets.randbelow(2 * int(bound) + 1)) - bound


def sample_pm_bits(bits: int) -> mpz:
    return sample_pm(mpz(1) << bits)


def in_pm(x: int, bound: int) -> bool:
    return -bound <= x <= bound


# checks ---------------------------------------------------------------------------------------
class Checker:
    """Collects the name of the proof so every failure says which proof and which check."""

    def __init__(self, proof_name: str) -> None:
        self.proof_name = proof_name

    def fail(self, reason: str) -> InvalidProof:
        return InvalidProof(self.proof_name, reason)

    def require(self, condition: bool, reason: str) -> None:
        if not condition:
            raise self.fail(reason)

    def unit(self, value: int, modulus: int, what: str) -> None:
        self.require(0 < value < modulus and gmpy2.gcd(value, modulus) == 1, f"{what} not in Z*_N")

    def ciphertext(self, key: PaillierPublicKey, value: int, what: str) -> None:
        self.require(
            0 < value < key.n2 and gmpy2.gcd(value, key.n) == 1, f"{what} is not a ciphertext in Z*_{{N^2}}"
        )

    def point(self, value: Point, what: str) -> None:
        self.require(isinstance(value, Point) and not value.is_identity, f"{what} is the identity")

    def in_range(self, value: int, bound: int, what: str) -> None:
        self.require(in_pm(value, bound), f"{what} out of range")


def paillier_raw(key: PaillierPublicKey, m: int, rho: int) -> mpz:
    """(1+N)^m·ρ^N mod N² for any integer m — the proofs' equations, not an encryption API.

    (1+N)^m = 1 + m·N (mod N²) holds for every integer m, negative ones included.
    """
    return (1 + mpz(m) % key.n * key.n) * key.rho_to_n(rho) % key.n2


# encoding helpers -----------------------------------------------------------------------------
def encode_point(enc: Encoder, point: Point) -> None:
    enc.bytes(point.to_bytes())


def decode_point(dec: Decoder) -> Point:
    return Point.from_bytes(dec.bytes(33))
