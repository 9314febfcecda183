"""The bridge under attack and under failure, through the real processes (issue 14, "Done means").

The network of ``tests/helpers/fp_bridge_net.py``: three signer daemons with their bridges, the
Bitcoin devnet, a source and a destination anvil, the Gateway deployed with the group key.

Shows:

* a deposit whose block a node read *before* its address was registered there is still found by
  that node (the late-registration rescan), and minted once;
* a malicious coordinator — node1's own storage reopened in this process as a node that accepts
  whatever it proposes — gets no signature for a deposit that does not exist, an inflated amount,
  another recipient, a deposit below its depth, an already-minted deposit (the exact minted order
  and a re-issue) or a digest other than the order's: each honest node refuses and records the
  precise reason code; nothing is minted. The honest order for the same deposit, through the same
  path, *is* signed (so the refusals are the policy's, not the harness's);
* a node whose Bitcoin endpoint lies (a JSON-RPC proxy that invents an output, and inflates a
  real one, for that node only) proposes, and the others refuse: nothing co-signed, nothing minted;
* three coordinators racing on one deposit (``coordinator_takeover_seconds = 0``) mint it once;
* the coordinator SIGKILLed during the sign session, or between its order being signed and the
  relay, and restarted: the deposit is minted exactly once.

Not here yet: a mint above the Gateway's large-mint threshold (queued, executed once after the
delay) — nothing in the bridge calls ``executeMint`` today.

Nothing here asserts a duration; deadlines only turn a hang into a failure.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trio
from fp_bridge_net import BTC_CHAIN, COIN, DST_CHAIN, Attacker, Net, bridge_network, wait_for
from web3 import Web3

from fusion_prime.bridge.chains.bitcoin.encoding import REGTEST, address_to_script
from fusion_prime.bridge.chainview import COSIGNED_EVENT, REFUSED_EVENT
from fusion_prime.bridge.orders import MintOrder, deposit_id, encode_signature, recover_signer
from fusion_prime.bridge.runtime import coordinator_rank

pytestmark = pytest.mark.xdist_group(name="bridge-network")

NODES = ("node1", "node2", "node3")
DST_CHAIN_ID = int(DST_CHAIN.partition(":")[2])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with bridge_network(tmp_path_factory.mktemp("bridge-adv")) as n:
        yield n


def _recipient(tag: int) -> str:
    return Web3.to_checksum_address("0x" + f"{tag:02x}" * 20)


def _tip(net: Net) -> int:
    return int(net.rpc.get_block_count())


def _scanned(net: Net, node_id: str, height: int) -> bool:
    return int(net.status(node_id).get("chains", {}).get(BTC_CHAIN, {}).get("tip", -1)) >= height


def _minted_order(net: Net, did: bytes) -> MintOrder:
    """The exact order the Gateway minted ``did`` with: the co-signed order (some node's own
    record) whose digest the ``Minted`` event carries."""
    (event,) = net.minted_events(did)
    data = bytes(event["data"])
    digest = data[5 * 32:6 * 32]
    for n in NODES:
        for e in net.events(n, COSIGNED_EVENT, did):
            if bytes.fromhex(e["digest"]) == digest:
                return MintOrder.from_bytes(bytes.fromhex(e["order"]))
    raise AssertionError(f"no node co-signed the minted order {digest.hex()}")


def _mint_once(net: Net, did: bytes, symbol: str, recipient: str, amount: int,
               nodes: tuple[str, ...] = NODES) -> None:
    wait_for(f"{symbol} minted", lambda: net.balance(symbol, recipient) == amount, procs=net.procs)
    wait_for("minted everywhere", lambda: net.states(did, nodes) == {"minted"}, procs=net.procs)
    assert len(net.minted_events(did)) == 1
    assert net.balance(symbol, recipient) == amount


# ------------------------------------------------------------------------- late registration

def test_a_deposit_to_an_address_registered_after_its_block_was_read_is_found(net: Net) -> None:
    recipient = _recipient(0x11)
    address = net.address(BTC_CHAIN, recipient, nodes=("node1",))  # only node1 watches it yet
    amount = 30_000_000
    txid, vout = net.miner.pay(address, amount)
    did = deposit_id(BTC_CHAIN, txid, vout)
    net.miner.mine(1)
    height = _tip(net)
    wait_for("node1 sees it", lambda: net.state("node1", did) == "confirming", procs=net.procs)
    # node2 and node3 read that block while the address meant nothing to them
    wait_for("block read everywhere", lambda: all(_scanned(net, n, height) for n in NODES), procs=net.procs)
    assert net.states(did, ("node2", "node3")) == {"unknown"}
    assert net.address(BTC_CHAIN, recipient, nodes=("node2", "node3")) == address
    # no new block: the deposit is found by the rescan of what was already read
    wait_for("found after registration", lambda: net.states(did) == {"confirming"}, procs=net.procs)
    net.miner.mine(1)
    _mint_once(net, did, "fpBTC", recipient, amount)


# ------------------------------------------------------------------------- malicious coordinator

def _refusals(net: Net, node_id: str, did: bytes) -> list[dict[str, Any]]:
    return net.events(node_id, REFUSED_EVENT, did)


def _epoch(net: Net) -> int:
    return int(net.gateway.functions.signerSchedule().call()[1])


def test_a_malicious_coordinator_gets_no_signature_for_a_bad_order(net: Net) -> None:
    fpbtc = net.tokens["fpBTC"].address
    # A deposit minted the honest way (its exact order is replayed below).
    minted_to = _recipient(0x21)
    minted_amount = 20_000_000
    txid_m, vout_m = net.miner.pay(net.address(BTC_CHAIN, minted_to), minted_amount)
    did_m = deposit_id(BTC_CHAIN, txid_m, vout_m)
    net.miner.mine(2)
    _mint_once(net, did_m, "fpBTC", minted_to, minted_amount)
    minted_order = _minted_order(net, did_m)
    # Two deposits only node1 knows of (the honest daemons watch neither address): one at full
    # depth, one a block short of it. node1 is stopped before they are paid: a running node1
    # would coordinate the honest mint of the full-depth deposit itself, and the honest nodes
    # would then rightly refuse the control order below as a second live order for it.
    victim = _recipient(0x22)
    shallow_to = _recipient(0x23)
    victim_address = net.address(BTC_CHAIN, victim, nodes=("node1",))
    shallow_address = net.address(BTC_CHAIN, shallow_to, nodes=("node1",))
    net.stop("node1")
    full_amount = 40_000_000
    txid_f, vout_f = net.miner.pay(victim_address, full_amount)
    net.miner.mine(3)
    txid_s, vout_s = net.miner.pay(shallow_address, 50_000_000)
    net.miner.mine(1)  # 1 of 2 confirmations
    wait_for("blocks read", lambda: all(_scanned(net, n, _tip(net)) for n in ("node2", "node3")), procs=net.procs)

    attacker_addr = _recipient(0x66)
    now = int(time.time())
    epoch = _epoch(net)

    def order(txid: str, vout: int, recipient: str, amount: int, nonce: int = 7) -> MintOrder:
        return MintOrder(asset=fpbtc, source_chain=BTC_CHAIN, source_txid=txid, vout=vout, recipient=recipient,
                         amount=amount, signer_epoch=epoch, nonce=nonce, deadline=now + 900)

    honest_full = order(txid_f, vout_f, victim, full_amount)
    cases = [
        ("no_such_output", order("ab" * 32, 0, attacker_addr, 10 * COIN), None),
        ("amount_inflated", order(txid_f, vout_f, victim, full_amount * 10), None),
        ("wrong_address", order(txid_f, vout_f, attacker_addr, full_amount), None),
        ("below_depth", order(txid_s, vout_s, shallow_to, 50_000_000), None),
        ("already_minted", minted_order, None),
        ("digest_mismatch", honest_full, order(txid_f, vout_f, attacker_addr, full_amount)),
    ]
    # a re-issue of the minted deposit: refused as a second order by a node that co-signed the
    # first (still live), as already minted by one that did not
    reissue = order(txid_m, vout_m, minted_to, minted_amount, nonce=minted_order.nonce + 1)
    attacker = Attacker(net)

    async def main() -> list[tuple[str, str, Any]]:
        results = []
        async with trio.open_nursery() as nursery:
            await nursery.start(attacker.node.run)
            try:
                for code, o, shown in [*cases, ("reissue", reissue, None)]:
                    digest = shown.digest(net.gateway.address, DST_CHAIN_ID) if shown is not None else None
                    for honest in ("node2", "node3"):
                        results.append((code, honest, await attacker.propose(honest, o, digest)))
                # the control: the honest order for the full-depth deposit, same path, is signed
                results.append(("control", "node2", await attacker.propose("node2", honest_full)))
            finally:
                attacker.node.stop()
        return results

    def check_refusals_and_mint_control(results: list[tuple[str, str, Any]]) -> None:
        for code, honest, outcome in results[:-1]:
            assert not outcome.ok and outcome.output is None, (code, honest, outcome)
        for code, o, shown in cases:
            did = o.deposit_id
            proposed = (shown or o).digest(net.gateway.address, DST_CHAIN_ID).hex()
            for honest in ("node2", "node3"):
                codes = [r["code"] for r in _refusals(net, honest, did)]
                assert code in codes, (code, honest, codes)
                if code != "already_minted":  # (that order was co-signed once, when it was minted)
                    assert not [e for e in net.events(honest, COSIGNED_EVENT, did) if e["digest"] == proposed]
        for honest in ("node2", "node3"):
            codes = [r["code"] for r in _refusals(net, honest, did_m)]
            assert set(codes) <= {"already_minted", "cosigned_different_order"} and len(codes) >= 2, codes
        # nothing minted but the one honest mint
        assert len(net.minted_events(did_m)) == 1
        assert net.balance("fpBTC", attacker_addr) == 0
        assert net.balance("fpBTC", shallow_to) == 0
        assert net.minted_events(deposit_id(BTC_CHAIN, txid_s, vout_s)) == []
        assert net.minted_events(deposit_id(BTC_CHAIN, "ab" * 32, 0)) == []
        # the control was signed by the group key and mints (anyone may relay)
        control = results[-1][2]
        assert control.ok, control
        sig = encode_signature(control.output.r, control.output.s, control.output.recovery_id)
        digest = honest_full.digest(net.gateway.address, DST_CHAIN_ID)
        assert recover_signer(digest, sig) == Web3.to_checksum_address(net.gateway.functions.activeSigner().call())
        t = (honest_full.asset, honest_full.source_chain_key, bytes.fromhex(honest_full.source_txid), honest_full.vout,
             honest_full.recipient, honest_full.amount, honest_full.signer_epoch, honest_full.nonce,
             honest_full.deadline)
        tx = net.gateway.functions.mint(t, sig).transact({"from": net.dst.eth.accounts[5]})
        assert net.dst.eth.wait_for_transaction_receipt(tx)["status"] == 1
        did_f = honest_full.deposit_id
        assert len(net.minted_events(did_f)) == 1 and net.balance("fpBTC", victim) == full_amount

    try:
        results = trio.run(main)
        check_refusals_and_mint_control(results)
    finally:
        # node1 comes back only after the control is minted: back earlier, it could coordinate
        # its own order for the same deposit and win the race to the Gateway
        net.start("node1")
    # node1's daemon, back, sees the deposit as minted and mints nothing more
    did_f = honest_full.deposit_id
    wait_for("node1 minted", lambda: net.state("node1", did_f) == "minted", procs=net.procs)
    assert len(net.minted_events(did_f)) == 1 and net.balance("fpBTC", victim) == full_amount


# ------------------------------------------------------------------------- racing coordinators

def test_three_coordinators_racing_on_one_deposit_mint_it_once(net: Net) -> None:
    net.restart_all(coordinator_takeover_seconds=0.0)  # every node proposes as soon as it is confirmed
    recipient = _recipient(0x31)
    amount = 60_000_000
    txid, vout = net.miner.pay(net.address(BTC_CHAIN, recipient), amount)
    did = deposit_id(BTC_CHAIN, txid, vout)
    # no relayer can pay for a while: every coordinator gets its signature before anyone mints
    funds = {n: net.dst.eth.get_balance(a.address) for n, a in net.relayers.items()}
    for a in net.relayers.values():
        net.dst.provider.make_request("anvil_setBalance", [a.address, hex(0)])
    try:
        net.miner.mine(2)
        wait_for("three signed orders", lambda: net.states(did) == {"signed"}, procs=net.procs)
    finally:
        for n, a in net.relayers.items():
            net.dst.provider.make_request("anvil_setBalance", [a.address, hex(funds[n])])
    # three coordinators proposed, each holds a group signature, and all relay at once
    coordinators = {e["coordinator"] for n in NODES for e in net.events(n, COSIGNED_EVENT, did)}
    assert coordinators == set(NODES), coordinators
    _mint_once(net, did, "fpBTC", recipient, amount)
    height = _tip(net)
    net.miner.mine(1)
    wait_for("settled", lambda: all(_scanned(net, n, height + 1) for n in NODES), procs=net.procs)
    assert len(net.minted_events(did)) == 1 and net.balance("fpBTC", recipient) == amount


# ------------------------------------------------------------------------- SIGKILL mid-mint

def _coordinator(did: bytes) -> tuple[str, list[str]]:
    first = next(n for n in NODES if coordinator_rank("0x" + did.hex(), n, NODES) == 0)
    return first, [n for n in NODES if n != first]


def test_the_coordinator_killed_during_the_sign_session_mints_once_after_restart(net: Net) -> None:
    net.restart_all(coordinator_takeover_seconds=3600.0)  # nobody takes over: the restart must finish it
    recipient = _recipient(0x41)
    amount = 70_000_000
    address = net.address(BTC_CHAIN, recipient)
    txid, vout = net.miner.pay(address, amount)
    did = deposit_id(BTC_CHAIN, txid, vout)
    coordinator, others = _coordinator(did)
    net.miner.mine(1)
    wait_for("confirming", lambda: net.states(did) == {"confirming"}, procs=net.procs)
    for n in others:  # the session cannot complete: its participants are frozen
        net.procs[n].send_signal(signal.SIGSTOP)
    try:
        net.miner.mine(1)
        wait_for("coordinator signing", lambda: net.state(coordinator, did) == "signing", procs=net.procs)
        wait_for("proposal made", lambda: net.events(coordinator, COSIGNED_EVENT, did)
                 or "mint signing failed" in net.log_text(coordinator, current=True), procs=net.procs)
        assert net.stop(coordinator, signal.SIGKILL) == -signal.SIGKILL
    finally:
        for n in others:
            net.procs[n].send_signal(signal.SIGCONT)
    assert net.minted_events(did) == []
    net.start(coordinator)
    _mint_once(net, did, "fpBTC", recipient, amount)


def test_the_coordinator_killed_between_signature_and_relay_mints_once_after_restart(net: Net) -> None:
    net.restart_all(coordinator_takeover_seconds=3600.0)  # nobody takes over: the restart must finish it
    recipient = _recipient(0x42)
    amount = 80_000_000
    address = net.address(BTC_CHAIN, recipient)
    txid, vout = net.miner.pay(address, amount)
    did = deposit_id(BTC_CHAIN, txid, vout)
    coordinator, _others = _coordinator(did)
    relayer = net.relayers[coordinator].address
    funds = net.dst.eth.get_balance(relayer)
    net.dst.provider.make_request("anvil_setBalance", [relayer, hex(0)])  # its relay cannot be paid for
    try:
        net.miner.mine(2)
        wait_for("signed", lambda: net.state(coordinator, did) == "signed", procs=net.procs)
        wait_for("relay failed", lambda: any("mint relay failed" in line and did.hex() in line
                                             for line in net.log_text(coordinator, current=True).splitlines()),
                 procs=net.procs)
        assert net.stop(coordinator, signal.SIGKILL) == -signal.SIGKILL
    finally:
        net.dst.provider.make_request("anvil_setBalance", [relayer, hex(funds)])
    assert net.minted_events(did) == []
    net.start(coordinator)
    _mint_once(net, did, "fpBTC", recipient, amount)


# ------------------------------------------------------------------------- a lying chain endpoint

class LyingBitcoinRPC:
    """A JSON-RPC proxy in front of the devnet for one node: it adds a phantom output paying
    ``phantom_address`` to the block at ``phantom_height`` (and answers ``gettxout`` for it), and
    multiplies the value of the real output ``inflate`` by ``factor``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.phantom_address: str | None = None
        self.phantom_height: int | None = None
        self.phantom_value = Decimal("3.00000000")
        self.phantom_txid = "cd" * 32
        self.inflate: tuple[str, int] | None = None
        self.factor = 10
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = urllib.request.Request(proxy.upstream, data=body, method="POST", headers={
                    "Content-Type": "application/json", "Authorization": self.headers.get("Authorization", "")})
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        status, raw = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, raw = e.code, e.read()
                if status == 200:
                    raw = proxy.rewrite(json.loads(body), raw)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def rewrite(self, request: Any, raw: bytes) -> bytes:
        reply = json.loads(raw, parse_float=Decimal)
        if isinstance(request, list):
            reply = [self._one(q, r) for q, r in zip(request, reply, strict=False)]
        else:
            reply = self._one(request, reply)
        return json.dumps(reply, default=lambda d: float(d) if isinstance(d, Decimal) else str(d)).encode()

    def _one(self, request: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        method, params, result = request.get("method"), request.get("params") or [], reply.get("result")
        if method == "getblock" and isinstance(result, dict) and isinstance(result.get("tx"), list):
            if self.phantom_address and result.get("height") == self.phantom_height:
                script = address_to_script(self.phantom_address, REGTEST).hex()
                result["tx"].append({"txid": self.phantom_txid, "vin": [], "vout": [{
                    "n": 0, "value": self.phantom_value,
                    "scriptPubKey": {"hex": script, "address": self.phantom_address, "type": "witness_v0_keyhash"}}]})
            for tx in result["tx"]:
                for out in tx.get("vout", []):
                    if isinstance(tx, dict) and self.inflate == (tx.get("txid"), out.get("n")):
                        out["value"] = out["value"] * self.factor
        elif method == "gettxout" and len(params) >= 2:
            txid, vout = params[0], int(params[1])
            if self.phantom_address and (txid, vout) == (self.phantom_txid, 0) and self.phantom_height is not None:
                tip = int(self._upstream("getblockcount"))
                script = address_to_script(self.phantom_address, REGTEST).hex()
                reply["result"] = {"bestblock": self._upstream("getblockhash", tip),
                                   "confirmations": tip - self.phantom_height + 1, "value": self.phantom_value,
                                   "scriptPubKey": {"hex": script, "address": self.phantom_address}, "coinbase": False}
            elif isinstance(result, dict) and self.inflate == (txid, vout):
                result["value"] = result["value"] * self.factor
        return reply

    def _upstream(self, method: str, *params: Any) -> Any:
        auth = "Basic " + __import__("base64").b64encode(b"tester:secret").decode()
        req = urllib.request.Request(self.upstream, method="POST", headers={
            "Content-Type": "application/json", "Authorization": auth},
            data=json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": list(params)}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["result"]


def test_a_node_whose_chain_endpoint_lies_cannot_make_the_others_sign(net: Net) -> None:
    """Last but one: node3 keeps proposing its phantom deposits (and is refused) from here on."""
    liar = LyingBitcoinRPC(net.rpc_url)  # lives as long as this process: node3 talks to it to the end
    for n in list(net.procs):
        net.stop(n)
    net.write_bridge("node3", btc_rpc=liar.url)
    for n in NODES:  # everyone proposes at once: node3 need not be a deposit's first coordinator
        net.write_bridge(n, coordinator_takeover_seconds=0.0)
        net.start(n)
    phantom_to, inflated_to = _recipient(0x51), _recipient(0x52)
    # only the liar watches these addresses: what the others answer is their own chain view
    liar.phantom_address = net.address(BTC_CHAIN, phantom_to, nodes=("node3",))
    real_amount = 25_000_000
    txid, vout = net.miner.pay(net.address(BTC_CHAIN, inflated_to, nodes=("node3",)), real_amount)
    liar.inflate = (txid, vout)
    liar.phantom_height = _tip(net) + 1
    net.miner.mine(3)
    phantom = deposit_id(BTC_CHAIN, liar.phantom_txid, 0)
    inflated = deposit_id(BTC_CHAIN, txid, vout)
    for did, code in ((phantom, "no_such_output"), (inflated, "amount_inflated")):
        wait_for(f"{code} refused", lambda did=did, code=code: any(
            code in [r["code"] for r in _refusals(net, n, did)] for n in ("node1", "node2")), procs=net.procs)
        assert net.state("node3", did) in ("signing", "confirmed")
    # a few more rounds of proposals (node3 retries every second), then: nobody but the liar co-signed
    wait_for("retried", lambda: sum(len(_refusals(net, n, phantom)) for n in ("node1", "node2")) >= 3,
             procs=net.procs)
    for did in (phantom, inflated):
        for n in ("node1", "node2"):
            assert net.events(n, COSIGNED_EVENT, did) == []
            assert {r["code"] for r in _refusals(net, n, did)} <= {"no_such_output", "amount_inflated"}
        assert net.minted_events(did) == []
        assert net.states(did, ("node1", "node2")) == {"unknown"}
    assert net.balance("fpBTC", phantom_to) == 0 and net.balance("fpBTC", inflated_to) == 0
