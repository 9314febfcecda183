"""The bridge SDK: a synchronous and an asynchronous client of a node's ``Bridge`` service.

Both pin the node's TLS certificate (the only thing that stops a man in the middle from handing
out his own deposit address) and are otherwise anonymous: nothing the bridge API does is
privileged (``bridge/service.py`` says why). They return the generated protobuf messages
(``fusion_prime.proto.generated.bridge_pb2``); :func:`to_dict` turns any of them into plain JSON-ready
data (ids and digests as hex, amounts as the decimal strings they are on the wire).

``watch`` follows deposits until they are final: the server ends every stream after a bounded
time (DEADLINE_EXCEEDED), and by default the SDK then watches again, dropping the opening
snapshot entries it has already delivered, so the caller sees one uninterrupted sequence.

    with BridgeClient("node1:7443", cert_pem, server_name="node1") as bridge:
        a = bridge.deposit_address("eip155:31338", "0x…", source="bip122:0f9188f13cb7b2c71f2a335e3a4fc328")
        for update in bridge.watch(address=a.address):
            print(update.deposit.state, update.deposit.confirmations)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor

from ..proto.generated import bridge_pb2, bridge_pb2_grpc

DEFAULT_TIMEOUT = 30.0
#: ``watch`` reconnects after the server's duration cap at most this many times in a row without
#: receiving anything new (a server that keeps cutting streams short is an error, not a loop).
MAX_IDLE_RECONNECTS = 1000
FINAL_STATES = frozenset({"minted", "dust", "erratum"})


class BridgeError(Exception):
    """A call the node refused or could not complete; ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.details = message


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_dict(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes(value).hex()
    return value


def to_dict(message: Any) -> dict[str, Any]:
    """A message as JSON-ready data: proto field names, bytes as hex, integers as integers, an
    unset optional field as None, every other field present (defaults included)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            out[field.name] = [_value(field, v) for v in value]
        elif field.has_presence and field.type != FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _value(field, value)
    return out


def deposit_id_bytes(value: bytes | str) -> bytes:
    """32 bytes of a deposit id given as bytes or 64 hex digits (optionally 0x-prefixed)."""
    if isinstance(value, str):
        text = value[2:] if value.lower().startswith("0x") else value
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise BridgeError("INVALID_ARGUMENT", f"deposit id {value!r} is not hex") from None
    if len(value) != 32:
        raise BridgeError("INVALID_ARGUMENT", "a deposit id is 32 bytes (64 hex digits)")
    return bytes(value)


def _address_request(destination: str, recipient: str, source: str | None, asset: str | None
                     ) -> bridge_pb2.DepositAddressRequest:
    request = bridge_pb2.DepositAddressRequest(destination_chain=destination, recipient=recipient)
    if source is not None and asset is not None:
        raise BridgeError("INVALID_ARGUMENT", "give source or asset, not both")
    if source is not None:
        request.source_chain = source
    elif asset is not None:
        request.asset = asset
    return request


def _get_request(deposit_id: bytes | str | None, outpoint: tuple[str, str, int] | None
                 ) -> bridge_pb2.GetDepositRequest:
    if (deposit_id is None) == (outpoint is None):
        raise BridgeError("INVALID_ARGUMENT", "give a deposit id or an outpoint (source chain, txid, vout)")
    if deposit_id is not None:
        return bridge_pb2.GetDepositRequest(deposit_id=deposit_id_bytes(deposit_id))
    chain, txid, vout = outpoint  # type: ignore[misc]
    return bridge_pb2.GetDepositRequest(outpoint=bridge_pb2.Outpoint(source_chain=chain, txid=txid, vout=vout))


def _list_request(address: str | None, recipient: str | None, destination: str | None, page_size: int,
                  page_token: bytes) -> bridge_pb2.ListDepositsRequest:
    if (address is None) == (recipient is None):
        raise BridgeError("INVALID_ARGUMENT", "give an address or a recipient")
    request = bridge_pb2.ListDepositsRequest(page_size=page_size, page_token=page_token,
                                             destination_chain=destination or "")
    if address is not None:
        request.address = address
    else:
        request.recipient = recipient  # type: ignore[assignment]
    return request


def _watch_request(deposit_id: bytes | str | None, address: str | None) -> bridge_pb2.WatchDepositsRequest:
    if (deposit_id is None) == (address is None):
        raise BridgeError("INVALID_ARGUMENT", "watch a deposit id or an address")
    if deposit_id is not None:
        return bridge_pb2.WatchDepositsRequest(deposit_id=deposit_id_bytes(deposit_id))
    return bridge_pb2.WatchDepositsRequest(address=address)


class _Follower:
    """What a resumed watch has already delivered: the last state of each deposit, so the opening
    snapshot of the next stream repeats nothing, and whether a single watched deposit is final."""

    def __init__(self, single: bool) -> None:
        self.single = single
        self.seen: dict[bytes, bytes] = {}
        self.done = False

    def accept(self, update: bridge_pb2.DepositUpdate) -> bool:
        key = update.deposit.deposit_id
        # A transition's time is its audit event's, the row's is its transaction's: compare the rest.
        status = bridge_pb2.DepositStatus()
        status.CopyFrom(update.deposit)
        status.ClearField("updated_at")
        state = status.SerializeToString(deterministic=True)
        if update.current and self.seen.get(key) == state:
            return False
        self.seen[key] = state
        if self.single and update.deposit.state in FINAL_STATES:
            self.done = True
        return True


class _Base:
    def __init__(self, target: str, server_cert_pem: bytes, *, server_name: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        self._creds = grpc.ssl_channel_credentials(root_certificates=server_cert_pem)
        self._options = [("grpc.ssl_target_name_override", server_name)] if server_name else []


class BridgeClient(_Base):
    """Blocking client: ``with BridgeClient(target, cert_pem, server_name="node1") as b: ...``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = grpc.secure_channel(self.target, self._creds, options=self._options)
        self._stub = bridge_pb2_grpc.BridgeStub(self._channel)

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise BridgeError(exc.code().name, exc.details() or "") from None

    def deposit_address(self, destination: str, recipient: str, *, source: str | None = None,
                        asset: str | None = None) -> bridge_pb2.DepositAddressResponse:
        """The deposit address for ``recipient`` on ``destination``; name the ``source`` chain
        (CAIP-2) or the ``asset`` ("BTC", "ETH")."""
        return self._call("GetDepositAddress", _address_request(destination, recipient, source, asset))

    def deposit(self, deposit_id: bytes | str | None = None, *, outpoint: tuple[str, str, int] | None = None
                ) -> bridge_pb2.DepositStatus:
        """One deposit by id (bytes or hex) or by ``(source chain, txid, vout)``."""
        return self._call("GetDeposit", _get_request(deposit_id, outpoint))

    def deposits_page(self, *, address: str | None = None, recipient: str | None = None,
                      destination: str | None = None, page_size: int = 0, page_token: bytes = b""
                      ) -> bridge_pb2.ListDepositsResponse:
        return self._call("ListDeposits", _list_request(address, recipient, destination, page_size, page_token))

    def deposits(self, *, address: str | None = None, recipient: str | None = None,
                 destination: str | None = None, page_size: int = 0) -> list[bridge_pb2.DepositStatus]:
        """Every deposit to ``address`` or for ``recipient`` (all pages)."""
        out: list[bridge_pb2.DepositStatus] = []
        token = b""
        while True:
            page = self.deposits_page(address=address, recipient=recipient, destination=destination,
                                      page_size=page_size, page_token=token)
            out.extend(page.deposits)
            token = page.next_page_token
            if not token:
                return out

    def withdrawal(self, burn_id: bytes | str) -> bridge_pb2.WithdrawalStatus:
        """One burn's payout (or refund) by burn id (bytes or hex)."""
        return self._call("GetWithdrawal", bridge_pb2.GetWithdrawalRequest(burn_id=deposit_id_bytes(burn_id)))

    def prove_reserves(self) -> str:
        """A fresh proof-of-reserves report (JSON); verify it with ``python -m fusion_prime.bridge.reserves verify``."""
        return str(self._call("ProveReserves", bridge_pb2.ProveReservesRequest(), timeout=600).report_json)

    def withdrawals(self, burner: str, limit: int = 0) -> list[bridge_pb2.WithdrawalStatus]:
        """The burns of ``burner``, newest first."""
        return list(self._call("ListWithdrawals", bridge_pb2.ListWithdrawalsRequest(burner=burner, limit=limit))
                    .withdrawals)

    def watch(self, deposit_id: bytes | str | None = None, *, address: str | None = None, resume: bool = True
              ) -> Iterator[bridge_pb2.DepositUpdate]:
        """The current state of the deposit (or of every deposit to ``address``), then each
        transition. A watch of one deposit ends when it is minted, dust or erratum; with
        ``resume`` the SDK watches again when the server's duration cap ends a stream."""
        request = _watch_request(deposit_id, address)
        follower = _Follower(single=deposit_id is not None)
        idle = 0
        while True:
            call = self._stub.WatchDeposits(request)
            delivered = False
            try:
                for update in call:
                    if follower.accept(update):
                        delivered = True
                        yield update
                    if follower.done:
                        return
                return
            except grpc.RpcError as exc:
                if not (resume and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise BridgeError(exc.code().name, exc.details() or "") from None
                idle = 0 if delivered else idle + 1
                if idle > MAX_IDLE_RECONNECTS:
                    raise BridgeError(exc.code().name, exc.details() or "") from None
            finally:
                call.cancel()

    def health(self) -> bridge_pb2.HealthResponse:
        return self._call("Health", bridge_pb2.HealthRequest())


class AsyncBridgeClient(_Base):
    """asyncio client (grpc.aio): ``async with AsyncBridgeClient(...) as b: await b.deposit(id)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = grpc.aio.secure_channel(self.target, self._creds, options=self._options)
        self._stub = bridge_pb2_grpc.BridgeStub(self._channel)

    async def __aenter__(self) -> AsyncBridgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise BridgeError(exc.code().name, exc.details() or "") from None

    async def deposit_address(self, destination: str, recipient: str, *, source: str | None = None,
                              asset: str | None = None) -> bridge_pb2.DepositAddressResponse:
        return await self._call("GetDepositAddress", _address_request(destination, recipient, source, asset))

    async def deposit(self, deposit_id: bytes | str | None = None, *, outpoint: tuple[str, str, int] | None = None
                      ) -> bridge_pb2.DepositStatus:
        return await self._call("GetDeposit", _get_request(deposit_id, outpoint))

    async def deposits_page(self, *, address: str | None = None, recipient: str | None = None,
                            destination: str | None = None, page_size: int = 0, page_token: bytes = b""
                            ) -> bridge_pb2.ListDepositsResponse:
        return await self._call("ListDeposits",
                                _list_request(address, recipient, destination, page_size, page_token))

    async def deposits(self, *, address: str | None = None, recipient: str | None = None,
                       destination: str | None = None, page_size: int = 0) -> list[bridge_pb2.DepositStatus]:
        out: list[bridge_pb2.DepositStatus] = []
        token = b""
        while True:
            page = await self.deposits_page(address=address, recipient=recipient, destination=destination,
                                            page_size=page_size, page_token=token)
            out.extend(page.deposits)
            token = page.next_page_token
            if not token:
                return out

    async def watch(self, deposit_id: bytes | str | None = None, *, address: str | None = None,
                    resume: bool = True) -> AsyncIterator[bridge_pb2.DepositUpdate]:
        """As :meth:`BridgeClient.watch`, as an async iterator."""
        request = _watch_request(deposit_id, address)
        follower = _Follower(single=deposit_id is not None)
        idle = 0
        while True:
            call = self._stub.WatchDeposits(request)
            delivered = False
            try:
                async for update in call:
                    if follower.accept(update):
                        delivered = True
                        yield update
                    if follower.done:
                        return
                return
            except grpc.aio.AioRpcError as exc:
                if not (resume and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise BridgeError(exc.code().name, exc.details() or "") from None
                idle = 0 if delivered else idle + 1
                if idle > MAX_IDLE_RECONNECTS:
                    raise BridgeError(exc.code().name, exc.details() or "") from None
            finally:
                call.cancel()

    async def withdrawal(self, burn_id: bytes | str) -> bridge_pb2.WithdrawalStatus:
        return await self._call("GetWithdrawal", bridge_pb2.GetWithdrawalRequest(burn_id=deposit_id_bytes(burn_id)))

    async def withdrawals(self, burner: str, limit: int = 0) -> list[bridge_pb2.WithdrawalStatus]:
        response = await self._call("ListWithdrawals", bridge_pb2.ListWithdrawalsRequest(burner=burner, limit=limit))
        return list(response.withdrawals)

    async def health(self) -> bridge_pb2.HealthResponse:
        return await self._call("Health", bridge_pb2.HealthRequest())
