"""Threshold key generation (CGGMP21 Fig. 5, with Feldman VSS for t-of-n as in §1.2.7/cggmp21).

Round 1  each party i samples a degree t-1 polynomial f_i, rid_i, a chain-code share c_i, a
         Schnorr nonce τ_i (A_i = τ_i·G) and a salt u_i, and broadcasts the commitment
         V_i = H(ssid, i, rid_i, F_i, A_i, c_i, u_i) where F_i are the coefficient commitments.
Round 2  broadcast the decommitment; send each peer j its share f_i(j) privately. Everyone
         checks decommitments against V_j and shares against F_j (a bad share is a complaint
         with the sender's signed message as evidence — see ``machine``).
Round 3  rid = ⊕ rid_j; x_i = Σ_j f_j(i); X_k = Σ_j F_j(k) for every k; each party proves
         knowledge of x_i with Π^sch (commitment A_i from round 1, challenge bound to rid).
Output   ``KeyShare``: x_i, every X_k, the group key X = Σ_j F_j(0), the group chain code
         H(c_1, ..., c_n) and rid. The private key Σ_j f_j(0) is never assembled anywhere.

The commit-reveal of round 1 is what stops a rushing party from choosing its polynomial
after seeing the others' (which would let it bias or fix the group key).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .curve import Point, Q, random_scalar, scalar_from_bytes, scalar_to_bytes
from .encoding import Decoder, Encoder
from .errors import InvalidInput
from .identity import PartyIdentity
from .levels import SecurityLevel, level_by_name
from .machine import Blame, RoundMachine, bind_session
from .vss import Polynomial, check_indices, evaluate_commitments, verify_share
from .zk import sch
from .zk.common import ProofContext


def key_id_of(group_key: Point, chain_code: bytes) -> str:
    """A stable public name of a key: the hash of the group key and chain code. It survives
    refresh and resharing, which change neither."""
    return hashlib.sha256(group_key.to_bytes() + chain_code).hexdigest()[:32]


@dataclass(frozen=True, repr=False)
class KeyShare:
    """One party's share of a t-of-n key and the public data everyone agrees on."""

    level: str
    index: int
    threshold: int
    parties: tuple[int, ...]
    secret_share: int
    public_shares: Mapping[int, Point]
    group_key: Point
    chain_code: bytes
    rid: bytes
    epoch: int = 0  # bumped by every refresh: presignatures of older epochs are refused

    @property
    def key_id(self) -> str:
        return key_id_of(self.group_key, self.chain_code)

    def to_bytes(self) -> bytes:
        enc = Encoder().bytes(self.level.encode()).uint(self.index).uint(self.threshold).uints(self.parties)
        enc.bytes(scalar_to_bytes(self.secret_share))
        enc.list_of_bytes(self.public_shares[p].to_bytes() for p in self.parties)
        enc.bytes(self.group_key.to_bytes()).bytes(self.chain_code).bytes(self.rid).uint(self.epoch)
        return enc.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyShare:
        dec = Decoder(data, "key share")
        level = dec.bytes().decode()
        index, threshold = dec.uint(32), dec.uint(32)
        parties = tuple(dec.uints(max_bits=32))
        secret = scalar_from_bytes(dec.bytes(32))
        shares = [Point.from_bytes(b) for b in dec.list_of_bytes(len(parties), 33)]
        group_key = Point.from_bytes(dec.bytes(33))
        chain_code, rid, epoch = dec.bytes(32), dec.bytes(32), dec.uint(32)
        dec.finish()
        level_by_name(level)
        share = cls(level, index, threshold, parties, secret, dict(zip(parties, shares, strict=True)), group_key,
                    chain_code, rid, epoch)
        share.check()
        return share

    def check(self) -> None:
        """Internal consistency: the secret matches the public share, public shares interpolate
        to the group key (any t of them)."""
        check_indices(self.parties)
        if not 1 <= self.threshold <= len(self.parties) or self.index not in self.parties:
            raise InvalidInput("key share has an inconsistent threshold or index")
        if Point.base_mul(self.secret_share) != self.public_shares[self.index]:
            raise InvalidInput("key share does not match its public share")
        from .vss import interpolate_points

        subset = self.parties[: self.threshold]
        if interpolate_points({p: self.public_shares[p] for p in subset}) != self.group_key:
            raise InvalidInput("public shares do not interpolate to the group key")

    def __repr__(self) -> str:
        return (f"KeyShare(key_id={self.key_id}, index={self.index}, t={self.threshold}, "
                f"parties={list(self.parties)}, epoch={self.epoch})")


@dataclass(repr=False)
class _Peer:
    """What this party knows of one participant during key generation. ``share_to_me`` is a
    secret (f_j(me)), so the repr shows only which steps have arrived."""

    commitment: bytes = b""
    rid: bytes = b""
    coefficients: list[Point] = field(default_factory=list)
    schnorr_A: Point | None = None
    chain: bytes = b""
    share_to_me: int = 0

    def __repr__(self) -> str:
        return f"_Peer(committed={bool(self.commitment)}, decommitted={bool(self.coefficients)})"


class KeygenMachine(RoundMachine):
    phase = "keygen"
    rounds = 3

    def __init__(
        self,
        session_id: bytes,
        me: int,
        parties: Sequence[int],
        identity: PartyIdentity,
        roster: Mapping[int, bytes],
        *,
        threshold: int,
        level: SecurityLevel,
    ) -> None:
        super().__init__(session_id, me, parties, identity, roster)
        if not 1 <= threshold <= len(self.parties):
            raise InvalidInput(f"threshold {threshold} is not between 1 and {len(self.parties)}")
        if len(self.parties) < 2:
            raise InvalidInput("key generation needs at least two parties")
        self.threshold = threshold
        self.level = level
        self.ssid = bind_session(
            session_id, self.phase, Encoder().uint(threshold).uints(self.parties).bytes(level.name.encode())
        )
        # this party's secrets for the session
        self._poly = Polynomial.random(random_scalar(), threshold - 1)
        self._rid = secrets.token_bytes(32)
        self._chain = secrets.token_bytes(32)
        self._salt = secrets.token_bytes(32)
        self._schnorr = sch.commit()
        self._peers: dict[int, _Peer] = {p: _Peer() for p in self.parties}
        me_peer = self._peers[me]
        me_peer.rid, me_peer.chain = self._rid, self._chain
        me_peer.coefficients = self._poly.commitments()
        me_peer.schnorr_A = self._schnorr.A
        me_peer.share_to_me = self._poly.evaluate(me)
        self._secret_share = 0
        self._public_shares: dict[int, Point] = {}
        self._group_key = Point.identity()
        self._joint_rid = b""
        self._joint_chain = b""

    @property
    def coefficient_commitments(self) -> dict[int, list[Point]]:
        """Every party's published VSS commitments (an audit trail; F_j[0] is j's constant term)."""
        return {p: list(peer.coefficients) for p, peer in self._peers.items() if peer.coefficients}

    # round structure -------------------------------------------------------------------------
    def _round_broadcasts(self, r: int) -> bool:
        return True

    def _round_private(self, r: int) -> bool:
        return r == 2

    def _commitment(self, i: int, rid: bytes, coefficients: list[Point], A: Point, chain: bytes, salt: bytes) -> bytes:
        enc = Encoder().bytes(self.ssid).uint(i).bytes(rid)
        enc.list_of_bytes(c.to_bytes() for c in coefficients).bytes(A.to_bytes()).bytes(chain).bytes(salt)
        return hashlib.sha256(b"fusion-prime/keygen-commit" + enc.finish()).digest()

    def _make_round(self, r: int) -> tuple[bytes | None, dict[int, bytes]]:
        me = self._peers[self.me]
        if r == 1:
            v = self._commitment(self.me, self._rid, me.coefficients, self._schnorr.A, self._chain, self._salt)
            me.commitment = v
            return Encoder().bytes(v).finish(), {}
        if r == 2:
            enc = Encoder().bytes(self._rid).list_of_bytes(c.to_bytes() for c in me.coefficients)
            decommit = enc.bytes(self._schnorr.A.to_bytes()).bytes(self._chain).bytes(self._salt).finish()
            shares = {j: Encoder().bytes(scalar_to_bytes(self._poly.evaluate(j))).finish() for j in self.peers}
            return decommit, shares
        proof = sch.prove(self._proof_ctx(self.me), self.level, self._public_shares[self.me], self._secret_share,
                          self._schnorr)
        return proof.to_bytes(), {}

    def _proof_ctx(self, prover: int) -> ProofContext:
        return ProofContext(hashlib.sha256(self.ssid + self._joint_rid).digest(), prover)

    # validation ------------------------------------------------------------------------------
    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        peer = self._peers[sender]
        if r == 1:
            dec = Decoder(payload, "keygen round 1")
            peer.commitment = dec.bytes(32)
            dec.finish()
            return
        if r == 2:
            dec = Decoder(payload, "keygen round 2")
            rid = dec.bytes(32)
            coefficients = [Point.from_bytes(b) for b in dec.list_of_bytes(self.threshold, 33)]
            A = Point.from_bytes(dec.bytes(33))
            chain, salt = dec.bytes(32), dec.bytes(32)
            dec.finish()
            if self._commitment(sender, rid, coefficients, A, chain, salt) != peer.commitment:
                raise Blame(sender, "decommitment does not match its round 1 commitment")
            peer.rid, peer.coefficients, peer.schnorr_A, peer.chain = rid, coefficients, A, chain
            return
        proof = sch.SchnorrProof.from_bytes(payload)
        if proof.A != peer.schnorr_A:
            raise Blame(sender, "Π^sch commitment differs from the one committed in round 1")
        sch.verify(self._proof_ctx(sender), self.level, self._public_shares[sender], proof)

    def _decode_share(self, payload: bytes) -> int:
        dec = Decoder(payload, "keygen share")
        share = scalar_from_bytes(dec.bytes(32), allow_zero=True)
        dec.finish()
        return share

    def _take_private(self, r: int, sender: int, payload: bytes) -> None:
        share = self._decode_share(payload)
        if not verify_share(self.me, share, self._peers[sender].coefficients):
            raise Blame(sender, "VSS share is inconsistent with its commitments")
        self._peers[sender].share_to_me = share

    def _check_private(self, r: int, sender: int, receiver: int, payload: bytes) -> None:
        if not verify_share(receiver, self._decode_share(payload), self._peers[sender].coefficients):
            raise Blame(sender, "VSS share is inconsistent with its commitments")

    def _end_round(self, r: int) -> None:
        if r != 2:
            return
        rid = bytearray(32)
        for p in self.parties:
            rid = bytearray(a ^ b for a, b in zip(rid, self._peers[p].rid, strict=True))
        self._joint_rid = bytes(rid)
        self._joint_chain = hashlib.sha256(
            b"fusion-prime/chain-code" + b"".join(self._peers[p].chain for p in self.parties)
        ).digest()
        self._secret_share = sum(self._peers[p].share_to_me for p in self.parties) % Q
        for k in self.parties:
            self._public_shares[k] = Point.sum(evaluate_commitments(self._peers[p].coefficients, k)
                                               for p in self.parties)
        self._group_key = Point.sum(self._peers[p].coefficients[0] for p in self.parties)
        if self._group_key.is_identity or Point.base_mul(self._secret_share) != self._public_shares[self.me]:
            raise Blame(self.parties, "key generation produced an inconsistent key")

    def _result(self) -> KeyShare:
        return KeyShare(
            level=self.level.name,
            index=self.me,
            threshold=self.threshold,
            parties=tuple(self.parties),
            secret_share=self._secret_share,
            public_shares=dict(self._public_shares),
            group_key=self._group_key,
            chain_code=self._joint_chain,
            rid=self._joint_rid,
        )
