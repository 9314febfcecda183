"""Resharing a key to a new committee: (t, n, P) → (t', n', P') with the same group key.

A qualified set O ⊆ P of old holders (|O| ≥ t) deals; every old share is first made additive
with Lagrange coefficients, w_i = λ_i(O)·x_i (so Σ_{i∈O} w_i = x), and each dealer shares its
w_i with a fresh polynomial h_i of degree t'-1 over the new committee:

Round 1  dealer i broadcasts the commitments H_i to h_i's coefficients and sends h_i(j) to each
         new party j. Everybody checks H_i(0) = λ_i(O)·X_i against the *old* public shares —
         a dealer cannot change what it deals — and each new party checks its share against
         H_i (a bad share becomes a complaint with the dealer's signed message as evidence).
Round 2  each new party j, holding x'_j = Σ_i h_i(j), proves knowledge of it with Π^sch
         against X'_j = Σ_i H_i(j), which every participant computes.
Output   new parties: a ``KeyShare`` for (t', P') of the same group key and chain code, epoch
         increased; parties that are not in P' end with nothing (``RetiredShare``) and must
         delete their old share. The new committee then runs ``aux_info`` for its own
         Paillier and ring-Pedersen parameters.

Old and new committees use one index space: a party's index is its place in the node roster,
so a node that stays keeps its index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .curve import Point, scalar_from_bytes, scalar_to_bytes
from .encoding import Decoder, Encoder
from .errors import InvalidInput
from .identity import PartyIdentity
from .keygen import KeyShare, key_id_of
from .levels import level_by_name
from .machine import Blame, RoundMachine, bind_session
from .vss import Polynomial, check_indices, evaluate_commitments, interpolate_points, lagrange_coefficient
from .zk import sch
from .zk.common import ProofContext


@dataclass(frozen=True)
class KeyPublicInfo:
    """What a newcomer must know of the old key to check the dealing: all public."""

    level: str
    threshold: int
    parties: tuple[int, ...]
    public_shares: Mapping[int, Point]
    group_key: Point
    chain_code: bytes
    epoch: int

    @classmethod
    def of(cls, share: KeyShare) -> KeyPublicInfo:
        return cls(share.level, share.threshold, share.parties, dict(share.public_shares), share.group_key,
                   share.chain_code, share.epoch)


@dataclass(frozen=True)
class RetiredShare:
    """The outcome for a dealer that is not in the new committee: nothing to keep."""

    key_id: str


class ReshareMachine(RoundMachine):
    phase = "reshare"
    rounds = 2

    def __init__(
        self,
        session_id: bytes,
        me: int,
        identity: PartyIdentity,
        roster: Mapping[int, bytes],
        *,
        old: KeyPublicInfo,
        dealers: Sequence[int],
        new_parties: Sequence[int],
        new_threshold: int,
        key_share: KeyShare | None = None,
    ) -> None:
        dealers = sorted(check_indices(dealers))
        new_parties = sorted(check_indices(new_parties))
        if len(dealers) < old.threshold or not set(dealers) <= set(old.parties):
            raise InvalidInput(f"dealers must be at least {old.threshold} holders of the old key")
        if not 1 <= new_threshold <= len(new_parties) or len(new_parties) < 2:
            raise InvalidInput("new threshold must be between 1 and the size of the new committee (≥ 2)")
        participants = sorted(set(dealers) | set(new_parties))
        super().__init__(session_id, me, participants, identity, roster)
        if me in dealers:
            if key_share is None or key_share.index != me or KeyPublicInfo.of(key_share) != old:
                raise InvalidInput("a dealer needs its own share of exactly this key")
        self.old, self.dealers, self.new_parties, self.new_threshold = old, dealers, new_parties, new_threshold
        self.level = level_by_name(old.level)
        self.ssid = bind_session(
            session_id, self.phase,
            Encoder().bytes(old.group_key.to_bytes()).uint(old.epoch).uints(dealers).uints(new_parties)
            .uint(new_threshold),
        )
        self._commitments: dict[int, list[Point]] = {}
        self._shares: dict[int, int] = {}
        self._public: dict[int, Point] = {}
        self._secret = 0
        if me in dealers:
            assert key_share is not None
            w = lagrange_coefficient(me, dealers) * key_share.secret_share
            self._poly = Polynomial.random(w, new_threshold - 1)
            self._commitments[me] = self._poly.commitments()
            if me in new_parties:
                self._shares[me] = self._poly.evaluate(me)

    def _ctx(self, prover: int) -> ProofContext:
        return ProofContext(self.ssid, prover)

    # roles -------------------------------------------------------------------------------
    def _round_broadcasts(self, r: int) -> bool:
        return True

    def _round_private(self, r: int) -> bool:
        return r == 1

    def _broadcasters(self, r: int) -> list[int]:
        return list(self.dealers) if r == 1 else list(self.new_parties)

    def _private_receivers(self, r: int, sender: int) -> list[int]:
        if r == 1 and sender in self.dealers:
            return [j for j in self.new_parties if j != sender]
        return []

    # rounds ------------------------------------------------------------------------------
    def _make_round(self, r: int) -> tuple[bytes | None, dict[int, bytes]]:
        if r == 1:
            if self.me not in self.dealers:
                return None, {}
            broadcast = Encoder().list_of_bytes(c.to_bytes() for c in self._commitments[self.me]).finish()
            private = {j: Encoder().bytes(scalar_to_bytes(self._poly.evaluate(j))).finish()
                       for j in self._private_receivers(1, self.me)}
            return broadcast, private
        if self.me not in self.new_parties:
            return None, {}
        proof = sch.prove(self._ctx(self.me), self.level, self._public[self.me], self._secret)
        return proof.to_bytes(), {}

    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        if r == 1:
            dec = Decoder(payload, "reshare commitments")
            points = [Point.from_bytes(b) for b in dec.list_of_bytes(self.new_threshold, 33)]
            dec.finish()
            expected = self.old.public_shares[sender] * lagrange_coefficient(sender, self.dealers)
            if points[0] != expected:
                raise Blame(sender, "dealt a secret other than its Lagrange-weighted old share")
            self._commitments[sender] = points
            return
        sch.verify(self._ctx(sender), self.level, self._public[sender], sch.SchnorrProof.from_bytes(payload))

    def _decode_share(self, payload: bytes) -> int:
        dec = Decoder(payload, "reshare share")
        share = scalar_from_bytes(dec.bytes(32), allow_zero=True)
        dec.finish()
        return share

    def _take_private(self, r: int, sender: int, payload: bytes) -> None:
        self._check_private(r, sender, self.me, payload)
        self._shares[sender] = self._decode_share(payload)

    def _check_private(self, r: int, sender: int, receiver: int, payload: bytes) -> None:
        share = self._decode_share(payload)
        if Point.base_mul(share) != evaluate_commitments(self._commitments[sender], receiver):
            raise Blame(sender, "dealt a share inconsistent with its commitments")

    def _end_round(self, r: int) -> None:
        if r != 1:
            return
        for j in self.new_parties:
            self._public[j] = Point.sum(evaluate_commitments(self._commitments[i], j) for i in self.dealers)
        if Point.sum(self._commitments[i][0] for i in self.dealers) != self.old.group_key:
            raise Blame((), "dealt secrets do not add up to the group key")
        if self.me in self.new_parties:
            self._secret = sum(self._shares[i] for i in self.dealers) % sch.Q
            if Point.base_mul(self._secret) != self._public[self.me]:
                raise Blame((), "new share does not match its public share")

    def _result(self) -> KeyShare | RetiredShare:
        old = self.old
        if self.me not in self.new_parties:
            return RetiredShare(key_id_of(old.group_key, old.chain_code))
        subset = self.new_parties[: self.new_threshold]
        if interpolate_points({j: self._public[j] for j in subset}) != old.group_key:
            raise Blame((), "new public shares do not interpolate to the group key")
        return KeyShare(
            level=old.level,
            index=self.me,
            threshold=self.new_threshold,
            parties=tuple(self.new_parties),
            secret_share=self._secret,
            public_shares=dict(self._public),
            group_key=old.group_key,
            chain_code=old.chain_code,
            rid=hashlib.sha256(b"fusion-prime/reshare-rid" + self.ssid).digest(),
            epoch=old.epoch + 1,
        )

