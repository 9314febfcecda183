"""The node's phase handlers against real storage (SQLite, AES-GCM) and real test-level key
material from in-process protocol runs: what a proposal may and may not make a node do."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import pytest
from fp_network import committee, identities, presign_with, roster

from fusion_prime.node.phases import PresignPhase, SignPhase
from fusion_prime.node.session import Refuse, SessionContext
from fusion_prime.node.storage import COORDINATOR_RESERVATION, KeyMaterial, Storage
from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.presign import PresignMachine
from fusion_prime.protocol.sign import SignMachine

NODES = ["node1", "node2", "node3"]
INDEX = {n: i + 1 for i, n in enumerate(NODES)}


@pytest.fixture(scope="module")
def material():
    shares, aux = committee(2, 3)
    presigs = [presign_with(shares, aux, [1, 2])[0] for _ in range(2)]
    return shares, aux, presigs


def node1_store(path: Path, material) -> tuple[Storage, bytes, list[bytes]]:
    """node1's database: its share, its aux info and its halves of the presignatures (signers
    node1 and node2), stored as the node's own phases store them."""
    shares, aux, presigs = material
    share = shares[1]
    key_id = bytes.fromhex(share.key_id)
    store = Storage(path, KeyMaterial.passphrase("correct horse battery staple"), node_id="node1",
                    scrypt_log2_n=10, allow_weak_kdf=True)
    store.put_key_share(key_id, parties=NODES, threshold=share.threshold, level=share.level, share=share.to_bytes(),
                        public_key=share.group_key.to_bytes())
    store.put_aux_info(bytes.fromhex(aux[1].aux_id), parties=NODES, level=aux[1].level, aux=aux[1].to_bytes())
    ids = []
    for p in presigs:
        mine = p[1]
        store.put_presignature(mine.presign_id, key_id=key_id, signers=["node1", "node2"], data=mine.to_bytes(),
                               epoch=mine.epoch, aux_id=bytes.fromhex(mine.aux_id))
        ids.append(mine.presign_id)
    return store, key_id, ids


def context(store: Storage, proposal: peer_pb2.SessionProposal) -> SessionContext:
    participants = list(proposal.participants)
    ids = identities(3)
    return SessionContext("node1", 1, ids[1], proposal, {n: INDEX[n] for n in participants},
                          {INDEX[n]: roster(3)[INDEX[n]] for n in participants}, store, test_mode=True)


def sign_proposal(coordinator: str, participants: list[str], key_id: bytes, presig_id: bytes,
                  session_id: bytes | None = None) -> peer_pb2.SessionProposal:
    p = peer_pb2.SessionProposal(phase="sign", coordinator=coordinator, participants=participants,
                                 session_id=session_id or secrets.token_bytes(32))
    p.sign.key_id, p.sign.presignature_id = key_id, presig_id
    p.sign.digest = hashlib.sha256(b"pay bob").digest()
    return p


def test_a_bad_sign_proposal_burns_no_presignature(tmp_path, material):
    store, key_id, (pid, reserved) = node1_store(tmp_path / "node1.sqlite3", material)
    with store:
        # node1 sets one aside for a sign session of its own, not yet proposed.
        assert store.reserve_presignature(key_id, ["node1", "node2"], COORDINATOR_RESERVATION) == pid
        other = store.reserve_presignature(key_id, ["node1", "node2"], COORDINATOR_RESERVATION)
        assert other == reserved
        store.release_presignature(reserved)
        # A peer's proposal naming node1's reserved presignature, with the right key and
        # signers: refused, and the reservation survives for node1's own session.
        with pytest.raises(Refuse, match="reserved for another sign session"):
            SignPhase().build(context(store, sign_proposal("node2", ["node1", "node2"], key_id, pid)))
        assert store.presignature_state(pid) == "reserved"
        # Wrong participants (the machine would refuse later: too late, it was consumed).
        for participants in (["node1", "node3"], ["node1", "node2", "node3"]):
            with pytest.raises(Refuse, match="made for signers node1, node2"):
                SignPhase().build(context(store, sign_proposal("node2", participants, key_id, reserved)))
        assert store.presignature_state(reserved) == "available"
        # Another key this node holds: the proposal's key must be the presignature's.
        store.put_key_share(b"z" * 16, parties=NODES, threshold=2, level=material[0][1].level,
                            share=material[0][1].to_bytes())
        with pytest.raises(Refuse, match="belongs to another key"):
            SignPhase().build(context(store, sign_proposal("node2", ["node1", "node2"], b"z" * 16, reserved)))
        assert store.presignature_state(reserved) == "available"
        assert store.presignature_counts(key_id).consumed == 0

        # The legitimate sessions: a peer's, on the available one; node1's own, on its reservation.
        for coordinator, presig_id in (("node2", reserved), ("node1", pid)):
            machine = SignPhase().build(context(store, sign_proposal(coordinator, ["node1", "node2"], key_id,
                                                                     presig_id)))
            assert isinstance(machine, SignMachine)
            assert store.presignature_state(presig_id) == "consumed"
        with pytest.raises(Refuse, match="already consumed"):
            SignPhase().build(context(store, sign_proposal("node1", ["node1", "node2"], key_id, pid)))


def test_presign_only_with_the_newest_aux_info_of_the_committee(tmp_path, material):
    store, key_id, _ = node1_store(tmp_path / "node1.sqlite3", material)
    aux = material[1][1]
    old_aux = bytes.fromhex(aux.aux_id)
    with store:
        # Newer aux info for the committee (as a refresh or a new aux-info session leaves it).
        newer = b"N" * 16
        store.put_aux_info(newer, parties=NODES, level=aux.level, aux=aux.to_bytes())
        assert store.latest_aux_info(NODES) == newer

        def proposal(aux_id: bytes) -> peer_pb2.SessionProposal:
            p = peer_pb2.SessionProposal(phase="presign", coordinator="node2", participants=["node1", "node2"],
                                         session_id=secrets.token_bytes(32))
            p.presign.key_id, p.presign.aux_id, p.presign.epoch = key_id, aux_id, 0
            return p

        # A coordinator keeping the old Paillier key in use: refused, nothing built.
        with pytest.raises(Refuse, match=f"aux info {old_aux.hex()} is not the newest .* \\(that is {newer.hex()}\\)"):
            PresignPhase().build(context(store, proposal(old_aux)))
        with pytest.raises(Refuse, match="is not the newest"):
            PresignPhase().build(context(store, proposal(b"U" * 16)))  # unknown here
        assert isinstance(PresignPhase().build(context(store, proposal(newer))), PresignMachine)
