"""Honest runs: every signer subset signs, and the signatures verify under independent verifiers."""

from __future__ import annotations

import hashlib
import itertools
import secrets

import pytest
from coincurve import PublicKey
from eth_account import Account
from eth_keys import keys as eth_keys
from fp_network import committee, keygen_machines, presign, run, sign_machines

from fusion_prime.protocol.curve import HALF_Q, Point
from fusion_prime.protocol.ecdsa import Signature
from fusion_prime.protocol.keygen import KeyShare
from fusion_prime.protocol.levels import LEVEL_128, LEVEL_TEST, SecurityLevel
from fusion_prime.protocol.presign import Presignature


def eth_address(point: Point) -> str:
    return eth_keys.PublicKey(point.to_uncompressed()[1:]).to_checksum_address()


def sign(t: int, n: int, signers: tuple[int, ...], digest: bytes, path=(), level: SecurityLevel = LEVEL_TEST
         ) -> Signature:
    pre = presign(t, n, signers, level)
    # presignatures travel through their encoding (the node stores them encrypted)
    pre = {i: Presignature.from_bytes(p.to_bytes()) for i, p in pre.items()}
    out = run(sign_machines(t, n, pre, digest, path, level))
    assert sorted(out) == list(signers)
    first = out[signers[0]]
    assert all(o == first for o in out.values()), "signers disagree on the signature"
    return first


def check_signature(sig: Signature, digest: bytes, expected_key: Point) -> None:
    assert sig.public_key == expected_key
    assert sig.s <= HALF_Q, "signature is not low-S"
    key = PublicKey(expected_key.to_bytes())
    assert key.verify(sig.to_der(), digest, hasher=None)  # libsecp256k1, independent of our verify
    recovered = PublicKey.from_signature_and_message(sig.to_recoverable(), digest, hasher=None)
    assert recovered.format() == key.format()
    v = 27 + sig.recovery_id
    assert Account._recover_hash(digest, vrs=(v, sig.r, sig.s)) == eth_address(expected_key)


@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 5), (2, 2)])
def test_group_key_is_the_sum_of_constant_term_commitments(t: int, n: int) -> None:
    machines = keygen_machines(t, n)
    shares = run(machines)
    commitments = machines[1].coefficient_commitments
    expected = Point.sum(commitments[p][0] for p in commitments)
    for i, share in shares.items():
        assert share.group_key == expected
        assert Point.base_mul(share.secret_share) == share.public_shares[i]
        assert KeyShare.from_bytes(share.to_bytes()).group_key == expected
        # every party sees every other's commitments identically
        assert machines[i].coefficient_commitments == commitments
    assert len({s.chain_code for s in shares.values()}) == 1


@pytest.mark.parametrize("signers", [(1, 2), (1, 3), (2, 3), (1, 2, 3)])
def test_every_subset_of_a_2_of_3_key_signs(signers: tuple[int, ...]) -> None:
    shares, _ = committee(2, 3)
    digest = hashlib.sha256(b"subset " + bytes(signers)).digest()
    check_signature(sign(2, 3, signers, digest), digest, shares[1].group_key)


@pytest.mark.parametrize("signers", [(1, 2, 3), (2, 4, 5), (1, 2, 3, 4, 5)])
def test_3_of_5_signs(signers: tuple[int, ...]) -> None:
    shares, _ = committee(3, 5)
    digest = secrets.token_bytes(32)
    check_signature(sign(3, 5, signers, digest), digest, shares[1].group_key)


def test_2_of_2_signs() -> None:
    shares, _ = committee(2, 2)
    digest = secrets.token_bytes(32)
    check_signature(sign(2, 2, (1, 2), digest), digest, shares[1].group_key)


def test_presignatures_differ_and_many_digests_verify() -> None:
    shares, _ = committee(2, 3)
    rs = set()
    for _ in range(4):
        digest = secrets.token_bytes(32)
        sig = sign(2, 3, (1, 2), digest)
        check_signature(sig, digest, shares[1].group_key)
        rs.add(sig.r)
    assert len(rs) == 4


def test_too_few_signers_is_refused() -> None:
    from fusion_prime.protocol.errors import InvalidInput

    with pytest.raises(InvalidInput, match="threshold"):
        presign(3, 5, (1, 2))


@pytest.mark.slow
def test_full_strength_2_of_3() -> None:
    """The default 128-bit level end to end: 3072-bit Paillier, m = 128."""
    shares, aux = committee(2, 3, LEVEL_128)
    assert aux[1].paillier_secret.bits >= 3072
    digest = hashlib.sha256(b"full strength").digest()
    check_signature(sign(2, 3, (1, 3), digest, level=LEVEL_128), digest, shares[1].group_key)


def test_every_pair_signs_with_distinct_nonces() -> None:
    shares, _ = committee(2, 3)
    for pair in itertools.combinations((1, 2, 3), 2):
        digest = secrets.token_bytes(32)
        check_signature(sign(2, 3, pair, digest), digest, shares[1].group_key)
