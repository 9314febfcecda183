"""Signed wallet requests: what a client asks for, in a form every node can check by itself.

Why signed requests rather than only TLS client certificates: the node that receives a call
forwards the request to the other participants, and each of them must be able to verify —
without trusting the coordinator — that this client asked for exactly this digest, under this
key and path, with these operator approvals. A signature over a canonical body is
transferable; a TLS session is not.

Body (canonical ``Encoder`` fields, in order): domain tag, kind, client public key (33 bytes),
request id, issued-at (Unix ms), then the kind's parameters. Signatures (client and approvers)
are DER ECDSA over SHA-256 of the body, by secp256k1 keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from dataclasses import dataclass

from ..proto.generated import wallet_pb2
from ..protocol.encoding import Decoder, Encoder
from ..protocol.errors import InvalidInput
from ..protocol.hd import parse_path
from ..protocol.identity import PartyIdentity, verify_signature

DOMAIN = b"fusion-prime/wallet-request/v1"
KIND_SIGN = "sign"
KIND_CREATE_KEY = "create-key"
KIND_REFRESH = "refresh"
KIND_RESHARE = "reshare"
# Reads: signed like the others so that only clients named in a node's policy learn which keys
# it holds, but never recorded (they change nothing: no idempotency, nothing charged).
KIND_LIST_KEYS = "list-keys"
KIND_PUBLIC_KEY = "public-key"
KINDS = (KIND_SIGN, KIND_CREATE_KEY, KIND_REFRESH, KIND_RESHARE, KIND_LIST_KEYS, KIND_PUBLIC_KEY)
ADMIN_KINDS = (KIND_CREATE_KEY, KIND_REFRESH, KIND_RESHARE)
READ_KINDS = (KIND_LIST_KEYS, KIND_PUBLIC_KEY)
BITCOIN_NETWORKS = ("mainnet", "testnet", "signet", "regtest")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_LABEL = 64
# A request carries at most this many operator approvals: each costs a signature check, and a
# forwarded request is checked by every participant before any policy decision.
MAX_APPROVALS = 16
# Keys are threshold keys: a 1-of-n key lets any single node sign alone, which is not custody.
MIN_THRESHOLD = 2


class Unauthenticated(InvalidInput):
    """The request carries no valid client signature (or a bad approval)."""


@dataclass(frozen=True)
class RequestBody:
    kind: str
    client: bytes  # 33-byte compressed secp256k1 public key
    request_id: str
    issued_at_ms: int
    key_id: bytes = b""
    digest: bytes = b""
    path: tuple[int, ...] = ()
    threshold: int = 0
    parties: int = 0
    label: str = ""
    new_parties: tuple[str, ...] = ()  # reshare: node ids of the new committee
    network: str = ""  # public-key: the Bitcoin network of the address in the answer

    def encode(self) -> bytes:
        enc = Encoder().bytes(DOMAIN).bytes(self.kind.encode()).bytes(self.client).bytes(self.request_id.encode())
        enc.uint(self.issued_at_ms)
        if self.kind == KIND_SIGN:
            enc.bytes(self.key_id).bytes(self.digest).uints(self.path)
        elif self.kind == KIND_CREATE_KEY:
            enc.uint(self.threshold).uint(self.parties).bytes(self.label.encode())
        elif self.kind == KIND_RESHARE:
            enc.bytes(self.key_id).uint(self.threshold).list_of_bytes(p.encode() for p in self.new_parties)
        elif self.kind == KIND_PUBLIC_KEY:
            enc.bytes(self.key_id).uints(self.path).bytes(self.network.encode())
        elif self.kind == KIND_REFRESH:
            enc.bytes(self.key_id)
        return enc.finish()

    @classmethod
    def decode(cls, data: bytes) -> RequestBody:
        d = Decoder(data, "wallet request")
        if d.bytes() != DOMAIN:
            raise InvalidInput("not a Fusion Prime wallet request")
        kind = d.bytes().decode("ascii", "replace")
        if kind not in KINDS:
            raise InvalidInput(f"unknown request kind {kind!r}")
        client = d.bytes(33)
        request_id = d.bytes().decode("ascii", "replace")
        issued = d.uint(64)
        fields: dict = {}
        if kind == KIND_SIGN:
            fields = {"key_id": d.bytes(), "digest": d.bytes(), "path": tuple(d.uints(max_bits=32))}
        elif kind == KIND_CREATE_KEY:
            fields = {"threshold": d.uint(16), "parties": d.uint(16), "label": d.bytes().decode("utf-8", "replace")}
        elif kind == KIND_RESHARE:
            fields = {"key_id": d.bytes(), "threshold": d.uint(16),
                      "new_parties": tuple(b.decode("utf-8", "replace") for b in d.list_of_bytes())}
        elif kind == KIND_PUBLIC_KEY:
            fields = {"key_id": d.bytes(), "path": tuple(d.uints(max_bits=32)),
                      "network": d.bytes().decode("ascii", "replace")}
        elif kind == KIND_REFRESH:
            fields = {"key_id": d.bytes()}
        d.finish()
        body = cls(kind, client, request_id, issued, **fields)
        body.validate()
        return body

    def validate(self) -> None:
        if not _REQUEST_ID.match(self.request_id):
            raise InvalidInput("request id must be 1-64 characters of [A-Za-z0-9._:-]")
        if self.kind == KIND_SIGN:
            if len(self.digest) != 32:
                raise InvalidInput("digest must be exactly 32 bytes")
            if len(self.key_id) != 16:
                raise InvalidInput("key id must be 16 bytes")
            parse_path(self.path)
        if self.kind in (KIND_REFRESH, KIND_RESHARE, KIND_PUBLIC_KEY) and len(self.key_id) != 16:
            raise InvalidInput("key id must be 16 bytes")
        if self.kind == KIND_PUBLIC_KEY:
            parse_path(self.path)
            if self.network not in BITCOIN_NETWORKS:
                raise InvalidInput(f"unknown Bitcoin network {self.network!r} (one of {', '.join(BITCOIN_NETWORKS)})")
        if self.kind == KIND_RESHARE:
            if len(set(self.new_parties)) != len(self.new_parties) or not 2 <= len(self.new_parties) <= 64:
                raise InvalidInput("new committee must be 2 to 64 distinct node ids")
            if not MIN_THRESHOLD <= self.threshold <= len(self.new_parties):
                raise InvalidInput(f"new threshold must be between {MIN_THRESHOLD} and the size of the new committee")
        if self.kind == KIND_CREATE_KEY:
            if not 2 <= self.parties <= 64 or not MIN_THRESHOLD <= self.threshold <= self.parties:
                raise InvalidInput(f"need {MIN_THRESHOLD} <= threshold <= parties and 2 <= parties <= 64")
            if len(self.label) > MAX_LABEL:
                raise InvalidInput(f"label longer than {MAX_LABEL} characters")

    def identity(self) -> bytes:
        """What makes two requests "the same" for idempotency: everything but the issue time,
        so a client that re-signs a retry with a fresh timestamp still gets the first result."""
        return dataclasses.replace(self, issued_at_ms=0).encode()

    def digest_to_sign(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True)
class VerifiedRequest:
    """A request whose client signature and approvals have been checked."""

    body: RequestBody
    approvers: frozenset[bytes]
    raw: bytes  # the serialized SignedRequest, forwarded to the other participants

    @property
    def client_hex(self) -> str:
        return self.body.client.hex()


def make_request(client: PartyIdentity, body: RequestBody, approvers: tuple[PartyIdentity, ...] = ()
                 ) -> wallet_pb2.SignedRequest:
    """Client side: sign a body (and collect approvals from operators holding approver keys)."""
    body.validate()
    digest = body.digest_to_sign()
    request = wallet_pb2.SignedRequest(body=body.encode(), signature=client.sign(digest))
    for approver in approvers:
        request.approvals.add(approver_public_key=approver.public_key, signature=approver.sign(digest))
    return request


def list_keys_request(client: PartyIdentity, request_id: str = "list-keys") -> wallet_pb2.SignedRequest:
    """A signed ListKeys request (reads are not recorded, so any valid id will do)."""
    return make_request(client, RequestBody(KIND_LIST_KEYS, client.public_key, request_id, int(time.time() * 1000)))


def public_key_request(client: PartyIdentity, key_id: bytes, path: str | tuple[int, ...] = "m",
                       network: str = "regtest", request_id: str = "public-key") -> wallet_pb2.SignedRequest:
    """A signed GetPublicKey request for the key at ``path``."""
    body = RequestBody(KIND_PUBLIC_KEY, client.public_key, request_id, int(time.time() * 1000), key_id=key_id,
                       path=tuple(parse_path(path)), network=network)
    return make_request(client, body)


def verify_request(request: wallet_pb2.SignedRequest, *, now_ms: int | None = None,
                   max_age_ms: int = 300_000) -> VerifiedRequest:
    """Node side: parse, check the client's signature and every approval, and freshness."""
    if not request.body or not request.signature:
        raise Unauthenticated("unauthenticated request: body and client signature are required")
    body = RequestBody.decode(request.body)
    digest = body.digest_to_sign()
    if not verify_signature(body.client, digest, request.signature):
        raise Unauthenticated("client signature does not verify")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now_ms - body.issued_at_ms) > max_age_ms:
        raise InvalidInput("request is too old or from the future; check the client's clock")
    if len(request.approvals) > MAX_APPROVALS:
        raise InvalidInput(f"more than {MAX_APPROVALS} approvals")
    if len({bytes(a.approver_public_key) for a in request.approvals}) != len(request.approvals):
        raise InvalidInput("an approver appears twice")
    approvers = set()
    for approval in request.approvals:
        if not verify_signature(bytes(approval.approver_public_key), digest, bytes(approval.signature)):
            raise Unauthenticated("an approval signature does not verify")
        approvers.add(bytes(approval.approver_public_key))
    return VerifiedRequest(body, frozenset(approvers), request.SerializeToString(deterministic=True))


def parse_forwarded(raw: bytes) -> wallet_pb2.SignedRequest:
    request = wallet_pb2.SignedRequest()
    try:
        request.ParseFromString(raw)
    except Exception as exc:  # protobuf raises its own DecodeError
        raise InvalidInput("forwarded client request is not a SignedRequest") from exc
    return request
