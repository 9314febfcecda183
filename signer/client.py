"""The Python SDK: a synchronous and an asynchronous client of the wallet API.

Both sign every request - reads included - with the client's secp256k1 key
(``PartyIdentity``) before sending it, pin the node's TLS certificate, and return
protocol-level objects (``Signature`` with the derived public key) that the transaction
helpers (``signer.ethereum``, ``signer.bitcoin``, ``signer.psbt``) consume through
``sign_digest(digest, path)``.

The two clients have the same surface: ``create_key``, ``sign``, ``sign_request``,
``refresh``, ``reshare``, ``list_keys``, ``public_key``, ``status``, ``watch``, ``signer()``
and a context manager (``with`` / ``async with``). The asynchronous one returns coroutines
(``watch`` an async iterator, ``signer()`` an :class:`AsyncNetworkSigner`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from ..proto.generated import wallet_pb2, wallet_pb2_grpc
from ..protocol.curve import Point
from ..protocol.ecdsa import Signature, verify
from ..protocol.errors import InvalidInput
from ..protocol.hd import parse_path
from ..protocol.identity import PartyIdentity
from .requests import (
    KIND_CREATE_KEY,
    KIND_REFRESH,
    KIND_RESHARE,
    KIND_SIGN,
    RequestBody,
    list_keys_request,
    make_request,
    public_key_request,
)

# Administration calls run whole protocol sessions (key generation with aux info takes minutes
# at the production level); everything else answers within the node's bounded sign wait.
ADMIN_TIMEOUT = 600.0
CALL_TIMEOUT = 120.0
FINAL_STATES = ("done", "failed", "refused")


class WalletError(Exception):
    """A call the node refused or could not complete; ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def new_request_id() -> str:
    """A fresh request id (what every call uses unless given one, to retry idempotently)."""
    return secrets.token_hex(12)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _signature(response: wallet_pb2.SignResponse, digest: bytes) -> Signature:
    key = Point.from_bytes(response.public_key)
    r, s = int.from_bytes(response.r, "big"), int.from_bytes(response.s, "big")
    if not verify(key, digest, r, s):  # never trust a signature the SDK has not checked
        raise WalletError("DATA_LOSS", "the node returned a signature that does not verify")
    return Signature(r, s, response.recovery_id, key)


class _Base:
    """Request building shared by both clients (signing happens here, never on the wire)."""

    def __init__(self, target: str, server_cert_pem: bytes, client: PartyIdentity, *,
                 server_name: str | None = None, approvers: tuple[PartyIdentity, ...] = ()) -> None:
        self.client = client
        self.approvers = approvers
        self._creds = grpc.ssl_channel_credentials(root_certificates=server_cert_pem)
        self._options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self.target = target

    def _body(self, kind: str, request_id: str | None, **fields: Any) -> RequestBody:
        return RequestBody(kind, self.client.public_key, request_id or new_request_id(), _now_ms(), **fields)

    def _sign_request(self, key_id: bytes, digest: bytes, path: Any, request_id: str | None) -> Any:
        if len(digest) != 32:
            raise InvalidInput("digest must be exactly 32 bytes")
        body = self._body(KIND_SIGN, request_id, key_id=key_id, digest=digest, path=parse_path(path))
        return make_request(self.client, body, self.approvers)

    def _create_request(self, threshold: int, parties: int, label: str, request_id: str | None) -> Any:
        body = self._body(KIND_CREATE_KEY, request_id, threshold=threshold, parties=parties, label=label)
        return make_request(self.client, body, self.approvers)

    def _reshare_request(self, key_id: bytes, new_parties: list[str], threshold: int, request_id: str | None
                         ) -> Any:
        body = self._body(KIND_RESHARE, request_id, key_id=key_id, threshold=threshold,
                          new_parties=tuple(new_parties))
        return make_request(self.client, body, self.approvers)

    def _refresh_request(self, key_id: bytes, request_id: str | None) -> Any:
        return make_request(self.client, self._body(KIND_REFRESH, request_id, key_id=key_id), self.approvers)

    def _list_request(self) -> Any:
        return list_keys_request(self.client, new_request_id())

    def _public_key_request(self, key_id: bytes, path: Any, network: str) -> Any:
        return public_key_request(self.client, key_id, path, network, new_request_id())

    def _status_request(self, request_id: str) -> wallet_pb2.StatusRequest:
        return wallet_pb2.StatusRequest(request_id=request_id, client_public_key=self.client.public_key)


class WalletClient(_Base):
    """Blocking client. ``with WalletClient(...) as w: w.sign(key_id, digest, "m/0/1")``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = grpc.secure_channel(self.target, self._creds, options=self._options)
        self._stub = wallet_pb2_grpc.WalletServiceStub(self._channel)

    def __enter__(self) -> WalletClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise WalletError(exc.code().name, exc.details() or "") from None

    def sign(self, key_id: bytes, digest: bytes, path: Any = "m", *, request_id: str | None = None) -> Signature:
        return _signature(self._call("Sign", self._sign_request(key_id, digest, path, request_id)), digest)

    def sign_request(self, request: wallet_pb2.SignedRequest) -> wallet_pb2.SignResponse:
        """Send an already signed request (for retries with the same request id)."""
        return self._call("Sign", request)

    def create_key(self, threshold: int, parties: int, label: str = "", *, request_id: str | None = None
                   ) -> wallet_pb2.CreateKeyResponse:
        return self._call("CreateKey", self._create_request(threshold, parties, label, request_id),
                          timeout=ADMIN_TIMEOUT)

    def refresh(self, key_id: bytes, *, request_id: str | None = None) -> wallet_pb2.StatusUpdate:
        return self._call("Refresh", self._refresh_request(key_id, request_id), timeout=ADMIN_TIMEOUT)

    def reshare(self, key_id: bytes, new_parties: list[str], new_threshold: int, *, request_id: str | None = None
                ) -> wallet_pb2.StatusUpdate:
        return self._call("Reshare", self._reshare_request(key_id, new_parties, new_threshold, request_id),
                          timeout=ADMIN_TIMEOUT)

    def list_keys(self) -> list[wallet_pb2.KeyInfo]:
        """The keys this node holds that this client may use (every key for an administrator)."""
        return list(self._call("ListKeys", self._list_request()).keys)

    def public_key(self, key_id: bytes, path: Any = "m", network: str = "regtest") -> wallet_pb2.PublicKeyResponse:
        return self._call("GetPublicKey", self._public_key_request(key_id, path, network))

    def watch(self, request_id: str, *, timeout: float = 60.0) -> Iterator[wallet_pb2.StatusUpdate]:
        """This node's updates of a request as they happen, until a final state (or the node
        ends the stream: it bounds each one; ask again). NOT_FOUND until the node has seen
        the request."""
        try:
            yield from self._stub.Status(self._status_request(request_id), timeout=timeout)
        except grpc.RpcError as exc:
            raise WalletError(exc.code().name, exc.details() or "") from None

    def status(self, request_id: str) -> list[wallet_pb2.StatusUpdate]:
        return list(self.watch(request_id, timeout=30))

    def signer(self, key_id: bytes) -> NetworkSigner:
        """The threshold key as the transaction helpers want it (``signer.bitcoin.DigestSigner``)."""
        return NetworkSigner(self, key_id)


def create_key_with_progress(w: WalletClient, threshold: int, parties: int, label: str, request_id: str,
                             progress: Callable[[str], None] | None) -> wallet_pb2.CreateKeyResponse:
    """CreateKey, showing each phase as the node reports it on its Status stream (key
    generation, then aux info: minutes at the production level) while the call runs."""
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["response"] = w.create_key(threshold, parties, label, request_id=request_id)
        except BaseException as exc:  # handed to the main thread
            result["error"] = exc

    worker = threading.Thread(target=call, name="create-key", daemon=True)
    worker.start()
    shown = 0
    while progress is not None:
        running = worker.is_alive()  # one more look after the call ended: every phase is shown
        try:
            for i, update in enumerate(w.watch(request_id)):
                if i >= shown:
                    phase = f" ({update.phase})" if update.phase else ""
                    detail = f": {update.detail}" if update.detail else ""
                    progress(f"create-key {request_id}: {update.state}{phase}{detail}")
                    shown = i + 1
                if update.state in FINAL_STATES:
                    break
        except WalletError as exc:
            # NOT_FOUND: the node has not seen the request yet; the others: the stream ended
            # (bounded) or is busy - ask again while the call runs
            if exc.code not in ("NOT_FOUND", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"):
                break
        if not running:
            break
        worker.join(0.2)
    worker.join()
    if "error" in result:
        raise result["error"]
    response: wallet_pb2.CreateKeyResponse = result["response"]
    return response


class NetworkSigner:
    """``sign_digest(digest, path)`` and ``public_key(path)`` served by the threshold network.

    Public keys are fetched once per path; every signature is verified by the SDK before the
    helpers see it (and checked again by them against the expected key)."""

    def __init__(self, client: WalletClient, key_id: bytes) -> None:
        self.client, self.key_id = client, key_id
        self._keys: dict[str, Point] = {}

    def public_key(self, path: str) -> Point:
        if path not in self._keys:
            self._keys[path] = Point.from_bytes(bytes(self.client.public_key(self.key_id, path).public_key))
        return self._keys[path]

    def sign_digest(self, digest: bytes, path: str) -> Signature:
        return self.client.sign(self.key_id, digest, path)


class AsyncWalletClient(_Base):
    """asyncio client (grpc.aio), the same calls as :class:`WalletClient` as coroutines::

        async with AsyncWalletClient(target, cert, identity, server_name="node1") as w:
            key = await w.create_key(2, 3, "treasury")
            sig = await w.sign(key.key_id, digest, "m/0/1")
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = grpc.aio.secure_channel(self.target, self._creds, options=self._options)
        self._stub = wallet_pb2_grpc.WalletServiceStub(self._channel)

    async def __aenter__(self) -> AsyncWalletClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise WalletError(exc.code().name, exc.details() or "") from None

    async def sign(self, key_id: bytes, digest: bytes, path: Any = "m", *, request_id: str | None = None
                   ) -> Signature:
        response = await self._call("Sign", self._sign_request(key_id, digest, path, request_id))
        return _signature(response, digest)

    async def sign_request(self, request: wallet_pb2.SignedRequest) -> wallet_pb2.SignResponse:
        return await self._call("Sign", request)

    async def create_key(self, threshold: int, parties: int, label: str = "", *, request_id: str | None = None
                         ) -> wallet_pb2.CreateKeyResponse:
        return await self._call("CreateKey", self._create_request(threshold, parties, label, request_id),
                                timeout=ADMIN_TIMEOUT)

    async def refresh(self, key_id: bytes, *, request_id: str | None = None) -> wallet_pb2.StatusUpdate:
        return await self._call("Refresh", self._refresh_request(key_id, request_id), timeout=ADMIN_TIMEOUT)

    async def reshare(self, key_id: bytes, new_parties: list[str], new_threshold: int, *,
                      request_id: str | None = None) -> wallet_pb2.StatusUpdate:
        return await self._call("Reshare", self._reshare_request(key_id, new_parties, new_threshold, request_id),
                                timeout=ADMIN_TIMEOUT)

    async def list_keys(self) -> list[wallet_pb2.KeyInfo]:
        return list((await self._call("ListKeys", self._list_request())).keys)

    async def public_key(self, key_id: bytes, path: Any = "m", network: str = "regtest"
                         ) -> wallet_pb2.PublicKeyResponse:
        return await self._call("GetPublicKey", self._public_key_request(key_id, path, network))

    async def watch(self, request_id: str, *, timeout: float = 60.0) -> AsyncIterator[wallet_pb2.StatusUpdate]:
        try:
            async for update in self._stub.Status(self._status_request(request_id), timeout=timeout):
                yield update
        except grpc.aio.AioRpcError as exc:
            raise WalletError(exc.code().name, exc.details() or "") from None

    async def status(self, request_id: str) -> list[wallet_pb2.StatusUpdate]:
        return [update async for update in self.watch(request_id, timeout=30)]

    def signer(self, key_id: bytes) -> AsyncNetworkSigner:
        return AsyncNetworkSigner(self, key_id)


class AsyncNetworkSigner:
    """:class:`NetworkSigner` for the asynchronous client: ``await sign_digest(digest, path)``,
    ``await public_key(path)`` (cached per path, every signature verified by the SDK)."""

    def __init__(self, client: AsyncWalletClient, key_id: bytes) -> None:
        self.client, self.key_id = client, key_id
        self._keys: dict[str, Point] = {}

    async def public_key(self, path: str) -> Point:
        if path not in self._keys:
            answer = await self.client.public_key(self.key_id, path)
            self._keys[path] = Point.from_bytes(bytes(answer.public_key))
        return self._keys[path]

    async def sign_digest(self, digest: bytes, path: str) -> Signature:
        return await self.client.sign(self.key_id, digest, path)
