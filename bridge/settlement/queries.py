"""Signed reads: a client proves it is the party whose balances, trades or proofs it asks for.

Why not open reads: balances and trades are a desk's positions; a custody ledger that anyone can
read by knowing a public key would leak them. Why not a session: any node can answer, and a
signature over a fresh, purpose-bound body needs no state at the node.

Body: ``SHA-256(Encoder(QUERY_TAG, what, client, issued_at_ms, ref))``, DER-signed (low-S) by the
client key; valid for ``MAX_AGE_MS`` either way of the node's clock. A cycle report (every party's
net positions) is for the bridge's admin clients only.
"""

from __future__ import annotations

import hashlib
import time

from ...proto.generated import settlement_pb2
from ...protocol.encoding import Encoder
from ...protocol.identity import PartyIdentity, verify_signature

QUERY_TAG = b"fusion-prime/settlement-query/v1"
MAX_AGE_MS = 300_000
WHATS = ("balances", "trades", "trade", "proof", "report", "withdrawals")


class QueryRefused(PermissionError):
    """The query's signature, freshness or purpose does not hold."""


def query_digest(what: str, client: bytes, issued_at_ms: int, ref: bytes) -> bytes:
    return hashlib.sha256(Encoder().bytes(QUERY_TAG).bytes(what.encode()).bytes(client).uint(issued_at_ms)
                          .bytes(ref).finish()).digest()


def make_query(client: PartyIdentity, what: str, ref: bytes = b"", now_ms: int | None = None) -> settlement_pb2.Query:
    issued = int(time.time() * 1000) if now_ms is None else now_ms
    return settlement_pb2.Query(client=client.public_key, issued_at_ms=issued, what=what, ref=ref,
                                signature=client.sign(query_digest(what, client.public_key, issued, ref)))


def verify_query(q: settlement_pb2.Query, what: str, *, admins: frozenset[bytes] = frozenset(),
                 admin_only: bool = False, now_ms: int | None = None) -> bytes:
    """The client key of a valid query for ``what``; ``QueryRefused`` otherwise."""
    client = bytes(q.client)
    if q.what != what:
        raise QueryRefused(f"this call needs a query for {what!r}")
    if len(client) != 33 or not q.signature:
        raise QueryRefused("a query carries the client's 33-byte key and its signature")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now - q.issued_at_ms) > MAX_AGE_MS:
        raise QueryRefused("query too old or from the future; check the client's clock")
    if not verify_signature(client, query_digest(what, client, q.issued_at_ms, bytes(q.ref)), bytes(q.signature)):
        raise QueryRefused("query signature does not verify")
    if admin_only and client not in admins:
        raise QueryRefused("cycle reports are for the bridge's admin clients")
    return client
