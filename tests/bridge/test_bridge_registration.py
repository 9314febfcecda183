"""A deposit address registered at one node reaches every node (``RegistrationForwarder``).

In process (three Bridge services over TLS on loopback, each with its own SQLite database): a
registration at node1 is forwarded to node2 — which derives the address itself from the route and
does not forward it again — and a peer holding another group key (it derives another address) is
reported, not retried; a peer that is down receives the registration when it comes up; a
forwarder restarted on the same database sends again what its durable watermark has not passed.

Through the real processes (``fp_bridge_net`` with ``[[bridge.peers]]``, coordinator takeover
effectively off): an address registered at node1 only, a deposit whose designated coordinator is
another node — every node's status shows the deposit, and it is minted by that coordinator (its
relayer sent the ``Gateway.mint``).

Nothing here asserts a duration; deadlines only turn a hang into a failure.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from fp_bridge_net import BTC_CHAIN, Net, bridge_network, wait_for

from fusion_prime.bridge.client import BridgeClient
from fusion_prime.bridge.db import open_database
from fusion_prime.bridge.derivation import deposit_address
from fusion_prime.bridge.orders import ChainParams, deposit_id
from fusion_prime.bridge.runtime import coordinator_rank
from fusion_prime.bridge.service import (
    FORWARD_MARK_META,
    BridgeServicer,
    PeerEndpoint,
    RegistrationForwarder,
    SourceChain,
    start_bridge_server,
)
from fusion_prime.node.devnet import free_ports
from fusion_prime.node.tls import generate_certificate
from fusion_prime.protocol.curve import Point

pytestmark = pytest.mark.xdist_group(name="bridge-network")

NODES = ("node1", "node2", "node3")
DST = "eip155:31338"
PARAMS = ChainParams(min_confirmations=2, value_per_block=50 * 10**8, max_confirmations=6, dust_limit=294,
                     sweep_cost=10_000)


def _group(tag: bytes) -> tuple[Point, bytes]:
    secret = hashlib.sha256(tag).digest()
    return Point.from_bytes(PrivateKey(secret).public_key.format()), hashlib.sha256(tag + b"cc").digest()


class _Service:
    """One node's Bridge API in this process: its database, servicer and server (port fixed)."""

    def __init__(self, base: Path, node_id: str, group: tuple[Point, bytes], port: int,
                 peers: list[PeerEndpoint] | None = None) -> None:
        self.node_id, self.port = node_id, port
        self.cert, self.key = generate_certificate(node_id)
        self.db = open_database(f"sqlite:///{base / (node_id + '.sqlite3')}")
        self.forwarder = RegistrationForwarder(self.db, peers or [], node_id=node_id, retry_first=0.2,
                                               retry_max=0.5) if peers else None
        self.servicer = BridgeServicer(self.db, functools.partial(deposit_address, *group),
                                       sources={BTC_CHAIN: SourceChain("BTC", PARAMS)}, destinations=[DST],
                                       node_id=node_id, forwarder=self.forwarder)
        self.server: Any = None

    def up(self) -> _Service:
        self.server, _ = start_bridge_server(self.servicer, f"127.0.0.1:{self.port}", self.cert, self.key)
        if self.forwarder is not None:
            self.forwarder.start()
        return self

    def endpoint(self) -> PeerEndpoint:
        return PeerEndpoint(self.node_id, f"127.0.0.1:{self.port}", self.cert)

    def client(self) -> BridgeClient:
        return BridgeClient(f"127.0.0.1:{self.port}", self.cert, server_name=self.node_id, timeout=10)

    def down(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
        self.servicer.close()
        if self.server is not None:
            self.server.stop(grace=0.5)
        self.db.close()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[dict[str, _Service]]:
    group = _group(b"the group")
    ports = dict(zip(NODES, free_ports(len(NODES)), strict=True))
    made: dict[str, _Service] = {}
    made["node2"] = _Service(tmp_path, "node2", group, ports["node2"])
    made["node3"] = _Service(tmp_path, "node3", _group(b"another group"), ports["node3"])
    # node2 forwards too (to node1): a forwarded registration must not be forwarded again
    made["node1"] = _Service(tmp_path, "node1", group, ports["node1"],
                             peers=[made["node2"].endpoint(), made["node3"].endpoint()])
    made["node2"].forwarder = RegistrationForwarder(made["node2"].db, [made["node1"].endpoint()], node_id="node2")
    made["node2"].servicer.forwarder = made["node2"].forwarder
    try:
        yield made
    finally:
        for s in made.values():
            s.down()


def test_forwarded_to_peers_each_deriving_it_itself(services: dict[str, _Service]) -> None:
    n1, n2, n3 = services["node1"], services["node2"], services["node3"]
    for s in (n2, n3, n1):
        s.up()
    recipient = "0x" + "ab" * 20
    with n1.client() as c:
        address = c.deposit_address(DST, recipient, source=BTC_CHAIN).address
    # node2 (same group key) registers the same address, derived from the route alone
    wait_for("node2 registered it", lambda: n2.db.get_address(address) is not None)
    assert n2.db.get_address(address).recipient.lower() == recipient
    # node3 holds another group key: it derives (and registers) its own address; node1 reports the mismatch
    wait_for("node3's mismatch reported", lambda: n1.forwarder.refused)
    assert n1.forwarder.refused[0]["peer"] == "node3" and "derives" in n1.forwarder.refused[0]["reason"]
    assert n3.db.get_address(address) is None
    wait_for("nothing pending", lambda: n1.forwarder.pending() == {"node2": 0, "node3": 0})
    assert n1.forwarder.forwarded == {"node2": 1, "node3": 0}
    # node2 got it forwarded: it does not forward it back
    assert n2.forwarder.forwarded == {"node1": 0} and n2.forwarder.pending() == {"node1": 0}
    # the watermark of each peer reached the registration
    created = n1.db.get_address(address).created_at
    assert float(n1.db.get_meta(FORWARD_MARK_META + "node2")) >= created
    # registering again at node1 is not forwarded again (nothing new)
    with n1.client() as c:
        assert c.deposit_address(DST, recipient, source=BTC_CHAIN).already_registered
    assert n1.forwarder.pending() == {"node2": 0, "node3": 0}


def test_a_peer_that_is_down_gets_it_later_and_a_restart_resends(services: dict[str, _Service],
                                                                  tmp_path: Path) -> None:
    n1, n2 = services["node1"], services["node2"]
    n1.forwarder.peers.pop("node3")
    n1.forwarder._pending.pop("node3")
    n1.forwarder.forwarded.pop("node3")
    n1.up()  # node2 is not listening yet
    recipient = "0x" + "cd" * 20
    with n1.client() as c:
        address = c.deposit_address(DST, recipient, source=BTC_CHAIN).address
    wait_for("a failed attempt", lambda: any(i.attempts for i in n1.forwarder._pending["node2"].values()))
    assert n2.db.get_address(address) is None
    # node1's forwarder restarts (same database) before node2 comes up: the registration is still queued
    n1.forwarder.close()
    again = RegistrationForwarder(n1.db, [n2.endpoint()], node_id="node1", retry_first=0.2, retry_max=0.5)
    n1.forwarder = n1.servicer.forwarder = again
    again.start()
    assert again.pending() == {"node2": 1}
    n2.up()
    wait_for("node2 registered it", lambda: n2.db.get_address(address) is not None)
    wait_for("nothing pending", lambda: again.pending() == {"node2": 0})


def test_forwarder_pins_the_peer_certificate(services: dict[str, _Service]) -> None:
    n1, n2 = services["node1"], services["node2"]
    impostor_cert, _ = generate_certificate("node2")
    n1.forwarder.peers["node2"] = PeerEndpoint("node2", f"127.0.0.1:{n2.port}", impostor_cert)
    n1.forwarder.peers.pop("node3")
    n1.forwarder._pending.pop("node3")
    n2.up()
    n1.up()
    with n1.client() as c:
        address = c.deposit_address(DST, "0x" + "ef" * 20, source=BTC_CHAIN).address
    wait_for("a failed attempt", lambda: any(i.attempts for i in n1.forwarder._pending["node2"].values()))
    assert n2.db.get_address(address) is None  # the TLS handshake failed: nothing was sent


# ------------------------------------------------------------------------------ real processes

@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    # takeover effectively off: only the designated coordinator of a deposit ever proposes it
    with bridge_network(tmp_path_factory.mktemp("bridge-reg"), forward_registrations=True,
                        coordinator_takeover_seconds=3600.0) as n:
        yield n


def _coordinator(did: bytes) -> str:
    return next(n for n in NODES if coordinator_rank("0x" + did.hex(), n, NODES) == 0)


def test_registered_at_node1_only_is_minted_by_the_rotated_coordinator(net: Net) -> None:
    recipient = "0x" + "c4" * 20
    address = net.address(BTC_CHAIN, recipient, nodes=("node1",))
    # a deposit whose designated coordinator is not node1 (the node the user asked)
    amount = 30_000_000
    while True:
        txid, vout = net.miner.pay(address, amount)
        did = deposit_id(BTC_CHAIN, txid, vout)
        if _coordinator(did) != "node1":
            break
        amount += 1_000  # node1 coordinates this one: it is minted too, and another is sent
    coordinator = _coordinator(did)
    net.miner.mine(2)
    wait_for("every node shows the deposit minted", lambda: net.states(did) == {"minted"}, procs=net.procs)
    events = net.minted_events(did)
    assert len(events) == 1
    sender = net.dst.eth.get_transaction(events[0]["transactionHash"])["from"]
    assert sender == net.relayers[coordinator].address
    assert net.balance("fpBTC", recipient) >= amount
    for node_id in NODES:
        assert any(e.get("address") == address for e in net.events(node_id, "address-registered")), node_id
        with net.bridge(node_id) as b:
            assert b.deposit(did).recipient.lower() == recipient
