"""Key administration needs the client's signed request at every participant.

A review found that participants accepted keygen, aux-info, key-refresh and reshare proposals
from any roster peer: a malicious node could reshare a key to threshold 1 among itself and one
honest node and so learn the whole key. Here node1 is that malicious coordinator (it runs with
no policy at all); node2 and node3 run the wallet's WalletAuthorizer over their own policy
files. Real gRPC + mutual TLS between in-process nodes, SQLite, test level."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

from fp_guards import HANG_GUARD
from fp_node_helpers import make_node, running_nodes

from fusion_prime.node.devnet import create_devnet
from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.policy import PolicyBook, PolicyEnforcer
from fusion_prime.signer.requests import (
    KIND_CREATE_KEY,
    KIND_REFRESH,
    KIND_RESHARE,
    RequestBody,
    make_request,
)
from fusion_prime.signer.service import WalletAuthorizer

ADMIN, CLIENT = PartyIdentity.generate(), PartyIdentity.generate()


def _authorizer(folder: Path) -> WalletAuthorizer:
    policy = folder / "policy.toml"
    policy.write_text(
        "[default]\n"
        f'clients = ["{CLIENT.public_key.hex()}"]\n'
        "max_signatures_per_window = 10\nwindow_seconds = 3600\n"
        f'create_key_clients = ["{ADMIN.public_key.hex()}"]\n'
    )
    return WalletAuthorizer(PolicyEnforcer(PolicyBook.load(policy), folder / "wallet-policy.sqlite3"))


def _raw(who: PartyIdentity, body: RequestBody) -> bytes:
    return make_request(who, body).SerializeToString(deterministic=True)


def _now() -> int:
    return int(time.time() * 1000)


def _last_refusal(node) -> str:  # type: ignore[no-untyped-def]
    """Why this node last refused a proposal (from its own audit log)."""
    return [e for e in node.storage.audit_log() if e["event"] == "session-refused"][-1]["detail"]["reason"]


async def _wait_healthy(node, peers) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(HANG_GUARD):
        while not set(peers) <= set(await node.sessions.healthy_peers("keygen")):
            await trio.sleep(0.2)


def test_only_a_client_signed_admin_request_starts_key_administration(tmp_path):
    devnet = create_devnet(tmp_path / "net", 3, round_deadline_seconds=20.0, scrypt_log2_n=10, with_metrics=False)
    node1 = make_node(devnet[0], fill_pool=False, prime_pool=False)  # malicious: accepts anything
    honest = [make_node(d, fill_pool=False, prime_pool=False, authorize=_authorizer(d.folder)) for d in devnet[1:]]
    node2 = honest[0]
    create = RequestBody(KIND_CREATE_KEY, ADMIN.public_key, "create-1", _now(), threshold=2, parties=3)

    async def main():
        async with running_nodes(node1, *honest):
            await _wait_healthy(node1, ["node2", "node3"])
            # No client request: refused by the honest nodes, nothing is generated.
            bare = await node1.keygen(2, 3)
            assert bare.status == "refused" and "signed request" in _last_refusal(node2), bare
            # A request from a client that may not create keys: refused by their own policy.
            intruder = RequestBody(KIND_CREATE_KEY, CLIENT.public_key, "create-x", _now(), threshold=2, parties=3)
            await _wait_healthy(node1, ["node2", "node3"])  # a refusal makes the coordinator re-probe
            denied = await node1.keygen(2, 3, client_request=_raw(CLIENT, intruder))
            assert denied.status == "refused" and "create_key_clients" in _last_refusal(node2), denied
            # The admin's request, but the coordinator changes the threshold: refused.
            await _wait_healthy(node1, ["node2", "node3"])
            bent = await node1.keygen(3, 3, client_request=_raw(ADMIN, create))
            assert bent.status == "refused" and "does not match" in _last_refusal(node2), bent
            await _wait_healthy(node1, ["node2", "node3"])

            kg = await node1.keygen(2, 3, client_request=_raw(ADMIN, create))
            assert kg.ok, kg
            key_id = kg.output["key_id"]
            assert (await node1.aux_info(["node1", "node2", "node3"])).status == "refused"
            await _wait_healthy(node1, ["node2", "node3"])
            assert (await node1.aux_info(["node1", "node2", "node3"], client_request=_raw(ADMIN, create))).ok
            assert (await node1.presign(key_id, ["node1", "node2"])).ok, "presign stays node-internal"

            # The attack: reshare to threshold 1 among node1 and node2 - node1 would then hold
            # the whole key. Without a request, with the CreateKey request replayed, or with
            # an admin's reshare request whose committee or threshold differs: all refused.
            for request in (b"", _raw(ADMIN, create),
                            _raw(ADMIN, RequestBody(KIND_RESHARE, ADMIN.public_key, "rs-1", _now(), key_id=key_id,
                                                    threshold=2, new_parties=("node1", "node2", "node3")))):
                await _wait_healthy(node1, ["node2", "node3"])
                out = await node1.reshare(key_id, ["node1", "node2"], 1, client_request=request)
                assert out.status == "refused", out
            # Nor can it refresh the key (wiping presignature pools) on its own.
            await _wait_healthy(node1, ["node2", "node3"])
            assert (await node1.refresh(key_id)).status == "refused"
            await _wait_healthy(node1, ["node2", "node3"])
            wrong_key = RequestBody(KIND_REFRESH, ADMIN.public_key, "rf-x", _now(), key_id=bytes(16))
            assert (await node1.refresh(key_id, client_request=_raw(ADMIN, wrong_key))).status == "refused"
            for node in honest:
                info = node.storage.key_info(key_id)
                assert info["threshold"] == 2 and info["parties"] == ["node1", "node2", "node3"]
                assert info["epoch"] == 0

            # The admin's own refresh request is honoured.
            refresh = RequestBody(KIND_REFRESH, ADMIN.public_key, "rf-1", _now(), key_id=key_id)
            await _wait_healthy(node1, ["node2", "node3"])
            assert (await node1.refresh(key_id, client_request=_raw(ADMIN, refresh))).ok
            assert node2.storage.key_info(key_id)["epoch"] == 1

    trio.run(main)


def test_authorizer_checks_each_admin_phase_against_the_request():
    """Without a network: what the authorizer says to proposals a malicious coordinator builds."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        authorize = _authorizer(Path(d))
        key = bytes(range(16))
        reshare = RequestBody(KIND_RESHARE, ADMIN.public_key, "rs-2", _now(), key_id=key, threshold=2,
                              new_parties=("node1", "node2", "node3"))
        from fusion_prime.node.phases import RefreshParams

        p = peer_pb2.SessionProposal(phase="key-refresh", participants=["node1", "node2", "node3"])
        p.opaque.data = RefreshParams(key, 0).encode()
        p.client_request = _raw(ADMIN, reshare)
        ok, reason = authorize(p)
        assert not ok and "does not match" in reason
        p = peer_pb2.SessionProposal(phase="aux-info", participants=["node1", "node2"])
        p.aux_info.level = "test-2048"
        p.client_request = _raw(ADMIN, reshare)
        ok, reason = authorize(p)
        assert not ok and "committee" in reason
        p = peer_pb2.SessionProposal(phase="aux-info", participants=["node1", "node2", "node3"])
        p.aux_info.level = "test-2048"
        p.client_request = _raw(ADMIN, reshare)
        assert authorize(p) == (True, "")
        p = peer_pb2.SessionProposal(phase="made-up", participants=["node1", "node2"])
        p.client_request = _raw(ADMIN, reshare)
        ok, reason = authorize(p)
        assert not ok and "made-up" in reason
