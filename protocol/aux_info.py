"""Auxiliary information: each party's Paillier key and ring-Pedersen parameters, proven
well formed (CGGMP21 Fig. 6, the aux-info part; the share refresh of the same figure lives in
``refresh``).

Round 1  party i generates N_i = p_i·q_i from two safe primes, ring-Pedersen (N_i, s_i, t_i)
         with trapdoor λ_i, proves s_i ∈ ⟨t_i⟩ with Π^prm, samples ρ_i and a salt u_i, and
         broadcasts V_i = H(ssid, i, N_i, s_i, t_i, Π^prm, ρ_i, u_i).
Round 2  broadcast the decommitment. Everyone checks it against V_j, the size of N_j, that
         s_j, t_j are valid (in Z*_N, t ≠ ±1), verifies Π^prm, and that no two parties use the
         same modulus.
Round 3  ρ = ⊕ ρ_j. Broadcast Π^mod for N_i; send each peer j a Π^fac proof for N_i made
         against j's own ring-Pedersen parameters. Everyone verifies Π^mod of every N_j and
         the Π^fac proofs addressed to it (a failed Π^fac becomes a complaint with evidence).
Output   ``AuxInfo``: this party's Paillier and ring-Pedersen secrets, everyone's public
         parameters. Reusable for every key of the same committee.

BitForge (CVE-2023-33241) lived exactly here: implementations that skipped Π^fac or Π^mod
accepted moduli with small factors. A party whose modulus fails is named and nothing of the
session is kept.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gmpy2 import mpz

from .encoding import Decoder, Encoder
from .errors import InvalidInput
from .identity import PartyIdentity
from .levels import SecurityLevel, level_by_name
from .machine import Blame, RoundMachine, bind_session
from .paillier import PaillierPublicKey, PaillierSecretKey
from .primes import random_safe_prime
from .ring_pedersen import RingPedersenParams, RingPedersenSecret
from .zk import fac, mod, prm
from .zk.common import ProofContext


@dataclass(frozen=True, repr=False)
class PartyAux:
    """The public auxiliary parameters of one party."""

    paillier: PaillierPublicKey
    ring_pedersen: RingPedersenParams


@dataclass(frozen=True, repr=False)
class AuxInfo:
    level: str
    index: int
    parties: tuple[int, ...]
    paillier_secret: PaillierSecretKey
    ring_pedersen_secret: RingPedersenSecret
    public: Mapping[int, PartyAux]

    @property
    def aux_digest(self) -> bytes:
        """SHA-256 of an injective encoding of the level, the parties and every party's full
        public parameters (N_j, s_j, t_j). This is what a presign session binds, so two parties
        agree on a presign transcript only if they hold the same moduli and ring-Pedersen
        parameters, every bit of them (it used to go through a 64-bit fingerprint of (s, t))."""
        enc = Encoder().bytes(b"fusion-prime/aux-id/v2").bytes(self.level.encode()).uints(self.parties)
        for p in self.parties:
            pa = self.public[p]
            enc.uints((pa.paillier.n, pa.ring_pedersen.n, pa.ring_pedersen.s, pa.ring_pedersen.t))
        return hashlib.sha256(enc.finish()).digest()

    @property
    def aux_id(self) -> str:
        """The storage name of this aux info: ``aux_digest`` in hex, cut to 32 characters (the
        length node storage and proposals have always carried). A name, not a commitment:
        sessions bind the full ``aux_digest``."""
        return self.aux_digest.hex()[:32]

    def to_bytes(self) -> bytes:
        ps, rs = self.paillier_secret, self.ring_pedersen_secret
        enc = Encoder().bytes(self.level.encode()).uint(self.index).uints(self.parties)
        enc.uints((ps.p, ps.q, rs.lam, rs.t))
        for p in self.parties:
            pa = self.public[p]
            enc.uints((pa.paillier.n, pa.ring_pedersen.s, pa.ring_pedersen.t))
        return enc.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> AuxInfo:
        dec = Decoder(data, "aux info")
        level = level_by_name(dec.bytes().decode())
        index = dec.uint(32)
        parties = tuple(dec.uints(max_bits=32))
        p, q, lam, t = dec.uints(4, 2 * level.paillier_bits)
        public = {}
        for party in parties:
            n, s, t_j = dec.uints(3, 2 * level.paillier_bits)
            public[party] = PartyAux(PaillierPublicKey(n), RingPedersenParams(n, s, t_j))
        dec.finish()
        secret = PaillierSecretKey(p, q)
        rp = RingPedersenSecret(p, q, lam, t)
        if index not in public or public[index].paillier.n != secret.n or public[index].ring_pedersen != rp:
            raise InvalidInput("aux info secrets do not match this party's public parameters")
        return cls(level.name, index, parties, secret, rp, public)

    def __repr__(self) -> str:
        return f"AuxInfo(aux_id={self.aux_id}, index={self.index}, parties={list(self.parties)}, level={self.level})"


def generate_paillier(level: SecurityLevel, primes: tuple[int, int] | None = None) -> PaillierSecretKey:
    """A fresh Paillier-Blum key; ``primes`` lets the node supply safe primes from its pool."""
    if primes is None:
        primes = (random_safe_prime(level.prime_bits), random_safe_prime(level.prime_bits))
    key = PaillierSecretKey(*primes)
    if key.bits < level.paillier_bits:
        raise InvalidInput("supplied primes give a modulus below the level's size")
    return key


class AuxInfoMachine(RoundMachine):
    phase = "aux-info"
    rounds = 3

    def __init__(
        self,
        session_id: bytes,
        me: int,
        parties: Sequence[int],
        identity: PartyIdentity,
        roster: Mapping[int, bytes],
        *,
        level: SecurityLevel,
        primes: tuple[int, int] | None = None,
        binding: bytes = b"",
    ) -> None:
        super().__init__(session_id, me, parties, identity, roster)
        if len(self.parties) < 2:
            raise InvalidInput("aux info needs at least two parties")
        self.level = level
        self.ssid = bind_session(
            session_id, self.phase, Encoder().uints(self.parties).bytes(level.name.encode()).bytes(binding)
        )
        self._primes = primes
        self._paillier: PaillierSecretKey | None = None
        self._rp: RingPedersenSecret | None = None
        self._rho = secrets.token_bytes(32)
        self._salt = secrets.token_bytes(32)
        self._commitments: dict[int, bytes] = {}
        self._rhos: dict[int, bytes] = {}
        self._public: dict[int, PartyAux] = {}
        self._joint_rho = b""
        self._decommit_payload = b""

    # extension points: key refresh adds its zero-sharing to the same three rounds --------------
    def _extra_decommitment(self) -> bytes:
        return b""

    def _take_extra_decommitment(self, sender: int, data: bytes) -> None:
        if data:
            raise Blame(sender, "unexpected data in the decommitment")

    def _extra_private(self, receiver: int) -> bytes:
        return b""

    def _take_extra_private(self, sender: int, receiver: int, data: bytes, *, store: bool) -> None:
        if data:
            raise Blame(sender, "unexpected data in the private message")

    def _round_broadcasts(self, r: int) -> bool:
        return True

    def _round_private(self, r: int) -> bool:
        return r == 3

    def _ctx(self, prover: int, *, joint: bool) -> ProofContext:
        sid = hashlib.sha256(self.ssid + (self._joint_rho if joint else b"")).digest()
        return ProofContext(sid, prover)

    def _commit(self, i: int, n: int, s: int, t: int, prm_bytes: bytes, rho: bytes, salt: bytes, extra: bytes) -> bytes:
        enc = Encoder().bytes(self.ssid).uint(i).uints((n, s, t)).bytes(prm_bytes).bytes(rho).bytes(salt).bytes(extra)
        return hashlib.sha256(b"fusion-prime/aux-commit" + enc.finish()).digest()

    def _decommitment(self) -> tuple[bytes, bytes]:
        assert self._rp is not None
        prm_bytes = prm.prove(self._ctx(self.me, joint=False), self.level, self._rp).to_bytes()
        rp = self._rp
        extra = self._extra_decommitment()
        payload = (
            Encoder().uints((rp.n, rp.s, rp.t)).bytes(prm_bytes).bytes(self._rho).bytes(self._salt).bytes(extra)
            .finish()
        )
        return payload, self._commit(self.me, rp.n, rp.s, rp.t, prm_bytes, self._rho, self._salt, extra)

    def _make_round(self, r: int) -> tuple[bytes | None, dict[int, bytes]]:
        if r == 1:
            self._paillier = generate_paillier(self.level, self._primes)
            self._primes = None
            self._rp = RingPedersenSecret.from_paillier(self._paillier)
            self._public[self.me] = PartyAux(self._paillier.public_key(), self._rp.public())
            self._decommit_payload, commitment = self._decommitment()
            self._rhos[self.me] = self._rho
            return Encoder().bytes(commitment).finish(), {}
        if r == 2:
            return self._decommit_payload, {}
        assert self._paillier is not None
        mod_proof = mod.prove(self._ctx(self.me, joint=True), self.level, self._paillier)
        private = {
            j: Encoder().bytes(fac.prove(self._ctx(self.me, joint=True), self.level, self._paillier,
                                         self._public[j].ring_pedersen).to_bytes())
            .bytes(self._extra_private(j)).finish()
            for j in self.peers
        }
        return mod_proof.to_bytes(), private

    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        if r == 1:
            dec = Decoder(payload, "aux-info round 1")
            self._commitments[sender] = dec.bytes(32)
            dec.finish()
            return
        if r == 2:
            dec = Decoder(payload, "aux-info round 2")
            n, s, t = dec.uints(3, 2 * self.level.paillier_bits)
            prm_bytes, rho, salt, extra = dec.bytes(), dec.bytes(32), dec.bytes(32), dec.bytes()
            dec.finish()
            if self._commit(sender, n, s, t, prm_bytes, rho, salt, extra) != self._commitments[sender]:
                raise Blame(sender, "decommitment does not match its round 1 commitment")
            if mpz(n).bit_length() < self.level.paillier_bits:
                raise Blame(sender, f"Paillier modulus has fewer than {self.level.paillier_bits} bits")
            params = RingPedersenParams(n, s, t)  # raises InvalidInput for s, t ∉ Z*_N or t = ±1
            prm_proof = prm.PrmProof.from_bytes(prm_bytes, self.level)
            prm.verify(self._ctx(sender, joint=False), self.level, params, prm_proof)
            if any(other.paillier.n == n for other in self._public.values()):
                raise Blame(sender, "reuses another party's modulus")
            self._public[sender] = PartyAux(PaillierPublicKey(n), params)
            self._rhos[sender] = rho
            self._take_extra_decommitment(sender, extra)
            return
        proof = mod.ModProof.from_bytes(payload, self.level)
        mod.verify(self._ctx(sender, joint=True), self.level, self._public[sender].paillier.n, proof)

    def _take_private(self, r: int, sender: int, payload: bytes) -> None:
        assert self._rp is not None
        self._verify_private(sender, self.me, payload, self._rp, store=True)

    def _check_private(self, r: int, sender: int, receiver: int, payload: bytes) -> None:
        self._verify_private(sender, receiver, payload, self._public[receiver].ring_pedersen, store=False)

    def _verify_private(
        self, sender: int, receiver: int, payload: bytes, aux: RingPedersenParams, *, store: bool
    ) -> None:
        dec = Decoder(payload, "aux-info round 3 private")
        proof = fac.FacProof.from_bytes(dec.bytes(), self.level)
        extra = dec.bytes()
        dec.finish()
        fac.verify(self._ctx(sender, joint=True), self.level, self._public[sender].paillier.n, aux, proof)
        self._take_extra_private(sender, receiver, extra, store=store)

    def _end_round(self, r: int) -> None:
        if r == 2:
            rho = bytearray(32)
            for p in self.parties:
                rho = bytearray(a ^ b for a, b in zip(rho, self._rhos[p], strict=True))
            self._joint_rho = bytes(rho)

    def _result(self) -> AuxInfo:
        assert self._paillier is not None and self._rp is not None
        return AuxInfo(self.level.name, self.me, tuple(self.parties), self._paillier, self._rp, dict(self._public))
