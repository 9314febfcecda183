"""Canonical bytes that the node signs: envelopes, session proposals, session ids.

Signatures are over a SHA-256 digest of the project's injective encoding
(``protocol.encoding.Encoder``: tagged, length-prefixed fields) with a domain tag per kind
of object, never over protobuf bytes - protobuf serialisation is not canonical across
implementations, and a signature must mean the same thing to every verifier.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from ..proto.generated import peer_pb2
from ..protocol.encoding import Encoder
from ..protocol.identity import PartyIdentity, verify_signature

ENVELOPE_DOMAIN = b"fusion-prime/envelope/v1"
PROPOSAL_DOMAIN = b"fusion-prime/session-proposal/v1"
SESSION_ID_DOMAIN = b"fusion-prime/session-id/v1"
WITHDRAWAL_DOMAIN = b"fusion-prime/session-withdrawal/v1"


def envelope_digest(env: peer_pb2.Envelope) -> bytes:
    enc = (
        Encoder()
        .bytes(ENVELOPE_DOMAIN)
        .bytes(env.session_id)
        .bytes(env.phase.encode())
        .uint(env.round)
        .bytes(env.sender.encode())
        .bytes(env.receiver.encode())
        .uint(1 if env.broadcast else 0)
        .uint(env.epoch)
        .uint(env.sequence)
        .bytes(hashlib.sha256(env.payload).digest())
    )
    return hashlib.sha256(enc.finish()).digest()


def sign_envelope(env: peer_pb2.Envelope, identity: PartyIdentity) -> peer_pb2.Envelope:
    env.signature = identity.sign(envelope_digest(env))
    return env


def verify_envelope(env: peer_pb2.Envelope, public_key: bytes) -> bool:
    return verify_signature(public_key, envelope_digest(env), env.signature)


def params_encoding(proposal: peer_pb2.SessionProposal) -> bytes:
    """The phase parameters as canonical bytes (each field explicitly, not protobuf bytes)."""
    which = proposal.WhichOneof("params") or ""
    enc = Encoder().bytes(which.encode())
    if which == "keygen":
        enc.uint(proposal.keygen.threshold).bytes(proposal.keygen.level.encode())
    elif which == "aux_info":
        enc.bytes(proposal.aux_info.level.encode())
    elif which == "presign":
        enc.bytes(proposal.presign.key_id).bytes(proposal.presign.aux_id).uint(proposal.presign.epoch)
    elif which == "sign":
        s = proposal.sign
        enc.bytes(s.key_id).bytes(s.presignature_id).bytes(s.digest).uints(s.path).bytes(s.client_request)
    elif which == "opaque":
        enc.bytes(proposal.opaque.data)
    enc.bytes(proposal.client_request)  # the forwarded admin request, if any (bound like the params)
    return enc.finish()


def derive_session_id(
    phase: str, coordinator: str, participants: Sequence[str], nonce: bytes, params: bytes, round_deadline_ms: int
) -> bytes:
    """Session ids bind phase, coordinator, participant list, parameters and a fresh nonce
    (DESIGN §2), so no two sessions - and no two *kinds* of session - share an id."""
    enc = (
        Encoder()
        .bytes(SESSION_ID_DOMAIN)
        .bytes(phase.encode())
        .bytes(coordinator.encode())
        .list_of_bytes([p.encode() for p in participants])
        .bytes(nonce)
        .bytes(params)
        .uint(round_deadline_ms)
    )
    return hashlib.sha256(enc.finish()).digest()


def proposal_session_id(proposal: peer_pb2.SessionProposal) -> bytes:
    return derive_session_id(
        proposal.phase, proposal.coordinator, list(proposal.participants), proposal.nonce,
        params_encoding(proposal), proposal.round_deadline_ms,
    )


def fresh_nonce() -> bytes:
    return secrets.token_bytes(32)


def proposal_digest(proposal: peer_pb2.SessionProposal) -> bytes:
    enc = (
        Encoder()
        .bytes(PROPOSAL_DOMAIN)
        .bytes(proposal.session_id)
        .bytes(proposal.phase.encode())
        .bytes(proposal.coordinator.encode())
        .list_of_bytes([p.encode() for p in proposal.participants])
        .bytes(proposal.nonce)
        .uint(proposal.round_deadline_ms)
        .uint(proposal.expires_at_ms)
        .bytes(params_encoding(proposal))
    )
    return hashlib.sha256(enc.finish()).digest()


def sign_proposal(proposal: peer_pb2.SessionProposal, identity: PartyIdentity) -> peer_pb2.SessionProposal:
    proposal.signature = identity.sign(proposal_digest(proposal))
    return proposal


def verify_proposal(proposal: peer_pb2.SessionProposal, public_key: bytes) -> bool:
    return verify_signature(public_key, proposal_digest(proposal), proposal.signature)


def withdrawal_digest(w: peer_pb2.SessionWithdrawal) -> bytes:
    enc = Encoder().bytes(WITHDRAWAL_DOMAIN).bytes(w.session_id).bytes(w.coordinator.encode()).bytes(w.reason.encode())
    return hashlib.sha256(enc.finish()).digest()


def sign_withdrawal(w: peer_pb2.SessionWithdrawal, identity: PartyIdentity) -> peer_pb2.SessionWithdrawal:
    w.signature = identity.sign(withdrawal_digest(w))
    return w


def verify_withdrawal(w: peer_pb2.SessionWithdrawal, public_key: bytes) -> bool:
    return verify_signature(public_key, withdrawal_digest(w), w.signature)
