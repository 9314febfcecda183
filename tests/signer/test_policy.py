"""Wallet policy and signed requests, without a network."""

from __future__ import annotations

import sqlite3
import time

import pytest

from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.policy import MAX_SESSIONS_PER_REQUEST, PolicyBook, PolicyEnforcer, PolicyRefusal
from fusion_prime.signer.requests import (
    KIND_CREATE_KEY,
    KIND_SIGN,
    RequestBody,
    Unauthenticated,
    make_request,
    verify_request,
)

CLIENT, OTHER, OP1, OP2 = (PartyIdentity.generate() for _ in range(4))
KEY = bytes(range(16))


def _book(tmp_path, approvals: int = 0, limit: int = 3):  # type: ignore[no-untyped-def]
    path = tmp_path / "policy.toml"
    path.write_text(
        "[default]\n"
        f'clients = ["{CLIENT.public_key.hex()}"]\n'
        f"max_signatures_per_window = {limit}\nwindow_seconds = 60\n"
        f"approvals_required = {approvals}\n"
        f'approvers = ["{OP1.public_key.hex()}", "{OP2.public_key.hex()}"]\n'
        f'create_key_clients = ["{OTHER.public_key.hex()}"]\n'
    )
    return PolicyBook.load(path)


def _sign(who, rid: str, approvers=(), digest: bytes = bytes(32), issued: int | None = None):  # type: ignore[no-untyped-def]
    body = RequestBody(KIND_SIGN, who.public_key, rid, issued or int(time.time() * 1000), key_id=KEY, digest=digest,
                       path=(0, 1))
    return verify_request(make_request(who, body, approvers))


def test_operator_approvals_are_counted_only_from_listed_approvers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    enforcer = PolicyEnforcer(_book(tmp_path, approvals=2), tmp_path / "p.sqlite3")
    with pytest.raises(PolicyRefusal, match="0 of 2"):
        enforcer.check(_sign(CLIENT, "a"))
    with pytest.raises(PolicyRefusal, match="1 of 2"):
        enforcer.check(_sign(CLIENT, "b", (OP1, OTHER)))  # OTHER is not an approver
    assert enforcer.check(_sign(CLIENT, "c", (OP1, OP2))) is False


def test_window_limit_and_idempotency_survive_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "p.sqlite3"
    enforcer = PolicyEnforcer(_book(tmp_path, limit=2), db)
    assert enforcer.check(_sign(CLIENT, "1")) is False
    assert enforcer.check(_sign(CLIENT, "1")) is True  # the same request again: idempotent
    assert enforcer.check(_sign(CLIENT, "2", digest=b"\x01" * 32)) is False
    enforcer.close()
    again = PolicyEnforcer(_book(tmp_path, limit=2), db)
    with pytest.raises(PolicyRefusal, match="limit"):
        again.check(_sign(CLIENT, "3"))
    with pytest.raises(PolicyRefusal, match="already used"):
        again.check(_sign(CLIENT, "1", digest=b"\x02" * 32))
    assert again.check(_sign(CLIENT, "3"), now=time.time() + 3600) is False  # a new window


def test_one_request_is_authorised_for_a_bounded_number_of_sign_sessions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A coordinator may retry a failed sign with another signer set, but a forwarded client
    request must not buy any number of signatures: at most MAX_SESSIONS_PER_REQUEST distinct
    sign sessions, the same session asked again being an idempotent repeat - across restarts."""
    assert MAX_SESSIONS_PER_REQUEST == 3
    db = tmp_path / "p.sqlite3"
    coordinator = PolicyEnforcer(_book(tmp_path, limit=10), db)
    request = _sign(CLIENT, "once")
    assert coordinator.check(request) is False  # the Sign RPC, before any session exists
    sessions = [bytes([i]) * 32 for i in range(1, 5)]
    for sid in sessions[:3]:
        assert coordinator.check(request, session_id=sid) is True  # its own proposal of each attempt
    assert coordinator.check(request, session_id=sessions[1]) is True  # the same session: idempotent
    with pytest.raises(PolicyRefusal, match=r"already authorised for 3 sign sessions \(at most 3\)"):
        coordinator.check(request, session_id=sessions[3])
    assert coordinator.sessions_of(CLIENT.public_key, "once") == sessions[:3]
    coordinator.close()
    again = PolicyEnforcer(_book(tmp_path, limit=10), db)
    with pytest.raises(PolicyRefusal, match="already authorised for 3"):
        again.check(request, session_id=sessions[3])
    assert again.check(request, session_id=sessions[0]) is True
    assert again.check(request) is True  # without a session: the old idempotent answer
    assert again.sessions_of(CLIENT.public_key, "once") == sessions[:3]

    # A participant meets the request first in a proposal; its window is charged once only.
    participant = PolicyEnforcer(_book(tmp_path, limit=2), tmp_path / "participant.sqlite3")
    assert participant.check(request, session_id=sessions[0]) is False
    assert participant.check(request, session_id=sessions[1]) is True
    assert participant.check(request, session_id=sessions[2]) is True
    with pytest.raises(PolicyRefusal, match="already authorised for 3"):
        participant.check(request, session_id=sessions[3])
    assert participant.check(_sign(CLIENT, "second", digest=b"\x01" * 32), session_id=sessions[3]) is False
    with pytest.raises(PolicyRefusal, match="limit"):  # two requests, two charges: the limit is 2
        participant.check(_sign(CLIENT, "third", digest=b"\x02" * 32), session_id=b"\x09" * 32)
    assert participant.sessions_of(CLIENT.public_key, "third") == [], "a refusal binds no session"


def test_a_policy_file_from_before_session_binding_opens_and_binds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db_path = tmp_path / "p.sqlite3"
    request = _sign(CLIENT, "old")
    old = sqlite3.connect(db_path)
    old.execute("CREATE TABLE authorised (client BLOB NOT NULL, request_id TEXT NOT NULL, body BLOB NOT NULL, "
                "key_id BLOB NOT NULL, at REAL NOT NULL, result BLOB, PRIMARY KEY (client, request_id))")
    old.execute("INSERT INTO authorised (client, request_id, body, key_id, at) VALUES (?,?,?,?,?)",
                (CLIENT.public_key, "old", request.body.identity(), KEY, time.time()))
    old.commit()
    old.close()
    enforcer = PolicyEnforcer(_book(tmp_path), db_path)
    for i in range(3):
        assert enforcer.check(request, session_id=bytes([i]) * 32) is True
    with pytest.raises(PolicyRefusal, match="already authorised for 3"):
        enforcer.check(request, session_id=b"\xff" * 32)


def test_clients_and_key_creation_rights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    enforcer = PolicyEnforcer(_book(tmp_path), tmp_path / "p.sqlite3")
    with pytest.raises(PolicyRefusal, match="not allowed"):
        enforcer.check(_sign(OTHER, "x"))
    create = RequestBody(KIND_CREATE_KEY, CLIENT.public_key, "k1", int(time.time() * 1000), threshold=2, parties=3)
    with pytest.raises(PolicyRefusal, match="may not create keys"):
        enforcer.check(verify_request(make_request(CLIENT, create)))


def test_forged_stale_and_malformed_requests(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = make_request(CLIENT, RequestBody(KIND_SIGN, CLIENT.public_key, "r", int(time.time() * 1000), key_id=KEY,
                                            digest=bytes(32)))
    forged = make_request(OTHER, RequestBody.decode(good.body))  # signed by the wrong key
    with pytest.raises(Unauthenticated):
        verify_request(forged)
    with pytest.raises(InvalidInput, match="too old"):
        _sign(CLIENT, "old", issued=int(time.time() * 1000) - 10**7)
    with pytest.raises(InvalidInput):
        RequestBody(KIND_SIGN, CLIENT.public_key, "bad id!", 1, key_id=KEY, digest=bytes(32)).validate()
    with pytest.raises(InvalidInput):
        RequestBody.decode(b"\x00garbage")
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text('[default]\nclients = ["zz"]\n')
    with pytest.raises(InvalidInput, match="not hex"):
        PolicyBook.load(bad_policy)
    bad_policy.write_text("[default]\napprovals_required = 1\n")
    with pytest.raises(InvalidInput, match="more approvals"):
        PolicyBook.load(bad_policy)


def test_reshare_requests_are_validated_and_need_admin_rights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fusion_prime.signer.requests import KIND_RESHARE

    enforcer = PolicyEnforcer(_book(tmp_path), tmp_path / "p.sqlite3")
    body = RequestBody(KIND_RESHARE, CLIENT.public_key, "rs", int(time.time() * 1000), key_id=KEY, threshold=2,
                       new_parties=("node1", "node2", "node4"))
    assert RequestBody.decode(body.encode()) == body
    with pytest.raises(PolicyRefusal, match="reshare"):
        enforcer.check(verify_request(make_request(CLIENT, body)))
    admin = RequestBody(KIND_RESHARE, OTHER.public_key, "rs", int(time.time() * 1000), key_id=KEY, threshold=2,
                        new_parties=("node1", "node2"))
    assert enforcer.check(verify_request(make_request(OTHER, admin))) is False
    with pytest.raises(InvalidInput, match="distinct"):
        RequestBody(KIND_RESHARE, OTHER.public_key, "x", 1, key_id=KEY, threshold=1,
                    new_parties=("node1", "node1")).validate()
    with pytest.raises(InvalidInput, match="threshold"):
        RequestBody(KIND_RESHARE, OTHER.public_key, "x", 1, key_id=KEY, threshold=3,
                    new_parties=("node1", "node2")).validate()
