"""Issue 12: a sign says "exhausted" (the wallet API's RESOURCE_EXHAUSTED) only when it is truly
out - its key's queue is full, or its bounded wait ran out - and every request inside the bound
waits and is signed. Three in-process nodes over gRPC with mutual TLS, level ``test-2048``, no
background pools: every presignature here is made on demand."""

from __future__ import annotations

import hashlib

import pytest
import trio
from fp_node_helpers import make_node, running_nodes
from test_network_refresh import devnet_without_presign_pools, verifies
from test_phase_splits import _key_with_aux

from fusion_prime.node import daemon

pytestmark = pytest.mark.xdist_group(name="sign-queue")


def test_exhausted_only_when_the_queue_is_full_or_the_wait_ran_out(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(daemon, "SIGN_QUEUE_LIMIT", 2)
    nodes = [make_node(d, fill_pool=False) for d in devnet_without_presign_pools(tmp_path / "net", 3)]
    node1 = nodes[0]

    async def main():  # type: ignore[no-untyped-def]
        async with running_nodes(*nodes):
            key_id, group_key = await _key_with_aux(node1)
            digests = [hashlib.sha256(f"queued {i}".encode()).digest() for i in range(3)]
            outcomes: dict[int, object] = {}

            async def one(i: int) -> None:
                outcomes[i] = await node1.sign(key_id, digests[i])

            # three at once on an empty pool, two may wait: the third is told at once, the
            # two inside the bound wait for their on-demand presignatures and are signed
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(one, i)
            exhausted = [i for i, o in outcomes.items() if o.status == "exhausted"]  # type: ignore[attr-defined]
            assert len(exhausted) == 1, outcomes
            assert "(limit 2)" in outcomes[exhausted[0]].reason  # type: ignore[attr-defined]
            for i, o in outcomes.items():
                if i not in exhausted:
                    assert o.ok and verifies(group_key, digests[i], o.output), o  # type: ignore[attr-defined]
            assert node1._queues[key_id].waiting == 0
            # the queue drained: the refused request now waits its turn and is signed
            again = await node1.sign(key_id, digests[exhausted[0]])
            assert again.ok and verifies(group_key, digests[exhausted[0]], again.output), again

            # a wait that runs out before a presignature exists: exhausted, saying why
            monkeypatch.setattr(daemon, "SIGN_WAIT_SECONDS", 0.0)
            late = await node1.sign(key_id, hashlib.sha256(b"no time to wait").digest())
            assert late.status == "exhausted" and "within 0 s" in late.reason, late
            monkeypatch.setattr(daemon, "SIGN_WAIT_SECONDS", 60.0)
            after = await node1.sign(key_id, hashlib.sha256(b"time again").digest())
            assert after.ok, after

    trio.run(main)


def test_a_key_asked_for_before_every_peer_is_up_waits_for_it_instead_of_refusing(tmp_path):  # type: ignore[no-untyped-def]
    """CreateKey a moment after the network started (``devnet --run``, then create-key at once):
    node3 is not serving yet, so the first health probes miss it. keygen probes again for a while
    (``PEERS_WAIT_SECONDS``) and runs once node3 answers - before, it was refused at once with
    "not enough healthy peers"."""
    nodes = [make_node(d, fill_pool=False) for d in devnet_without_presign_pools(tmp_path / "net", 3)]
    node1, node3 = nodes[0], nodes[2]
    order: list[str] = []

    async def main():  # type: ignore[no-untyped-def]
        async with running_nodes(*nodes[:2]) as nursery:
            async def late_start() -> None:
                await trio.sleep(1.0)  # node1's keygen has probed and missed node3 by now
                order.append("node3 starting")
                await nursery.start(node3.run)

            nursery.start_soon(late_start)
            try:
                outcome = await node1.keygen(2, 3)
                order.append("keygen ended")
                assert outcome.ok, outcome
                assert set(outcome.participants) == {"node1", "node2", "node3"}
            finally:
                node3.stop()

    trio.run(main)
    assert order == ["node3 starting", "keygen ended"]
