"""BIP32 derivation of the group key against an independent BIP32 implementation."""

from __future__ import annotations

import secrets

import pytest
from bip32 import BIP32
from coincurve import PublicKey
from fp_network import committee, presign, run, sign_machines

from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.hd import derive, parse_path, xpub

PATHS = ["m/0", "m/1/2", "m/44/60/0/0/7", "m/2147483647"]


@pytest.mark.parametrize("path", PATHS)
def test_child_keys_match_the_bip32_library(path: str) -> None:
    shares, _ = committee(2, 3)
    share = shares[1]
    ours = derive(share.group_key, share.chain_code, path)
    theirs = BIP32.from_xpub(xpub(share.group_key, share.chain_code)).get_pubkey_from_path(path)
    assert ours.public_key.to_bytes() == theirs
    # the tweak is consistent with the public derivation
    assert share.group_key + Point.base_mul(ours.tweak) == ours.public_key


def test_signature_under_a_derived_key_verifies() -> None:
    shares, _ = committee(2, 3)
    path = "m/7/13"
    digest = secrets.token_bytes(32)
    pre = presign(2, 3, (2, 3))
    out = run(sign_machines(2, 3, pre, digest, path))
    sig = out[2]
    child = derive(shares[1].group_key, shares[1].chain_code, path).public_key
    assert sig.public_key == child != shares[1].group_key
    assert PublicKey(child.to_bytes()).verify(sig.to_der(), digest, hasher=None)
    assert not PublicKey(shares[1].group_key.to_bytes()).verify(sig.to_der(), digest, hasher=None)


@pytest.mark.parametrize("bad", ["m/0'", "m/1h", "0/1", "m/x", "m/-1", [2**31], [-1]])
def test_bad_paths_are_clear_errors(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        parse_path(bad)
