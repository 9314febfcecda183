"""The Bridge gRPC service end to end: a real TLS server over a real BridgeDB (SQLite and PostgreSQL).

The group key and chain code are fixed; deposit addresses are recomputed here independently (the
tagged-hash path written out, BIP32 CKDpub with coincurve's raw point arithmetic, bech32 with
bitcoinlib, EIP-55 with eth-utils) and pinned. Deposits are written through BridgeDB exactly as
the bridge runtime writes them, and the service must show each transition: GetDeposit,
ListDeposits, and WatchDeposits, whose streams start with the current state. The sync and the async
SDK and the CLI (a subprocess) are exercised against the same server. No test bounds wall-clock
time: the server's own caps (stream duration) are what ends a stream that would otherwise wait.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bitcoinlib.encoding import pubkeyhash_to_addr_bech32
from coincurve import PrivateKey, PublicKey
from Crypto.Hash import RIPEMD160
from eth_utils import keccak, to_checksum_address

from fusion_prime.bridge.client import AsyncBridgeClient, BridgeClient, BridgeError
from fusion_prime.bridge.db import BridgeDB, Deposit
from fusion_prime.bridge.derivation import DERIVATION_TAG, PURPOSE, deposit_address
from fusion_prime.bridge.orders import ChainParams, deposit_id, minimum_deposit
from fusion_prime.bridge.service import BridgeServicer, SourceChain, deposit_status, start_bridge_server
from fusion_prime.node.tls import generate_certificate
from fusion_prime.proto.generated import bridge_pb2, bridge_pb2_grpc
from fusion_prime.protocol.curve import Point

GROUP_SECRET = int.from_bytes(hashlib.sha256(b"fusion prime test group key").digest(), "big")
GROUP_KEY = Point.from_bytes(PrivateKey(GROUP_SECRET.to_bytes(32, "big")).public_key.format())
CHAIN_CODE = hashlib.sha256(b"fusion prime test chain code").digest()

BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
ETH_SRC = "eip155:31337"
DST = "eip155:31338"
RECIPIENT = "0x1111111111111111111111111111111111111111"
OTHER_RECIPIENT = to_checksum_address("0x" + "ab" * 20)
FPBTC = to_checksum_address("0x" + "0b" * 20)
FPETH = to_checksum_address("0x" + "0e" * 20)
# Pinned in tests/bridge/test_derivation.py for the same key: the service must hand out exactly these.
PINNED_BTC = ("m/1179665010/1048613984/185940515/1482091553/50585611/759339833/965817553/1117924562/221685860",
              "bcrt1q43eupdtyqtjcjj854g7nkj9k9hur0ljcxcldun")

BTC_PARAMS = ChainParams(min_confirmations=3, value_per_block=50 * 10**8, max_confirmations=12, dust_limit=294,
                         sweep_cost=1000)
ETH_PARAMS = ChainParams(min_confirmations=2, value_per_block=2 * 10**18, max_confirmations=64, sweep_cost=10**15)
SERVER_NAME = "bridge-node1"
ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- independent derivation

def reference_path(src: str, dst: str, recipient: bytes) -> tuple[int, ...]:
    tag = hashlib.sha256(DERIVATION_TAG).digest()
    msg = bytes([len(src)]) + src.encode() + bytes([len(dst)]) + dst.encode() + recipient
    bits = bin(int.from_bytes(hashlib.sha256(tag + tag + msg).digest(), "big"))[2:].zfill(256)
    return (PURPOSE, *(int(bits[31 * i: 31 * i + 31], 2) for i in range(8)))


def reference_child(path: tuple[int, ...]) -> bytes:
    key, chain = PrivateKey(GROUP_SECRET.to_bytes(32, "big")).public_key, CHAIN_CODE
    for index in path:
        digest = hmac.new(chain, key.format() + index.to_bytes(4, "big"), hashlib.sha512).digest()
        key = PublicKey.combine_keys([key, PrivateKey(digest[:32]).public_key])
        chain = digest[32:]
    return key.format()


def reference_address(src: str, dst: str, recipient: str) -> tuple[str, bytes, str]:
    path = reference_path(src, dst, bytes.fromhex(recipient[2:]))
    child = reference_child(path)
    if src.startswith("bip122:"):
        address = pubkeyhash_to_addr_bech32(RIPEMD160.new(hashlib.sha256(child).digest()).digest(), prefix="bcrt",
                                            witver=0)
    else:
        address = to_checksum_address(keccak(PublicKey(child).format(compressed=False)[1:])[-20:])
    return "m/" + "/".join(map(str, path)), child, address


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def tls() -> tuple[bytes, bytes]:
    return generate_certificate(SERVER_NAME)


@pytest.fixture
def servicer(bridge_db: BridgeDB) -> BridgeServicer:
    return BridgeServicer(
        bridge_db, functools.partial(deposit_address, GROUP_KEY, CHAIN_CODE),
        sources={BTC: SourceChain("BTC", BTC_PARAMS), ETH_SRC: SourceChain("ETH", ETH_PARAMS)},
        destinations={DST: {BTC: FPBTC, ETH_SRC: FPETH}}, node_id="node1",
        # Streams end by themselves after a minute (a broken test fails instead of hanging), and
        # re-read the database often (the tests do not call notify() everywhere).
        watch_max_seconds=60.0, watch_poll_seconds=0.05, watch_max_streams=8, watch_max_streams_per_peer=2)


@pytest.fixture
def server(servicer: BridgeServicer, tls: tuple[bytes, bytes]) -> Iterator[int]:
    cert, key = tls
    srv, port = start_bridge_server(servicer, "127.0.0.1:0", cert, key)
    try:
        yield port
    finally:
        servicer.close()
        srv.stop(None)


@pytest.fixture
def client(server: int, tls: tuple[bytes, bytes]) -> Iterator[BridgeClient]:
    with BridgeClient(f"127.0.0.1:{server}", tls[0], server_name=SERVER_NAME) as c:
        yield c


@pytest.fixture
def stub(server: int, tls: tuple[bytes, bytes]) -> Iterator[bridge_pb2_grpc.BridgeStub]:
    """The raw generated stub (requests the SDK would never build)."""
    creds = grpc.ssl_channel_credentials(root_certificates=tls[0])
    with grpc.secure_channel(f"127.0.0.1:{server}", creds,
                             options=[("grpc.ssl_target_name_override", SERVER_NAME)]) as channel:
        yield bridge_pb2_grpc.BridgeStub(channel)


# ------------------------------------------------------------------------------------------- helpers

def addresses_rows(db: BridgeDB) -> list[str]:
    return [e.detail["address"] for e in db.events() if e.event == "address-registered"]


def make_deposit(address: str, *, txid_byte: int, vout: int = 0, amount: int = 150_000, state: str = "seen",
                 source: str = BTC, recipient: str = RECIPIENT, asset: str = "BTC", **extra: object) -> Deposit:
    txid = bytes([txid_byte]) * 32
    return Deposit(deposit_id=deposit_id(source, txid, vout), asset=asset, source_chain=source, txid=txid.hex(),
                   vout=vout, address=address, amount=amount, recipient=recipient, destination_chain=DST,
                   state=state, **extra)


# The runtime's path of one deposit, as (changes written, what a watcher must see).
LIFECYCLE: list[dict[str, object]] = [
    dict(state="confirming", block_hash="aa" * 32, height=101, confirmations=1, required_confirmations=3),
    dict(confirmations=2),
    dict(state="confirmed", confirmations=3),
    dict(state="signing", order_digest=b"\x0d" * 32),
    dict(state="signed", signature=b"\x5e" * 65, order_json='{"amount": 150000}'),
    dict(state="minted", mint_tx="0x" + "cd" * 32, minted_block=77),
]
EXPECTED = [("confirming", 1), ("confirming", 2), ("confirmed", 3), ("signing", 3), ("signed", 3), ("minted", 3)]


def advance(db: BridgeDB, dep_id: bytes, steps: list[dict[str, object]], servicer: BridgeServicer | None = None
            ) -> None:
    for changes in steps:
        db.update_deposit(dep_id, **changes)
        if servicer is not None:
            servicer.notify()


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


def wait_for(predicate: object) -> None:
    """Wait for a server-side effect that follows a client action asynchronously (no time bound:
    pytest's own timeout, if any, is the bound)."""
    while not predicate():  # type: ignore[operator]
        time.sleep(0.01)


# ----------------------------------------------------------------------------------- deposit address

def test_deposit_address_matches_independent_derivation_and_is_registered_once(
        client: BridgeClient, bridge_db: BridgeDB) -> None:
    first = client.deposit_address(DST, RECIPIENT, source=BTC)
    path, child, address = reference_address(BTC, DST, RECIPIENT)
    assert (first.path, first.address) == PINNED_BTC == (path, address)
    assert first.public_key == child
    assert (first.source_chain, first.asset, first.destination_chain) == (BTC, "BTC", DST)
    assert first.recipient == to_checksum_address(RECIPIENT)
    assert first.minimum_deposit == str(minimum_deposit(BTC_PARAMS)) == "1001"
    assert (first.confirmations.min_confirmations, first.confirmations.max_confirmations,
            first.confirmations.value_per_block) == (3, 12, str(50 * 10**8))
    assert first.wrapped_token == FPBTC
    assert first.already_registered is False

    # Same inputs (also by asset, also in another accepted spelling): same address, one row.
    again = client.deposit_address(DST, RECIPIENT.upper().replace("0X", "0x"), asset="btc")
    assert again.address == first.address and again.already_registered is True
    assert addresses_rows(bridge_db) == [first.address]
    stored = bridge_db.get_address(first.address)
    assert stored is not None
    assert (stored.asset, stored.source_chain, stored.destination_chain, stored.recipient) == (
        "BTC", BTC, DST, to_checksum_address(RECIPIENT))
    assert "m/" + "/".join(map(str, stored.path)) == first.path

    eth = client.deposit_address(DST, OTHER_RECIPIENT, source=ETH_SRC)
    path, child, address = reference_address(ETH_SRC, DST, OTHER_RECIPIENT)
    assert (eth.path, eth.public_key, eth.address) == (path, child, address)
    assert eth.asset == "ETH" and eth.wrapped_token == FPETH and eth.minimum_deposit == str(10**15 + 1)
    assert addresses_rows(bridge_db) == [first.address, eth.address]


def _flip_first_letter(address: str) -> str:
    i = next(i for i, c in enumerate(address) if i > 1 and c.isalpha())
    return address[:i] + address[i].swapcase() + address[i + 1:]


BAD_CHECKSUM = _flip_first_letter(OTHER_RECIPIENT)
assert BAD_CHECKSUM[2:] not in (BAD_CHECKSUM[2:].lower(), BAD_CHECKSUM[2:].upper())
BAD_ADDRESS_REQUESTS = [
    (dict(destination_chain="eip155:031338", recipient=RECIPIENT, source_chain=BTC), "leading zeros"),
    (dict(destination_chain="EIP155:31338", recipient=RECIPIENT, source_chain=BTC), "not a CAIP-2"),
    (dict(destination_chain="", recipient=RECIPIENT, source_chain=BTC), "destination_chain is required"),
    (dict(destination_chain=DST, recipient=RECIPIENT, source_chain=BTC.upper().replace("BIP122", "bip122")),
     "lowercase hex"),
    (dict(destination_chain=BTC, recipient=RECIPIENT, source_chain=ETH_SRC), "must be an EVM chain"),
    (dict(destination_chain="eip155:1", recipient=RECIPIENT, source_chain=BTC), "no route"),
    (dict(destination_chain=DST, recipient=RECIPIENT, source_chain="eip155:5"), "takes no deposits on eip155:5"),
    (dict(destination_chain=DST, recipient=RECIPIENT, source_chain="cosmos:cosmoshub-4"), "only eip155 and bip122"),
    (dict(destination_chain=DST, recipient=RECIPIENT, asset="DOGE"), "no source chain carries asset"),
    (dict(destination_chain=DST, recipient=RECIPIENT), "source_chain (CAIP-2) or asset"),
    (dict(destination_chain=DST, recipient="0x" + "00" * 20, source_chain=BTC), "zero address"),
    (dict(destination_chain=DST, recipient="0x1234", source_chain=BTC), "20-byte hex address"),
    (dict(destination_chain=DST, recipient="", source_chain=BTC), "recipient is required"),
    (dict(destination_chain=DST, recipient=BAD_CHECKSUM, source_chain=BTC), "EIP-55 checksum"),
]


@pytest.mark.parametrize(("fields", "reason"), BAD_ADDRESS_REQUESTS, ids=[r for _, r in BAD_ADDRESS_REQUESTS])
def test_bad_address_requests_are_invalid_argument_and_change_nothing(
        stub: bridge_pb2_grpc.BridgeStub, bridge_db: BridgeDB, fields: dict[str, str], reason: str) -> None:
    before = bridge_db.events()
    with pytest.raises(grpc.RpcError) as info:
        stub.GetDepositAddress(bridge_pb2.DepositAddressRequest(**fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in info.value.details()
    assert bridge_db.events() == before == []


def test_address_contradicting_the_database_is_failed_precondition(client: BridgeClient,
                                                                   bridge_db: BridgeDB) -> None:
    """Another address already recorded for the same route (the node's group key changed under its
    database): refused and reported, never a second address for one recipient."""
    from fusion_prime.bridge.db import DepositAddress as AddressRecord

    bridge_db.register_address(AddressRecord(address="bcrt1qsomethingelse", asset="BTC", source_chain=BTC,
                                             destination_chain=DST, recipient=to_checksum_address(RECIPIENT),
                                             path=(1, 2)))
    with pytest.raises(BridgeError) as info:
        client.deposit_address(DST, RECIPIENT, source=BTC)
    assert info.value.code == "FAILED_PRECONDITION"
    assert addresses_rows(bridge_db) == ["bcrt1qsomethingelse"]


def test_ambiguous_asset_is_invalid_argument(bridge_db: BridgeDB, tls: tuple[bytes, bytes]) -> None:
    servicer = BridgeServicer(bridge_db, functools.partial(deposit_address, GROUP_KEY, CHAIN_CODE),
                              sources={ETH_SRC: SourceChain("ETH", ETH_PARAMS),
                                       "eip155:17000": SourceChain("ETH", ETH_PARAMS)},
                              destinations=[DST])
    srv, port = start_bridge_server(servicer, "127.0.0.1:0", *tls)
    try:
        with BridgeClient(f"127.0.0.1:{port}", tls[0], server_name=SERVER_NAME) as c:
            with pytest.raises(BridgeError, match="several chains") as info:
                c.deposit_address(DST, RECIPIENT, asset="ETH")
            assert info.value.code == "INVALID_ARGUMENT"
            assert c.deposit_address(DST, RECIPIENT, source="eip155:17000").wrapped_token == ""
    finally:
        srv.stop(None)


def test_a_second_server_on_a_taken_port_fails_to_start(servicer: BridgeServicer, server: int,
                                                         tls: tuple[bytes, bytes]) -> None:
    """gRPC's default SO_REUSEPORT would let a second daemon bind the same port and silently take
    half of the clients; the Bridge API refuses to start instead (the daemon says so in one line)."""
    with pytest.raises((OSError, RuntimeError), match=r"cannot listen|Failed to bind"):  # (grpcio's bind error)
        start_bridge_server(servicer, f"127.0.0.1:{server}", *tls)


# ------------------------------------------------------------------------------ deposits and watching

def test_deposit_lifecycle_in_get_list_and_watch(client: BridgeClient, servicer: BridgeServicer,
                                                 bridge_db: BridgeDB) -> None:
    address = client.deposit_address(DST, RECIPIENT, source=BTC).address
    dep = bridge_db.upsert_deposit(make_deposit(address, txid_byte=1))
    seen = client.deposit(dep.deposit_id)
    assert (seen.state, seen.amount, seen.address, seen.vout) == ("seen", "150000", address, 0)
    assert not seen.HasField("height") and not seen.HasField("minted_block")
    # by outpoint, with the txid as the chain's RPC prints it
    assert client.deposit(outpoint=(BTC, dep.txid, 0)) == seen

    stream = client.watch(dep.deposit_id, resume=False)
    opening = next(stream)
    assert opening.current and opening.deposit == seen and opening.event == ""

    advance(bridge_db, dep.deposit_id, LIFECYCLE)  # several transitions between two reads of the server
    rest = list(stream)  # ends by itself at the terminal state
    assert [(u.deposit.state, u.deposit.confirmations) for u in rest] == EXPECTED
    assert all(not u.current for u in rest)
    assert [u.event for u in rest] == ["deposit-confirming", "deposit-updated", "deposit-confirmed",
                                      "deposit-signing", "deposit-signed", "deposit-minted"]
    seqs = [opening.event_seq] + [u.event_seq for u in rest]
    assert seqs == sorted(set(seqs))
    assert rest[0].deposit.required_confirmations == 3 and rest[0].deposit.height == 101
    assert rest[3].deposit.order_digest == b"\x0d" * 32
    assert rest[4].deposit.order_signature == b"\x5e" * 65
    final = rest[-1].deposit
    assert (final.mint_tx, final.minted_block) == ("0x" + "cd" * 32, 77)
    # The stream's last message is what the database now says (its time is the audit event's).
    stored = bridge_db.get_deposit(dep.deposit_id)
    assert stored is not None
    assert without_time(final) == without_time(client.deposit(dep.deposit_id)) == without_time(
        deposit_status(stored))

    # A new client (a page reload) gets the terminal state at once, and the stream ends.
    again = list(client.watch(dep.deposit_id, resume=False))
    assert len(again) == 1 and again[0].current and without_time(again[0].deposit) == without_time(final)

    listed = client.deposits(address=address)
    assert [d.deposit_id for d in listed] == [dep.deposit_id] and listed[0].state == "minted"
    assert client.deposits(recipient=RECIPIENT.lower()) == listed
    assert client.deposits(recipient=RECIPIENT, destination="eip155:999") == []


def without_time(status: bridge_pb2.DepositStatus) -> bridge_pb2.DepositStatus:
    copy = bridge_pb2.DepositStatus()
    copy.CopyFrom(status)
    copy.ClearField("updated_at")
    return copy


def test_watch_by_address_sees_current_then_new_deposits_and_every_transition(
        client: BridgeClient, servicer: BridgeServicer, bridge_db: BridgeDB) -> None:
    address = client.deposit_address(DST, RECIPIENT, source=ETH_SRC).address
    big = 2**256 - 1  # an ERC-20-sized amount survives the round trip as a decimal string
    first = bridge_db.upsert_deposit(make_deposit(address, txid_byte=2, vout=0, amount=big, source=ETH_SRC,
                                                  asset="ETH", state="confirming", confirmations=1,
                                                  required_confirmations=64, height=5, block_hash="01" * 32))
    stream = client.watch(address=address.lower(), resume=False)
    opening = next(stream)
    assert opening.current and opening.deposit.amount == str(big)
    assert opening.deposit.state == "confirming"

    second = bridge_db.upsert_deposit(make_deposit(address, txid_byte=3, amount=5, source=ETH_SRC, asset="ETH",
                                                   state="dust", reason="below the minimum deposit"))
    servicer.notify()
    advance(bridge_db, first.deposit_id, [dict(confirmations=2), dict(state="reorged", reason="block 5 left the chain",
                                                                      block_hash=None, height=None)], servicer)
    got = [next(stream) for _ in range(3)]
    assert [(u.deposit.deposit_id, u.deposit.state, u.current) for u in got] == [
        (second.deposit_id, "dust", False), (first.deposit_id, "confirming", False),
        (first.deposit_id, "reorged", False)]
    assert got[0].deposit.reason == "below the minimum deposit" and got[0].deposit.amount == "5"
    assert got[1].deposit.confirmations == 2 and got[1].deposit.amount == str(big)
    assert got[2].deposit.reason == "block 5 left the chain" and not got[2].deposit.HasField("height")
    stream.close()

    # Paging: stable order by deposit id, one per page, nothing repeated or skipped.
    page1 = client.deposits_page(address=address, page_size=1)
    assert len(page1.deposits) == 1 and page1.next_page_token
    page2 = client.deposits_page(address=address, page_size=1, page_token=page1.next_page_token)
    assert len(page2.deposits) == 1 and not page2.next_page_token
    assert sorted([page1.deposits[0].deposit_id, page2.deposits[0].deposit_id]) == sorted(
        [first.deposit_id, second.deposit_id]) == [page1.deposits[0].deposit_id, page2.deposits[0].deposit_id]


def test_evm_native_deposit_vout_is_shown(client: BridgeClient, bridge_db: BridgeDB, engine_name: str,
                                          request: pytest.FixtureRequest) -> None:
    """An ETH deposit's vout is EVM_NATIVE_VOUT = 2**32 - 1 (bridge/orders.py), on both engines."""
    address = client.deposit_address(DST, RECIPIENT, source=ETH_SRC).address
    dep = bridge_db.upsert_deposit(make_deposit(address, txid_byte=9, vout=2**32 - 1, source=ETH_SRC, asset="ETH"))
    assert client.deposit(outpoint=(ETH_SRC, "0x" + dep.txid, 2**32 - 1)).vout == 2**32 - 1


def test_unknown_ids_are_not_found_and_malformed_ids_invalid(stub: bridge_pb2_grpc.BridgeStub,
                                                             client: BridgeClient) -> None:
    unknown = b"\x77" * 32
    assert code_of(lambda: stub.GetDeposit(bridge_pb2.GetDepositRequest(deposit_id=unknown))) == \
        grpc.StatusCode.NOT_FOUND
    outpoint = bridge_pb2.Outpoint(source_chain=BTC, txid="ab" * 32, vout=1)
    assert code_of(lambda: stub.GetDeposit(bridge_pb2.GetDepositRequest(outpoint=outpoint))) == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: list(stub.WatchDeposits(bridge_pb2.WatchDepositsRequest(deposit_id=unknown)))) == \
        grpc.StatusCode.NOT_FOUND
    not_ours = "bcrt1q43eupdtyqtjcjj854g7nkj9k9hur0ljcxcldun"  # valid, but never requested from this node
    assert code_of(lambda: list(stub.WatchDeposits(bridge_pb2.WatchDepositsRequest(address=not_ours)))) == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stub.ListDeposits(bridge_pb2.ListDepositsRequest(address=not_ours))) == \
        grpc.StatusCode.NOT_FOUND
    for call in (
        lambda: stub.GetDeposit(bridge_pb2.GetDepositRequest(deposit_id=b"\x01" * 31)),
        lambda: stub.GetDeposit(bridge_pb2.GetDepositRequest()),
        lambda: stub.GetDeposit(bridge_pb2.GetDepositRequest(outpoint=bridge_pb2.Outpoint(source_chain=BTC,
                                                                                          txid="xyz"))),
        lambda: list(stub.WatchDeposits(bridge_pb2.WatchDepositsRequest(deposit_id=b"\x01"))),
        lambda: list(stub.WatchDeposits(bridge_pb2.WatchDepositsRequest())),
        lambda: stub.ListDeposits(bridge_pb2.ListDepositsRequest(recipient="0x" + "00" * 20)),
        lambda: stub.ListDeposits(bridge_pb2.ListDepositsRequest(recipient=RECIPIENT, page_token=b"junk")),
        lambda: stub.ListDeposits(bridge_pb2.ListDepositsRequest()),
    ):
        assert code_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(BridgeError) as info:
        client.deposit(unknown.hex())
    assert info.value.code == "NOT_FOUND"


def test_watch_streams_are_capped_per_peer_and_per_node(client: BridgeClient, servicer: BridgeServicer,
                                                        bridge_db: BridgeDB) -> None:
    address = client.deposit_address(DST, RECIPIENT, source=BTC).address
    dep = bridge_db.upsert_deposit(make_deposit(address, txid_byte=4))
    open_streams = [client.watch(dep.deposit_id, resume=False) for _ in range(2)]
    for s in open_streams:
        assert next(s).deposit.state == "seen"  # each holds its slot now
    assert servicer.watch_streams() == 2
    with pytest.raises(BridgeError) as info:
        next(client.watch(dep.deposit_id, resume=False))
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert servicer.watch_streams() == 2  # the refused call took nothing

    open_streams.pop().close()  # a cancelled stream gives its slot back
    wait_for(lambda: servicer.watch_streams() == 1)
    servicer.watch_max_streams = 1  # the node-wide cap, whoever asks
    with pytest.raises(BridgeError) as info:
        next(client.watch(address=address, resume=False))
    assert info.value.code == "RESOURCE_EXHAUSTED"
    # Unary calls are not affected by open streams.
    assert client.deposit(dep.deposit_id).state == "seen"
    open_streams.pop().close()
    wait_for(lambda: servicer.watch_streams() == 0)


def test_stream_duration_cap_and_sdk_resume(client: BridgeClient, servicer: BridgeServicer,
                                            bridge_db: BridgeDB) -> None:
    address = client.deposit_address(DST, RECIPIENT, source=BTC).address
    dep = bridge_db.upsert_deposit(make_deposit(address, txid_byte=5, state="confirmed", confirmations=3,
                                                required_confirmations=3, height=9, block_hash="09" * 32))
    servicer.watch_max_seconds = 0.0  # every stream ends right after its opening state
    stream = client.watch(dep.deposit_id, resume=False)
    assert next(stream).deposit.state == "confirmed"
    with pytest.raises(BridgeError) as info:
        next(stream)
    assert info.value.code == "DEADLINE_EXCEEDED"
    wait_for(lambda: servicer.watch_streams() == 0)

    # With resume (the default) the SDK watches again and drops the repeated opening state.
    resumed = client.watch(dep.deposit_id)
    assert next(resumed).deposit.state == "confirmed"
    advance(bridge_db, dep.deposit_id, LIFECYCLE[3:])
    last = list(resumed)
    assert last and last[-1].deposit.state == "minted"
    assert [u.deposit.state for u in last] == sorted({u.deposit.state for u in last}, key=[
        "signing", "signed", "minted"].index)


def test_health(client: BridgeClient, bridge_db: BridgeDB) -> None:
    bridge_db.set_cursor(BTC, 120, "12" * 32)
    health = client.health()
    assert health.serving and health.node == "node1" and health.schema_version >= 2
    assert health.event_seq == len(bridge_db.events())
    assert [(r.source_chain, r.asset, r.destination_chain) for r in health.routes] == [
        (BTC, "BTC", DST), (ETH_SRC, "ETH", DST)]
    heads = {h.chain: h for h in health.chains}
    assert heads[BTC].height == 120 and heads[BTC].block_hash == "12" * 32
    assert not heads[ETH_SRC].HasField("height")
    assert list(health.errata) == []


# ---------------------------------------------------------------------------------------- async SDK

def test_async_sdk(server: int, tls: tuple[bytes, bytes], bridge_db: BridgeDB, servicer: BridgeServicer) -> None:
    async def scenario() -> None:
        async with AsyncBridgeClient(f"127.0.0.1:{server}", tls[0], server_name=SERVER_NAME) as bridge:
            a = await bridge.deposit_address(DST, RECIPIENT, source=BTC)
            assert (a.path, a.address) == PINNED_BTC
            dep = bridge_db.upsert_deposit(make_deposit(a.address, txid_byte=6))
            assert (await bridge.deposit(dep.deposit_id.hex())).state == "seen"
            assert [d.deposit_id for d in await bridge.deposits(recipient=RECIPIENT)] == [dep.deposit_id]
            states = []
            async for update in bridge.watch(dep.deposit_id, resume=False):
                states.append((update.deposit.state, update.deposit.confirmations))
                if update.current:
                    # The DB write runs in a thread: the event loop must keep serving the stream.
                    await asyncio.to_thread(advance, bridge_db, dep.deposit_id, LIFECYCLE, servicer)
            assert states == [("seen", 0), *EXPECTED]
            assert (await bridge.health()).serving
            with pytest.raises(BridgeError) as info:
                await bridge.deposit(b"\x55" * 32)
            assert info.value.code == "NOT_FOUND"

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------- CLI

def run_cli(port: int, cert_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fusion_prime.bridge.cli", "--target", f"127.0.0.1:{port}", "--server-cert",
           str(cert_file), "--server-name", SERVER_NAME, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def test_cli(server: int, tls: tuple[bytes, bytes], tmp_path: Path, bridge_db: BridgeDB) -> None:
    cert_file = tmp_path / "node1.pem"
    cert_file.write_bytes(tls[0])
    out = run_cli(server, cert_file, "deposit-address", "--destination", DST, "--recipient", RECIPIENT,
                  "--source", BTC)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert (answer["path"], answer["address"]) == PINNED_BTC
    assert answer["minimum_deposit"] == "1001" and answer["confirmations"]["min_confirmations"] == 3

    dep = bridge_db.upsert_deposit(make_deposit(answer["address"], txid_byte=7))
    advance(bridge_db, dep.deposit_id, LIFECYCLE)
    out = run_cli(server, cert_file, "status", "--deposit", dep.deposit_id.hex())
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["state"] == "minted" and status["deposit_id"] == dep.deposit_id.hex()
    assert status["minted_block"] == 77 and status["order_digest"] == "0d" * 32
    out = run_cli(server, cert_file, "status", "--tx", dep.txid, "--vout", "0", "--source", BTC)
    assert json.loads(out.stdout) == status
    out = run_cli(server, cert_file, "status", "--address", answer["address"])
    assert [d["deposit_id"] for d in json.loads(out.stdout)] == [dep.deposit_id.hex()]
    out = run_cli(server, cert_file, "watch", "--deposit", dep.deposit_id.hex())
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 1
    assert json.loads(lines[0])["deposit"]["state"] == "minted" and json.loads(lines[0])["current"] is True
    out = run_cli(server, cert_file, "health")
    assert out.returncode == 0 and json.loads(out.stdout)["serving"] is True

    # Errors: one line, exit code 2, no traceback.
    for args, needle in (
        (("deposit-address", "--destination", DST, "--recipient", "0x" + "00" * 20, "--source", BTC),
         "INVALID_ARGUMENT: recipient is the zero address"),
        (("status", "--deposit", "77" * 32), "NOT_FOUND"),
        (("status", "--deposit", "zz"), "INVALID_ARGUMENT"),
        (("status", "--tx", dep.txid), "--tx needs --vout and --source"),
        (("watch",), "one of the arguments --deposit --address is required"),
    ):
        out = run_cli(server, cert_file, *args)
        assert out.returncode == 2, (args, out)
        assert out.stderr.startswith("error: ") and needle in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    out = run_cli(server, tmp_path / "missing.pem", "health")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr

    # A reader that goes away (`| head -0`) ends the command quietly.
    cmd = [sys.executable, "-m", "fusion_prime.bridge.cli", "--target", f"127.0.0.1:{server}", "--server-cert",
           str(cert_file), "--server-name", SERVER_NAME, "health"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # type: ignore[union-attr]
    stderr = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert proc.wait() == 0 and "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_sdk_against_wrong_certificate_fails_cleanly(server: int) -> None:
    other_cert, _ = generate_certificate(SERVER_NAME)  # same name, not the server's key
    with BridgeClient(f"127.0.0.1:{server}", other_cert, server_name=SERVER_NAME, timeout=10) as c:
        with pytest.raises(BridgeError) as info:
            c.health()
    assert info.value.code == "UNAVAILABLE"


def test_watch_ends_when_service_closes(client: BridgeClient, servicer: BridgeServicer, bridge_db: BridgeDB) -> None:
    address = client.deposit_address(DST, RECIPIENT, source=BTC).address
    dep = bridge_db.upsert_deposit(make_deposit(address, txid_byte=8))
    stream = client.watch(dep.deposit_id, resume=False)
    assert next(stream).current
    closer = threading.Thread(target=servicer.close)
    closer.start()
    with pytest.raises(BridgeError) as info:
        next(stream)
    closer.join()
    assert info.value.code == "UNAVAILABLE"
