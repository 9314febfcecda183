"""Transport over real gRPC, real mutual TLS on loopback sockets."""

from __future__ import annotations

import grpc
import pytest
import trio
from fp_guards import HANG_GUARD
from fp_node_helpers import LogCapture, counter_value, make_transport, running

from fusion_prime.node.tls import generate_certificate
from fusion_prime.node.transport import ReplayWindow
from fusion_prime.proto.generated import peer_pb2, peer_pb2_grpc

SID = b"S" * 32
Ack = peer_pb2.Ack


def cfgs(devnet):
    return [n.config_path for n in devnet]


def test_three_nodes_exchange_signed_envelopes(devnet3):
    async def main():
        ts = [make_transport(p) for p in cfgs(devnet3)]
        async with running(*ts):
            inboxes = [t.open_session(SID, "test", ["node1", "node2", "node3"]) for t in ts]
            deadline = trio.current_time() + 5
            for sender in ts:
                for receiver in ("node1", "node2", "node3"):
                    if receiver != sender.node_id:
                        ok = await sender.send(receiver, session_id=SID, phase="test", round=1, broadcast=True,
                                               payload=f"from {sender.node_id}".encode(), deadline=deadline)
                        assert ok
            for t, inbox in zip(ts, inboxes, strict=True):
                got = {}
                for _ in range(2):
                    with trio.fail_after(HANG_GUARD):
                        m = await inbox.receive()
                    got[m.sender] = m.payload
                assert got == {p: f"from {p}".encode() for p in ("node1", "node2", "node3") if p != t.node_id}
            health = await ts[0].health("node3")
            assert health is not None and health.node_id == "node3"

    trio.run(main)


def test_certificate_not_in_roster_cannot_connect(devnet3):
    async def main():
        t2 = make_transport(devnet3[1].config_path)
        t1 = make_transport(devnet3[0].config_path)
        async with running(t2):
            # A stranger presenting a fresh certificate - even one that claims to be node1.
            rogue_cert, rogue_key = generate_certificate("node1")
            creds = grpc.ssl_channel_credentials(t1.tls.trust.bundle, rogue_key, rogue_cert)

            def call():
                with grpc.secure_channel(t1.peers["node2"].address, creds,
                                         [("grpc.ssl_target_name_override", "node2")]) as ch:
                    return peer_pb2_grpc.PeerStub(ch).Health(peer_pb2.HealthRequest(), timeout=3)

            with pytest.raises(grpc.RpcError) as err:
                await trio.to_thread.run_sync(call)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

            # A client that does not trust node2's pinned certificate refuses the server, too.
            def call_untrusting():
                other_cert, _ = generate_certificate("node2")
                c = grpc.ssl_channel_credentials(other_cert, t1.tls.key_pem, t1.tls.cert_pem)
                with grpc.secure_channel(t1.peers["node2"].address, c,
                                         [("grpc.ssl_target_name_override", "node2")]) as ch:
                    return peer_pb2_grpc.PeerStub(ch).Health(peer_pb2.HealthRequest(), timeout=3)

            with pytest.raises(grpc.RpcError):
                await trio.to_thread.run_sync(call_untrusting)
            # The real node1 connects fine.
            assert (await t1.health("node2")) is not None

    trio.run(main)


def test_tampered_forged_and_replayed_envelopes_are_rejected_and_logged(devnet3):
    logs = LogCapture()

    async def main():
        t2 = make_transport(devnet3[1].config_path)
        async with running(t2):
            inbox = t2.open_session(SID, "test", ["node1", "node2"])
            first_run = make_transport(devnet3[0].config_path, epoch=100)
            old = first_run.make_envelope("node2", session_id=SID, phase="test", round=1, broadcast=False,
                                          payload=b"round one")
            assert (await first_run.deliver_once(old, 3)).status == Ack.ACCEPTED
            assert (await inbox.receive()).payload == b"round one"

            # Tampered payload: signature no longer verifies.
            bad = peer_pb2.Envelope.FromString(old.SerializeToString())
            bad.payload, bad.sequence = b"round one, edited", old.sequence + 1
            ack = await first_run.deliver_once(bad, 3)
            assert ack.status == Ack.REJECTED and "signature" in ack.reason

            # Same bytes again: a duplicate (a retry or a replay within the window) is not processed twice.
            assert (await first_run.deliver_once(old, 3)).status == Ack.DUPLICATE

            # node1 restarts (new epoch) - now the old envelope is a replay of a previous run.
            second_run = make_transport(devnet3[0].config_path, epoch=200)
            fresh = second_run.make_envelope("node2", session_id=SID, phase="test", round=2, broadcast=False,
                                             payload=b"round two")
            assert (await second_run.deliver_once(fresh, 3)).status == Ack.ACCEPTED
            ack = await second_run.deliver_once(old, 3)
            assert ack.status == Ack.REJECTED and "replay" in ack.reason

            # A roster member forging another member's sender name is caught by the TLS binding.
            t3 = make_transport(devnet3[2].config_path)
            forged = t3.make_envelope("node2", session_id=SID, phase="test", round=1, broadcast=False, payload=b"x")
            forged.sender = "node1"
            forged.ClearField("signature")
            ack = await t3.deliver_once(forged, 3)
            assert ack.status == Ack.REJECTED and "TLS peer" in ack.reason

            # Addressed to someone else.
            misrouted = second_run.make_envelope("node3", session_id=SID, phase="test", round=1, broadcast=False,
                                                 payload=b"y")
            misrouted.receiver = "node2"
            ack = await second_run.deliver_once(misrouted, 3)
            assert ack.status == Ack.REJECTED

            m = t2.metrics
            assert counter_value(m, "fp_envelopes_rejected_total", reason="bad-signature") == 2  # tampered, misrouted
            assert counter_value(m, "fp_envelopes_rejected_total", reason="duplicate") == 1
            assert counter_value(m, "fp_envelopes_rejected_total", reason="replay-old-epoch") == 1
            assert counter_value(m, "fp_envelopes_rejected_total", reason="sender-mismatch") == 1
            # Only the two genuine envelopes ever reached the session.
            assert (await inbox.receive()).payload == b"round two"
            with pytest.raises(trio.WouldBlock):
                inbox.receive_nowait()

    try:
        trio.run(main)
        rejected = [e for e in logs.events() if e["event"] == "envelope rejected"]
        assert {e["reason"] for e in rejected} >= {"bad-signature", "duplicate", "replay-old-epoch", "sender-mismatch"}
        assert all("session_id" in e and e["peer"] for e in rejected)
        assert "round one" not in logs.text and "726f756e64206f6e65" not in logs.text  # payload never logged
    finally:
        logs.close()


def test_unknown_session_is_buffered_then_delivered_or_expired(devnet3):
    async def main():
        t1 = make_transport(devnet3[0].config_path)
        t2 = make_transport(devnet3[1].config_path, buffer_ttl=0.4)
        async with running(t1, t2):
            early = b"E" * 32
            never = b"N" * 32
            env = t1.make_envelope("node2", session_id=early, phase="test", round=1, broadcast=True, payload=b"early")
            assert (await t1.deliver_once(env, 3)).status == Ack.BUFFERED
            env = t1.make_envelope("node2", session_id=never, phase="test", round=1, broadcast=True, payload=b"lost")
            assert (await t1.deliver_once(env, 3)).status == Ack.BUFFERED
            assert t2.buffered_count == 2
            inbox = t2.open_session(early, "test", ["node1", "node2"])
            assert (await inbox.receive()).payload == b"early"
            await trio.sleep(0.8)
            assert t2.buffered_count == 0
            assert counter_value(t2.metrics, "fp_envelopes_rejected_total", reason="expired-unknown-session") == 1
            # Nothing crashed: the node still serves.
            assert await t1.send("node2", session_id=early, phase="test", round=2, broadcast=True, payload=b"next",
                                 deadline=trio.current_time() + 3)
            assert (await inbox.receive()).payload == b"next"
            # After the session closes, late envelopes are refused, not buffered again.
            t2.close_session(early)
            env = t1.make_envelope("node2", session_id=early, phase="test", round=3, broadcast=True, payload=b"late")
            assert (await t1.deliver_once(env, 3)).status == Ack.REJECTED

    trio.run(main)


def test_delivery_retries_until_peer_comes_up(devnet3):
    async def main():
        t1 = make_transport(devnet3[0].config_path)
        t2 = make_transport(devnet3[1].config_path)
        async with running(t1) as nursery:
            result = {}

            async def sender():
                result["ok"] = await t1.send("node2", session_id=SID, phase="test", round=1, broadcast=True,
                                             payload=b"hello", deadline=trio.current_time() + 8)

            nursery.start_soon(sender)
            await trio.sleep(0.5)  # node2 is down: attempts fail and are retried
            await nursery.start(t2.run)
            inbox = t2.open_session(SID, "test", ["node1", "node2"])
            with trio.fail_after(HANG_GUARD):
                assert (await inbox.receive()).payload == b"hello"
            while "ok" not in result:
                await trio.sleep(0.05)
            assert result["ok"]
            assert counter_value(t1.metrics, "fp_delivery_retries_total", peer="node2") >= 1
            # A dead peer makes delivery give up at the deadline, reporting failure.
            t3_missing = await t1.send("node3", session_id=SID, phase="test", round=1, broadcast=True, payload=b"x",
                                       deadline=trio.current_time() + 0.5)
            assert t3_missing is False

    trio.run(main)


def test_replay_window_accepts_reordering_and_refuses_old():
    w = ReplayWindow(size=8)
    for seq in (5, 3, 4, 9):
        assert w.classify(1, seq) == "new"
        w.record(1, seq)
    assert w.classify(1, 3) == "duplicate"
    assert w.classify(1, 1) == "replay-outside-window"
    assert w.classify(0, 50) == "replay-old-epoch"
    assert w.classify(2, 1) == "new"


# byte budgets ---------------------------------------------------------------------------------
MiB = 1 << 20


def _sid(tag: str, i: int) -> bytes:
    return f"{tag}-{i}".encode().ljust(32, b".")


async def _buffer(t, receiver, session_id, size):
    """One envelope of ``size`` payload bytes for an unknown session: True if buffered, False
    if refused as over budget (RESOURCE_EXHAUSTED)."""
    env = t.make_envelope(receiver, session_id=session_id, phase="test", round=1, broadcast=True,
                          payload=b"\x01" * size)
    try:
        ack = await t.deliver_once(env, 30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
        return False
    assert ack.status == Ack.BUFFERED, ack
    return True


def test_early_buffer_is_bounded_in_bytes_per_sender_and_in_total(devnet3):
    """A peer cannot park more than its byte budget of early envelopes, well before the count
    limit; the total budget bounds all peers together; opening a session gives the bytes back."""
    async def main():
        t1, t3 = make_transport(devnet3[0].config_path), make_transport(devnet3[2].config_path)
        t2 = make_transport(devnet3[1].config_path, buffer_ttl=600, buffer_bytes_per_sender=8 * MiB,
                            buffer_bytes=12 * MiB)
        async with running(t1, t2, t3):
            assert [await _buffer(t1, "node2", _sid("a", i), MiB) for i in range(9)] == [True] * 8 + [False]
            assert not await _buffer(t1, "node2", _sid("tiny", 0), 1), "the byte budget binds, not the count"
            assert t2.buffered_bytes_from("node1") == 8 * MiB and t2.buffered_count == 8
            # node3 has its own budget, but only 4 MiB of the 12 MiB total is left.
            assert [await _buffer(t3, "node2", _sid("c", i), MiB) for i in range(5)] == [True] * 4 + [False]
            assert t2.buffered_bytes == 12 * MiB
            assert counter_value(t2.metrics, "fp_envelopes_rejected_total", reason="buffer-bytes-full") == 3

            # The session of one of node1's envelopes opens: its bytes move to the inbox...
            inbox = t2.open_session(_sid("a", 0), "test", ["node1", "node2"])
            assert t2.buffered_bytes_from("node1") == 7 * MiB and t2.inbox_bytes == MiB
            assert len((await inbox.receive()).payload) == MiB
            assert t2.inbox_bytes == 0  # ... and leave the accounting once the session took it
            assert await _buffer(t1, "node2", _sid("a", 9), MiB), "room again for node1"
            # Opening every session empties the buffer, and closing them leaves nothing counted.
            t2.close_session(_sid("a", 0))
            for i in range(1, 10):
                t2.open_session(_sid("a", i), "test", ["node1", "node2"])
            for i in range(4):
                t2.open_session(_sid("c", i), "test", ["node3", "node2"])
            assert t2.buffered_bytes == 0 and t2.buffered_count == 0
            assert t2.inbox_bytes == 12 * MiB
            for i in range(1, 10):
                t2.close_session(_sid("a", i))
            for i in range(4):
                t2.close_session(_sid("c", i))
            assert t2.inbox_bytes == 0

    trio.run(main)


def test_expired_early_envelopes_give_their_bytes_back(devnet3):
    async def main():
        t1 = make_transport(devnet3[0].config_path)
        t2 = make_transport(devnet3[1].config_path, buffer_ttl=1.0, buffer_bytes_per_sender=4 * MiB)
        async with running(t1, t2):
            for i in range(3):
                await _buffer(t1, "node2", _sid("x", i), MiB)  # whether or not it already expired
            with trio.fail_after(HANG_GUARD):  # the sweep runs every ttl/4
                while t2.buffered_bytes or t2.buffered_count:
                    await trio.sleep(0.1)
            assert t2.buffered_bytes_from("node1") == 0
            assert counter_value(t2.metrics, "fp_envelopes_rejected_total", reason="expired-unknown-session") >= 1
            # The whole budget is available again.
            assert [await _buffer(t1, "node2", _sid("y", i), MiB) for i in range(4)] == [True] * 4

    trio.run(main)


def test_session_inbox_is_bounded_in_bytes(devnet3):
    """A participant flooding a running session stops at the inbox byte budget (refused with
    RESOURCE_EXHAUSTED, counted); the budget frees as the driver reads, and a closed session
    leaves nothing counted."""
    async def main():
        t1 = make_transport(devnet3[0].config_path)
        t2 = make_transport(devnet3[1].config_path, session_inbox_bytes=4 * MiB)
        async with running(t1, t2):
            inbox = t2.open_session(SID, "test", ["node1", "node2"])

            async def one(size):
                env = t1.make_envelope("node2", session_id=SID, phase="test", round=1, broadcast=True,
                                       payload=b"\x02" * size)
                try:
                    return (await t1.deliver_once(env, 30)).status == Ack.ACCEPTED
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    return False

            assert [await one(MiB) for _ in range(5)] == [True] * 4 + [False]
            assert not await one(1)
            assert t2.inbox_bytes == 4 * MiB
            assert counter_value(t2.metrics, "fp_envelopes_rejected_total", reason="inbox-bytes-full") == 2
            await inbox.receive()
            assert t2.inbox_bytes == 3 * MiB
            assert await one(MiB)
            t2.close_session(SID)
            assert t2.inbox_bytes == 0
            # Delivery with retries to a full inbox gives up at its deadline instead of crashing anything.
            other = b"O" * 32
            t2.open_session(other, "test", ["node1", "node2"])
            assert await t1.send("node2", session_id=other, phase="test", round=1, broadcast=True,
                                 payload=b"\x03" * (4 * MiB - 1), deadline=trio.current_time() + 30)
            assert not await t1.send("node2", session_id=other, phase="test", round=1, broadcast=True,
                                     payload=b"\x03" * 2, deadline=trio.current_time() + 1)

    trio.run(main)


def test_byte_budgets_below_one_payload_are_refused(devnet3):
    from fusion_prime.node.transport import TransportError

    with pytest.raises(TransportError, match="byte budgets"):
        make_transport(devnet3[0].config_path, session_inbox_bytes=1024)
