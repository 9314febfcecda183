"""No secret in a repr (DESIGN.md §2 hygiene; issue 11, item 6).

Every object of keygen, aux info, presign and sign that holds a secret - the outputs, the
machines and their per-peer records - is printed with ``repr`` and ``str`` (what a log line or
a traceback shows), and none of the secret values may appear in decimal or hex.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from fp_network import committee, keygen_machines, presign_with, run, sign_machines_with

from fusion_prime.protocol.aux_info import AuxInfo
from fusion_prime.protocol.keygen import KeyShare


def _forms(value: int) -> list[str]:
    v = int(value)
    return [str(v), format(v, "x"), format(v, "X"), v.to_bytes((v.bit_length() + 7) // 8, "big").hex()]


def _secret_ints(values: Iterable[int]) -> list[int]:
    """Secrets long enough that finding them by chance in a repr is impossible."""
    return [int(v) for v in values if abs(int(v)) >= 2**64]


def _assert_hidden(objects: Iterable[object], secret_values: Iterable[int], secret_bytes: Iterable[bytes] = ()) -> None:
    ints = _secret_ints(secret_values)
    blobs = [b.hex() for b in secret_bytes if len(b) >= 8]
    assert ints or blobs
    for obj in objects:
        for text in (repr(obj), str(obj)):
            for v in ints:
                for form in _forms(abs(v)):
                    assert form not in text, f"{type(obj).__name__} repr shows a secret"
            for blob in blobs:
                assert blob not in text and blob.upper() not in text, f"{type(obj).__name__} repr shows secret bytes"


def test_keygen_objects_do_not_show_shares() -> None:
    ms = keygen_machines(2, 3)
    out = run(ms)
    m = ms[1]
    share: KeyShare = out[1]
    peer_shares = [p.share_to_me for p in m._peers.values()]
    values = [share.secret_share, *peer_shares, *m._poly.coefficients, m._secret_share, m._schnorr.alpha]
    _assert_hidden([share, m, m._peers, *m._peers.values(), m._poly, m._schnorr], values,
                   [m._rid, m._chain, m._salt])


def test_aux_info_objects_do_not_show_factors_or_trapdoors() -> None:
    _, aux = committee(2, 3)
    a: AuxInfo = aux[1]
    ps, rs = a.paillier_secret, a.ring_pedersen_secret
    values = [ps._p, ps._q, ps._phi, rs._lambda, rs._p, rs._q, rs._phi]
    _assert_hidden([a, ps, rs, a.public, *a.public.values()], values)


def test_presign_and_sign_objects_do_not_show_nonces_or_shares() -> None:
    shares, aux = committee(2, 3)
    pre, machines = presign_with(shares, aux, (1, 2))
    m = machines[1]
    p = pre[1]
    values = [p.k, p.chi, m._k, m._gamma, m._w, m._chi, m._rho, m._nu, *m._beta.values(), *m._beta_hat.values()]
    _assert_hidden([p, m, m._peer, *m._peer.values()], values)

    signers = sign_machines_with(shares, pre, secrets.token_bytes(32), (), aux)
    s = signers[1]
    _assert_hidden([s, s._presignature, s._key_share], [p.k, p.chi, shares[1].secret_share])
    assert len(run(signers)) == 2
    _assert_hidden([s, s.output], [p.k, p.chi, shares[1].secret_share])
