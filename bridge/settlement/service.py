"""The ``Settlement`` gRPC service (proto/settlement.proto), served beside the Bridge service.

Every handler validates what it is given and answers a gRPC status a client can act on:
INVALID_ARGUMENT (malformed or badly signed), PERMISSION_DENIED (a query for someone else's data),
NOT_FOUND, UNAVAILABLE (the ledger is not running, or this node stopped following its coordinator),
DEADLINE_EXCEEDED (not ordered in time: send the same instruction again — it is idempotent).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ...node.logs import log_event
from ...proto.generated import settlement_pb2, settlement_pb2_grpc
from . import checkpoint as cp
from .instructions import ASSET
from .ledger import Ledger, Trade, Withdrawal
from .merkle import AccountLeaf, build_tree
from .queries import QueryRefused, verify_query
from .reports import cycle_report, report_csv, report_json
from .runtime import HALT_FORKED, SettlementError, SettlementRuntime

log = logging.getLogger("fusion_prime.bridge.settlement.service")
MAX_WAIT_MS = 60_000
LIST_LIMIT = 1000
MAX_MANY = 2000


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def handler(self: SettlementServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            _answer(exc, context, method.__name__)
            raise AssertionError("unreachable") from None  # context.abort raised
    return handler


def _answer(exc: Exception, context: grpc.ServicerContext, rpc: str) -> None:
    if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortError":
        raise exc
    if isinstance(exc, QueryRefused | PermissionError):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, ValueError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, KeyError | LookupError):
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0] if exc.args else exc))
    if isinstance(exc, TimeoutError):
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, SettlementError):
        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    log_event(log, logging.ERROR, "settlement call failed", rpc=rpc, error=f"{type(exc).__name__}: {exc}")
    context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed: {type(exc).__name__}")


def trade_status(t: Trade, seq: int) -> settlement_pb2.TradeStatus:
    return settlement_pb2.TradeStatus(
        trade_id=t.trade_id, status=t.status, mode=t.mode, deadline_ms=t.deadline_ms, cycle=t.cycle, note=t.note,
        batch_seq=seq, reference=t.reference, rolled=t.rolled, affirmed=sorted(t.affirmed),
        legs=[settlement_pb2.Leg(party=leg.party, asset=leg.asset, quantity=str(leg.quantity)) for leg in t.legs])


def withdrawal_status(w: Withdrawal) -> settlement_pb2.WithdrawalStatus:
    return settlement_pb2.WithdrawalStatus(withdrawal_id=w.withdrawal_id, asset=w.asset, amount=str(w.amount),
                                           destination_chain=w.destination_chain, destination=w.destination,
                                           status=w.status, txid=w.txid, note=w.note)


class SettlementServicer(settlement_pb2_grpc.SettlementServicer):
    def __init__(self, runtime: SettlementRuntime, *, admins: frozenset[bytes] = frozenset(),
                 funding: Any = None, sources: dict[str, str] | None = None) -> None:
        self.runtime = runtime
        self.admins = admins
        self.funding = funding
        self.sources = sources or {}  # asset -> source chain CAIP-2

    def _running(self) -> SettlementRuntime:
        if self.runtime.ledger is None:
            raise SettlementError("the settlement ledger is not running yet")
        return self.runtime

    def _replica(self) -> SettlementRuntime:
        """The runtime, for a client's read of ledger state. A node halted on a refused batch still
        answers (stale, but every batch in it was verified here); one halted on a fork does not: its
        replica may hold a batch the rest of the group never applied."""
        rt = self._running()
        if rt.halt is not None and rt.halt.get("kind") == HALT_FORKED:
            raise SettlementError(f"this node's replica is on a fork ({rt.halted}); ask another node")
        return rt

    # -- instructions
    @_guarded
    def Submit(self, request: settlement_pb2.SubmitRequest, context: grpc.ServicerContext
               ) -> settlement_pb2.SubmitResponse:
        rt = self._running()
        if rt.halted:
            raise SettlementError(f"this node stopped following the ledger ({rt.halted}); use another node")
        if not request.instruction or len(request.instruction) > 64 * 1024:
            raise ValueError("an instruction is 1 byte to 64 KiB")
        wait = min(request.wait_ms or 10_000, MAX_WAIT_MS) / 1000
        outcome, seq = rt.submit(bytes(request.instruction), wait)
        return settlement_pb2.SubmitResponse(kind=outcome.kind, accepted=outcome.accepted, reason=outcome.reason,
                                             ref=outcome.ref, duplicate=outcome.duplicate, batch_seq=seq)

    @_guarded
    def SubmitMany(self, request: settlement_pb2.SubmitManyRequest, context: grpc.ServicerContext
                   ) -> settlement_pb2.SubmitManyResponse:
        rt = self._running()
        if rt.halted:
            raise SettlementError(f"this node stopped following the ledger ({rt.halted}); use another node")
        if not 1 <= len(request.instructions) <= MAX_MANY:
            raise ValueError(f"1 to {MAX_MANY} instructions per call")
        if any(not raw or len(raw) > 64 * 1024 for raw in request.instructions):
            raise ValueError("an instruction is 1 byte to 64 KiB")
        wait = min(request.wait_ms or 30_000, MAX_WAIT_MS) / 1000
        results = rt.submit_many([bytes(raw) for raw in request.instructions], wait)
        return settlement_pb2.SubmitManyResponse(results=[settlement_pb2.SubmitResponse(
            kind=o.kind, accepted=o.accepted, reason=o.reason, ref=o.ref, duplicate=o.duplicate, batch_seq=seq)
            for o, seq in results])

    @_guarded
    def GetDepositAddress(self, request: settlement_pb2.AccountDepositRequest, context: grpc.ServicerContext
                          ) -> settlement_pb2.AccountDepositResponse:
        party = bytes(request.party)
        if len(party) != 33 or party[0] not in (2, 3):
            raise ValueError("party must be a 33-byte compressed public key")
        if not ASSET.match(request.asset) or request.asset not in self.sources:
            raise ValueError(f"asset must be one of {', '.join(sorted(self.sources)) or '(none)'}")
        if self.funding is None:
            raise SettlementError("this node takes no deposits into accounts")
        address = self.funding.register(party, request.asset)
        return settlement_pb2.AccountDepositResponse(address=address, source_chain=self.sources[request.asset])

    # -- signed reads
    @_guarded
    def GetBalances(self, request: settlement_pb2.Query, context: grpc.ServicerContext
                    ) -> settlement_pb2.BalancesResponse:
        client = verify_query(request, "balances")

        def read(led: Ledger) -> settlement_pb2.BalancesResponse:
            out = settlement_pb2.BalancesResponse(batch_seq=led.seq, open_cycle=led.open_cycle)
            for asset in sorted(led.assets):
                bal, held = led.balance(client, asset), led.held(client, asset)
                out.balances.add(asset=asset, balance=str(bal), held=str(held), available=str(bal - held))
            return out
        return self._replica().read(read)

    @_guarded
    def GetTrade(self, request: settlement_pb2.Query, context: grpc.ServicerContext) -> settlement_pb2.TradeStatus:
        client = verify_query(request, "trade")

        def read(led: Ledger) -> settlement_pb2.TradeStatus:
            t = led.trades.get(bytes(request.ref))
            if t is None or (client not in t.parties and client not in self.admins):
                raise KeyError("no such trade of yours")  # the same answer: no trade ids are leaked
            return trade_status(t, led.seq)
        return self._replica().read(read)

    def _trades_of(self, client: bytes) -> Callable[[Ledger], list[settlement_pb2.TradeStatus]]:
        def read(led: Ledger) -> list[settlement_pb2.TradeStatus]:
            mine = [t for t in led.trades.values() if client in t.parties]
            mine.sort(key=lambda t: (t.updated_ms, t.trade_id))
            return [trade_status(t, led.seq) for t in mine[-LIST_LIMIT:]]
        return read

    @_guarded
    def ListTrades(self, request: settlement_pb2.Query, context: grpc.ServicerContext
                   ) -> settlement_pb2.TradesResponse:
        client = verify_query(request, "trades")
        return settlement_pb2.TradesResponse(trades=self._replica().read(self._trades_of(client)))

    def WatchTrades(self, request: settlement_pb2.Query, context: grpc.ServicerContext
                    ) -> Iterator[settlement_pb2.TradeStatus]:
        """Every trade of the client now, then each change as its batch is applied."""
        try:
            client = verify_query(request, "trades")
            rt = self._replica()
        except Exception as exc:
            _answer(exc, context, "WatchTrades")
            return
        seen: dict[bytes, tuple[str, int, int]] = {}
        seq = -1
        while context.is_active() and not rt._closing:
            current = rt.read(lambda led: led.seq)
            if current != seq:
                seq = current
                for status in rt.read(self._trades_of(client)):
                    state = (status.status, len(status.affirmed), status.rolled)
                    if seen.get(bytes(status.trade_id)) != state:
                        seen[bytes(status.trade_id)] = state
                        yield status
            rt.wait_change(seq, 1.0)

    @_guarded
    def ListWithdrawals(self, request: settlement_pb2.Query, context: grpc.ServicerContext
                        ) -> settlement_pb2.WithdrawalsResponse:
        client = verify_query(request, "withdrawals")

        def read(led: Ledger) -> settlement_pb2.WithdrawalsResponse:
            mine = sorted((w for w in led.withdrawals.values() if w.party == client), key=lambda w: w.created_ms)
            return settlement_pb2.WithdrawalsResponse(withdrawals=[withdrawal_status(w) for w in mine[-LIST_LIMIT:]])
        return self._replica().read(read)

    @_guarded
    def GetCycleReport(self, request: settlement_pb2.Query, context: grpc.ServicerContext
                       ) -> settlement_pb2.CycleReport:
        verify_query(request, "report", admins=self.admins, admin_only=True)
        if len(request.ref) != 8:
            raise ValueError("ref is the cycle number, 8 bytes big-endian")
        cycle = int.from_bytes(request.ref, "big")
        rt = self._replica()
        row = rt.store.checkpoint(cycle)
        report = rt.read(lambda led: cycle_report(led, cycle, row))
        return settlement_pb2.CycleReport(cycle=cycle, json=report_json(report), csv=report_csv(report))

    @_guarded
    def GetProof(self, request: settlement_pb2.Query, context: grpc.ServicerContext) -> settlement_pb2.ProofResponse:
        """The client's balances in the latest signed checkpoint, with their Merkle-sum proofs."""
        client = verify_query(request, "proof")
        rt = self._running()
        row = next((r for r in reversed(rt.store.checkpoints(limit=1_000_000)) if r["signature"] is not None), None)
        if row is None:
            raise KeyError("no signed checkpoint yet")
        checkpoint = cp.Checkpoint.from_bytes(row["checkpoint"])
        rows = json.loads(row["accounts"])
        tree = build_tree(AccountLeaf(bytes.fromhex(p), a, int(b), int(h)) for p, a, b, h in rows)
        if tree.root != checkpoint.root:
            raise SettlementError("this node's stored accounts do not match its checkpoint; ask another node")
        signed = cp.SignedCheckpoint(checkpoint, row["signature"], rt.chain_id, rt.registry)
        proofs = tree.proofs_for(client)
        return settlement_pb2.ProofResponse(json=cp.CheckpointFile(signed, tuple(proofs)).to_json())

    # -- public
    @_guarded
    def GetCheckpoint(self, request: settlement_pb2.CheckpointRequest, context: grpc.ServicerContext
                      ) -> settlement_pb2.CheckpointResponse:
        rt = self._running()
        if request.cycle:
            row = rt.store.checkpoint(request.cycle)
        else:
            row = next((r for r in reversed(rt.store.checkpoints(limit=1_000_000)) if r["signature"] is not None),
                       None)
        if row is None and request.cycle and rt.halted:
            # the coordinator's cross-check hears at once that this node will not get there
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"no checkpoint of cycle {request.cycle}: this node halted ({rt.halted})")
        if row is None:
            raise KeyError(f"no checkpoint of cycle {request.cycle}" if request.cycle else "no signed checkpoint yet")
        text = ""
        if row["signature"] is not None:
            signed = cp.SignedCheckpoint(cp.Checkpoint.from_bytes(row["checkpoint"]), row["signature"], rt.chain_id,
                                         rt.registry)
            text = cp.CheckpointFile(signed, ()).to_json()
        return settlement_pb2.CheckpointResponse(cycle=row["cycle"], checkpoint=row["checkpoint"],
                                                 signature=row["signature"] or b"", json=text,
                                                 published_tx=row["published_tx"] or "")

    @_guarded
    def Status(self, request: settlement_pb2.StatusRequest, context: grpc.ServicerContext
               ) -> settlement_pb2.StatusResponse:
        return settlement_pb2.StatusResponse(json=json.dumps(self.runtime.status(), sort_keys=True))

    @_guarded
    def PullBatches(self, request: settlement_pb2.PullRequest, context: grpc.ServicerContext
                    ) -> settlement_pb2.PullResponse:
        rt = self._running()
        batches, head = rt.batches_after(request.node_id, request.after, request.time_ms, bytes(request.signature),
                                         request.limit, min(request.wait_ms, 5000))
        return settlement_pb2.PullResponse(batches=batches, head=head)


def add_to_server(servicer: SettlementServicer) -> Callable[[grpc.Server], None]:
    return lambda server: settlement_pb2_grpc.add_SettlementServicer_to_server(servicer, server)

