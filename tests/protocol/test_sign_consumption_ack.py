"""Consume-then-release (issue 12, item 1; DESIGN.md §3 "Presignature pool").

A signer's σ_i must not leave its machine before every signer of the session has acknowledged,
in a signed round-1 broadcast, that it durably consumed the presignature — and before every
echo of that round is in. These tests watch every byte a machine emits: the σ_i of each signer
is computed independently (from the presignature, as Fig. 8 with the Groth–Shoup
re-randomisation defines it) and must not appear in any message sent before that point.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from coincurve import PublicKey
from fp_network import aborts, committee, identities, presign_with, resign, run, sign_machines_with

from fusion_prime.protocol.curve import Q, scalar_to_bytes
from fusion_prime.protocol.encoding import Encoder
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.hd import derive
from fusion_prime.protocol.machine import BROADCAST, KIND_ECHO, KIND_MAIN, ProtocolMessage, Status
from fusion_prime.protocol.presign import Presignature
from fusion_prime.protocol.sign import ConsumptionAck, SignMachine, open_consumption_ack, rerandomizer

SIGNERS = (1, 2, 3)


def expected_sigma(pre: Presignature, machine: SignMachine, digest: bytes, path=()) -> bytes:  # type: ignore[no-untyped-def]
    """σ_i = ρ^-1·(k_i·(m + r·τ) + r·χ_i), computed without the machine."""
    share = machine._key_share
    derived = derive(share.group_key, share.chain_code, path)
    rho = rerandomizer(pre, derived.public_key, derived.tweak, digest)
    r = (pre.R * rho).x % Q
    m = int.from_bytes(digest, "big") % Q
    sigma = pow(rho, -1, Q) * (pre.k * (m + r * derived.tweak) + r * pre.chi) % Q
    return scalar_to_bytes(sigma)


def _setup(signers=SIGNERS, path=()):  # type: ignore[no-untyped-def]
    shares, aux = committee(2, 3)
    pre, _ = presign_with(shares, aux, signers)
    digest = secrets.token_bytes(32)
    ms = sign_machines_with(shares, pre, digest, path, aux)
    sigmas = {i: expected_sigma(pre[i], ms[i], digest, path) for i in signers}
    return ms, pre, digest, sigmas


class Wire:
    """An intercept that records every emitted message and can drop or rewrite some."""

    def __init__(self, rewrite: Callable[[int, int, ProtocolMessage, bytes], list[bytes]] | None = None) -> None:
        self.sent: list[tuple[int, int, ProtocolMessage, bytes]] = []
        self._rewrite = rewrite

    def __call__(self, sender: int, receiver: int, raw: bytes) -> list[bytes]:
        msg = ProtocolMessage.from_bytes(raw)
        self.sent.append((sender, receiver, msg, raw))
        return self._rewrite(sender, receiver, msg, raw) if self._rewrite else [raw]

    def protocol(self) -> list[ProtocolMessage]:
        """The phase's own messages (main and echo), not the engine's session-control ones
        (confirmations, abort notices), which carry no round payload of their own."""
        return [m for _, _, m, _ in self.sent if m.kind in (KIND_MAIN, KIND_ECHO)]

    def kinds(self, sender: int) -> set[tuple[int, int]]:
        return {(m.round, m.kind) for m in self.protocol() if m.sender == sender}


def _contains_sigma(wire: Wire, sigmas: dict[int, bytes], senders) -> bool:  # type: ignore[no-untyped-def]
    return any(sigmas[s] in raw for s, _, _, raw in wire.sent if s in senders)


def test_no_sigma_leaves_while_a_signer_withholds_its_ack() -> None:
    ms, _, _, sigmas = _setup()
    wire = Wire(lambda s, r, m, raw: [] if s == 3 else [raw])  # party 3 never speaks
    assert run(ms, wire) == {}
    assert not _contains_sigma(wire, sigmas, (1, 2)), "a σ_i left before every signer acknowledged"
    for i in (1, 2):
        assert wire.kinds(i) == {(1, KIND_MAIN)}, "only the ack may be sent while an ack is missing"
        assert ms[i].status is Status.RUNNING and ms[i]._sigma is None and ms[i].acknowledgements == {}


def test_no_sigma_leaves_while_one_peer_lacks_an_ack_that_others_have() -> None:
    """Party 3's ack reaches party 2 but not party 1: party 2 holds every ack, yet it must not
    release σ_2 before party 1's echo says party 1 has them too."""
    ms, _, _, sigmas = _setup()
    wire = Wire(lambda s, r, m, raw: [] if (s, r, m.round, m.kind) == (3, 1, 1, KIND_MAIN) else [raw])
    assert run(ms, wire) == {}
    assert not _contains_sigma(wire, sigmas, SIGNERS)
    assert all(rnd == 1 for i in SIGNERS for rnd, _ in wire.kinds(i))
    assert (1, KIND_ECHO) in wire.kinds(2) and (1, KIND_ECHO) not in wire.kinds(1)


def test_honest_sign_sends_sigma_only_in_round_2_and_verifies_under_coincurve() -> None:
    ms, _, digest, sigmas = _setup(path="m/7/1")
    wire = Wire()
    out = run(ms, wire)
    assert sorted(out) == list(SIGNERS)
    sig = out[1]
    assert all(o == sig for o in out.values())
    assert PublicKey(sig.public_key.to_bytes()).verify(sig.to_der(), digest, hasher=None)
    for i in SIGNERS:
        assert wire.kinds(i) == {(1, KIND_MAIN), (1, KIND_ECHO), (2, KIND_MAIN), (2, KIND_ECHO)}
        ack_round = [raw for s, _, m, raw in wire.sent if s == i and m.round == 1]
        assert ack_round and not any(sigmas[i] in raw for raw in ack_round)
        sigma_msgs = [m for s, _, m, _ in wire.sent if s == i and m.round == 2 and m.kind == KIND_MAIN]
        assert sigma_msgs and all(sigmas[i] in m.payload for m in sigma_msgs)


def test_two_signers_still_sign() -> None:
    ms, _, digest, _ = _setup(signers=(1, 3))
    out = run(ms)
    assert sorted(out) == [1, 3]
    assert PublicKey(out[1].public_key.to_bytes()).verify(out[1].to_der(), digest, hasher=None)


def test_acknowledgements_are_signed_evidence_of_consumption() -> None:
    ms, pre, digest, _ = _setup()
    run(ms)
    rost = {i: k.public_key for i, k in identities(3).items()}
    for i, m in ms.items():
        acks = m.acknowledgements
        assert sorted(acks) == [j for j in SIGNERS if j != i]
        for j, raw in acks.items():
            session, sender, ack = open_consumption_ack(raw, rost)
            assert (session, sender) == (m.session_id, j)
            assert ack.presign_id == pre[j].presign_id and ack.digest == digest and ack.signers == SIGNERS
            assert ack.key_id == pre[j].key_id and ack.epoch == pre[j].epoch
    # a forged ack (signed by someone else) is refused
    raw = ms[1].acknowledgements[2]
    with pytest.raises(InvalidInput):
        open_consumption_ack(resign(raw, identities(3)[3]), rost)


# a mismatched ack blames its sender, and nobody releases σ ---------------------------------------
def _with_ack(change: Callable[[ConsumptionAck], bytes]) -> tuple[dict, Wire, dict]:  # type: ignore[type-arg]
    ms, _, _, sigmas = _setup()
    liar = identities(3)[3]

    def rewrite(s: int, r: int, m: ProtocolMessage, raw: bytes) -> list[bytes]:
        if s == 3 and m.round == 1 and m.kind == KIND_MAIN and m.receiver == BROADCAST:
            return [resign(raw, liar, change(ConsumptionAck.from_bytes(m.payload)))]
        return [raw]

    wire = Wire(rewrite)
    assert run(ms, wire) == {}
    return ms, wire, sigmas


@pytest.mark.parametrize("field, value", [
    ("presign_id", b"\x01" * 32),
    ("digest", b"\x02" * 32),
    ("path", (0, 1)),
    ("epoch", 5),
    ("key_id", "0" * 32),
    ("signers", (1, 2)),
])
def test_ack_for_another_presignature_digest_or_path_blames_its_sender(field: str, value: object) -> None:
    import dataclasses

    ms, wire, sigmas = _with_ack(lambda ack: dataclasses.replace(ack, **{field: value}).to_bytes())
    assert aborts(ms, (1, 2)) == {1: (3,), 2: (3,)}
    assert field in ms[1].abort.reason
    assert not _contains_sigma(wire, sigmas, SIGNERS)


def test_ack_for_another_derived_key_blames_its_sender() -> None:
    import dataclasses

    from fusion_prime.protocol.curve import Point

    ms, wire, sigmas = _with_ack(lambda ack: dataclasses.replace(ack, public_key=Point.base_mul(7)).to_bytes())
    assert aborts(ms, (1, 2)) == {1: (3,), 2: (3,)}
    assert not _contains_sigma(wire, sigmas, SIGNERS)


def test_malformed_ack_blames_its_sender() -> None:
    ms, wire, sigmas = _with_ack(lambda ack: Encoder().bytes(b"yes, consumed").finish())
    assert aborts(ms, (1, 2)) == {1: (3,), 2: (3,)}
    assert not _contains_sigma(wire, sigmas, SIGNERS)


def test_a_signer_given_another_digest_is_caught_before_any_sigma() -> None:
    """Honest machines handed different digests (a bad proposal) disagree in round 1: parties 1
    and 2 name 3, party 3 names them, and no σ_i exists anywhere."""
    shares, aux = committee(2, 3)
    pre, _ = presign_with(shares, aux, SIGNERS)
    digest = secrets.token_bytes(32)
    ms = sign_machines_with(shares, pre, digest, (), aux)
    other = sign_machines_with(shares, pre, secrets.token_bytes(32), (), aux)[3]
    other.session_id = ms[1].session_id  # same session, different digest
    ms[3] = other
    wire = Wire()
    run(ms, wire)
    assert aborts(ms, SIGNERS) == {1: (3,), 2: (3,), 3: (1, 2)}
    assert all(m.round == 1 for m in wire.protocol())
    assert all(m._sigma is None for m in ms.values())


def test_malformed_sigma_in_round_2_blames_its_sender() -> None:
    ms, _, _, _ = _setup(signers=(1, 2))
    liar = identities(3)[2]

    def rewrite(s: int, r: int, m: ProtocolMessage, raw: bytes) -> list[bytes]:
        if s == 2 and m.round == 2 and m.kind == KIND_MAIN:
            return [resign(raw, liar, Encoder().bytes(b"\xff" * 32).finish())]
        return [raw]

    run(ms, Wire(rewrite))
    assert aborts(ms, (1,)) == {1: (2,)}


def test_identification_runs_in_round_3() -> None:
    ms, _, _, _ = _setup()
    honest = ms[2]._partial_signature
    ms[2]._partial_signature = lambda: (honest() + 1) % Q
    wire = Wire()
    assert run(ms, wire) == {}
    assert aborts(ms, (1, 3)) == {1: (2,), 3: (2,)}
    assert {m.round for m in wire.protocol()} == {1, 2, 3}
