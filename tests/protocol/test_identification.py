"""Identifiable abort when every proof verified but the result is wrong (CGGMP21 Fig. 7 output).

The cheater here does not corrupt any proof: its K, G, Γ, MtA ciphertexts and all their proofs
are honest. It only lies about δ_i. The δ-check fails for everyone; the identification round
(Π^mul, Π^dec, revealed signed round-2 messages) names it and nobody else.
"""

from __future__ import annotations

from fp_network import aborts, committee, presign_machines, run

from fusion_prime.protocol.curve import Q
from fusion_prime.protocol.machine import Status


def _lying_about_delta(machine, offset: int = 1):  # type: ignore[no-untyped-def]
    honest_round3 = machine._presign_round3

    def round3():  # type: ignore[no-untyped-def]
        _, private = honest_round3()
        machine._delta = (machine._delta + offset) % Q
        machine._peer[machine.me].delta = machine._delta
        from fusion_prime.protocol.curve import scalar_to_bytes
        from fusion_prime.protocol.encoding import Encoder

        payload = Encoder().bytes(scalar_to_bytes(machine._delta)).bytes(machine._peer[machine.me].Delta.to_bytes())
        return payload.finish(), private

    machine._presign_round3 = round3


def test_party_lying_about_delta_is_named_by_everyone() -> None:
    committee(2, 3)
    ms = presign_machines(2, 3, (1, 2, 3))
    _lying_about_delta(ms[2])
    out = run(ms)
    assert out == {}
    for i in (1, 3):
        assert ms[i].status is Status.ABORTED
    assert aborts(ms, (1, 3)) == {1: (2,), 3: (2,)}
    assert "δ-check failed" in ms[1].abort.reason and "dec" in ms[1].abort.reason


def test_identification_with_two_signers() -> None:
    committee(2, 3)
    ms = presign_machines(2, 3, (1, 3))
    _lying_about_delta(ms[1], offset=Q - 7)
    run(ms)
    assert aborts(ms, (3,)) == {3: (1,)}


def test_honest_runs_skip_the_identification_round() -> None:
    committee(2, 3)
    ms = presign_machines(2, 3, (1, 2))
    out = run(ms)
    assert sorted(out) == [1, 2]
    assert all(m.round == 3 for m in ms.values())


# signing ------------------------------------------------------------------------------------------
def _lie_about_sigma(machine, offset: int = 1) -> None:  # type: ignore[no-untyped-def]
    """σ_i is computed in the σ round (after every signer's consumption ack): the liar's own
    machine computes σ_i + offset there and proves that consistently, so only its Π^dec fails."""
    honest = machine._partial_signature
    machine._partial_signature = lambda: (honest() + offset) % Q


def _sign_with_liar(signers, liar, path=(), offset=1):  # type: ignore[no-untyped-def]
    import secrets

    from fp_network import presign_with, sign_machines_with

    shares, aux = committee(2, 3)
    pre, _ = presign_with(shares, aux, signers)
    ms = sign_machines_with(shares, pre, secrets.token_bytes(32), path, aux)
    _lie_about_sigma(ms[liar], offset)
    return run(ms), ms


def test_signer_with_a_wrong_sigma_is_named_by_everyone() -> None:
    out, ms = _sign_with_liar((1, 2, 3), 3)
    assert out == {}
    assert aborts(ms, (1, 2)) == {1: (3,), 2: (3,)}
    assert "does not verify" in ms[1].abort.reason


def test_wrong_sigma_under_a_derived_key_with_two_signers() -> None:
    _, ms = _sign_with_liar((1, 2), 1, path="m/5/6", offset=Q - 1)
    assert aborts(ms, (2,)) == {2: (1,)}


def test_revealing_forged_evidence_is_named() -> None:
    """The liar also swaps in a round-2 message nobody signed: it is named for that."""
    import secrets

    from fp_network import presign_with, sign_machines_with

    shares, aux = committee(2, 3)
    pre, _ = presign_with(shares, aux, (1, 2, 3))
    forged = dict(pre[2].received_round2)
    forged[1] = forged[1][:-3] + bytes(3)  # corrupt party 1's signature bytes
    import dataclasses

    pre[2] = dataclasses.replace(pre[2], received_round2=forged)
    ms = sign_machines_with(shares, pre, secrets.token_bytes(32), (), aux)
    _lie_about_sigma(ms[2], 1)
    run(ms)
    assert aborts(ms, (1, 3)) == {1: (2,), 3: (2,)}


# lazily supplied aux info (what the node passes: parsing aux secrets is not on the online path) -----
def _lazy_sign_machines(signers, aux_for):  # type: ignore[no-untyped-def]
    import secrets

    from fp_network import presign_with, sign_machines_with

    shares, aux = committee(2, 3)
    pre, _ = presign_with(shares, aux, signers)
    ms = sign_machines_with(shares, pre, secrets.token_bytes(32), (), None)
    calls: list[int] = []
    for i, m in ms.items():
        def load(i=i):  # type: ignore[no-untyped-def]
            calls.append(i)
            return aux_for(aux, i)

        m._aux_loader = load
    return ms, calls


def test_lazy_aux_info_is_never_loaded_on_the_happy_path() -> None:
    ms, calls = _lazy_sign_machines((1, 2), lambda aux, i: aux[i])
    out = run(ms)
    assert sorted(out) == [1, 2] and calls == []


def test_lazy_aux_info_still_identifies_the_liar() -> None:
    ms, calls = _lazy_sign_machines((1, 2, 3), lambda aux, i: aux[i])
    _lie_about_sigma(ms[3], 1)
    assert run(ms) == {}
    assert aborts(ms, (1, 2)) == {1: (3,), 2: (3,)}
    assert sorted(calls) == [1, 2, 3], "each party loads its aux info once, only when identification starts"


def test_lazy_aux_info_of_another_party_leaves_the_abort_unattributed() -> None:
    ms, _ = _lazy_sign_machines((1, 2), lambda aux, i: aux[3 - i])  # parties 1 and 2 get each other's
    _lie_about_sigma(ms[2], 1)
    assert run(ms) == {}
    for i in (1, 2):
        assert ms[i].status is Status.ABORTED
        assert "could not be loaded" in ms[i].abort.reason and ms[i].abort.culprits == ()


def test_sign_machine_accepts_a_loader_argument() -> None:
    import secrets

    from fp_network import identities, presign_with

    from fusion_prime.protocol.sign import SignMachine

    shares, aux = committee(2, 3)
    pre, _ = presign_with(shares, aux, (1, 2))
    ids = identities(3)
    rost = {i: k.public_key for i, k in ids.items()}
    sid, digest = secrets.token_bytes(32), secrets.token_bytes(32)
    ms = {i: SignMachine(sid, i, [1, 2], ids[i], rost, key_share=shares[i], presignature=pre[i],
                         digest=digest, aux_info=lambda i=i: aux[i]) for i in (1, 2)}
    assert sorted(run(ms)) == [1, 2]
