"""The settlement SDK: sync (``SettlementClient``) and async (``AsyncSettlementClient``).

A client holds its own secp256k1 key (``PartyIdentity``); every instruction and every read is
signed with it here, so the node only ever sees signed bytes. Idempotency keys are chosen by the
caller or generated fresh per call: to resend an instruction after a timeout and get its first
outcome, pass the same ``key`` (and, for a trade, the same ``deadline_ms``) again — or keep the
signed bytes (``*_bytes``) and ``submit`` them again.

    with SettlementClient("node1:7443", cert_pem, server_name="node1", identity=me) as s:
        s.open_account("desk A")
        trade = s.submit_trade([(me.public_key, "BTC", -10_000), (bob, "BTC", 10_000),
                                (me.public_key, "ETH", 2 * 10**17), (bob, "ETH", -2 * 10**17)], mode="net")
        s.affirm(trade.ref)
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc

from ...proto.generated import settlement_pb2, settlement_pb2_grpc
from ...protocol.identity import PartyIdentity
from . import instructions as ins
from .instructions import InstructionBody, sign_instruction, trade_legs
from .queries import make_query

DEFAULT_TIMEOUT = 30.0
LegSpec = tuple[bytes, str, int]


class SettlementRejected(Exception):
    """The ledger rejected an instruction (the reason is the same at every node)."""

    def __init__(self, response: settlement_pb2.SubmitResponse) -> None:
        again = " (a repeat of an instruction rejected before: use a new key to try again)" \
            if response.duplicate else ""
        super().__init__(f"{response.kind} rejected: {response.reason}{again}")
        self.response = response


def new_key(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Builder:
    identity: PartyIdentity

    def _body(self, kind: str, key: str | None, **fields: Any) -> bytes:
        body = InstructionBody(kind, self.identity.public_key, key or new_key(kind), _now_ms(), **fields)
        return sign_instruction(self.identity, body).to_bytes()

    def open_account_bytes(self, label: str = "", key: str | None = None) -> bytes:
        return self._body(ins.OPEN_ACCOUNT, key, label=label)

    def trade_bytes(self, legs: Sequence[LegSpec], *, mode: str = ins.GROSS, deadline_ms: int | None = None,
                    reference: str = "", key: str | None = None) -> bytes:
        deadline = deadline_ms if deadline_ms is not None else _now_ms() + 3_600_000
        return self._body(ins.SUBMIT_TRADE, key, legs=trade_legs(list(legs)), mode=mode, deadline_ms=deadline,
                          reference=reference)

    def affirm_bytes(self, trade_id: bytes, key: str | None = None) -> bytes:
        return self._body(ins.AFFIRM, key, trade_id=trade_id)

    def dispute_bytes(self, trade_id: bytes, reason: str, key: str | None = None) -> bytes:
        return self._body(ins.DISPUTE, key, trade_id=trade_id, reason=reason)

    def cancel_bytes(self, trade_id: bytes, key: str | None = None) -> bytes:
        return self._body(ins.CANCEL, key, trade_id=trade_id)

    def withdraw_bytes(self, asset: str, amount: int, destination_chain: str, destination: str,
                       key: str | None = None) -> bytes:
        return self._body(ins.WITHDRAW, key, asset=asset, amount=amount, destination_chain=destination_chain,
                          destination=destination)


def _options(server_name: str | None) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 << 20)]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


class SettlementClient(_Builder):
    """Blocking client. Raises ``SettlementRejected`` for a rejected instruction (``check=True``)
    and ``grpc.RpcError`` for a transport or validation failure."""

    def __init__(self, target: str, server_cert_pem: bytes, *, identity: PartyIdentity,
                 server_name: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.identity = identity
        self.timeout = timeout
        creds = grpc.ssl_channel_credentials(root_certificates=server_cert_pem)
        self._channel = grpc.secure_channel(target, creds, options=_options(server_name))
        self.stub = settlement_pb2_grpc.SettlementStub(self._channel)

    def __enter__(self) -> SettlementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def submit(self, raw: bytes, *, check: bool = True, wait_ms: int = 20_000) -> settlement_pb2.SubmitResponse:
        r = self.stub.Submit(settlement_pb2.SubmitRequest(instruction=raw, wait_ms=wait_ms),
                             timeout=wait_ms / 1000 + 10)
        if check and not r.accepted:
            raise SettlementRejected(r)
        return r

    def submit_many(self, raws: Sequence[bytes], *, wait_ms: int = 60_000) -> list[settlement_pb2.SubmitResponse]:
        """Bulk: each instruction's own outcome (nothing raised for a rejected one)."""
        r = self.stub.SubmitMany(settlement_pb2.SubmitManyRequest(instructions=list(raws), wait_ms=wait_ms),
                                 timeout=wait_ms / 1000 + 10)
        return list(r.results)

    def open_account(self, label: str = "", key: str | None = None, **kw: Any) -> settlement_pb2.SubmitResponse:
        return self.submit(self.open_account_bytes(label, key=key), **kw)

    def submit_trade(self, legs: Sequence[LegSpec], *, mode: str = ins.GROSS, deadline_ms: int | None = None,
                     reference: str = "", key: str | None = None, **kw: Any) -> settlement_pb2.SubmitResponse:
        return self.submit(self.trade_bytes(legs, mode=mode, deadline_ms=deadline_ms, reference=reference, key=key),
                           **kw)

    def affirm(self, trade_id: bytes, key: str | None = None, **kw: Any) -> settlement_pb2.SubmitResponse:
        return self.submit(self.affirm_bytes(trade_id, key=key), **kw)

    def dispute(self, trade_id: bytes, reason: str, key: str | None = None, **kw: Any
               ) -> settlement_pb2.SubmitResponse:
        return self.submit(self.dispute_bytes(trade_id, reason, key=key), **kw)

    def cancel(self, trade_id: bytes, key: str | None = None, **kw: Any) -> settlement_pb2.SubmitResponse:
        return self.submit(self.cancel_bytes(trade_id, key=key), **kw)

    def withdraw(self, asset: str, amount: int, destination_chain: str, destination: str,
                 key: str | None = None, **kw: Any
                 ) -> settlement_pb2.SubmitResponse:
        return self.submit(self.withdraw_bytes(asset, amount, destination_chain, destination, key=key), **kw)

    def deposit_address(self, asset: str) -> settlement_pb2.AccountDepositResponse:
        return self.stub.GetDepositAddress(settlement_pb2.AccountDepositRequest(
            party=self.identity.public_key, asset=asset), timeout=self.timeout)

    def balances(self) -> dict[str, dict[str, int]]:
        r = self.stub.GetBalances(make_query(self.identity, "balances"), timeout=self.timeout)
        return {b.asset: {"balance": int(b.balance), "held": int(b.held), "available": int(b.available)}
                for b in r.balances}

    def trade(self, trade_id: bytes) -> settlement_pb2.TradeStatus:
        return self.stub.GetTrade(make_query(self.identity, "trade", trade_id), timeout=self.timeout)

    def trades(self) -> list[settlement_pb2.TradeStatus]:
        return list(self.stub.ListTrades(make_query(self.identity, "trades"), timeout=self.timeout).trades)

    def watch_trades(self, timeout: float | None = None) -> Iterator[settlement_pb2.TradeStatus]:
        return self.stub.WatchTrades(make_query(self.identity, "trades"), timeout=timeout)

    def withdrawals(self) -> list[settlement_pb2.WithdrawalStatus]:
        return list(self.stub.ListWithdrawals(make_query(self.identity, "withdrawals"),
                                              timeout=self.timeout).withdrawals)

    def cycle_report(self, cycle: int) -> settlement_pb2.CycleReport:
        return self.stub.GetCycleReport(make_query(self.identity, "report", cycle.to_bytes(8, "big")),
                                        timeout=self.timeout)

    def proof(self) -> str:
        return self.stub.GetProof(make_query(self.identity, "proof"), timeout=self.timeout).json

    def checkpoint(self, cycle: int = 0) -> settlement_pb2.CheckpointResponse:
        return self.stub.GetCheckpoint(settlement_pb2.CheckpointRequest(cycle=cycle), timeout=self.timeout)

    def status(self) -> dict[str, Any]:
        import json
        return json.loads(self.stub.Status(settlement_pb2.StatusRequest(), timeout=self.timeout).json)


class AsyncSettlementClient(_Builder):
    """The same calls on grpc.aio: ``async with AsyncSettlementClient(...) as s: await s.affirm(tid)``."""

    def __init__(self, target: str, server_cert_pem: bytes, *, identity: PartyIdentity,
                 server_name: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.identity = identity
        self.timeout = timeout
        creds = grpc.ssl_channel_credentials(root_certificates=server_cert_pem)
        self._channel = grpc.aio.secure_channel(target, creds, options=_options(server_name))
        self.stub = settlement_pb2_grpc.SettlementStub(self._channel)

    async def __aenter__(self) -> AsyncSettlementClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def submit(self, raw: bytes, *, check: bool = True, wait_ms: int = 20_000) -> settlement_pb2.SubmitResponse:
        r = await self.stub.Submit(settlement_pb2.SubmitRequest(instruction=raw, wait_ms=wait_ms),
                                   timeout=wait_ms / 1000 + 10)
        if check and not r.accepted:
            raise SettlementRejected(r)
        return r

    async def submit_many(self, raws: Sequence[bytes], *, wait_ms: int = 60_000
                          ) -> list[settlement_pb2.SubmitResponse]:
        r = await self.stub.SubmitMany(settlement_pb2.SubmitManyRequest(instructions=list(raws), wait_ms=wait_ms),
                                       timeout=wait_ms / 1000 + 10)
        return list(r.results)

    async def open_account(self, label: str = "", key: str | None = None, **kw: Any) -> settlement_pb2.SubmitResponse:
        return await self.submit(self.open_account_bytes(label, key=key), **kw)

    async def submit_trade(self, legs: Sequence[LegSpec], *, mode: str = ins.GROSS, deadline_ms: int | None = None,
                           reference: str = "", key: str | None = None, **kw: Any) -> settlement_pb2.SubmitResponse:
        return await self.submit(self.trade_bytes(legs, mode=mode, deadline_ms=deadline_ms, reference=reference,
                                                  key=key), **kw)

    async def affirm(self, trade_id: bytes, key: str | None = None, **kw: Any) -> settlement_pb2.SubmitResponse:
        return await self.submit(self.affirm_bytes(trade_id, key=key), **kw)

    async def dispute(self, trade_id: bytes, reason: str, key: str | None = None, **kw: Any
                     ) -> settlement_pb2.SubmitResponse:
        return await self.submit(self.dispute_bytes(trade_id, reason, key=key), **kw)

    async def cancel(self, trade_id: bytes, key: str | None = None, **kw: Any) -> settlement_pb2.SubmitResponse:
        return await self.submit(self.cancel_bytes(trade_id, key=key), **kw)

    async def withdraw(self, asset: str, amount: int, destination_chain: str, destination: str,
                       key: str | None = None, **kw: Any
                       ) -> settlement_pb2.SubmitResponse:
        return await self.submit(self.withdraw_bytes(asset, amount, destination_chain, destination, key=key), **kw)

    async def deposit_address(self, asset: str) -> settlement_pb2.AccountDepositResponse:
        return await self.stub.GetDepositAddress(settlement_pb2.AccountDepositRequest(
            party=self.identity.public_key, asset=asset), timeout=self.timeout)

    async def balances(self) -> dict[str, dict[str, int]]:
        r = await self.stub.GetBalances(make_query(self.identity, "balances"), timeout=self.timeout)
        return {b.asset: {"balance": int(b.balance), "held": int(b.held), "available": int(b.available)}
                for b in r.balances}

    async def trade(self, trade_id: bytes) -> settlement_pb2.TradeStatus:
        return await self.stub.GetTrade(make_query(self.identity, "trade", trade_id), timeout=self.timeout)

    async def trades(self) -> list[settlement_pb2.TradeStatus]:
        r = await self.stub.ListTrades(make_query(self.identity, "trades"), timeout=self.timeout)
        return list(r.trades)

    async def watch_trades(self) -> AsyncIterator[settlement_pb2.TradeStatus]:
        async for status in self.stub.WatchTrades(make_query(self.identity, "trades")):
            yield status

    async def withdrawals(self) -> list[settlement_pb2.WithdrawalStatus]:
        r = await self.stub.ListWithdrawals(make_query(self.identity, "withdrawals"), timeout=self.timeout)
        return list(r.withdrawals)

    async def cycle_report(self, cycle: int) -> settlement_pb2.CycleReport:
        return await self.stub.GetCycleReport(make_query(self.identity, "report", cycle.to_bytes(8, "big")),
                                              timeout=self.timeout)

    async def proof(self) -> str:
        return (await self.stub.GetProof(make_query(self.identity, "proof"), timeout=self.timeout)).json

    async def checkpoint(self, cycle: int = 0) -> settlement_pb2.CheckpointResponse:
        return await self.stub.GetCheckpoint(settlement_pb2.CheckpointRequest(cycle=cycle), timeout=self.timeout)
