"""Sessions end to end over real gRPC + mTLS between in-process nodes, on a small real
RoundMachine protocol (tests/node/fp_sum_protocol.py)."""

from __future__ import annotations

import time

import pytest
import trio
from fp_guards import HANG_GUARD
from fp_node_helpers import counter_value, make_node, running_nodes
from fp_sum_protocol import FastSumPhase, SumMachine, SumPhase, fill_sum


def nodes_with(devnet, behaviours, **kw):
    phases = [SumPhase(b, **kw) for b in behaviours]
    return [make_node(d, phases={"sum": p, "fast": FastSumPhase()}, fill_pool=False)
            for d, p in zip(devnet, phases, strict=True)], phases


def prefer(*first):
    return lambda pool, need: sorted(pool, key=lambda n: (n not in first, n))[:need]


def test_three_nodes_run_a_session(devnet3):
    nodes, phases = nodes_with(devnet3, ["honest"] * 3)

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum)
            assert outcome.ok, outcome
            assert outcome.participants == ("node1", "node2", "node3")
            await trio.sleep(0.2)
            sums = {p.finished[0]["sum"] for p in phases}
            assert len(sums) == 1, "every party computed the same sum"
            for n in nodes:
                assert n.storage.session_state(outcome.session_id) == "done"

    trio.run(main)


def test_unresponsive_node_is_named_and_the_coordinator_retries_without_it(devnet3):
    nodes, _ = nodes_with(devnet3, ["honest", "honest", "mute"])

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 2, fill_sum, round_deadline=3.0,
                                                         choose=prefer("node3"))
            assert outcome.ok and outcome.participants == ("node1", "node2")
            events = nodes[0].storage.audit_log()
            timeouts = [e for e in events if e["event"] == "session-timeout"]
            assert len(timeouts) == 1 and timeouts[0]["detail"]["culprits"] == ["node3"]
            assert counter_value(nodes[0].metrics, "fp_round_timeouts_total", phase="sum") == 1

    trio.run(main)


def test_cheater_is_blamed_by_everyone_and_excluded(devnet3):
    nodes, phases = nodes_with(devnet3, ["honest", "honest", "cheat"])

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1)
            assert outcome.status == "aborted" and outcome.culprits == ("node3",)
            await trio.sleep(0.3)
            assert [f.culprits for f in phases[1].failures] == [("node3",)], "node2 names the same culprit"
            retry = await nodes[0].sessions.coordinate("sum", 2, fill_sum, exclude=outcome.culprits)
            assert retry.ok and "node3" not in retry.participants

    trio.run(main)


@pytest.mark.parametrize("garbage", ["garbage", "other-session"])
def test_garbage_sender_is_named_not_the_honest_nodes(devnet3, garbage):
    """node3 sends, in place of each of its messages, one with its name, the right round and
    kind but a broken signature (or signed for another session); its valid messages never
    leave. The honest machines drop the garbage without blame and wait for node3's round-1
    messages until the deadline: every honest node must name node3, and neither may name the
    other because it could not echo node3's missing message."""
    nodes, phases = nodes_with(devnet3, ["honest", "honest", garbage])

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=5.0)
            assert outcome.status == "timeout", outcome
            assert outcome.culprits == ("node3",), outcome
            with trio.fail_after(HANG_GUARD):  # node2's own deadline, then its record
                while nodes[1].storage.session_state(outcome.session_id) in (None, "running"):
                    await trio.sleep(0.05)
            assert [f.culprits for f in phases[1].failures] == [("node3",)], "node2 names node3, not node1"
            for n in nodes[:2]:
                events = [e for e in n.storage.audit_log() if e["event"] == "session-timeout"]
                assert [e["detail"]["culprits"] for e in events] == [["node3"]], n.cfg.node_id
            # what was dropped was counted, not blamed
            assert counter_value(nodes[0].metrics, "fp_envelopes_rejected_total", reason="machine") >= 1

    trio.run(main)


def test_policy_refusal_is_reported_and_another_set_is_tried(devnet3):
    seen = []

    def picky(proposal):
        seen.append(proposal.phase)
        return False, "no sessions from node1 today"

    nodes = [make_node(devnet3[0], phases={"sum": SumPhase()}, fill_pool=False),
             make_node(devnet3[1], phases={"sum": SumPhase()}, fill_pool=False, authorize=picky),
             make_node(devnet3[2], phases={"sum": SumPhase()}, fill_pool=False)]

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 2, fill_sum, choose=prefer("node2"))
            assert outcome.ok and outcome.participants == ("node1", "node3")
            assert seen == ["sum"]
            refused = [e for e in nodes[1].storage.audit_log() if e["event"] == "session-refused"]
            assert "no sessions from node1 today" in refused[0]["detail"]["reason"]
            # Unsupported phase: refused by validation before any policy call.
            bad = await nodes[0].sessions.coordinate("fast", 2, fill_sum, attempts=1)
            assert bad.status == "refused"

    trio.run(main)


def test_slow_session_does_not_block_a_fast_one(devnet3):
    """Heavy machine steps run in worker threads: a fast session completes while a slow one
    is grinding - an order, which a blocked event loop could not produce (no duration is
    asserted: a loaded machine may stretch both)."""
    nodes, _ = nodes_with(devnet3, ["honest"] * 3, slow=0.4)

    async def main():
        async with running_nodes(*nodes) as nursery:
            result = {}

            async def slow():
                result["slow"] = await nodes[0].sessions.coordinate("sum", 3, fill_sum)
                result["slow_done"] = trio.current_time()

            nursery.start_soon(slow)
            await trio.sleep(0.3)  # the slow session is inside its first heavy step now
            fast = await nodes[0].sessions.coordinate("fast", 3, fill_sum)
            fast_done = trio.current_time()
            assert fast.ok
            assert "slow" not in result, "the slow session ended before the fast one: the test proves nothing"
            with trio.fail_after(HANG_GUARD):
                while "slow" not in result:
                    await trio.sleep(0.05)
            assert result["slow"].ok
            assert result["slow_done"] > fast_done, "the fast session finished first"
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_twenty_concurrent_sessions_complete(devnet3):
    nodes, _ = nodes_with(devnet3, ["honest"] * 3)

    async def main():
        async with running_nodes(*nodes):
            results = []

            async def one(i):
                coordinator = nodes[i % 3]
                results.append(await coordinator.sessions.coordinate("sum", 3, fill_sum))

            async with trio.open_nursery() as n:
                for i in range(20):
                    n.start_soon(one, i)
            assert len(results) == 20 and all(r.ok for r in results), [r for r in results if not r.ok]
            assert len({r.session_id for r in results}) == 20

    trio.run(main)


def test_health_and_metrics_endpoints_on_loopback(devnet3):
    import json
    import urllib.request

    nodes, _ = nodes_with(devnet3, ["honest"] * 3)

    async def main():
        async with running_nodes(*nodes):
            assert (await nodes[0].sessions.coordinate("sum", 3, fill_sum)).ok

            def fetch(path):
                with urllib.request.urlopen(f"http://127.0.0.1:{nodes[0].health_port}{path}", timeout=5) as r:
                    return r.status, r.read().decode()

            status, body = await trio.to_thread.run_sync(fetch, "/healthz")
            doc = json.loads(body)
            assert status == 200 and doc["status"] == "serving" and doc["node_id"] == "node1"
            status, body = await trio.to_thread.run_sync(fetch, "/metrics")
            assert 'fp_sessions_total{outcome="done",phase="sum"} 1.0' in body
            assert "fp_envelopes_sent_total" in body
            nodes[0].sessions.draining = True
            try:
                await trio.to_thread.run_sync(fetch, "/healthz")
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
            else:
                raise AssertionError("a draining node must not report healthy")
            nodes[0].sessions.draining = False

    trio.run(main)


def test_heavy_phases_get_a_longer_round_deadline(devnet3):
    """Aux-info rounds generate safe primes: seconds, where a sign round takes milliseconds."""
    node = make_node(devnet3[0], fill_pool=False)
    base = node.sessions.round_deadline
    assert node.sessions.round_deadline_for("sign") == base
    assert node.sessions.round_deadline_for("presign") == base
    for phase in ("aux-info", "key-refresh", "reshare"):
        assert node.sessions.round_deadline_for(phase) == 4 * base
    # never below the minimum participants insist on for heavy phases
    node.sessions.round_deadline = 0.5
    assert node.sessions.round_deadline_for("sign") == 0.5
    assert node.sessions.round_deadline_for("aux-info") == 5.0


class _HeavySumPhase(SumPhase):
    """The sum protocol under a heavy phase's name, to exercise the heavy-phase rules cheaply."""

    phase = "aux-info"

    def build(self, ctx):
        class HeavySum(SumMachine):
            phase = "aux-info"

        return HeavySum(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster)


def _crafted_proposal(node, phase, participants, round_deadline_ms):
    """A proposal as a (malicious or buggy) coordinator may build it: correctly signed, with a
    session id that binds exactly what it says - only the contents are off."""
    from fusion_prime.node.session import PROPOSAL_TTL_MS
    from fusion_prime.node.wire import derive_session_id, fresh_nonce, params_encoding, sign_proposal
    from fusion_prime.proto.generated import peer_pb2

    p = peer_pb2.SessionProposal(phase=phase, coordinator=node.cfg.node_id, participants=participants,
                                 nonce=fresh_nonce(), round_deadline_ms=round_deadline_ms,
                                 expires_at_ms=int(time.time() * 1000) + PROPOSAL_TTL_MS)
    fill_sum(p)
    p.session_id = derive_session_id(phase, p.coordinator, participants, p.nonce, params_encoding(p),
                                     p.round_deadline_ms)
    return sign_proposal(p, node.sessions.identity)


def test_participants_out_of_roster_order_are_refused(devnet3):
    nodes, _ = nodes_with(devnet3, ["honest"] * 3)

    async def main():
        async with running_nodes(*nodes):
            bad = _crafted_proposal(nodes[0], "sum", ["node2", "node1"], 10_000)
            reply = await nodes[0].transport.propose("node2", bad, 10)
            assert not reply.accepted and "roster index order" in reply.reason
            assert nodes[1].sessions.active_sessions == 0
            refused = [e for e in nodes[1].storage.audit_log() if e["event"] == "session-refused"]
            assert "roster index order" in refused[-1]["detail"]["reason"]
            # the same parties in roster order are fine
            good = _crafted_proposal(nodes[0], "sum", ["node1", "node2", "node3"], 10_000)
            assert nodes[1].sessions._validate(good) is None
            swapped = _crafted_proposal(nodes[0], "sum", ["node1", "node3", "node2"], 10_000)
            assert nodes[1].sessions._validate(swapped) == "participants are not in roster index order"

    trio.run(main)


def test_heavy_phase_round_deadline_has_a_minimum(devnet3):
    """A coordinator cannot make honest nodes time out (and be blamed) while they generate
    primes by proposing a tiny round deadline for aux-info, key refresh or resharing."""
    heavy = ("aux-info", "key-refresh", "reshare")  # only aux-info's handler is ever built here
    nodes = [make_node(d, phases={**dict.fromkeys(heavy, _HeavySumPhase()), "sum": SumPhase()}, fill_pool=False)
             for d in devnet3]

    async def main():
        async with running_nodes(*nodes):
            short = _crafted_proposal(nodes[0], "aux-info", ["node1", "node2"], 4_999)
            reply = await nodes[0].transport.propose("node2", short, 10)
            assert not reply.accepted and "minimum" in reply.reason and "aux-info" in reply.reason
            assert nodes[1].sessions.active_sessions == 0
            for phase in ("key-refresh", "reshare"):
                assert "minimum" in nodes[1].sessions._validate(_crafted_proposal(nodes[0], phase, ["node1", "node2"],
                                                                                  1_000))
            # light phases keep the configured range (a sign round takes milliseconds)
            assert nodes[1].sessions._validate(_crafted_proposal(nodes[0], "sum", ["node1", "node2"], 1_000)) is None
            # our own coordinator refuses to propose it too; at the minimum the session runs
            own = await nodes[0].sessions.coordinate("aux-info", 2, fill_sum, round_deadline=1.0, attempts=1)
            assert own.status == "refused" and "minimum" in own.reason
            ok = await nodes[0].sessions.coordinate("aux-info", 2, fill_sum, round_deadline=5.0, attempts=1)
            assert ok.ok, ok

    trio.run(main)


def test_test_level_is_refused_by_a_production_node(devnet3):
    """A coordinator cannot talk a production node into the small test moduli."""
    from fusion_prime.node.phases import KeygenPhase
    from fusion_prime.node.session import Refuse, SessionContext
    from fusion_prime.proto.generated import peer_pb2

    proposal = peer_pb2.SessionProposal(phase="keygen", participants=["node1", "node2"])
    proposal.keygen.threshold, proposal.keygen.level = 2, "test-2048"
    ctx = SessionContext("node1", 1, None, proposal, {"node1": 1, "node2": 2}, {}, None, test_mode=False)
    with pytest.raises(Refuse, match="tests only"):
        KeygenPhase().build(ctx)


def test_refused_proposal_is_withdrawn_from_the_nodes_that_accepted(devnet3):
    nodes = [make_node(devnet3[0], phases={"sum": SumPhase()}, fill_pool=False),
             make_node(devnet3[1], phases={"sum": SumPhase()}, fill_pool=False,
                       authorize=lambda p: (False, "maintenance window")),
             make_node(devnet3[2], phases={"sum": SumPhase()}, fill_pool=False)]

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1)
            assert outcome.status == "refused" and outcome.culprits == ("node2",)
            assert "maintenance window" in outcome.reason
            with trio.fail_after(HANG_GUARD):
                while nodes[2].sessions.active_sessions:
                    await trio.sleep(0.01)
            # ended by the coordinator's withdrawal, not by its round deadline (the reason says which)
            finished = [e for e in nodes[2].storage.audit_log() if e["event"] == "session-aborted"]
            assert "withdrawn by the coordinator" in finished[-1]["detail"]["reason"]

    trio.run(main)
