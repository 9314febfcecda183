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
    presignature: on a loaded 2-core machine on-demand presigns can fall behind a burst), or
    whose own call deadline passed (two test suites on two cores), sends the same request again,
    as the API asks (a request id is signed once) - the property is that every job is signed,
    once, with its own presignature; how fast is the benchmark's business."""
    def one(job: tuple[str, str]):  # type: ignore[no-untyped-def]
        node_id, tag = job
        deadline = time.monotonic() + HANG_GUARD
        while True:
            try:
                with net.client_for(node_id) as w:
                    return w.sign(key_id, digest_of(tag), "m", request_id=tag)
            except WalletError as exc:
                again = exc.code in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED") or (
                    exc.code == "ABORTED" and "already being signed" in str(exc))  # the timed-out call runs on
                if not again or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

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


def test_a_sign_sent_while_its_only_partner_restarts_waits_for_it_instead_of_refusing(net, key) -> None:  # type: ignore[no-untyped-def]
    """No signer set is healthy at the moment the request arrives (node2 stopped, node3 still
    starting): a failed health probe is not a verdict - the node probes again and signs once
    node3 answers (before, the request was refused at once: the CI failure of stop 21, where a
    probe of a busy node2 timed out)."""
    key_id, group_key = key
    assert net.stop("node2") == 0
    assert net.stop("node3") == 0
    try:
        net.start("node3")  # not waited for: the sign goes out while node3 is coming up
        tag = "partner-restarting"
        with net.client_for("node1") as w:
            sig = w.sign(key_id, digest_of(tag), "m", request_id=tag)
        assert verifies(group_key, digest_of(tag), sig)
    finally:
        for node_id in ("node2", "node3"):
            if node_id not in net.procs:
                net.start(node_id)
        net.wait_started("node2", "node3")


def test_a_sign_with_no_partner_at_all_is_refused_with_the_reason(net, key) -> None:  # type: ignore[no-untyped-def]
    key_id, _ = key
    assert net.stop("node2") == 0
    assert net.stop("node3") == 0
    try:
        with net.client_for("node1") as w, pytest.raises(WalletError) as err:
            w.sign(key_id, digest_of("alone"), "m", request_id="alone")
        assert err.value.code == "ABORTED"
        # node1 may still hold a partner as healthy for a moment (its probe answer is cached for
        # 2 s) and try it: then the attempt's failure is the news, naming the unreachable partner
        reason = str(err.value)
        assert ("no healthy signer set of 2 that includes this node (healthy peers: none" in reason
                or "unreachable (StatusCode.UNAVAILABLE)" in reason), reason
    finally:
        net.start("node2")
        net.start("node3")
        net.wait_started("node2", "node3")
