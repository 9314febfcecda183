"""Status cannot take the wallet server's threads (issue 12, item 6).

Status is unauthenticated. It used to hold one of the 16 server threads for 3 s per unknown id
and up to 900 s per known one, so a flood pushed ListKeys and Sign behind it. Now an unknown
id is NOT_FOUND at once, and waiting streams are capped (globally and per client key) and
bounded in duration. The real WalletServicer and gRPC server (TLS) run here in-process over a
real storage and policy database; the node is a stand-in whose ``sign`` answers at once.
Assertions are about completion and order, never about time.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import trio
from coincurve import PrivateKey
from fp_wallet_server import serving_wallet

from fusion_prime.node.session import SessionOutcome
from fusion_prime.node.storage import Storage
from fusion_prime.proto.generated import wallet_pb2, wallet_pb2_grpc
from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.ecdsa import Signature
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.requests import KIND_SIGN, RequestBody, list_keys_request, make_request
from fusion_prime.signer.service import WalletServicer

CLIENT = PartyIdentity.generate()
SIGNING_KEY = PrivateKey()
KEY_ID = b"\x01" * 16


OTHER = PartyIdentity.generate()


class StandInNode:
    def __init__(self, storage: Storage, gate: threading.Event | None = None) -> None:
        self.storage = storage
        self.cfg = SimpleNamespace(node_id="node1")
        self.gate = gate  # when given, a sign waits for it (a session that takes its time)

    async def sign(self, key_id: bytes, digest: bytes, path: object, *, client_request: bytes = b"") -> SessionOutcome:
        if self.gate is not None:
            await trio.to_thread.run_sync(self.gate.wait)
        raw = SIGNING_KEY.sign_recoverable(digest, hasher=None)
        sig = Signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64],
                        Point.from_bytes(SIGNING_KEY.public_key.format()))
        return SessionOutcome(b"s" * 32, "sign", "done", ("node1",), output=sig)


@pytest.fixture
def wallet(tmp_path: Path):  # type: ignore[no-untyped-def]
    """(stub, servicer) of a running wallet server; the trio loop runs in a thread."""

    def serve(gate: threading.Event | None = None, **bounds):  # type: ignore[no-untyped-def]
        policy = (f'[default]\nclients = ["{CLIENT.public_key.hex()}", "{OTHER.public_key.hex()}"]\n'
                  "max_signatures_per_window = 1000\nwindow_seconds = 3600\n")

        def hold_the_key(storage: Storage) -> None:
            # the key the Sign below names: a node answers NOT_FOUND for a key it does not hold
            storage.put_key_share(KEY_ID, parties=["node1", "node2"], threshold=2, level="test-2048",
                                  share=b"stand-in share", public_key=SIGNING_KEY.public_key.format())

        served = stack.enter_context(serving_wallet(tmp_path, policy, lambda storage: StandInNode(storage, gate),
                                                    hold_the_key, **bounds))
        channel = grpc.secure_channel(f"127.0.0.1:{served.port}",
                                      grpc.ssl_channel_credentials(root_certificates=served.cert),
                                      options=[("grpc.ssl_target_name_override", "node1")])
        stack.callback(channel.close)
        return wallet_pb2_grpc.WalletServiceStub(channel), served.servicer

    with contextlib.ExitStack() as stack:
        yield serve


def _running(servicer: WalletServicer, client: bytes, request_id: str, state: str = "running") -> None:
    servicer._note(SimpleNamespace(body=SimpleNamespace(client=client, request_id=request_id)), state)  # type: ignore[arg-type]


def _status(stub, client: bytes, request_id: str):  # type: ignore[no-untyped-def]
    return stub.Status(wallet_pb2.StatusRequest(request_id=request_id, client_public_key=client))


def _sign_request(who: PartyIdentity = CLIENT, request_id: str = "sign-1") -> wallet_pb2.SignedRequest:
    import time

    body = RequestBody(KIND_SIGN, who.public_key, request_id, int(time.time() * 1000), key_id=KEY_ID,
                       digest=b"\x02" * 32, path=())
    return make_request(who, body)


def test_a_status_flood_leaves_sign_and_list_keys_completing(wallet):
    stub, servicer = wallet()
    clients = [PartyIdentity.generate().public_key for _ in range(10)]
    for c in clients:
        for r in ("a", "b"):
            _running(servicer, c, r)
    events: list[str] = []
    lock = threading.Lock()

    def long_lived(client: bytes, request_id: str) -> None:
        states, code = [], "OK"
        try:
            states = [u.state for u in _status(stub, client, request_id)]
        except grpc.RpcError as exc:
            code = exc.code().name
        with lock:
            events.append(f"stream:{code}:{','.join(states)}")

    # 20 long-lived streams for known, unfinished requests from 10 clients: the old code parked
    # 16 of them on all 16 server threads until the requests finished
    streams = [threading.Thread(target=long_lived, args=(c, r)) for c in clients for r in ("a", "b")]
    for t in streams:
        t.start()
    while True:  # until every stream is either waiting or refused
        with lock:
            refused = sum(e.startswith("stream:RESOURCE_EXHAUSTED") for e in events)
        if servicer.status_streams() + refused == len(streams):
            break
        threading.Event().wait(0.01)
    assert servicer.status_streams() == servicer.status_max_streams == 4 and refused == 16
    # 64 concurrent Status calls for ids nobody sent: each NOT_FOUND, none waits
    flood = [_status(stub, PartyIdentity.generate().public_key, f"unknown-{i}") for i in range(64)]
    for call in flood:
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert [k.key_id for k in stub.ListKeys(list_keys_request(CLIENT)).keys] == [KEY_ID]
    with lock:
        events.append("list-keys")
    signed = stub.Sign(_sign_request())
    assert signed.request_id == "sign-1" and len(signed.r) == 32
    with lock:
        events.append("sign")
    assert servicer.status_streams() == 4  # ListKeys and Sign completed while the streams waited
    for c in clients:
        for r in ("a", "b"):
            _running(servicer, c, r, "done")
    for t in streams:
        t.join()
    finished = [e for e in events if e.startswith("stream:OK")]
    assert finished == ["stream:OK:running,done"] * 4
    assert events.index("sign") < min(i for i, e in enumerate(events) if e.startswith("stream:OK"))
    assert servicer.status_streams() == 0


def test_per_client_cap_and_cancellation(wallet):
    # a duration bound far above any gap here: the cap is what is tested (at 0.2 s, the first two
    # streams ended before the third was asked for on a loaded machine)
    stub, servicer = wallet(status_max_seconds=600, status_max_streams=8, status_max_streams_per_client=2)
    client = PartyIdentity.generate().public_key
    for r in ("a", "b", "c"):
        _running(servicer, client, r)
    first, second = _status(stub, client, "a"), _status(stub, client, "b")
    assert next(first).state == "running" and next(second).state == "running"
    with pytest.raises(grpc.RpcError) as third:
        list(_status(stub, client, "c"))  # a third stream of the same client
    assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # a cancelled stream gives its slot back
    first.cancel()
    while servicer.status_streams() > 1:
        threading.Event().wait(0.01)
    stub_call = _status(stub, client, "c")
    assert next(stub_call).state == "running"
    stub_call.cancel()
    second.cancel()
    while servicer.status_streams():
        threading.Event().wait(0.01)
    # a finished request is answered from memory and ends at once
    _running(servicer, client, "c", "done")
    assert [u.state for u in _status(stub, client, "c")] == ["running", "done"]


def test_a_status_stream_ends_by_itself_at_its_duration_bound(wallet):
    stub, servicer = wallet(status_max_seconds=0.2, status_max_streams=8, status_max_streams_per_client=2)
    client = PartyIdentity.generate().public_key
    for r in ("a", "b"):
        _running(servicer, client, r)
    calls = [_status(stub, client, r) for r in ("a", "b")]
    for call in calls:
        with pytest.raises(grpc.RpcError) as ended:
            list(call)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "too long" in (ended.value.details() or "")
    while servicer.status_streams():
        threading.Event().wait(0.01)


def test_waiting_signs_hold_at_most_their_budget_of_threads_per_client_and_in_all(wallet):
    """Sign waits for its session on a server thread: one client cannot hold more than its share
    of those threads, all clients together not more than the sign budget, a call beyond either is
    RESOURCE_EXHAUSTED at once (not queued), and ListKeys still answers while the budget is full."""
    gate = threading.Event()
    stub, servicer = wallet(gate=gate, sign_max_waiting=3, sign_max_waiting_per_client=2)
    held = [stub.Sign.future(_sign_request(CLIENT, f"c-{i}")) for i in range(2)]
    while servicer.waiting_calls()["sign"] < 2:
        threading.Event().wait(0.01)
    with pytest.raises(grpc.RpcError) as third:
        stub.Sign(_sign_request(CLIENT, "c-2"))
    assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 per client" in (third.value.details() or "")
    held.append(stub.Sign.future(_sign_request(OTHER, "o-0")))  # another client still gets in
    while servicer.waiting_calls()["sign"] < 3:
        threading.Event().wait(0.01)
    with pytest.raises(grpc.RpcError) as full:
        stub.Sign(_sign_request(OTHER, "o-1"))
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 3" in (full.value.details() or "")
    assert [k.key_id for k in stub.ListKeys(list_keys_request(CLIENT)).keys] == [KEY_ID]
    assert not any(f.done() for f in held)  # the refusals did not wait for the held calls
    gate.set()
    assert all(len(f.result().r) == 32 for f in held)
    assert servicer.waiting_calls()["sign"] == 0
    assert len(stub.Sign(_sign_request(CLIENT, "c-2")).r) == 32  # the slot is back: the refused id now signs
