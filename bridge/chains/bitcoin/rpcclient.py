"""The Bitcoin Core JSON-RPC client the bridge uses — against the devnet and a real bitcoind.

Amounts are parsed as :class:`~decimal.Decimal` (never float: 0.1 BTC must stay 10,000,000 sat),
errors arrive as :class:`BitcoinRPCError` carrying Core's numeric code so callers can branch on
``-25/-26/-27`` rather than on message text, and authentication is either user/password or
bitcoind's cookie file.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class BitcoinRPCError(Exception):
    """An error object returned by the node (``code`` is Core's RPC error code)."""

    def __init__(self, code: int, message: str, method: str = "") -> None:
        super().__init__(f"{method}: {message} (code {code})" if method else f"{message} (code {code})")
        self.code = code
        self.message = message
        self.method = method


class BitcoinRPCTransportError(Exception):
    """The node could not be reached, refused our credentials, or answered with non-JSON."""


class BitcoinRPC:
    """A thread-safe client with one keep-alive HTTP connection per thread.

    ``BitcoinRPC("http://127.0.0.1:18443", user="u", password="p")`` or
    ``BitcoinRPC(url, cookie_file="~/.bitcoin/regtest/.cookie")``.
    """

    def __init__(self, url: str, user: str | None = None, password: str | None = None, *,
                 cookie_file: str | Path | None = None, timeout: float = 30.0, wallet: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported RPC url {url!r}: expected http(s)://host:port/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (18443 if parts.scheme == "http" else 443)
        self._path = parts.path or "/"
        if wallet is not None:
            self._path = f"/wallet/{wallet}"
        user = user if user is not None else parts.username
        password = password if password is not None else parts.password
        if cookie_file is not None:
            text = Path(cookie_file).expanduser().read_text().strip()
            user, _, password = text.partition(":")
        if not user or password is None:
            raise ValueError("RPC credentials required: user and password, or cookie_file")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._timeout = timeout
        self._local = threading.local()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ transport
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _post(self, body: bytes) -> tuple[int, bytes]:
        headers = {"Authorization": self._auth, "Content-Type": "application/json"}
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request("POST", self._path, body, headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, ConnectionError, OSError) as exc:
                conn.close()
                self._local.conn = None
                # A kept-alive connection the server closed is retried once on a fresh socket.
                if attempt == 1:
                    raise BitcoinRPCTransportError(f"RPC transport error: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ calls
    def call(self, method: str, *params: Any, **named: Any) -> Any:
        """Call ``method`` with positional or (exclusively) named parameters."""
        if params and named:
            raise ValueError("use positional or named parameters, not both")
        req_id = next(self._ids)
        payload = {"jsonrpc": "1.0", "id": req_id, "method": method, "params": named if named else list(params)}
        status, raw = self._post(json.dumps(payload, default=_json_default).encode())
        if status == 401:
            raise BitcoinRPCTransportError("RPC authentication failed (HTTP 401)")
        try:
            reply = json.loads(raw, parse_float=Decimal)
        except ValueError:
            raise BitcoinRPCTransportError(f"non-JSON reply (HTTP {status}): {raw[:200]!r}") from None
        if not isinstance(reply, dict):
            raise BitcoinRPCTransportError(f"unexpected reply shape (HTTP {status})")
        err = reply.get("error")
        if err is not None:
            raise BitcoinRPCError(int(err.get("code", -1)), str(err.get("message", "")), method)
        if reply.get("id") != req_id:
            raise BitcoinRPCTransportError("reply id does not match request id")
        return reply.get("result")

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """JSON-RPC batch; results in request order, each an exception instance on error."""
        base = next(self._ids) * 100_000
        payload = [{"jsonrpc": "1.0", "id": base + i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        status, raw = self._post(json.dumps(payload, default=_json_default).encode())
        if status == 401:
            raise BitcoinRPCTransportError("RPC authentication failed (HTTP 401)")
        replies = json.loads(raw, parse_float=Decimal)
        by_id = {r.get("id"): r for r in replies}
        out: list[Any] = []
        for i, (m, _p) in enumerate(calls):
            r = by_id.get(base + i)
            if r is None:
                out.append(BitcoinRPCTransportError(f"no reply for {m}"))
            elif r.get("error") is not None:
                out.append(BitcoinRPCError(int(r["error"]["code"]), str(r["error"]["message"]), m))
            else:
                out.append(r.get("result"))
        return out

    def __getattr__(self, name: str) -> Any:
        """``rpc.getblockcount()`` sugar for :meth:`call`."""
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **k: self.call(name, *a, **k)

    # ------------------------------------------------------------------ typed helpers the bridge uses
    def get_block_count(self) -> int:
        return int(self.call("getblockcount"))

    def get_block_hash(self, height: int) -> str:
        return str(self.call("getblockhash", height))

    def get_block(self, block_hash: str, verbosity: int = 1) -> Any:
        return self.call("getblock", block_hash, verbosity)

    def send_raw_transaction(self, tx_hex: str, max_fee_rate: Decimal | None = None) -> str:
        if max_fee_rate is None:
            return str(self.call("sendrawtransaction", tx_hex))
        return str(self.call("sendrawtransaction", tx_hex, max_fee_rate))

    def get_raw_transaction(self, txid: str, verbose: bool = True, block_hash: str | None = None) -> Any:
        if block_hash is None:
            return self.call("getrawtransaction", txid, verbose)
        return self.call("getrawtransaction", txid, verbose, block_hash)

    def scan_utxos(self, descriptors: list[str]) -> Any:
        return self.call("scantxoutset", "start", descriptors)


def _json_default(o: object) -> object:
    if isinstance(o, Decimal):
        return float(o) if o != o.to_integral_value() else int(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
