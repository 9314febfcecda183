"""Issue 11, item 3, through the node: two colluding signers cannot crash an honest signer's node.

Three in-process nodes over gRPC with mutual TLS, level ``test-2048``. node1 and node2 collude in
a 3-signer sign: node1's machine computes σ₁ + 1 (so the combined signature fails and the
identification round runs), and in that round node1 reveals, as the presign round-2 message it
got from node2, one with F̂ = 0 - re-signed with node2's identity key, which node2 gives it.
Before the fix the honest verifier's ``pow(F̂, -1, N²)`` raised a ``ValueError`` that escaped the
machine and stopped the whole node. Now node3's session aborts naming exactly node1 and node2,
and node3 runs on: it coordinates a presign and a sign with node2 right after. The same attack at
the protocol level, element by element, is in ``tests/protocol/test_identification_collusion.py``.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
from fp_guards import HANG_GUARD
from fp_node_helpers import make_node, running_nodes
from test_agreement import _finished_record, _resigned, _tamper
from test_network_refresh import devnet_without_presign_pools, verifies
from test_phase_splits import _key_with_aux

from fusion_prime.node.phases import SignPhase
from fusion_prime.protocol.curve import Q
from fusion_prime.protocol.encoding import Decoder, Encoder
from fusion_prime.protocol.machine import BROADCAST, KIND_ABORT, KIND_MAIN, ProtocolMessage
from fusion_prime.protocol.sign import IDENTIFICATION_ROUND

pytestmark = pytest.mark.xdist_group(name="collusion-network")
D, F, D_HAT, F_HAT = range(4)  # the presign round-2 private payload: four ciphertexts, three proofs


class LyingSignPhase(SignPhase):
    """node1's sign: its own machine computes σ₁ + 1 (and proves it consistently)."""

    def build(self, ctx):  # type: ignore[no-untyped-def]
        machine = super().build(ctx)
        honest = machine._partial_signature
        machine._partial_signature = lambda: (honest() + 1) % Q
        return machine


def _forged_round2(raw: bytes, accomplice) -> bytes:  # type: ignore[no-untyped-def]
    """node2's presign round-2 message to node1 with F̂ = 0, signed by node2."""
    msg = ProtocolMessage.from_bytes(raw)
    d = Decoder(msg.payload)
    cts = [d.uint() for _ in range(4)]
    proofs = [d.bytes() for _ in range(3)]
    d.finish()
    cts[F_HAT] = 0
    enc = Encoder()
    for c in cts:
        enc.uint(c)
    for p in proofs:
        enc.bytes(p)
    return _resigned(msg, accomplice, enc.finish())


class RevealForged:
    """node1's outgoing rule: its identification broadcast carries the forged message in node2's
    slot (the revealed messages are in party order of the other signers: node2, then node3).

    node1 also withholds its abort notices: its machine does not know about the forgery, so a
    notice would carry the honest identification broadcast it made as evidence, and whoever
    read that notice before judging the round would name node1 alone for signing two different
    round-3 messages - a correct verdict (seen once beside another suite), but not the attack
    this test is about. A colluder that lies in round 3 keeps its honest copy to itself."""

    def __init__(self, accomplice) -> None:  # type: ignore[no-untyped-def]
        self.accomplice = accomplice
        self.forged = 0
        self.withheld = 0

    def __call__(self, peer: str, msg: ProtocolMessage, identity) -> bytes | None:  # type: ignore[no-untyped-def]
        if msg.phase == "sign" and msg.kind == KIND_ABORT:
            self.withheld += 1
            return None
        if msg.phase != "sign" or msg.round != IDENTIFICATION_ROUND or msg.kind != KIND_MAIN \
                or msg.receiver != BROADCAST:
            return msg.to_bytes()
        d = Decoder(msg.payload)
        h, mul_proofs, received, dec_proofs = d.uint(), d.list_of_bytes(), d.list_of_bytes(), d.list_of_bytes()
        d.finish()
        received[0] = _forged_round2(received[0], self.accomplice)
        self.forged += 1
        payload = Encoder().uint(h).list_of_bytes(mul_proofs).list_of_bytes(received).list_of_bytes(dec_proofs)
        return _resigned(msg, identity, payload.finish())


def test_two_colluders_reveal_an_invalid_ciphertext_and_the_honest_node_names_both_and_runs_on(tmp_path):  # type: ignore[no-untyped-def]
    nodes = [make_node(d, fill_pool=False) for d in devnet_without_presign_pools(tmp_path / "net", 3)]
    node1, node2, node3 = nodes
    node1.sessions.phases["sign"] = LyingSignPhase()
    rule = RevealForged(node2.material.identity)
    _tamper(node1, rule)

    async def main():  # type: ignore[no-untyped-def]
        async with running_nodes(*nodes):
            key_id, group_key = await _key_with_aux(node1)
            pre = await node1.presign(key_id, ["node1", "node2", "node3"])
            assert pre.ok, pre
            digest = hashlib.sha256(b"two colluders").digest()
            outcome = await node1.sign(key_id, digest, attempts=1)
            assert rule.forged, "node1 never revealed the forged message: the test would prove nothing"
            assert not outcome.ok, outcome
            with trio.fail_after(HANG_GUARD):
                while node3.storage.session_state(outcome.session_id) in (None, "running"):
                    await trio.sleep(0.05)
            record = _finished_record(node3, outcome.session_id)
            assert record["event"] == "session-aborted", record
            assert sorted(record["detail"]["culprits"]) == ["node1", "node2"], record
            assert "not a ciphertext" in str(record["detail"]), record  # judged, not crashed
            # node3 runs on and works: it presigns and signs with node2
            again = await node3.presign(key_id, ["node2", "node3"])
            assert again.ok, again
            signed = await node3.sign(key_id, digest)
            assert signed.ok and verifies(group_key, digest, signed.output), signed

    trio.run(main)
