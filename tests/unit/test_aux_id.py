"""``aux_id`` and ``aux_digest``: the aux info's name and its full commitment (issue 11, item 6).

The id used to hash each party's (s, t) through a 64-bit fingerprint; now every party's N, s and
t enter one SHA-256 in full, through the canonical encoding, and presigning binds the full
256-bit digest into its session id. The id keeps its length (32 hex characters), which node
storage and proposals carry.
"""

from __future__ import annotations

import dataclasses
import hashlib

from fp_network import committee

from fusion_prime.protocol.aux_info import AuxInfo, PartyAux
from fusion_prime.protocol.encoding import Encoder
from fusion_prime.protocol.ring_pedersen import RingPedersenParams


def _with_t(aux: AuxInfo, party: int, t: int) -> AuxInfo:
    pa = aux.public[party]
    rp = pa.ring_pedersen
    public = dict(aux.public)
    public[party] = PartyAux(pa.paillier, RingPedersenParams.__new__(RingPedersenParams))
    object.__setattr__(public[party].ring_pedersen, "n", rp.n)
    object.__setattr__(public[party].ring_pedersen, "s", rp.s)
    object.__setattr__(public[party].ring_pedersen, "t", t)
    return dataclasses.replace(aux, public=public)


def test_aux_digest_is_a_full_hash_of_every_public_parameter() -> None:
    _, aux = committee(2, 3)
    a = aux[1]
    enc = Encoder().bytes(b"fusion-prime/aux-id/v2").bytes(a.level.encode()).uints(a.parties)
    for p in a.parties:
        pa = a.public[p]
        enc.uints((pa.paillier.n, pa.ring_pedersen.n, pa.ring_pedersen.s, pa.ring_pedersen.t))
    assert a.aux_digest == hashlib.sha256(enc.finish()).digest()
    assert a.aux_id == a.aux_digest.hex()[:32] and len(a.aux_id) == 32
    assert {x.aux_id for x in aux.values()} == {a.aux_id}, "every party names the same aux info alike"


def test_changing_any_bit_of_t_changes_the_digest() -> None:
    _, aux = committee(2, 3)
    a = aux[1]
    t = int(a.public[2].ring_pedersen.t)
    for bit in (0, 70, t.bit_length() - 1):
        other = _with_t(a, 2, t ^ (1 << bit))
        assert other.aux_digest != a.aux_digest and other.aux_id != a.aux_id
