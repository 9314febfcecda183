"""The session manager contains what a machine or a peer can throw at it: an unexpected
exception inside a machine ends that session only, and a peer flooding proposals is bounded
(RESOURCE_EXHAUSTED, counted) instead of growing the node's memory and CPU without limit."""

from __future__ import annotations

import pytest
import trio
from fp_guards import HANG_GUARD
from fp_node_helpers import counter_value, make_node, running_nodes
from fp_sum_protocol import SumMachine, SumPhase, fill_sum

from fusion_prime.node import session as session_mod


class ExplodingSumMachine(SumMachine):
    """A machine with an arithmetic bug: it raises something no handler expects (the shape of
    the two-colluder crash, where ``pow(x, -1, n)`` raised ValueError out of a round)."""

    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        if r == 2:
            raise ValueError("pow() base not invertible")
        super()._take_broadcast(r, sender, payload)


class ExplodingPhase(SumPhase):
    def build(self, ctx):
        return ExplodingSumMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster)


class ExplodingBuildPhase(SumPhase):
    def build(self, ctx):
        raise KeyError("a handler bug")


@pytest.mark.parametrize("where", ["machine", "build"])
def test_an_unexpected_exception_aborts_the_session_and_the_node_runs_on(devnet3, where):
    bad = ExplodingPhase() if where == "machine" else ExplodingBuildPhase()
    phases = [SumPhase(), SumPhase(), bad]
    nodes = [make_node(d, phases={"sum": p}, fill_pool=False) for d, p in zip(devnet3, phases, strict=True)]

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=3.0)
            assert not outcome.ok
            await trio.sleep(0.3)
            log = nodes[2].storage.audit_log()
            if where == "machine":
                finished = [e for e in log if e["session_id"] == outcome.session_id
                            and e["event"].startswith("session-") and e["event"] != "session-started"]
                assert finished and "internal error: ValueError" in finished[-1]["detail"]["reason"]
                # the exception's message (which could carry a value) is not what is recorded
                assert "not invertible" not in str(finished[-1]["detail"])
            else:
                refused = [e for e in log if e["event"] == "session-refused"]
                assert refused and "internal error: KeyError" in refused[-1]["detail"]["reason"]
            # node3 is alive: it still answers Health and takes part in the next session
            phases[2].__class__ = SumPhase
            assert await nodes[0].transport.health("node3") is not None
            again = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1)
            assert again.ok, again

    trio.run(main)


def test_a_proposal_flood_is_bounded_per_peer(devnet3, monkeypatch):
    """node2 proposes 30 sessions at once to node1 (and never runs its own side). node1 admits
    at most the per-phase limit, answers the rest RESOURCE_EXHAUSTED and counts them; once the
    flood's sessions have ended, node2 can propose again."""
    monkeypatch.setitem(session_mod.MAX_PHASE_SESSIONS_PER_PEER, "sum", 4)
    phases = [SumPhase() for _ in devnet3]
    nodes = [make_node(d, phases={"sum": p}, fill_pool=False) for d, p in zip(devnet3, phases, strict=True)]

    async def main():
        async with running_nodes(*nodes):
            flooder = nodes[1]
            replies = []

            async def one():
                p = flooder.sessions._proposal("sum", ["node1", "node2"], fill_sum, 30.0)
                replies.append((p, await flooder.transport.propose("node1", p, 5.0)))

            async with trio.open_nursery() as n:
                for _ in range(30):
                    n.start_soon(one)
            accepted = [p for p, r in replies if r.accepted]
            limited = [r for _, r in replies if "RESOURCE_EXHAUSTED" in r.reason]
            assert len(accepted) == 4, [r.reason for _, r in replies]
            assert len(limited) == 26
            assert counter_value(nodes[0].metrics, "fp_proposals_total", phase="sum", decision="limited") == 26
            assert nodes[0].sessions.active_sessions <= 4
            # node2 calls its sessions off; then it is admitted again
            for p in accepted:
                await flooder.sessions._withdraw(p, ["node1"], "test over")
            with trio.fail_after(HANG_GUARD):
                while nodes[0].sessions.active_sessions:
                    await trio.sleep(0.1)
            ok = await nodes[1].sessions.coordinate("sum", 2, fill_sum, required=["node1"], attempts=1)
            assert ok.ok, ok

    trio.run(main)


def test_proposal_rate_is_bounded_per_peer(devnet3, monkeypatch):
    monkeypatch.setattr(session_mod, "PROPOSAL_BURST_PER_PEER", 5.0)
    monkeypatch.setattr(session_mod, "PROPOSAL_RATE_PER_PEER", 0.001)
    nodes = [make_node(d, phases={"sum": SumPhase()}, fill_pool=False) for d in devnet3]

    async def main():
        async with running_nodes(*nodes):
            results = []
            for _ in range(8):
                p = nodes[2].sessions._proposal("sum", ["node1", "node3"], fill_sum, 1.0)
                results.append(await nodes[2].transport.propose("node1", p, 5.0))
            assert [("RESOURCE_EXHAUSTED" in r.reason) for r in results] == [False] * 5 + [True] * 3
            # another peer's budget is its own
            p = nodes[1].sessions._proposal("sum", ["node1", "node2"], fill_sum, 1.0)
            assert (await nodes[1].transport.propose("node1", p, 5.0)).accepted

    trio.run(main)


def test_disputes_push_out_the_common_member_first(devnet3):
    """A malicious node3 disputes with a different honest node each time: the first dispute
    between two others avoids both; from then on node3, in more disputes than anybody, is the
    one avoided. A dispute that includes this node avoids the other member."""
    node = make_node(devnet3[0], phases={"sum": SumPhase()}, fill_pool=False)
    m = node.sessions
    assert m._dispute_exclusions([("node1", "node3")]) == {"node3"}
    assert m._dispute_exclusions([("node2", "node3")]) == {"node3"}
    m._dispute_counts.clear()
    assert m._dispute_exclusions([("node2", "node3")]) == {"node2", "node3"}
    assert m._dispute_exclusions([("node3", "node4")]) == {"node3"}
    node.storage.close()
