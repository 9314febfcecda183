"""The bridge's user-facing gRPC service (``proto/bridge.proto``): deposit addresses and deposit status.

What it is for: a bridge user asks any node for the deposit address of *(source chain, destination
chain, recipient)*, sends BTC or ETH to it, and follows the deposit — by id, by outpoint, by
address, by recipient, or as a stream — until fpBTC / fpETH are minted. Everything is read from
this node's own bridge database (:mod:`fusion_prime.bridge.db`), which its watchers and runtime
write; this module never writes a deposit, it only registers addresses.

Why server-authenticated TLS is enough (no client certificate, no signed requests): nothing here is
privileged. A deposit address is a pure function of its inputs under the group key (any node, or
anyone with the group key and chain code, computes the same one — :mod:`.derivation`), and
registering it only tells this node's watchers to look at it. No call makes a node sign anything:
a mint is proposed for a deposit a watcher saw on-chain, and every participant rebuilds and checks
the order on its own chain view before it co-signs (:mod:`.mint_policy`), and the Gateway checks
the group signature on-chain. So the client pins the node's certificate (it must not be talked
into a forged address) and stays anonymous; a lying node can only misinform, and a careful user
compares the address with a second node's or derives it.

Bounds (an anonymous API must not be able to exhaust the node):

* the server has :data:`BRIDGE_SERVER_THREADS` threads and admits at most
  :data:`BRIDGE_MAX_CONCURRENT_RPCS` calls at once (grpcio answers RESOURCE_EXHAUSTED beyond);
* ``WatchDeposits`` is the only call that waits. At most :data:`WATCH_MAX_STREAMS` streams are open
  at once and at most :data:`WATCH_MAX_STREAMS_PER_PEER` per peer host (RESOURCE_EXHAUSTED beyond,
  at once), so streams never hold more than that many threads; a stream waits on a condition that
  :meth:`BridgeServicer.notify` (called by the runtime after a write), a cancelled call, or the
  poll interval wakes — the poll of the database's event sequence is what makes writes of another
  process visible — and it lasts at most ``watch_max_seconds``, then ends with DEADLINE_EXCEEDED
  ("watch again": a new stream starts from the current state, so nothing is lost);
* pages of ``ListDeposits`` hold at most :data:`MAX_PAGE_SIZE` deposits.

Errors: bad input is INVALID_ARGUMENT with the reason (nothing is written); an unknown deposit or
address NOT_FOUND; a registration that contradicts the database (another address recorded for the
same route — a changed group key) FAILED_PRECONDITION; a database that does not answer UNAVAILABLE;
anything else INTERNAL, logged on this node through the JSON log.

How the daemon wires it::

    servicer = BridgeServicer(db, functools.partial(deposit_address, group_key, chain_code),
                              sources={"bip122:0f91…": SourceChain("BTC", btc_params)},
                              destinations={"eip155:31338": {"bip122:0f91…": fpbtc_address}},
                              node_id="node1")
    server, port = start_bridge_server(servicer, "0.0.0.0:7443", cert_pem, key_pem)
    ...  # after each write the runtime may call servicer.notify() (optional: streams also poll)
    servicer.close(); server.stop(grace)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
import sqlalchemy as sa

from ..node.logs import log_event
from ..proto.generated import bridge_pb2, bridge_pb2_grpc
from . import db as _db
from .db import EVENT_HEAD, STATES, BridgeDB, BridgeDBError, Conflict, Deposit, InvalidRecord
from .db import DepositAddress as AddressRecord
from .db import deposits as deposits_table
from .derivation import SETTLEMENT_DESTINATION, DepositAddress, DerivationError, party_bytes
from .orders import (
    ChainParams,
    OrderError,
    address_bytes,
    chain_kind,
    check_caip2,
    checksum_address,
    deposit_id,
    minimum_deposit,
    to_checksum_address,
)
from .settlement.funding import FundingError

log = logging.getLogger("fusion_prime.bridge.service")

BRIDGE_SERVER_THREADS = 16
BRIDGE_MAX_CONCURRENT_RPCS = 64
WATCH_MAX_STREAMS = 8
WATCH_MAX_STREAMS_PER_PEER = 2
WATCH_MAX_SECONDS = 300.0
WATCH_POLL_SECONDS = 1.0
WATCH_EVENT_BATCH = 500
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: A watch of one deposit ends here: nothing but an erratum (a minted deposit reorganised out)
#: or a reorg of dust can follow, and the stream's duration cap would end it anyway.
STREAM_FINAL_STATES = frozenset({"minted", "dust", "erratum"})

DepositAddressFn = Callable[[str, str, str], DepositAddress]

_BYTES_FIELDS = ("deposit_id", "order_digest", "signature")
_INT_FIELDS = ("vout", "amount", "height", "confirmations", "required_confirmations", "minted_block")


@dataclasses.dataclass(frozen=True)
class SourceChain:
    """A chain this node takes deposits on: the asset symbol it records them under ("BTC",
    "ETH" — the ``asset`` column of the bridge database) and its confirmation/dust rules."""

    asset: str
    params: ChainParams


class _Invalid(Exception):
    """Bad client input: answered INVALID_ARGUMENT with this message."""


def _aborted(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """True if ``exc`` is grpcio's own signal that the handler called ``context.abort``."""
    code = getattr(context, "code", lambda: None)()
    return code is not None and type(exc) is Exception and not exc.args


def _answer_error(exc: Exception, context: grpc.ServicerContext, rpc: str) -> None:
    """Turn an exception into a status (``context.abort`` raises)."""
    if isinstance(exc, _Invalid):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        log_event(log, logging.ERROR, "bridge rpc database unavailable", rpc=rpc, error=type(exc).__name__,
                  exc_info=(type(exc), exc, None))
        context.abort(grpc.StatusCode.UNAVAILABLE, "the bridge database of this node is unavailable; retry later")
    if isinstance(exc, BridgeDBError):
        log_event(log, logging.ERROR, "bridge rpc storage error", rpc=rpc, error=type(exc).__name__,
                  exc_info=(type(exc), exc, None))
        context.abort(grpc.StatusCode.INTERNAL, f"storage error on this node: {' '.join(str(exc).split())}")
    log_event(log, logging.ERROR, "bridge rpc failed", rpc=rpc, error=type(exc).__name__,
              exc_info=(type(exc), exc, None))
    context.abort(grpc.StatusCode.INTERNAL, "internal error on this node (logged there)")


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """A unary RPC whose unexpected exceptions become a status (see :func:`_answer_error`)."""

    @functools.wraps(method)
    def handler(self: BridgeServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            if _aborted(exc, context):
                raise
            _answer_error(exc, context, method.__name__)
            raise  # not reached: abort raises

    return handler


def _guarded_stream(method: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """The same for a server-streaming RPC (a generator)."""

    @functools.wraps(method)
    def handler(self: BridgeServicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            if _aborted(exc, context):
                raise
            _answer_error(exc, context, method.__name__)
            raise

    return handler


# --------------------------------------------------------------------------------- input checks


def _chain(value: str, what: str) -> str:
    if not value:
        raise _Invalid(f"{what} is required (a CAIP-2 chain id such as eip155:1)")
    try:
        chain_kind(check_caip2(value))
    except OrderError as exc:
        raise _Invalid(f"{what}: {exc}") from None
    return value


def _recipient(value: str) -> str:
    if not value:
        raise _Invalid("recipient is required (a 0x-prefixed 20-byte address)")
    try:
        return checksum_address(value, "recipient")
    except OrderError as exc:
        raise _Invalid(str(exc)) from None


def withdrawal_status(row: dict[str, Any]) -> bridge_pb2.WithdrawalStatus:
    """A ``withdrawals`` row as the API shows it."""
    return bridge_pb2.WithdrawalStatus(
        burn_id=bytes(row["burn_id"]), burn_nonce=int(row["burn_nonce"]), asset=row["asset"],
        source_chain=row["source_chain"], burner=row["burner"], amount=str(int(row["amount"])),
        destination=bytes.fromhex(row["destination"]), state=row["state"], txid=row["txid"] or "",
        confirmations=max(0, int(row["confirmations"] or 0)), required_confirmations=int(row["required_confirmations"]),
        refund_tx=row["refund_tx"] or "", reason=row["reason"] or "", updated_at=float(row["updated_at"]),
        burn_tx=row["burn_tx"], burn_block=int(row["burn_block"]))


def _deposit_id(value: bytes) -> bytes:
    if len(value) != 32:
        raise _Invalid(f"deposit_id must be 32 bytes, got {len(value)}")
    return bytes(value)


def _address_key(value: str) -> str:
    """The spelling a deposit address is stored in: EIP-55 for an EVM address, lowercase bech32."""
    if not value:
        raise _Invalid("address is required")
    if len(value) > 128:
        raise _Invalid("address is too long")
    if value.startswith("0x") or value.startswith("0X"):
        try:
            return to_checksum_address(address_bytes(value, "address"))
        except OrderError as exc:
            raise _Invalid(str(exc)) from None
    if value != value.lower() and value != value.upper():
        raise _Invalid(f"address {value!r} mixes cases (bech32 is one case)")
    return value.lower()


def _peer_host(peer: str) -> str:
    """``ipv4:1.2.3.4:5678`` → ``ipv4:1.2.3.4`` (one budget per host, whatever its ports)."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


# ------------------------------------------------------------------------------------- encoding


def deposit_status(d: Deposit) -> bridge_pb2.DepositStatus:
    """The wire form of a deposit record."""
    out = bridge_pb2.DepositStatus(
        deposit_id=d.deposit_id, state=d.state, asset=d.asset, source_chain=d.source_chain, txid=d.txid,
        vout=d.vout, address=d.address, amount=str(d.amount), recipient=d.recipient,
        destination_chain=d.destination_chain, block_hash=d.block_hash or "", confirmations=d.confirmations,
        required_confirmations=d.required_confirmations, order_digest=d.order_digest or b"",
        order_json=d.order_json or "", order_signature=d.signature or b"", mint_tx=d.mint_tx or "",
        reason=d.reason or "", updated_at=d.updated_at)
    if d.height is not None:
        out.height = d.height
    if d.minted_block is not None:
        out.minted_block = d.minted_block
    return out


def _decode_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Undo the audit log's JSON encoding of deposit fields (bytes as hex, large ints as strings)."""
    out = dict(values)
    for name in _BYTES_FIELDS:
        if out.get(name) is not None:
            out[name] = bytes.fromhex(out[name])
    for name in _INT_FIELDS:
        if out.get(name) is not None:
            out[name] = int(out[name])
    return out


def _head_seq(reader: Any) -> int:
    head = reader.get_meta(EVENT_HEAD)
    return int(json.loads(head)["seq"]) if head else 0


# ------------------------------------------------------------------------------------- servicer


class BridgeServicer(bridge_pb2_grpc.BridgeServicer):
    """The ``Bridge`` service over one node's :class:`~fusion_prime.bridge.db.BridgeDB`.

    * ``deposit_address_fn(source_chain, destination_chain, recipient)`` returns the
      :class:`~fusion_prime.bridge.derivation.DepositAddress` (in the daemon:
      ``functools.partial(derivation.deposit_address, group_key, chain_code)``);
    * ``sources``: CAIP-2 id → :class:`SourceChain` for every chain this node watches;
    * ``destinations``: the destination EVM chains this node mints on — a collection of CAIP-2 ids,
      or a mapping of each to ``{source chain: wrapped token address}`` (then only those sources
      route to it, and the token is reported with the deposit address);
    * ``node_id`` names this node in ``Health``;
    * ``forwarder``: where a registration new on this node is handed to reach the other nodes
      (:class:`RegistrationForwarder`); a registration forwarded by a peer is not forwarded again.
    """

    def __init__(self, db: BridgeDB, deposit_address_fn: DepositAddressFn, *,
                 sources: Mapping[str, SourceChain],
                 destinations: Collection[str] | Mapping[str, Mapping[str, str]],
                 node_id: str = "",
                 watch_max_seconds: float = WATCH_MAX_SECONDS,
                 watch_poll_seconds: float = WATCH_POLL_SECONDS,
                 watch_max_streams: int = WATCH_MAX_STREAMS,
                 watch_max_streams_per_peer: int = WATCH_MAX_STREAMS_PER_PEER,
                 forwarder: RegistrationForwarder | None = None) -> None:
        self.db = db
        self.forwarder = forwarder
        #: settlement accounts' deposit addresses (``bridge/settlement/funding.py``'s ``Funding``), set
        #: by the composition root when the settlement ledger runs on this node; None: not served
        self.funding: Any = None
        self.deposit_address_fn = deposit_address_fn
        self.node_id = node_id
        self.sources: dict[str, SourceChain] = {}
        for chain, source in sources.items():
            _chain(chain, "source chain")
            if not isinstance(source, SourceChain):
                raise TypeError("sources must map CAIP-2 ids to SourceChain")
            self.sources[chain] = source
        self.tokens: dict[tuple[str, str], str] = {}
        self.routes: list[tuple[str, str]] = []
        for destination in sorted(destinations):
            if chain_kind(_chain(destination, "destination chain")) != "evm":
                raise ValueError(f"destination {destination!r} must be an EVM chain")
            served = destinations[destination] if isinstance(destinations, Mapping) else None
            for source in sorted(self.sources):
                if source == destination or (served is not None and source not in served):
                    continue
                self.routes.append((source, destination))
                if served is not None and served[source]:
                    self.tokens[(source, destination)] = checksum_address(served[source], "wrapped token")
        self.watch_max_seconds = watch_max_seconds
        self.watch_poll_seconds = watch_poll_seconds
        self.watch_max_streams = watch_max_streams
        self.watch_max_streams_per_peer = watch_max_streams_per_peer
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._generation = 0  # bumped by notify(): a stream that saw an old value re-reads at once
        self._closing = False
        self._streams = 0
        self._streams_of: dict[str, int] = {}

    # wake-ups --------------------------------------------------------------------------------
    def notify(self) -> None:
        """Wake every waiting stream to re-read the database (the runtime calls it after a write;
        without it streams still see every write within ``watch_poll_seconds``)."""
        with self._lock:
            self._generation += 1
            self._changed.notify_all()

    def close(self) -> None:
        """End every open stream at its next wake-up (call before ``server.stop``)."""
        with self._lock:
            self._closing = True
            self._generation += 1
            self._changed.notify_all()

    def watch_streams(self) -> int:
        """Streams open right now (never more than ``watch_max_streams``)."""
        with self._lock:
            return self._streams

    # GetDepositAddress -------------------------------------------------------------------------
    def _source_of(self, request: bridge_pb2.DepositAddressRequest) -> str:
        which = request.WhichOneof("source")
        if which == "source_chain":
            source = _chain(request.source_chain, "source_chain")
            if source not in self.sources:
                raise _Invalid(f"this node takes no deposits on {source}; it watches "
                               f"{', '.join(sorted(self.sources)) or 'no chain'}")
            return source
        if which == "asset":
            wanted = request.asset.strip().upper()
            matches = [c for c, s in self.sources.items() if s.asset.upper() == wanted]
            if not matches:
                raise _Invalid(f"no source chain carries asset {request.asset!r}; known: "
                               f"{', '.join(sorted({s.asset for s in self.sources.values()})) or 'none'}")
            if len(matches) > 1:
                raise _Invalid(f"asset {request.asset!r} is on several chains ({', '.join(sorted(matches))}); "
                               "give source_chain instead")
            return matches[0]
        raise _Invalid("say what you deposit: source_chain (CAIP-2) or asset (BTC, ETH)")

    @_guarded
    def GetDepositAddress(self, request: bridge_pb2.DepositAddressRequest, context: grpc.ServicerContext
                          ) -> bridge_pb2.DepositAddressResponse:
        if request.destination_chain == SETTLEMENT_DESTINATION:
            return self._account_address(request, context)
        destination = _chain(request.destination_chain, "destination_chain")
        if chain_kind(destination) != "evm":
            raise _Invalid(f"destination_chain {destination} must be an EVM chain (where the Gateway mints)")
        recipient = _recipient(request.recipient)
        source = self._source_of(request)
        if (source, destination) not in self.routes:
            known = ", ".join(f"{s} → {d}" for s, d in self.routes) or "none"
            raise _Invalid(f"no route {source} → {destination} on this node; routes: {known}")
        try:
            derived = self.deposit_address_fn(source, destination, recipient)
        except (DerivationError, OrderError) as exc:
            raise _Invalid(str(exc)) from None
        chain = self.sources[source]
        record = AddressRecord(address=derived.address, asset=chain.asset, source_chain=source,
                               destination_chain=destination, recipient=derived.recipient, path=tuple(derived.path))
        stored = self.db.get_address(derived.address)
        already = stored is not None and dataclasses.replace(stored, created_at=0.0) == record
        if not already:
            try:
                self.db.register_address(record)  # idempotent; a concurrent twin is a no-op
            except Conflict as exc:
                log_event(log, logging.ERROR, "deposit address conflicts with the database", address=derived.address,
                          error=str(exc))
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"this node's database records another deposit address for this route: {exc}")
            except InvalidRecord as exc:
                raise _Invalid(str(exc)) from None
            forwarded_from = _forwarded_from(context)
            log_event(log, logging.INFO, "deposit address registered", address=derived.address, source=source,
                      destination=destination, recipient=derived.recipient, forwarded_from=forwarded_from or None)
            if self.forwarder is not None and not forwarded_from:
                self.forwarder.submit(self.db.get_address(derived.address) or record)
        params = chain.params
        return bridge_pb2.DepositAddressResponse(
            address=derived.address, path=derived.path_str, public_key=derived.public_key, source_chain=source,
            asset=chain.asset, destination_chain=destination, recipient=derived.recipient,
            minimum_deposit=str(minimum_deposit(params)),
            confirmations=bridge_pb2.ConfirmationRule(min_confirmations=params.min_confirmations,
                                                      max_confirmations=params.max_confirmations,
                                                      value_per_block=str(params.value_per_block)),
            wrapped_token=self.tokens.get((source, destination), ""), already_registered=already)

    def _account_address(self, request: bridge_pb2.DepositAddressRequest, context: grpc.ServicerContext
                         ) -> bridge_pb2.DepositAddressResponse:
        """A settlement account's deposit address (issue 16): ``destination_chain`` is
        ``SETTLEMENT_DESTINATION`` and ``recipient`` the party's 33-byte key in hex. Deposits to it
        credit the party's ledger account instead of minting (``bridge/settlement/funding.py``).

        This is also the form a peer's ``RegistrationForwarder`` sends for an account address
        registered there (the stored route: that destination, the party's hex, the source chain),
        so every node derives the address itself and watches it. Nothing here is privileged
        either: the address is a pure function of (source chain, party) under the group key, and a
        deposit to it is credited only to an account that party opened with its own signature."""
        funding = self.funding
        if funding is None:
            raise _Invalid("this node keeps no settlement accounts (no bridge settlement configured)")
        try:
            party = party_bytes(request.recipient)
        except DerivationError as exc:
            raise _Invalid(f"recipient: {exc}") from None
        source = self._source_of(request)
        asset = funding.symbol_of.get(source)
        if asset is None:
            raise _Invalid(f"settlement accounts are not funded from {source} on this node; assets: "
                           f"{', '.join(sorted(funding.assets)) or 'none'}")
        forwarded_from = _forwarded_from(context)
        try:
            derived, already = funding.register_account(party, asset, forward=not forwarded_from)
        except Conflict as exc:
            log_event(log, logging.ERROR, "account deposit address conflicts with the database", error=str(exc))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"this node's database records another deposit address for this account: {exc}")
        except (InvalidRecord, FundingError) as exc:
            raise _Invalid(str(exc)) from None
        params = self.sources[source].params
        return bridge_pb2.DepositAddressResponse(
            address=derived.address, path=derived.path_str, public_key=derived.public_key, source_chain=source,
            asset=self.sources[source].asset, destination_chain=SETTLEMENT_DESTINATION, recipient=derived.recipient,
            minimum_deposit=str(minimum_deposit(params)),
            confirmations=bridge_pb2.ConfirmationRule(min_confirmations=params.min_confirmations,
                                                      max_confirmations=params.max_confirmations,
                                                      value_per_block=str(params.value_per_block)),
            wrapped_token="", already_registered=already)

    # GetDeposit / ListDeposits -----------------------------------------------------------------
    @_guarded
    def GetDeposit(self, request: bridge_pb2.GetDepositRequest, context: grpc.ServicerContext
                   ) -> bridge_pb2.DepositStatus:
        which = request.WhichOneof("selector")
        if which == "deposit_id":
            wanted = _deposit_id(request.deposit_id)
        elif which == "outpoint":
            point = request.outpoint
            try:
                wanted = deposit_id(_chain(point.source_chain, "outpoint.source_chain"), point.txid, point.vout)
            except OrderError as exc:
                raise _Invalid(f"outpoint: {exc}") from None
        else:
            raise _Invalid("give deposit_id or outpoint")
        found = self.db.get_deposit(wanted)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no deposit {wanted.hex()} on this node (not seen yet, or "
                                                     "not a deposit to one of its addresses)")
        return deposit_status(found)

    @_guarded
    def ListDeposits(self, request: bridge_pb2.ListDepositsRequest, context: grpc.ServicerContext
                     ) -> bridge_pb2.ListDepositsResponse:
        which = request.WhichOneof("selector")
        size = request.page_size or DEFAULT_PAGE_SIZE
        size = min(size, MAX_PAGE_SIZE)
        after = bytes(request.page_token)
        if after and len(after) != 32:
            raise _Invalid("page_token is not one this service issued")
        query = sa.select(deposits_table.c.deposit_id)
        if which == "address":
            address = _address_key(request.address)
            if request.destination_chain:
                raise _Invalid("destination_chain filters a listing by recipient only")
            query = query.where(deposits_table.c.address == address)
        elif which == "recipient":
            query = query.where(deposits_table.c.recipient == _recipient(request.recipient))
            if request.destination_chain:
                query = query.where(deposits_table.c.destination_chain ==
                                    _chain(request.destination_chain, "destination_chain"))
        else:
            raise _Invalid("give address or recipient")
        if after:
            query = query.where(deposits_table.c.deposit_id > after)
        query = query.order_by(deposits_table.c.deposit_id).limit(size + 1)
        with self.db.read() as r:
            if which == "address" and r.get_address(address) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{address} is not a deposit address of this node")
            ids = [bytes(row[0]) for row in r.conn.execute(query)]
            found = [r.get_deposit(i) for i in ids[:size]]
        out = bridge_pb2.ListDepositsResponse(deposits=[deposit_status(d) for d in found if d is not None])
        if len(ids) > size:
            out.next_page_token = ids[size - 1]
        return out

    # WatchDeposits -----------------------------------------------------------------------------
    def _take_slot(self, peer: str) -> bool:
        with self._lock:
            if self._streams >= self.watch_max_streams or \
                    self._streams_of.get(peer, 0) >= self.watch_max_streams_per_peer:
                return False
            self._streams += 1
            self._streams_of[peer] = self._streams_of.get(peer, 0) + 1
            return True

    def _release_slot(self, peer: str) -> None:
        with self._lock:
            self._streams -= 1
            left = self._streams_of.get(peer, 0) - 1
            if left > 0:
                self._streams_of[peer] = left
            else:
                self._streams_of.pop(peer, None)

    def _wake(self) -> None:
        with self._lock:
            self._changed.notify_all()

    @_guarded_stream
    def WatchDeposits(self, request: bridge_pb2.WatchDepositsRequest, context: grpc.ServicerContext
                      ) -> Iterator[bridge_pb2.DepositUpdate]:
        which = request.WhichOneof("selector")
        if which == "deposit_id":
            one, address = _deposit_id(request.deposit_id), None
        elif which == "address":
            one, address = None, _address_key(request.address)
        else:
            raise _Invalid("give deposit_id or address")
        peer = _peer_host(context.peer())
        if not self._take_slot(peer):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "too many deposit watches open on this node (or from your host); poll GetDeposit or "
                          "watch again later")
        try:
            context.add_callback(self._wake)  # a cancelled call wakes its wait at once
            yield from self._watch(one, address, context)
        finally:
            self._release_slot(peer)

    def _watch(self, one: bytes | None, address: str | None, context: grpc.ServicerContext
               ) -> Iterator[bridge_pb2.DepositUpdate]:
        # The opening snapshot and the event head come from one consistent read, so every
        # later event is a transition after what the client was shown - none missed, none twice.
        with self.db.read() as r:
            seq = _head_seq(r)
            if one is not None:
                first = r.get_deposit(one)
                if first is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"no deposit {one.hex()} on this node")
                current = [first]
            else:
                if r.get_address(address) is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"{address} is not a deposit address of this node "
                                                             "(ask GetDepositAddress first)")
                current = r.deposits_by_address(address)
        known: dict[bytes, Deposit] = {d.deposit_id: d for d in current}
        for d in current:
            yield bridge_pb2.DepositUpdate(deposit=deposit_status(d), current=True, event_seq=seq)
        if one is not None and current[0].state in STREAM_FINAL_STATES:
            return
        deadline = time.monotonic() + self.watch_max_seconds
        while True:
            with self._lock:
                generation = self._generation
            events = self.db.events(one, after_seq=seq, limit=WATCH_EVENT_BATCH)
            for event in events:
                seq = event.seq
                update = self._apply(known, event, address)
                if update is None:
                    continue
                yield update
                if one is not None and update.deposit.state in STREAM_FINAL_STATES:
                    return
            if len(events) == WATCH_EVENT_BATCH:
                continue  # more to read before waiting
            with self._lock:
                while context.is_active() and not self._closing and self._generation == generation:
                    left = min(self.watch_poll_seconds, deadline - time.monotonic())
                    if left <= 0:
                        break
                    if not self._changed.wait(left):
                        break  # poll interval: look at the database even if nobody notified
                closing = self._closing
            if not context.is_active():
                return
            if closing:
                context.abort(grpc.StatusCode.UNAVAILABLE, "this node's bridge service is stopping; watch again")
            if time.monotonic() >= deadline:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "deposit watch lasted its maximum; watch again (it restarts from the current state)")

    def _apply(self, known: dict[bytes, Deposit], event: Any, address: str | None
               ) -> bridge_pb2.DepositUpdate | None:
        """The deposit after ``event`` (a transition the database audited), or None if the event is
        not a change of a watched deposit. The audit detail holds exactly the fields that changed
        (or, on first sight, the whole row), so applying each in order reproduces every state the
        deposit passed through, even several between two reads."""
        detail = event.detail
        if event.deposit_id is None or not isinstance(detail, dict) or not event.event.startswith("deposit-"):
            return None
        previous = known.get(event.deposit_id)
        try:
            if previous is not None and isinstance(detail.get("changes"), dict):
                changes = _decode_fields(detail["changes"])
                new = dataclasses.replace(previous, **{k: v for k, v in changes.items()
                                                       if k in Deposit.__dataclass_fields__},
                                          updated_at=event.at)
            elif previous is None and address is not None and isinstance(detail.get("deposit"), dict) \
                    and detail["deposit"].get("address") == address:
                row = _decode_fields(detail["deposit"])
                fields = {k: v for k, v in row.items() if k in Deposit.__dataclass_fields__}
                fields.update(deposit_id=event.deposit_id, updated_at=event.at)
                new = Deposit(**fields)
            else:
                return None
        except (TypeError, ValueError) as exc:
            # An audit detail this build cannot read: show the row as it is now rather than guess.
            log_event(log, logging.WARNING, "bridge watch read an unexpected event", seq=event.seq,
                      event=event.event, error=str(exc))
            new = self.db.get_deposit(event.deposit_id)
            if new is None:
                return None
        if new.state not in STATES:
            return None
        known[event.deposit_id] = new
        return bridge_pb2.DepositUpdate(deposit=deposit_status(new), current=False, event_seq=event.seq,
                                        event=event.event)

    # Health ------------------------------------------------------------------------------------
    @_guarded
    def GetWithdrawal(self, request: bridge_pb2.GetWithdrawalRequest, context: grpc.ServicerContext
                      ) -> bridge_pb2.WithdrawalStatus:
        if len(request.burn_id) != 32:
            raise _Invalid(f"burn_id must be 32 bytes, got {len(request.burn_id)}")
        with self.db.read() as r:
            row = r.get_withdrawal(bytes(request.burn_id))
        if row is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no burn {bytes(request.burn_id).hex()} on this node (not at "
                                                     "depth yet, or not a burn of this Gateway)")
        return withdrawal_status(row)

    @_guarded
    def ProveReserves(self, request: bridge_pb2.ProveReservesRequest, context: grpc.ServicerContext
                      ) -> bridge_pb2.ProveReservesResponse:
        reserves = getattr(self, "reserves", None)
        if reserves is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the bridge is not running on this node yet")
        try:
            return bridge_pb2.ProveReservesResponse(report_json=reserves())
        except Exception as exc:  # a refused attestation or an unreadable chain: say which
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"no report: {type(exc).__name__}: {exc}"[:1000])

    @_guarded
    def ListWithdrawals(self, request: bridge_pb2.ListWithdrawalsRequest, context: grpc.ServicerContext
                        ) -> bridge_pb2.ListWithdrawalsResponse:
        try:
            burner = checksum_address(request.burner, "burner")
        except OrderError as exc:
            raise _Invalid(str(exc)) from None
        limit = min(request.limit or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        with self.db.read() as r:
            rows = r.withdrawals_by_burner(burner, limit)
        return bridge_pb2.ListWithdrawalsResponse(withdrawals=[withdrawal_status(row) for row in rows])

    @_guarded
    def Health(self, request: bridge_pb2.HealthRequest, context: grpc.ServicerContext) -> bridge_pb2.HealthResponse:
        out = bridge_pb2.HealthResponse(node=self.node_id)
        for source, destination in self.routes:
            out.routes.add(source_chain=source, asset=self.sources[source].asset, destination_chain=destination)
        try:
            with self.db.read() as r:
                out.schema_version = int(r.conn.scalar(sa.text("SELECT max(version) FROM schema_version")) or 0)
                out.event_seq = _head_seq(r)
                for chain in sorted(self.sources):
                    head = out.chains.add(chain=chain)
                    cursor = r.get_cursor(chain)
                    if cursor is not None:
                        head.height, head.block_hash, head.updated_at = cursor.height, cursor.block_hash, \
                            cursor.updated_at
                out.errata.extend(d.deposit_id for d in r.deposits_in_state("erratum", limit=100))
            out.serving = True
        except (sa.exc.SQLAlchemyError, BridgeDBError) as exc:
            log_event(log, logging.ERROR, "bridge health: database unavailable", error=type(exc).__name__,
                      exc_info=(type(exc), exc, None))
            out.serving = False
        return out


def start_bridge_server(servicer: BridgeServicer, listen: str, cert_pem: bytes, key_pem: bytes,
                        extra: Sequence[Callable[[grpc.Server], None]] = ()) -> tuple[grpc.Server, int]:
    """Start the Bridge service on ``listen`` (``host:port``; port 0 picks one) with server-auth TLS.

    No client certificate is asked for (see the module docstring: nothing here is privileged, and
    everything a node later does for a deposit is checked on-chain by every node). Returns the
    running server and the bound port; stop it with ``servicer.close(); server.stop(grace)``."""
    # so_reuseport off: gRPC turns it on by default, and then a second daemon started on this port
    # (a mistyped config) binds too and takes half the connections instead of failing to start
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=BRIDGE_SERVER_THREADS, thread_name_prefix="bridge"),
                         maximum_concurrent_rpcs=BRIDGE_MAX_CONCURRENT_RPCS, options=[("grpc.so_reuseport", 0)])
    bridge_pb2_grpc.add_BridgeServicer_to_server(servicer, server)
    for add in extra:  # services served on the same port (the Settlement service)
        add(server)
    port = server.add_secure_port(listen, grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    return server, port


# ------------------------------------------------------------------------ registration forwarding

#: gRPC metadata a node sets on a registration it forwards: the receiver registers it (deriving the
#: address itself, as for any client) and does not forward it again. Advisory only: a client that
#: sets it merely keeps its registration on the node it asked, which is what it could do anyway.
FORWARDED_FROM_HEADER = "x-fp-bridge-forwarded-from"
FORWARD_MARK_META = "registration-forward-watermark:"
FORWARD_TIMEOUT = 10.0
FORWARD_RETRY_FIRST = 1.0
FORWARD_RETRY_MAX = 60.0
#: a peer's answer that retrying will not change (it serves no such route, or its database
#: records another address for the route): reported, not retried
_FORWARD_FINAL_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "PERMISSION_DENIED"})


def _forwarded_from(context: grpc.ServicerContext) -> str:
    try:
        metadata = context.invocation_metadata() or ()
    except Exception:  # a test double without metadata
        return ""
    for item in metadata:
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key == FORWARDED_FROM_HEADER:
            return str(value)[:64]
    return ""


@dataclasses.dataclass(frozen=True)
class PeerEndpoint:
    """Another node's Bridge API: ``target`` (host:port), its pinned certificate, its TLS name."""

    node_id: str
    target: str
    cert_pem: bytes


@dataclasses.dataclass
class _Pending:
    record: AddressRecord
    due: float = 0.0
    delay: float = FORWARD_RETRY_FIRST
    attempts: int = 0


class RegistrationForwarder:
    """Forwards the deposit addresses registered at this node to every peer's Bridge API.

    Why: a node's watchers see only deposits to addresses registered in *its* database. A user
    asks one node; the deposit's coordinator (rotated by deposit id) is often another, which
    would otherwise learn of the deposit only when someone proposes it — never, if it is the
    proposer. So each new registration is sent on to every peer, in the background, retried with
    back-off until the peer answers.

    What is sent is the *route*, never the address: a ``GetDepositAddress(source, destination,
    recipient)`` call, so the peer derives the address from its own key share's group key and
    chain code exactly as for any user, and registers that. The answer is compared with this
    node's address; a different one (the peer holds another group key) is logged as an error and
    not retried. The peer's certificate is pinned (``[[bridge.peers]]`` ``tls_cert``).

    Durability: per peer, a watermark in the bridge database's meta table (not audited: derived
    state, like the runtime's machine snapshot) is the ``created_at`` below which every
    registration reached that peer; on start every registration at or above it is sent again
    (a repeat is idempotent at the peer). So a registration survives a restart of this node, and
    a peer that is down receives it when it returns. A peer that registered it late still finds a
    deposit already in a block through its runtime's rescan of recent blocks for new addresses.
    """

    def __init__(self, db: BridgeDB, peers: Collection[PeerEndpoint], *, node_id: str,
                 retry_first: float = FORWARD_RETRY_FIRST, retry_max: float = FORWARD_RETRY_MAX,
                 timeout: float = FORWARD_TIMEOUT) -> None:
        self.db, self.node_id = db, node_id
        self.peers = {p.node_id: p for p in peers}
        self.retry_first, self.retry_max, self.timeout = retry_first, retry_max, timeout
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[str, dict[str, _Pending]] = {p: {} for p in self.peers}
        self._done: dict[str, float] = {}  # peer -> greatest created_at forwarded (or refused)
        self._closing = False
        self._thread: threading.Thread | None = None
        self._clients: dict[str, Any] = {}
        self.forwarded: dict[str, int] = {p: 0 for p in self.peers}
        self.refused: list[dict[str, str]] = []

    # -- lifecycle
    def start(self) -> RegistrationForwarder:
        """Queue every registration at or above each peer's watermark and start the sender thread."""
        marks = {p: float(self.db.get_meta(FORWARD_MARK_META + p) or 0.0) for p in self.peers}
        if marks:
            addresses = _db.deposit_addresses
            with self.db.read() as r:
                rows = r.conn.execute(sa.select(addresses).where(addresses.c.created_at >= min(marks.values()))
                                      .order_by(addresses.c.created_at)).all()
            with self._lock:
                for row in rows:
                    rec = _db._address_from_row(row)
                    for p, mark in marks.items():
                        if rec.created_at >= mark:
                            self._pending[p][rec.address] = _Pending(rec)
                for p, mark in marks.items():
                    self._done[p] = mark
        self._thread = threading.Thread(target=self._run, name="bridge-forward", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # a daemon thread; an RPC in flight ends with its channel
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def submit(self, record: AddressRecord) -> None:
        """Forward ``record``'s route to every peer (returns at once)."""
        with self._lock:
            for p in self.peers:
                self._pending[p].setdefault(record.address, _Pending(record))
            self._wake.notify_all()

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {p: len(q) for p, q in self._pending.items()}

    # -- the sender thread
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closing:
                    now = time.monotonic()
                    due = [(p, a) for p, q in self._pending.items() for a, item in q.items() if item.due <= now]
                    if due:
                        break
                    nxt = min((item.due for q in self._pending.values() for item in q.values()), default=None)
                    self._wake.wait(None if nxt is None else max(0.01, nxt - now))
                if self._closing:
                    return
                work = [(p, self._pending[p][a]) for p, a in due]
            for peer, item in work:
                if self._closing:
                    return
                outcome = self._send(peer, item.record)
                with self._lock:
                    if outcome == "retry":
                        item.attempts += 1
                        item.due = time.monotonic() + item.delay
                        item.delay = min(item.delay * 2, self.retry_max)
                        continue
                    self._pending[peer].pop(item.record.address, None)
                    left = [i.record.created_at for i in self._pending[peer].values()]
                    done = max(self._done.get(peer, 0.0), item.record.created_at)
                    self._done[peer] = done
                    mark = min([done, *left]) if left else done
                self._save_mark(peer, mark)

    def _client(self, peer: str) -> Any:
        from .client import BridgeClient  # the SDK; imported here to keep the service importable alone

        if peer not in self._clients:
            p = self.peers[peer]
            self._clients[peer] = BridgeClient(p.target, p.cert_pem, server_name=p.node_id, timeout=self.timeout)
        return self._clients[peer]

    def _send(self, peer: str, rec: AddressRecord) -> str:
        """``ok``, ``refused`` (final) or ``retry``."""
        from .client import BridgeError

        request = bridge_pb2.DepositAddressRequest(destination_chain=rec.destination_chain, recipient=rec.recipient,
                                                   source_chain=rec.source_chain)
        try:
            client = self._client(peer)
            answer = client._stub.GetDepositAddress(request, timeout=self.timeout,
                                                    metadata=((FORWARDED_FROM_HEADER, self.node_id),))
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() is not None else "UNKNOWN"
            if code in _FORWARD_FINAL_CODES:
                return self._refused(peer, rec, f"{code}: {exc.details()}")
            log_event(log, logging.WARNING, "deposit address forward failed; will retry", peer=peer,
                      address=rec.address, error=f"{code}: {exc.details()}")
            return "retry"
        except (BridgeError, OSError, ValueError) as exc:
            log_event(log, logging.WARNING, "deposit address forward failed; will retry", peer=peer,
                      address=rec.address, error=f"{type(exc).__name__}: {exc}")
            return "retry"
        if answer.address != rec.address:
            return self._refused(peer, rec, f"the peer derives {answer.address} for this route (another group key?)")
        self.forwarded[peer] += 1
        log_event(log, logging.INFO, "deposit address forwarded", peer=peer, address=rec.address,
                  already_registered=answer.already_registered)
        return "ok"

    def _refused(self, peer: str, rec: AddressRecord, reason: str) -> str:
        log_event(log, logging.ERROR, "deposit address not forwarded: the peer refused it", peer=peer,
                  address=rec.address, reason=reason)
        self.refused.append({"peer": peer, "address": rec.address, "reason": reason})
        del self.refused[:-100]
        return "refused"

    def _save_mark(self, peer: str, mark: float) -> None:
        meta = _db.meta
        name = FORWARD_MARK_META + peer
        try:
            with self.db.transaction() as tx:
                exists = tx.conn.execute(sa.select(meta.c.name).where(meta.c.name == name)).first() is not None
                stmt = sa.update(meta).where(meta.c.name == name) if exists else sa.insert(meta).values(name=name)
                tx.conn.execute(stmt.values(value=repr(mark)))
        except (sa.exc.SQLAlchemyError, BridgeDBError) as exc:  # kept in memory; a restart re-sends more
            log_event(log, logging.WARNING, "forward watermark not saved", peer=peer, error=str(exc))
