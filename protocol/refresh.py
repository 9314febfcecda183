"""Proactive key refresh (CGGMP21 Fig. 6, threshold form): a fresh sharing of the same key
plus fresh auxiliary information, in the same three rounds as ``aux_info``.

Each party i also deals a random sharing of *zero*: g_i of degree t-1 with g_i(0) = 0. Only
the commitments to the coefficients 1..t-1 are published — the constant term's commitment is
the identity by construction, so no dealer can shift the key. Its commitments ride in the
round-1 commitment and round-2 decommitment; the share g_i(j) travels privately with the Π^fac
proof of round 3 and is checked against them (a bad share is a complaint with evidence).

    x'_j = x_j + Σ_i g_i(j),   X'_k = X_k + Σ_i G_i(k),   Σ_{j∈S} λ_j x'_j = x for any |S| ≥ t

So the group key, the chain code and every derived address stay the same, while old shares
— which an attacker may have collected one at a time — no longer combine with new ones. The
epoch of the key share increases; presignatures made under an older epoch are refused by
``sign`` (and would not verify anyway: their χ_i are shares of the old sharing).

Difference from the figure: Fig. 6 sends each share x_i^j encrypted under the receiver's
Paillier key (it assumes only a broadcast channel) and adds a Π^sch for every X_i^j, which the
simulation uses to extract the adversary's sharing. Here shares travel over the authenticated
private channel the node provides (mutual TLS, signed envelopes) and are checked against
Feldman commitments that were hash-committed in round 1, before anyone revealed theirs - so no
dealer can choose its sharing after seeing the others', and none can move the key (the constant
term is fixed to the identity). What is not reproduced is the proof-of-knowledge extraction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from .aux_info import AuxInfo, AuxInfoMachine
from .curve import Point, Q, random_scalar, scalar_from_bytes, scalar_to_bytes
from .encoding import Decoder, Encoder
from .errors import InvalidInput
from .identity import PartyIdentity
from .keygen import KeyShare
from .levels import level_by_name
from .machine import Blame
from .vss import evaluate_commitments, interpolate_points


@dataclass(frozen=True)
class RefreshResult:
    key_share: KeyShare
    aux_info: AuxInfo

    def __repr__(self) -> str:
        return f"RefreshResult({self.key_share!r}, {self.aux_info!r})"


class KeyRefreshMachine(AuxInfoMachine):
    phase = "key-refresh"

    def __init__(
        self,
        session_id: bytes,
        me: int,
        identity: PartyIdentity,
        roster: Mapping[int, bytes],
        *,
        key_share: KeyShare,
        primes: tuple[int, int] | None = None,
    ) -> None:
        binding = Encoder().bytes(key_share.key_id.encode()).uint(key_share.epoch).uint(key_share.threshold).finish()
        super().__init__(session_id, me, key_share.parties, identity, roster,
                         level=level_by_name(key_share.level), primes=primes, binding=binding)
        if key_share.index != me:
            raise InvalidInput("key share belongs to another party")
        self.key_share = key_share
        t = key_share.threshold
        self._zero_poly = (0, *(random_scalar() for _ in range(t - 1)))
        self._zero_commitments: dict[int, list[Point]] = {
            me: [Point.identity(), *(Point.base_mul(c) for c in self._zero_poly[1:])]
        }
        self._zero_shares: dict[int, int] = {me: self._evaluate(me)}

    def _evaluate(self, x: int) -> int:
        acc = 0
        for c in reversed(self._zero_poly):
            acc = (acc * x + c) % Q
        return acc

    def _extra_decommitment(self) -> bytes:
        return Encoder().list_of_bytes(p.to_bytes() for p in self._zero_commitments[self.me][1:]).finish()

    def _take_extra_decommitment(self, sender: int, data: bytes) -> None:
        dec = Decoder(data, "zero-sharing commitments")
        points = [Point.from_bytes(b) for b in dec.list_of_bytes(self.key_share.threshold - 1, 33)]
        dec.finish()
        self._zero_commitments[sender] = [Point.identity(), *points]

    def _extra_private(self, receiver: int) -> bytes:
        return Encoder().bytes(scalar_to_bytes(self._evaluate(receiver))).finish()

    def _take_extra_private(self, sender: int, receiver: int, data: bytes, *, store: bool) -> None:
        dec = Decoder(data, "zero share")
        share = scalar_from_bytes(dec.bytes(32), allow_zero=True)
        dec.finish()
        if Point.base_mul(share) != evaluate_commitments(self._zero_commitments[sender], receiver):
            raise Blame(sender, "refresh share is inconsistent with its commitments")
        if store:
            self._zero_shares[sender] = share

    def _result(self) -> RefreshResult:  # type: ignore[override]
        aux = super()._result()
        old = self.key_share
        secret = (old.secret_share + sum(self._zero_shares.values())) % Q
        public = {
            k: old.public_shares[k] + Point.sum(evaluate_commitments(self._zero_commitments[i], k)
                                                for i in self.parties)
            for k in self.parties
        }
        if Point.base_mul(secret) != public[self.me]:
            raise Blame((), "refreshed share does not match its public share")
        subset = list(self.parties[: old.threshold])
        if interpolate_points({k: public[k] for k in subset}) != old.group_key:
            raise Blame((), "refreshed public shares do not interpolate to the group key")
        share = KeyShare(
            level=old.level,
            index=old.index,
            threshold=old.threshold,
            parties=old.parties,
            secret_share=secret,
            public_shares=public,
            group_key=old.group_key,
            chain_code=old.chain_code,
            rid=hashlib.sha256(old.rid + self.ssid).digest(),
            epoch=old.epoch + 1,
        )
        return RefreshResult(share, aux)
