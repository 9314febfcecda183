"""Proactive refresh and resharing: the key and its addresses stay, the shares change."""

from __future__ import annotations

import itertools
import secrets

import pytest
from coincurve import PublicKey
from fp_network import (
    aborts,
    aux_machines,
    committee,
    identities,
    presign_with,
    primes_for,
    roster,
    run,
    sid,
    sign_with,
    tamper,
)

from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.encoding import Decoder, Encoder
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.hd import derive
from fusion_prime.protocol.keygen import KeyShare
from fusion_prime.protocol.levels import LEVEL_TEST
from fusion_prime.protocol.machine import BROADCAST, KIND_MAIN, Status
from fusion_prime.protocol.refresh import KeyRefreshMachine
from fusion_prime.protocol.reshare import KeyPublicInfo, ReshareMachine, RetiredShare
from fusion_prime.protocol.sign import SignMachine

PATHS = ["m/0", "m/1/2/3", "m/44/0/0/5"]


def _verify(sig, digest: bytes, key: Point) -> None:  # type: ignore[no-untyped-def]
    assert sig.public_key == key
    assert PublicKey(key.to_bytes()).verify(sig.to_der(), digest, hasher=None)


def _refresh(shares: dict[int, KeyShare]):  # type: ignore[no-untyped-def]
    session = sid()
    ids = identities(len(shares))
    ms = {i: KeyRefreshMachine(session, i, ids[i], roster(len(shares)), key_share=shares[i],
                               primes=primes_for(LEVEL_TEST, i + 3)) for i in shares}
    out = run(ms)
    assert len(out) == len(shares), [m.abort for m in ms.values()]
    return {i: o.key_share for i, o in out.items()}, {i: o.aux_info for i, o in out.items()}


@pytest.fixture(scope="module")
def refreshed():  # type: ignore[no-untyped-def]
    shares, aux = committee(2, 3)
    new_shares, new_aux = _refresh(shares)
    return shares, aux, new_shares, new_aux


def test_refresh_keeps_the_key_and_every_address(refreshed) -> None:  # type: ignore[no-untyped-def]
    old, _, new, new_aux = refreshed
    for i in old:
        assert new[i].group_key == old[i].group_key and new[i].chain_code == old[i].chain_code
        assert new[i].secret_share != old[i].secret_share
        assert new[i].epoch == old[i].epoch + 1
        assert new_aux[i].paillier_secret.n != committee(2, 3)[1][i].paillier_secret.n
        for path in PATHS:
            a = derive(old[i].group_key, old[i].chain_code, path).public_key
            assert derive(new[i].group_key, new[i].chain_code, path).public_key == a


def test_new_shares_sign(refreshed) -> None:  # type: ignore[no-untyped-def]
    _, _, new, new_aux = refreshed
    for signers in itertools.combinations((1, 2, 3), 2):
        pre, _ = presign_with(new, new_aux, signers)
        digest = secrets.token_bytes(32)
        out = sign_with(new, pre, digest, "m/1/2/3")
        _verify(out[signers[0]], digest, derive(new[1].group_key, new[1].chain_code, "m/1/2/3").public_key)


def test_an_old_share_in_the_signer_set_is_caught(refreshed) -> None:  # type: ignore[no-untyped-def]
    old, _, new, new_aux = refreshed
    mixed_shares = {1: new[1], 2: old[2]}
    mixed_aux = {1: new_aux[1], 2: new_aux[2]}
    out, machines = presign_with(mixed_shares, mixed_aux, (1, 2))
    assert out == {}
    assert machines[1].status is Status.ABORTED and machines[1].abort.culprits == (2,)


def test_presignature_from_before_the_refresh_is_refused(refreshed) -> None:  # type: ignore[no-untyped-def]
    old, aux, new, _ = refreshed
    pre, _ = presign_with(old, aux, (1, 2))
    ids = identities(3)
    with pytest.raises(InvalidInput, match="refresh"):
        SignMachine(sid(), 1, (1, 2), ids[1], roster(3), key_share=new[1], presignature=pre[1],
                    digest=secrets.token_bytes(32))


def test_refresh_dealer_with_a_bad_zero_share_is_named() -> None:
    shares, _ = committee(2, 3)
    session = sid()
    ids = identities(3)
    ms = {i: KeyRefreshMachine(session, i, ids[i], roster(3), key_share=shares[i],
                               primes=primes_for(LEVEL_TEST, i + 3)) for i in shares}

    def change(msg, _r):  # type: ignore[no-untyped-def]
        dec = Decoder(msg.payload)
        proof, extra = dec.bytes(), dec.bytes()
        share = int.from_bytes(Decoder(extra).bytes(32), "big")
        bad = Encoder().bytes(((share + 1) % 2**256).to_bytes(32, "big")).finish()
        return Encoder().bytes(proof).bytes(bad).finish()

    run(ms, tamper(3, 1, lambda m, r: m.round == 3 and m.receiver == 2, change))
    assert aborts(ms, (2, 3)) == {2: (1,), 3: (1,)}


# resharing ----------------------------------------------------------------------------------------
def _reshare(shares: dict[int, KeyShare], dealers, new_parties, new_t, intercept=None):  # type: ignore[no-untyped-def]
    old = KeyPublicInfo.of(next(iter(shares.values())))
    everyone = sorted(set(dealers) | set(new_parties))
    ids = identities(max(everyone))
    session = sid()
    ms = {i: ReshareMachine(session, i, ids[i], roster(max(everyone)), old=old, dealers=dealers,
                            new_parties=new_parties, new_threshold=new_t,
                            key_share=shares[i] if i in dealers else None) for i in everyone}
    return run(ms, intercept), ms


def _signs_with_every_qualified_subset(new_shares: dict[int, KeyShare], t: int, group_key: Point) -> None:
    parties = sorted(new_shares)
    aux = run(aux_machines(len(parties), parties=parties))
    assert sorted(aux) == parties
    for subset in itertools.combinations(parties, t):
        pre, _ = presign_with(new_shares, aux, subset)
        digest = secrets.token_bytes(32)
        out = sign_with(new_shares, pre, digest)
        _verify(out[subset[0]], digest, group_key)


def test_reshare_2_of_3_to_3_of_5() -> None:
    shares, _ = committee(2, 3)
    out, _ = _reshare(shares, dealers=[1, 3], new_parties=[1, 2, 3, 4, 5], new_t=3)
    assert sorted(out) == [1, 2, 3, 4, 5]
    group = shares[1].group_key
    assert all(isinstance(o, KeyShare) and o.group_key == group and o.threshold == 3 for o in out.values())
    _signs_with_every_qualified_subset(out, 3, group)


def test_reshare_3_of_5_to_2_of_3_retires_the_others() -> None:
    shares, _ = committee(3, 5)
    out, _ = _reshare(shares, dealers=[2, 4, 5], new_parties=[1, 2, 3], new_t=2)
    assert isinstance(out[4], RetiredShare) and isinstance(out[5], RetiredShare)
    new = {i: out[i] for i in (1, 2, 3)}
    assert all(s.group_key == shares[1].group_key for s in new.values())
    _signs_with_every_qualified_subset(new, 2, shares[1].group_key)


def test_reshare_replacing_one_party() -> None:
    shares, _ = committee(2, 3)
    out, _ = _reshare(shares, dealers=[1, 3], new_parties=[1, 2, 4], new_t=2)
    assert isinstance(out[3], RetiredShare)  # the leaving party dealt, and keeps nothing
    new = {i: out[i] for i in (1, 2, 4)}
    _signs_with_every_qualified_subset(new, 2, shares[1].group_key)


def test_malicious_dealer_share_off_its_commitment_is_named() -> None:
    shares, _ = committee(2, 3)

    def change(msg, _r):  # type: ignore[no-untyped-def]
        share = int.from_bytes(Decoder(msg.payload).bytes(32), "big")
        return Encoder().bytes(((share + 5) % 2**255).to_bytes(32, "big")).finish()

    out, ms = _reshare(shares, [1, 3], [1, 2, 3, 4], 2,
                       tamper(4, 3, lambda m, r: m.round == 1 and m.receiver == 4, change))
    assert out == {}
    assert aborts(ms, (1, 2, 4)) == {1: (3,), 2: (3,), 4: (3,)}


def test_dealer_that_deals_another_secret_is_named() -> None:
    shares, _ = committee(2, 3)

    def change(msg, _r):  # type: ignore[no-untyped-def]
        points = Decoder(msg.payload).list_of_bytes()
        points[0] = Point.base_mul(12345).to_bytes()
        return Encoder().list_of_bytes(points).finish()

    _, ms = _reshare(shares, [1, 3], [1, 2, 3], 2,
                       tamper(3, 1, lambda m, r: m.round == 1 and m.kind == KIND_MAIN and m.receiver == BROADCAST,
                              change))
    assert aborts(ms, (2, 3)) == {2: (1,), 3: (1,)}


def test_too_few_dealers_is_refused() -> None:
    shares, _ = committee(3, 5)
    with pytest.raises(InvalidInput, match="dealers"):
        _reshare(shares, [1, 2], [1, 2, 3], 2)
