"""A Bitcoin Core compatible JSON-RPC server in front of :class:`RegtestNode`.

Method names, positional and named parameters, result shapes, error codes and HTTP behaviour
(basic auth, 401 without it, JSON-RPC 1.0 status codes and 2.0 envelopes, batches) follow
bitcoind v28, so the bridge's :class:`BitcoinRPC` client and its tests cannot tell the devnet
from a real node for the subset implemented here.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any

from ....node.httpd import LoggedHTTPServer
from .encoding import COIN, DecodeError, address_to_script, descriptor_scripts, parse_hash_hex
from .node import ChainError, RegtestNode, block_subsidy
from .policy import TxValidationError
from .tx import Tx, btc_amount, difficulty, script_pubkey_json, tx_to_json

log = logging.getLogger(__name__)

RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_UTXO_SET = -27
RPC_METHOD_NOT_FOUND = -32601
RPC_INVALID_REQUEST = -32600
RPC_PARSE_ERROR = -32700
MAX_BODY = 32 * 1024 * 1024
DEFAULT_MAX_RAW_TX_FEE_RATE = Decimal("0.10")  # BTC/kvB


class RPCError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------------- parameter checking
_JSON_TYPE = {bool: "bool", int: "number", float: "number", Decimal: "number", str: "string", list: "array",
              dict: "object", type(None): "null"}


def _type_name(v: object) -> str:
    return _JSON_TYPE.get(type(v), "unknown")


def _want(value: object, kind: str) -> None:
    ok = {
        "number": isinstance(value, int | float | Decimal) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "bool": isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }[kind]
    if not ok:
        raise RPCError(RPC_TYPE_ERROR, f"JSON value of type {_type_name(value)} is not of expected type {kind}")


def _int(value: object) -> int:
    _want(value, "number")
    if isinstance(value, float | Decimal) and value != int(value):
        raise RPCError(RPC_TYPE_ERROR, "JSON integer out of range")
    return int(value)  # type: ignore[arg-type]


def _hash(value: object, name: str) -> bytes:
    _want(value, "string")
    try:
        return parse_hash_hex(value, name)
    except DecodeError as exc:
        raise RPCError(RPC_INVALID_PARAMETER, f"{name} {exc}" if "length" in str(exc)
                       else f"{name} must be hexadecimal string (not '{value}')") from None


def _amount(value: object) -> int:
    """AmountFromValue: BTC number or string to satoshis, at most 8 decimals, non-negative."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise RPCError(RPC_TYPE_ERROR, "Amount is not a number or string")
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        raise RPCError(RPC_TYPE_ERROR, "Invalid amount") from None
    sats = d * COIN
    if sats != sats.to_integral_value() or sats < 0 or sats > 21_000_000 * COIN:
        raise RPCError(RPC_TYPE_ERROR, "Invalid amount")
    return int(sats)


class _Spec:
    def __init__(self, fn: Callable[..., Any], names: list[str], required: int) -> None:
        self.fn = fn
        self.names = names
        self.required = required


class BitcoinRPCServer:
    """Threaded HTTP JSON-RPC server; ``start()`` binds, ``stop()`` shuts down cleanly."""

    def __init__(self, node: RegtestNode, host: str = "127.0.0.1", port: int = 0,
                 user: str = "fusion", password: str | None = None) -> None:
        if not user or ":" in user:
            raise ValueError("rpc user must be non-empty and contain no ':'")
        self.node = node
        self.user = user
        self.password = password or secrets.token_urlsafe(24)
        self._expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        self._methods: dict[str, _Spec] = {}
        self._register()
        self._started = time.time()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body are written separately; without NODELAY, Nagle plus the
                # client's delayed ACK adds ~40 ms to every keep-alive response.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("rpc %s", fmt % args)

            def do_GET(self) -> None:
                if not server._authorized(self.headers.get("Authorization")):
                    return self._unauthorized()
                self._send(405, b"JSONRPC server handles only POST requests", "text/html")

            def do_POST(self) -> None:
                if not server._authorized(self.headers.get("Authorization")):
                    return self._unauthorized()
                try:
                    length = int(self.headers.get("Content-Length", "-1"))
                except ValueError:
                    length = -1
                if length < 0 or length > MAX_BODY:
                    self.close_connection = True
                    return self._send(400, b"", "text/html")
                body = self.rfile.read(length)
                status, payload = server.handle_body(body)
                self._send(status, payload, "application/json")

            def _unauthorized(self) -> None:
                # bitcoind answers 401 with an empty body and a Basic challenge; it also sleeps
                # to slow brute force, which a local devnet does not need.
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="jsonrpc"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = LoggedHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> BitcoinRPCServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="btc-rpc", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        return hmac.compare_digest(header[6:].strip(), self._expected)

    # ------------------------------------------------------------------ dispatch
    def handle_body(self, body: bytes) -> tuple[int, bytes]:
        """Parse and execute one HTTP body; returns (HTTP status, response bytes)."""
        try:
            request = json.loads(body, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            return 500, self._dump({"result": None, "error": {"code": RPC_PARSE_ERROR, "message": "Parse error"},
                                    "id": None})
        if isinstance(request, list):
            replies = [r for r in (self._handle_one(item)[1] for item in request) if r is not None]
            return 200, self._dump(replies)
        status, reply = self._handle_one(request)
        if reply is None:
            return 204, b""
        return status, self._dump(reply)

    def _handle_one(self, request: object) -> tuple[int, dict[str, Any] | None]:
        if not isinstance(request, dict):
            return 400, {"result": None, "error": {"code": RPC_INVALID_REQUEST,
                                                    "message": "Invalid Request object"}, "id": None}
        v2 = request.get("jsonrpc") == "2.0"
        req_id = request.get("id")
        notification = v2 and "id" not in request

        def error(code: int, message: str) -> tuple[int, dict[str, Any] | None]:
            if notification:
                return 204, None
            if v2:
                return 200, {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": req_id}
            status = 404 if code == RPC_METHOD_NOT_FOUND else 400 if code == RPC_INVALID_REQUEST else 500
            return status, {"result": None, "error": {"code": code, "message": message}, "id": req_id}

        if "jsonrpc" in request and request["jsonrpc"] not in ("1.0", "2.0"):
            return error(RPC_INVALID_REQUEST, "JSON-RPC version not supported")
        method = request.get("method")
        if not isinstance(method, str):
            return error(RPC_INVALID_REQUEST, "Method must be a string")
        params = request.get("params", [])
        if params is None:
            params = []
        if not isinstance(params, list | dict):
            return error(RPC_INVALID_REQUEST, "Params must be an array or object")
        try:
            result = self.call(method, params)
        except RPCError as exc:
            return error(exc.code, exc.message)
        except ChainError as exc:
            return error(exc.code, exc.message)
        except Exception as exc:  # a bug must not kill the server; report it like Core's -1
            log.exception("rpc %s failed", method)
            return error(RPC_MISC_ERROR, f"internal error: {type(exc).__name__}: {exc}")
        if notification:
            return 204, None
        if v2:
            return 200, {"jsonrpc": "2.0", "result": result, "id": req_id}
        return 200, {"result": result, "error": None, "id": req_id}

    @staticmethod
    def _dump(obj: object) -> bytes:
        return (_encode(obj) + "\n").encode()

    def call(self, method: str, params: list[Any] | dict[str, Any]) -> Any:
        spec = self._methods.get(method)
        if spec is None:
            raise RPCError(RPC_METHOD_NOT_FOUND, "Method not found")
        if isinstance(params, dict):
            unknown = [k for k in params if k not in spec.names]
            if unknown:
                raise RPCError(RPC_INVALID_PARAMETER, f"Unknown named parameter {unknown[0]}")
            args: list[Any] = []
            last = max((spec.names.index(k) for k in params), default=-1)
            for i in range(last + 1):
                args.append(params.get(spec.names[i], _MISSING))
        else:
            args = list(params)
        if len(args) > len(spec.names) or sum(1 for a in args[: spec.required] if a is not _MISSING) < spec.required:
            usage = f"{method} " + " ".join(
                n if i < spec.required else f"( {n} )" for i, n in enumerate(spec.names))
            raise RPCError(RPC_MISC_ERROR, usage.strip())
        args = [None if a is _MISSING else a for a in args]
        return spec.fn(*args)

    def _reg(self, name: str, fn: Callable[..., Any], names: list[str], required: int = 0) -> None:
        self._methods[name] = _Spec(fn, names, required)

    def _register(self) -> None:
        r = self._reg
        r("getblockchaininfo", self.getblockchaininfo, [])
        r("getblockcount", self.getblockcount, [])
        r("getbestblockhash", self.getbestblockhash, [])
        r("getblockhash", self.getblockhash, ["height"], 1)
        r("getblock", self.getblock, ["blockhash", "verbosity"], 1)
        r("getblockheader", self.getblockheader, ["blockhash", "verbose"], 1)
        r("getchaintips", self.getchaintips, [])
        r("getrawtransaction", self.getrawtransaction, ["txid", "verbose", "blockhash"], 1)
        r("decoderawtransaction", self.decoderawtransaction, ["hexstring", "iswitness"], 1)
        r("sendrawtransaction", self.sendrawtransaction, ["hexstring", "maxfeerate", "maxburnamount"], 1)
        r("testmempoolaccept", self.testmempoolaccept, ["rawtxs", "maxfeerate"], 1)
        r("getrawmempool", self.getrawmempool, ["verbose", "mempool_sequence"])
        r("getmempoolentry", self.getmempoolentry, ["txid"], 1)
        r("getmempoolinfo", self.getmempoolinfo, [])
        r("estimatesmartfee", self.estimatesmartfee, ["conf_target", "estimate_mode"], 1)
        r("generatetoaddress", self.generatetoaddress, ["nblocks", "address", "maxtries"], 2)
        r("generateblock", self.generateblock, ["output", "transactions", "submit"], 2)
        r("submitblock", self.submitblock, ["hexdata", "dummy"], 1)
        r("scantxoutset", self.scantxoutset, ["action", "scanobjects"], 1)
        r("gettxout", self.gettxout, ["txid", "n", "include_mempool"], 2)
        r("invalidateblock", self.invalidateblock, ["blockhash"], 1)
        r("reconsiderblock", self.reconsiderblock, ["blockhash"], 1)
        r("validateaddress", self.validateaddress, ["address"], 1)
        r("uptime", lambda: int(time.time() - self._started), [])
        r("getnetworkinfo", self.getnetworkinfo, [])
        r("help", lambda command=None: "\n".join(sorted(self._methods)), ["command"])

    # ------------------------------------------------------------------ blockchain
    def _header_json(self, block_hash: bytes) -> dict[str, Any]:
        node = self.node
        with node.locked():
            info = node.header_info(block_hash)
            h = info.header
            active = node.is_active(block_hash)
            tip = node.height
            out: dict[str, Any] = {
                "hash": info.hash[::-1].hex(),
                "confirmations": tip - info.height + 1 if active else -1,
                "height": info.height,
                "version": h.version,
                "versionHex": f"{h.version & 0xFFFFFFFF:08x}",
                "merkleroot": h.merkle_root[::-1].hex(),
                "time": h.time,
                "mediantime": node.median_time_past(block_hash),
                "nonce": h.nonce,
                "bits": f"{h.bits:08x}",
                "difficulty": difficulty(h.bits),
                "chainwork": f"{info.chainwork:064x}",
                "nTx": info.ntx,
            }
            if info.height > 0:
                out["previousblockhash"] = info.prev[::-1].hex()
            if active:
                nxt = node.index.active_hash(info.height + 1)
                if nxt is not None:
                    out["nextblockhash"] = nxt[::-1].hex()
            return out

    def getblockchaininfo(self) -> dict[str, Any]:
        node = self.node
        with node.locked():
            tip_hash = node.tip_hash
            hdr = self._header_json(tip_hash)
            return {
                "chain": "regtest",
                "blocks": node.height,
                "headers": node.header_count(),
                "bestblockhash": hdr["hash"],
                "difficulty": hdr["difficulty"],
                "time": hdr["time"],
                "mediantime": hdr["mediantime"],
                "verificationprogress": 1,
                "initialblockdownload": False,
                "chainwork": hdr["chainwork"],
                "size_on_disk": node.size_on_disk(),
                "pruned": False,
                "warnings": [],
            }

    def getblockcount(self) -> int:
        return self.node.height

    def getbestblockhash(self) -> str:
        return self.node.tip_hash[::-1].hex()

    def getblockhash(self, height: object) -> str:
        h = _int(height)
        if h < 0:
            raise RPCError(RPC_INVALID_PARAMETER, "Block height out of range")
        return self.node.block_hash_at(h)[::-1].hex()

    def getblockheader(self, blockhash: object, verbose: object = None) -> Any:
        block_hash = _hash(blockhash, "hash")
        if verbose is not None:
            _want(verbose, "bool")
        if verbose is False:
            return self.node.header_info(block_hash).header.serialize().hex()
        return self._header_json(block_hash)

    def getblock(self, blockhash: object, verbosity: object = None) -> Any:
        block_hash = _hash(blockhash, "blockhash")
        if verbosity is None:
            level = 1
        elif isinstance(verbosity, bool):
            level = int(verbosity)
        else:
            level = _int(verbosity)
        if not 0 <= level <= 3:
            raise RPCError(RPC_INVALID_PARAMETER, "Verbosity must be in range 0..3")
        node = self.node
        with node.locked():
            if level == 0:
                return node.read_raw_block(block_hash).hex()
            info = node.header_info(block_hash)
            block = node.read_block(block_hash)
            out = self._header_json(block_hash)
            nxt = out.pop("nextblockhash", None)
            prev = out.pop("previousblockhash", None)
            out.update({"strippedsize": info.strippedsize, "size": info.size, "weight": info.weight})
            if level == 1:
                out["tx"] = [t.txid_hex for t in block.txs]
            else:
                undo = node.block_undo(block_hash) if node.is_active(block_hash) else None
                txs = []
                pos = 0
                for t in block.txs:
                    prevouts = None
                    if undo is not None and not t.is_coinbase():
                        prevouts = [c.txout for c in undo[pos : pos + len(t.vin)]]
                        pos += len(t.vin)
                    txs.append(tx_to_json(t, node.network, prevouts, include_hex=True,
                                          verbosity_prevout=level == 3))
                out["tx"] = txs
            if prev is not None:
                out["previousblockhash"] = prev
            if nxt is not None:
                out["nextblockhash"] = nxt
            return out

    def getchaintips(self) -> list[dict[str, Any]]:
        node = self.node
        with node.locked():
            out = []
            tip = node.height
            for info in node.index.tips():
                active = node.is_active(info.hash)
                fork = info
                while not node.is_active(fork.hash) and fork.height > 0:
                    fork = node.header_info(fork.prev)
                status = "active" if active else "invalid" if info.invalid else "valid-fork"
                out.append({"height": info.height, "hash": info.hash[::-1].hex(),
                            "branchlen": 0 if active else info.height - fork.height, "status": status})
            out.sort(key=lambda t: (t["status"] != "active", -t["height"]))
            _ = tip
            return out

    # ------------------------------------------------------------------ transactions
    def getrawtransaction(self, txid: object, verbose: object = None, blockhash: object = None) -> Any:
        tid = _hash(txid, "parameter 1")
        if verbose is None:
            level = 0
        elif isinstance(verbose, bool):
            level = int(verbose)
        else:
            level = _int(verbose)
        node = self.node
        with node.locked():
            block_hash: bytes | None = None
            tx: Tx | None = None
            if blockhash is not None:
                block_hash = _hash(blockhash, "parameter 3")
                try:
                    block = node.read_block(block_hash)
                except ChainError:
                    raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found") from None
                tx = next((t for t in block.txs if t.txid == tid), None)
                if tx is None:
                    raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "No such transaction found in the provided block. "
                                   "Use gettransaction for wallet transactions.")
            else:
                entry = node.mempool_entry(tid)
                if entry is not None:
                    tx = entry.tx
                else:
                    if tid == node.read_block(node.block_hash_at(0)).txs[0].txid:
                        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "The genesis block coinbase is not considered "
                                       "an ordinary transaction and cannot be retrieved")
                    loc = node.index.tx_location(tid)
                    if loc is None:
                        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction. "
                                       "Use gettransaction for wallet transactions.")
                    block_hash = loc[0]
                    tx = node.read_block(block_hash).txs[loc[1]]
            if level == 0:
                return tx.serialize().hex()
            out = tx_to_json(tx, node.network)
            if block_hash is not None:
                info = node.header_info(block_hash)
                active = node.is_active(block_hash)
                out["blockhash"] = block_hash[::-1].hex()
                if active:
                    out["confirmations"] = node.height - info.height + 1
                    out["time"] = info.header.time
                    out["blocktime"] = info.header.time
                else:
                    out["in_active_chain"] = False
                    out["confirmations"] = 0
            return out

    def decoderawtransaction(self, hexstring: object, iswitness: object = None) -> dict[str, Any]:
        _want(hexstring, "string")
        try:
            tx = Tx.from_hex(hexstring)
        except DecodeError:
            raise RPCError(RPC_DESERIALIZATION_ERROR, "TX decode failed") from None
        out = tx_to_json(tx, self.node.network, include_hex=False)
        return out

    def _decode_tx(self, hexstring: object) -> Tx:
        _want(hexstring, "string")
        try:
            return Tx.from_hex(hexstring)
        except DecodeError:
            raise RPCError(RPC_DESERIALIZATION_ERROR,
                           "TX decode failed. Make sure the tx has at least one input.") from None

    @staticmethod
    def _feerate_param(value: object) -> Decimal:
        if value is None:
            return DEFAULT_MAX_RAW_TX_FEE_RATE
        sats = _amount(value)
        return Decimal(sats) / COIN

    def sendrawtransaction(self, hexstring: object, maxfeerate: object = None, maxburnamount: object = None) -> str:
        tx = self._decode_tx(hexstring)
        max_rate = self._feerate_param(maxfeerate)
        max_burn = _amount(maxburnamount) if maxburnamount is not None else 0
        for out in tx.vout:
            if (out.script_pubkey[:1] == b"\x6a" or len(out.script_pubkey) > 10_000) and out.value > max_burn:
                raise RPCError(RPC_VERIFY_ERROR, "Unspendable output exceeds maximum configured by user "
                               "(maxburnamount)")
        node = self.node
        with node.locked():
            existing = node.mempool_entry(tx.txid)
            if existing is not None and existing.wtxid == tx.wtxid:
                return tx.txid_hex  # Core re-announces and reports success for a known transaction
            if node.index.has_unspent_outputs(tx.txid):
                raise RPCError(RPC_VERIFY_ALREADY_IN_UTXO_SET, "Transaction outputs already in utxo set")
            try:
                entry = node.accept_to_mempool(tx, test_only=True)
                if max_rate and Decimal(entry.fee) / COIN > max_rate * entry.vsize / 1000:
                    raise RPCError(RPC_VERIFY_ERROR,
                                   "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)")
                node.accept_to_mempool(tx)
            except TxValidationError as exc:
                raise self._tx_error(exc) from None
            return tx.txid_hex

    @staticmethod
    def _tx_error(exc: TxValidationError) -> RPCError:
        if exc.kind == "missing-inputs":
            return RPCError(RPC_VERIFY_ERROR, "bad-txns-inputs-missingorspent")
        if exc.kind == "already-in-chain":
            return RPCError(RPC_VERIFY_ALREADY_IN_UTXO_SET, "Transaction outputs already in utxo set")
        message = exc.reason + (f", {exc.debug}" if exc.debug else "")
        return RPCError(RPC_VERIFY_REJECTED, message)

    def testmempoolaccept(self, rawtxs: object, maxfeerate: object = None) -> list[dict[str, Any]]:
        _want(rawtxs, "array")
        assert isinstance(rawtxs, list)
        if not 1 <= len(rawtxs) <= 25:
            raise RPCError(RPC_INVALID_PARAMETER, "Array must contain between 1 and 25 transactions.")
        txs = [self._decode_tx(h) for h in rawtxs]
        max_rate = self._feerate_param(maxfeerate)
        if len(txs) > 1:
            raise RPCError(RPC_INVALID_PARAMETER, "package evaluation is not supported by this devnet; "
                           "submit transactions one at a time")
        tx = txs[0]
        res: dict[str, Any] = {"txid": tx.txid_hex, "wtxid": tx.wtxid_hex}
        try:
            entry = self.node.accept_to_mempool(tx, test_only=True)
        except TxValidationError as exc:
            reason = {"missing-inputs": "missing-inputs", "already-in-chain": "txn-already-known"}.get(
                exc.kind, exc.reason)
            res.update({"allowed": False, "reject-reason": reason})
            return [res]
        if max_rate and Decimal(entry.fee) / COIN > max_rate * entry.vsize / 1000:
            res.update({"allowed": False, "reject-reason": "max-fee-exceeded"})
            return [res]
        res.update({"allowed": True, "vsize": entry.vsize,
                    "fees": {"base": btc_amount(entry.fee),
                             "effective-feerate": btc_amount(entry.fee * 1000 // entry.vsize),
                             "effective-includes": [tx.wtxid_hex]}})
        return [res]

    def _entry_json(self, txid: bytes) -> dict[str, Any]:
        node = self.node
        e = node.mempool_entry(txid)
        assert e is not None
        anc = node.mempool_ancestors(txid)
        desc = node.mempool_descendants(txid) or []
        anc_entries = [node.mempool_entry(a) for a in anc]
        desc_entries = [node.mempool_entry(d) for d in desc]
        spentby = sorted({node.mempool_spender(type(e.tx.vin[0].prevout)(txid, n)) for n in range(len(e.tx.vout))}
                         - {None})
        return {
            "vsize": e.vsize,
            "weight": e.weight,
            "time": e.time,
            "height": e.height - 1,
            "descendantcount": len(desc) + 1,
            "descendantsize": e.vsize + sum(d.vsize for d in desc_entries if d),
            "ancestorcount": len(anc) + 1,
            "ancestorsize": e.vsize + sum(a.vsize for a in anc_entries if a),
            "wtxid": e.tx.wtxid_hex,
            "fees": {
                "base": btc_amount(e.fee),
                "modified": btc_amount(e.fee),
                "ancestor": btc_amount(e.fee + sum(a.fee for a in anc_entries if a)),
                "descendant": btc_amount(e.fee + sum(d.fee for d in desc_entries if d)),
            },
            "depends": sorted(p[::-1].hex() for p in e.parents),
            "spentby": [s[::-1].hex() for s in spentby if s is not None],
            "bip125-replaceable": node.signals_rbf(txid),
            "unbroadcast": False,
        }

    def getrawmempool(self, verbose: object = None, mempool_sequence: object = None) -> Any:
        if verbose is not None:
            _want(verbose, "bool")
        if mempool_sequence is not None:
            _want(mempool_sequence, "bool")
            if mempool_sequence and verbose:
                raise RPCError(RPC_INVALID_PARAMETER,
                               "Verbose results cannot contain mempool sequence values.")
        with self.node.locked():
            entries = self.node.mempool_entries()
            if verbose:
                return {e.tx.txid_hex: self._entry_json(e.txid) for e in entries}
            return [e.tx.txid_hex for e in entries]

    def getmempoolentry(self, txid: object) -> dict[str, Any]:
        tid = _hash(txid, "parameter 1")
        with self.node.locked():
            if self.node.mempool_entry(tid) is None:
                raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
            return self._entry_json(tid)

    def getmempoolinfo(self) -> dict[str, Any]:
        entries = self.node.mempool_entries()
        minfee = btc_amount(self.node.policy.min_relay_fee)
        return {"loaded": True, "size": len(entries), "bytes": sum(e.vsize for e in entries),
                "usage": sum(len(e.tx.serialize()) * 3 for e in entries),
                "total_fee": btc_amount(sum(e.fee for e in entries)),
                "maxmempool": 300_000_000, "mempoolminfee": minfee, "minrelaytxfee": minfee,
                "incrementalrelayfee": btc_amount(self.node.policy.incremental_relay_fee),
                "unbroadcastcount": 0, "fullrbf": self.node.policy.full_rbf}

    def estimatesmartfee(self, conf_target: object, estimate_mode: object = None) -> dict[str, Any]:
        target = _int(conf_target)
        if not 1 <= target <= 1008:
            raise RPCError(RPC_INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008")
        mode = "economical"
        if estimate_mode is not None:
            _want(estimate_mode, "string")
            assert isinstance(estimate_mode, str)
            mode = estimate_mode.lower()
            if mode not in ("unset", "economical", "conservative"):
                raise RPCError(RPC_INVALID_PARAMETER, 'Invalid estimate_mode parameter, must be one of: "unset", '
                               '"economical", "conservative"')
        rate = self.node.estimate_fee(max(target, 2) if target == 1 else target, conservative=mode == "conservative")
        blocks = max(target, 2)
        if rate is None:
            return {"errors": ["Insufficient data or no feerate found"], "blocks": blocks}
        return {"feerate": btc_amount(round(rate * 1000)), "blocks": blocks}

    # ------------------------------------------------------------------ mining
    def _output_script(self, address: object) -> bytes:
        _want(address, "string")
        assert isinstance(address, str)
        try:
            return address_to_script(address, self.node.network)
        except DecodeError:
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None

    @staticmethod
    def _single_script(scripts: list[bytes]) -> bytes:
        if len(scripts) != 1:
            raise RPCError(RPC_INVALID_PARAMETER, "Descriptors that expand to several scripts are not supported")
        return scripts[0]

    def generatetoaddress(self, nblocks: object, address: object, maxtries: object = None) -> list[str]:
        n = _int(nblocks)
        script = self._output_script(address)
        if maxtries is not None:
            _int(maxtries)
        if n < 0:
            raise RPCError(RPC_INVALID_PARAMETER, "nblocks must be non-negative")
        return [h[::-1].hex() for h in self.node.generate(n, script)]

    def generateblock(self, output: object, transactions: object, submit: object = None) -> dict[str, Any]:
        _want(output, "string")
        assert isinstance(output, str)
        try:
            script = address_to_script(output, self.node.network)
        except DecodeError:
            try:
                scripts = descriptor_scripts(output, self.node.network)
            except DecodeError as exc:
                raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, f"Error: Invalid address or descriptor ({exc})") from None
            script = self._single_script(scripts)
        _want(transactions, "array")
        assert isinstance(transactions, list)
        do_submit = True if submit is None else submit
        _want(do_submit, "bool")
        node = self.node
        with node.locked():
            txs: list[Tx] = []
            for item in transactions:
                _want(item, "string")
                entry = None
                if len(item) == 64:
                    try:
                        entry = node.mempool_entry(parse_hash_hex(item))
                    except DecodeError:
                        entry = None
                    if entry is None:
                        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, f"Transaction {item} not in mempool.")
                    txs.append(entry.tx)
                    continue
                try:
                    txs.append(Tx.from_hex(item))
                except DecodeError:
                    raise RPCError(RPC_DESERIALIZATION_ERROR, f"Transaction decode failed for {item}. Make sure "
                                   "the tx has at least one input.") from None
            block = node.create_block(script, txs)
            if not do_submit:
                return {"hash": block.header.hash_hex, "hex": block.serialize().hex()}
            result = node.submit_block(block)
            if result is not None:
                raise RPCError(RPC_VERIFY_ERROR, f"TestBlockValidity failed: {result}")
            return {"hash": block.header.hash_hex}

    def submitblock(self, hexdata: object, dummy: object = None) -> str | None:
        from .tx import Block

        _want(hexdata, "string")
        try:
            block = Block.from_bytes(bytes.fromhex(str(hexdata)))
        except (ValueError, DecodeError):
            raise RPCError(RPC_DESERIALIZATION_ERROR, "Block decode failed") from None
        if not block.txs or not block.txs[0].is_coinbase():
            raise RPCError(RPC_DESERIALIZATION_ERROR, "Block does not start with a coinbase")
        return self.node.submit_block(block)

    def invalidateblock(self, blockhash: object) -> None:
        self.node.invalidate_block(_hash(blockhash, "blockhash"))

    def reconsiderblock(self, blockhash: object) -> None:
        self.node.reconsider_block(_hash(blockhash, "blockhash"))

    # ------------------------------------------------------------------ UTXO queries
    def scantxoutset(self, action: object, scanobjects: object = None) -> Any:
        _want(action, "string")
        if action == "status":
            return None  # scans are synchronous: none is ever in progress
        if action == "abort":
            return False
        if action != "start":
            raise RPCError(RPC_INVALID_PARAMETER, "Invalid action '" + str(action) + "'")
        if scanobjects is None:
            raise RPCError(RPC_MISC_ERROR, "scanobjects argument is required for the start action")
        _want(scanobjects, "array")
        assert isinstance(scanobjects, list)
        scripts: dict[bytes, str] = {}
        for obj in scanobjects:
            if isinstance(obj, dict):
                desc = obj.get("desc")
                if not isinstance(desc, str):
                    raise RPCError(RPC_INVALID_PARAMETER, "Scan object needs to be either a string or an object")
            elif isinstance(obj, str):
                desc = obj
            else:
                raise RPCError(RPC_INVALID_PARAMETER, "Scan object needs to be either a string or an object")
            try:
                for s in descriptor_scripts(desc, self.node.network):
                    scripts.setdefault(s, desc)
            except DecodeError as exc:
                raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, str(exc)) from None
        node = self.node
        with node.locked():
            unspents = []
            total = 0
            tip = node.height
            for outpoint, coin in node.index.utxos_for_scripts(list(scripts)):
                total += coin.value
                spk = script_pubkey_json(coin.script_pubkey, node.network)
                unspents.append({
                    "txid": outpoint.txid_hex, "vout": outpoint.n, "scriptPubKey": coin.script_pubkey.hex(),
                    "desc": spk["desc"], "amount": btc_amount(coin.value), "coinbase": coin.coinbase,
                    "height": coin.height, "blockhash": node.block_hash_at(coin.height)[::-1].hex(),
                    "confirmations": tip - coin.height + 1,
                })
            return {"success": True, "txouts": node.index.utxo_count(), "height": tip,
                    "bestblock": node.tip_hash[::-1].hex(), "unspents": unspents, "total_amount": btc_amount(total)}

    def gettxout(self, txid: object, n: object, include_mempool: object = None) -> Any:
        from .tx import OutPoint

        tid = _hash(txid, "txid")
        vout = _int(n)
        if vout < 0:
            raise RPCError(RPC_INVALID_PARAMETER, "Invalid parameter, vout cannot be negative")
        use_mempool = True if include_mempool is None else include_mempool
        _want(use_mempool, "bool")
        node = self.node
        with node.locked():
            op = OutPoint(tid, vout)
            if use_mempool:
                if node.mempool_spender(op) is not None:
                    return None
                entry = node.mempool_entry(tid)
                if entry is not None and vout < len(entry.tx.vout):
                    out = entry.tx.vout[vout]
                    return {"bestblock": node.tip_hash[::-1].hex(), "confirmations": 0,
                            "value": btc_amount(out.value),
                            "scriptPubKey": script_pubkey_json(out.script_pubkey, node.network), "coinbase": False}
            coin = node.index.coin(op)
            if coin is None:
                return None
            return {"bestblock": node.tip_hash[::-1].hex(), "confirmations": node.height - coin.height + 1,
                    "value": btc_amount(coin.value),
                    "scriptPubKey": script_pubkey_json(coin.script_pubkey, node.network), "coinbase": coin.coinbase}

    def validateaddress(self, address: object) -> dict[str, Any]:
        _want(address, "string")
        assert isinstance(address, str)
        try:
            script = address_to_script(address, self.node.network)
        except DecodeError:
            return {"isvalid": False, "error": "Invalid or unsupported Segwit (Bech32) or Base58 encoding."}
        spk = script_pubkey_json(script, self.node.network)
        out: dict[str, Any] = {"isvalid": True, "address": address, "scriptPubKey": script.hex(),
                               "isscript": spk["type"] in ("scripthash", "witness_v0_scripthash"),
                               "iswitness": script[0] == 0 or 0x51 <= script[0] <= 0x60}
        return out

    def getnetworkinfo(self) -> dict[str, Any]:
        return {"version": 280000, "subversion": "/FusionPrimeDevnet:0.1.0/", "protocolversion": 70016,
                "localservices": "0000000000000c09", "localrelay": True, "timeoffset": 0, "networkactive": True,
                "connections": 0, "networks": [], "relayfee": btc_amount(self.node.policy.min_relay_fee),
                "incrementalfee": btc_amount(self.node.policy.incremental_relay_fee), "localaddresses": [],
                "warnings": []}


class _Missing:
    pass


_MISSING = _Missing()


def _encode(obj: object) -> str:
    """JSON encoding that writes Decimals as plain numbers with Core's 8-decimal amounts."""
    if isinstance(obj, Decimal):
        return format(obj, "f")
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | float | str):
        return json.dumps(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + _encode(v) for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(_encode(v) for v in obj) + "]"
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


__all__ = ["BitcoinRPCServer", "RPCError", "block_subsidy"]
