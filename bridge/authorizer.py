"""The node's authorize hook with the bridge in it: ``BridgeAuthorizer ∘ WalletAuthorizer``.

The node calls one hook for every session proposal, as coordinator (before it proposes) and as
participant (before it joins). This hook sorts them:

* a **sign** proposal whose ``client_request`` is a bridge request (``bridge/requests.py``) is the
  bridge's: a mint order is checked with :func:`~fusion_prime.bridge.mint_policy.check_mint`
  against *this node's own* chain view and database — the digest in the proposal must be the
  digest this node computes for the order on its Gateway, and the key and path must be the
  Gateway signer's — and a pause is co-signed whenever it is well-formed for this Gateway (any
  node may halt minting; halting is never a loss). The outcome is written to the bridge's
  append-only event log in the same transaction as the check (``mint-cosigned`` with the order,
  or ``mint-refused`` with the reason), so the "co-signed a different order" rule sees every
  earlier co-signature even across restarts, and two proposals for one deposit arriving at once
  are decided one after the other (SQLite's write lock; a per-deposit advisory lock on PostgreSQL).
* every other proposal (wallet sign sessions, key generation, refresh, reshare, presign) is
  delegated to the signer's :class:`~fusion_prime.signer.service.WalletAuthorizer` unchanged —
  except that a *wallet* request may not sign with the bridge's key at the Gateway signer's path
  or under the deposit-address or custody purposes unless its client is one of the bridge's admin clients:
  otherwise any wallet client could get a mint order (or a sweep of deposits) signed as an
  opaque digest, around every check above.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import trio

from fusion_prime.node.logs import log_event
from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.signer.requests import parse_forwarded, verify_request

from .chainview import COSIGNED_EVENT, REFUSED_EVENT, NodeChainView
from .custody import CUSTODY_PURPOSE
from .db import BridgeDB
from .derivation import ACCOUNT_PURPOSE, PURPOSE
from .mint_policy import PolicyConfig, Verdict, check_mint
from .requests import BridgeRequestError, MintRequest, PauseRequest, RefundRequest, decode, is_bridge_request
from .settlement.runtime import decode_checkpoint_request

log = logging.getLogger("fusion_prime.bridge.authorizer")
PAUSE_COSIGNED_EVENT = "pause-cosigned"


@dataclass
class BridgeContext:
    """What the hook needs once the bridge is configured (key created, Gateway deployed)."""

    key_id: bytes
    signer_path: tuple[int, ...]
    policy: PolicyConfig
    view: NodeChainView
    db: BridgeDB
    admin_clients: frozenset[bytes]
    clock: Callable[[], float] = time.time


class BridgeAuthorizer:
    """Plugged into the node as ``authorize=authorizer.in_thread``."""

    def __init__(self, wallet: Callable[[peer_pb2.SessionProposal], tuple[bool, str]], node_id: str) -> None:
        self.wallet = wallet
        self.node_id = node_id
        self.context: BridgeContext | None = None
        #: Known as soon as the operator names the bridge key, even before the bridge can run.
        self.reserved_key: bytes | None = None
        self.admin_clients: frozenset[bytes] = frozenset()
        self.signer_path: tuple[int, ...] = ()
        #: request type -> the withdrawal side's check (``bridge/payout_authorizer.py``), set once
        #: the bridge runs; each returns (ok, reason) and records its decision itself
        self.withdrawal_hooks: dict[type, Callable[[peer_pb2.SessionProposal, Any], tuple[bool, str]]] = {}
        #: asset -> (solvent, why not): no mint is co-signed for an asset whose custody is short
        self.solvency: Callable[[str], tuple[bool, str]] = lambda asset: (True, "")
        #: the settlement runtime (``bridge/settlement/runtime.py``) once it runs: checkpoint proposals
        self.settlement: Any = None

    async def in_thread(self, proposal: peer_pb2.SessionProposal) -> tuple[bool, str]:
        """Chain RPCs and the database write run in a worker thread, never on the node's loop."""
        return await trio.to_thread.run_sync(self, proposal)

    def __call__(self, proposal: peer_pb2.SessionProposal) -> tuple[bool, str]:
        if proposal.phase == "sign" and is_bridge_request(proposal.sign.client_request):
            return self._bridge(proposal)
        raw_checkpoint = decode_checkpoint_request(bytes(proposal.sign.client_request)) \
            if proposal.phase == "sign" else None
        if raw_checkpoint is not None:
            return self._checkpoint(proposal, raw_checkpoint)
        ok, why = self.wallet(proposal)
        if ok and proposal.phase == "sign":
            return self._reserved_paths(proposal)
        return ok, why

    def _checkpoint(self, proposal: peer_pb2.SessionProposal, raw: bytes) -> tuple[bool, str]:
        """A settlement checkpoint: co-signed only if this node's own replica computed the same one."""
        settlement, ctx = self.settlement, self.context
        if settlement is None or ctx is None:
            return False, "settlement: the ledger does not run on this node"
        if bytes(proposal.sign.key_id) != ctx.key_id:
            return False, f"settlement checkpoints sign only with key {ctx.key_id.hex()}"
        return settlement.authorize_checkpoint(bytes(proposal.sign.digest), tuple(proposal.sign.path), raw,
                                               proposal.coordinator)

    # -- wallet requests on the bridge key
    def _reserved_paths(self, proposal: peer_pb2.SessionProposal) -> tuple[bool, str]:
        s = proposal.sign
        if self.reserved_key is None or bytes(s.key_id) != self.reserved_key:
            return True, ""
        path = tuple(s.path)
        if path != self.signer_path and path[:1] not in ((PURPOSE,), (CUSTODY_PURPOSE,), (ACCOUNT_PURPOSE,)):
            return True, ""
        try:
            client = verify_request(parse_forwarded(s.client_request)).body.client
        except InvalidInput as exc:  # the wallet hook accepted it, so this does not happen
            return False, f"client request rejected: {exc}"
        if bytes(client) in self.admin_clients:
            return True, ""
        return False, ("the bridge key's Gateway-signer and deposit paths sign only bridge requests "
                       "(or requests of the bridge's admin clients)")

    # -- bridge requests
    def _bridge(self, proposal: peer_pb2.SessionProposal) -> tuple[bool, str]:
        ctx = self.context
        if ctx is None:
            return False, "the bridge is not configured on this node"
        s = proposal.sign
        try:
            request = decode(s.client_request)
        except BridgeRequestError as exc:
            return False, f"malformed bridge request: {exc}"
        if bytes(s.key_id) != ctx.key_id:
            return False, f"bridge requests sign only with key {ctx.key_id.hex()}"
        if isinstance(request, MintRequest | PauseRequest | RefundRequest) and tuple(s.path) != ctx.signer_path:
            return False, "bridge orders sign only at the Gateway signer's path"
        if isinstance(request, MintRequest):
            return self._mint(proposal, request, ctx)
        if isinstance(request, PauseRequest):
            return self._pause(proposal, request, ctx)
        handler = self.withdrawal_hooks.get(type(request))
        if handler is None:
            return False, f"bridge: {type(request).__name__} is not served by this node"
        return handler(proposal, request)

    def _mint(self, proposal: peer_pb2.SessionProposal, request: MintRequest, ctx: BridgeContext) -> tuple[bool, str]:
        order = request.order
        did = order.deposit_id
        digest = bytes(proposal.sign.digest)
        detail: dict[str, Any] = {"order": order.to_bytes().hex(), "digest": digest.hex(),
                                  "coordinator": proposal.coordinator, "session_id": proposal.session_id.hex()}
        solvent, why = self.solvency(order.asset)
        if not solvent:
            ctx.db.record_event(REFUSED_EVENT, {**detail, "code": "insolvent", "reason": why}, did)
            log_event(log, logging.WARNING, "mint refused", node=self.node_id, deposit_id="0x" + did.hex(),
                      code="insolvent", reason=why)
            return False, f"bridge: insolvent: {why}"
        try:
            with ctx.db.transaction() as tx:
                if ctx.db.dialect == "postgresql":  # one decision per deposit at a time
                    tx.conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                                    {"k": int.from_bytes(did[:8], "big", signed=True)})
                verdict = check_mint(order, digest, ctx.view.within(tx), ctx.policy, now=int(ctx.clock()))
                if verdict.ok:
                    tx.record_event(COSIGNED_EVENT, detail, did)
                else:
                    tx.record_event(REFUSED_EVENT, {**detail, "code": verdict.code, "reason": verdict.reason}, did)
        except Exception as exc:  # a chain endpoint down or answering nonsense: refuse, never guess
            verdict = Verdict(False, f"chain view unavailable: {type(exc).__name__}: {exc}", "view_unavailable")
            try:
                ctx.db.record_event(REFUSED_EVENT, {**detail, "code": verdict.code, "reason": verdict.reason}, did)
            except Exception as db_exc:  # the refusal stands even if it cannot be recorded
                log_event(log, logging.ERROR, "refusal not recorded", error=str(db_exc))
        log_event(log, logging.INFO if verdict.ok else logging.WARNING,
                  "mint co-signed" if verdict.ok else "mint refused", node=self.node_id,
                  deposit_id="0x" + did.hex(), coordinator=proposal.coordinator, code=verdict.code,
                  reason=verdict.reason, order_nonce=str(order.nonce))
        return (True, "") if verdict.ok else (False, f"bridge: {verdict.code}: {verdict.reason}")

    def _pause(self, proposal: peer_pb2.SessionProposal, request: PauseRequest, ctx: BridgeContext
               ) -> tuple[bool, str]:
        chain_id = int(ctx.policy.destination_chain.partition(":")[2])
        if request.chain_id != chain_id or request.gateway != ctx.policy.gateway:
            return False, "bridge: pause for another Gateway"
        if bytes(proposal.sign.digest) != request.digest():
            return False, "bridge: digest is not this pause's digest"
        now = int(ctx.clock())
        if not now < request.deadline <= now + ctx.policy.max_deadline_ahead:
            return False, "bridge: pause deadline out of range"
        ctx.db.record_event(PAUSE_COSIGNED_EVENT, {"unpause_count": request.unpause_count,
                                                   "deadline": request.deadline, "reason": request.reason,
                                                   "coordinator": proposal.coordinator})
        log_event(log, logging.CRITICAL, "pause co-signed", node=self.node_id, coordinator=proposal.coordinator,
                  reason=request.reason)
        return True, ""
