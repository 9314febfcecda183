"""Issue 12, items 3-5, through real signer daemons (three processes, gRPC + mTLS, wallet API):

* a burst of 50 signs on a key created a moment ago succeeds (no presignature yet: each one
  is made on demand, queued with a bounded wait - never "no presignature");
* 100 concurrent signs spread over the three nodes all succeed (each node signs only with the
  presignatures it leads, so coordinators never collide on one);
* signing continues through the two others while any one node is stopped.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fp_guards import HANG_GUARD
from fp_signer_net import SignerNet, digest_of, verifies

from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.client import WalletError

ALICE = PartyIdentity.generate()
pytestmark = pytest.mark.xdist_group(name="pool-availability")
NODES = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def net(tmp_path_factory):  # type: ignore[no-untyped-def]
    network = SignerNet(tmp_path_factory.mktemp("pool-availability"), ALICE)
    network.start_all()
    yield network
    network.stop_all()


@pytest.fixture(scope="module")
def key(net):  # type: ignore[no-untyped-def]
    with net.client_for("node1") as w:
        created = w.create_key(2, 3, "availability")
    return bytes(created.key_id), bytes(created.group_public_key)


def _sign_all(net: SignerNet, key_id: bytes, jobs: list[tuple[str, str]]) -> list:  # type: ignore[type-arg]
    """Sign (node, tag) jobs concurrently, one client per job; returns the signatures in order.

    A client told RESOURCE_EXHAUSTED (its request waited the node's bounded 60 s for a
    presignature: on a loaded 2-core machine on-demand presigns can fall behind a burst) sends
    the same request again, as the API asks - the property is that every job is signed, once,
    with its own presignature; how fast is the benchmark's business."""
    def one(job: tuple[str, str]):  # type: ignore[no-untyped-def]
        node_id, tag = job
        deadline = time.monotonic() + HANG_GUARD
        while True:
            try:
                with net.client_for(node_id) as w:
                    return w.sign(key_id, digest_of(tag), "m", request_id=tag)
            except WalletError as exc:
                if exc.code != "RESOURCE_EXHAUSTED" or time.monotonic() > deadline:
                    raise

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(one, jobs))


def test_a_burst_of_50_signs_on_a_fresh_key_succeeds(net, key) -> None:  # type: ignore[no-untyped-def]
    """Straight after CreateKey: the pool is empty, every sign waits for an on-demand presign."""
    key_id, group_key = key
    jobs = [("node1", f"burst-{i}") for i in range(50)]
    sigs = _sign_all(net, key_id, jobs)
    assert all(verifies(group_key, digest_of(tag), sig) for (_, tag), sig in zip(jobs, sigs, strict=True))
    assert len({sig.r for sig in sigs}) == 50, "one presignature per signature"


def test_100_concurrent_signs_spread_over_three_nodes_all_succeed(net, key) -> None:  # type: ignore[no-untyped-def]
    key_id, group_key = key
    jobs = [(NODES[i % 3], f"spread-{i}") for i in range(100)]
    sigs = _sign_all(net, key_id, jobs)
    assert all(verifies(group_key, digest_of(tag), sig) for (_, tag), sig in zip(jobs, sigs, strict=True))
    assert len({sig.r for sig in sigs}) == 100, "no presignature was used twice"


@pytest.mark.parametrize("down", NODES)
def test_signing_continues_with_any_one_node_stopped(net, key, down) -> None:  # type: ignore[no-untyped-def]
    key_id, group_key = key
    assert net.stop(down) == 0
    try:
        up = [n for n in NODES if n != down]
        # one by one first (each right after the stop, before any pool could adapt), then a burst
        for i in range(3):
            for node_id in up:
                tag = f"{down}-down-{node_id}-{i}"
                with net.client_for(node_id) as w:
                    assert verifies(group_key, digest_of(tag), w.sign(key_id, digest_of(tag), "m", request_id=tag))
        jobs = [(up[i % 2], f"{down}-down-burst-{i}") for i in range(10)]
        sigs = _sign_all(net, key_id, jobs)
        assert all(verifies(group_key, digest_of(tag), sig) for (_, tag), sig in zip(jobs, sigs, strict=True))
    finally:
        net.start(down)
        net.wait_started(down)
