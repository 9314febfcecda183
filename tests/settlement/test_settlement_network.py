"""Prime settlement through the real processes (issue 16): three signer daemons with their bridges,
the Bitcoin devnet (libbitcoinkernel), two anvils, the Gateway and the checkpoint registry.

Two clients fund custody accounts with real deposits (BTC on the devnet, ETH on the source anvil),
trade BTC against ETH gross and in netting cycles through the Settlement API of *different* nodes,
and every node's replica, every client's balances and the group-signed checkpoint (verified here
with an independent EIP-712 implementation, eth-account, and read back from the registry
contract) agree. Then the rules, each through the API: a forged and a missing affirmation, a
double-spend of one balance across two trades, a replayed instruction, a trade past its deadline,
a disputed trade; a node whose replica was edited on disk refuses the next checkpoint, is named by
the coordinator, and rebuilds itself from the signed batch log; a killed node catches up.
"""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from fp_bridge_net import ADMIN, BTC_CHAIN, BTC_WITHDRAWALS, COIN, ETHER, Net, bridge_network, wait_for

from fusion_prime.bridge.settlement import checkpoint as cp
from fusion_prime.bridge.settlement.client import SettlementRejected
from fusion_prime.bridge.settlement.instructions import AFFIRM, InstructionBody, SignedInstruction
from fusion_prime.bridge.settlement.publish import published_root
from fusion_prime.protocol.addresses import bech32_segwit, hash160
from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.identity import PartyIdentity

pytestmark = pytest.mark.xdist_group(name="bridge-network")

NODES = ("node1", "node2", "node3")
SETTLEMENT = {"cycle_seconds": 4, "dispute_window_seconds": 5, "snapshot_every": 1, "batch_interval_seconds": 0.05}
ALICE, BOB, CAROL = PartyIdentity.generate(), PartyIdentity.generate(), PartyIdentity.generate()
BTC_IN = COIN  # alice deposits 1 BTC
ETH_IN = 5 * ETHER  # bob deposits 5 ETH


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with bridge_network(tmp_path_factory.mktemp("settlement"), settlement=SETTLEMENT) as n:
        yield n


def _balances(net: Net, who: PartyIdentity, node: str) -> dict[str, dict[str, int]]:
    with net.settlement(node, who) as c:
        return c.balances()


def _everywhere(net: Net, who: PartyIdentity) -> list[dict[str, dict[str, int]]]:
    return [_balances(net, who, n) for n in NODES]


def _status(net: Net, node: str) -> dict[str, Any]:
    with net.settlement(node, ALICE) as c:
        return c.status()


def _head(net: Net, node: str) -> int:
    """``node``'s ledger head, or -1 while it is (re)starting: its API answers before its ledger
    runs (no ``head`` yet), or not at all for a moment."""
    try:
        return int(_status(net, node).get("head", -1))
    except grpc.RpcError:
        return -1


def _heads_equal(net: Net) -> int:
    heads = {_status(net, n)["head"] for n in NODES}
    return heads.pop() if len(heads) == 1 else 0


def _trade(net: Net, node: str, trade_id: bytes, who: PartyIdentity = ALICE) -> Any:
    with net.settlement(node, who) as c:
        return c.trade(trade_id)


def _signer(net: Net) -> str:
    with net.wallet() as w:
        return w.public_key(net.key_id, "m").ethereum_address


def _signed_checkpoint(net: Net, node: str, cycle: int) -> Any:
    with net.settlement(node, ALICE) as c:
        try:
            r = c.checkpoint(cycle)
        except grpc.RpcError:
            return None
    return r if r.signature else None


def _fund(net: Net) -> None:
    """Alice deposits BTC and bob ETH, each into the address its account was given by a node."""
    with net.settlement("node2", ALICE) as a, net.settlement("node3", BOB) as b, \
            net.settlement("node1", CAROL) as c:
        for client, label in ((a, "alice desk"), (b, "bob desk"), (c, "carol desk")):
            client.open_account(label)
        btc_address = a.deposit_address("BTC").address
        eth_address = b.deposit_address("ETH").address
    # every node derives the same account address by itself
    for node in NODES:
        with net.settlement(node, ALICE) as a:
            assert a.deposit_address("BTC").address == btc_address
    net.miner.pay(btc_address, BTC_IN)
    net.src.eth.send_transaction({"from": net.src.eth.accounts[1], "to": eth_address, "value": ETH_IN})

    def credited() -> bool:
        net.miner.mine(1)
        net.src.provider.make_request("anvil_mine", [1])
        time.sleep(0.5)
        return all(b["BTC"]["balance"] == BTC_IN for b in _everywhere(net, ALICE)) and \
            all(b["ETH"]["balance"] == ETH_IN for b in _everywhere(net, BOB))
    wait_for("both deposits credited at every node", credited, procs=net.procs)


@pytest.fixture(scope="module")
def funded(net: Net) -> Net:
    _fund(net)
    return net


def test_deposits_credit_accounts_not_mints(funded: Net) -> None:
    net = funded
    # credited into custody accounts, never minted as wrapped tokens
    assert net.tokens["fpBTC"].functions.totalSupply().call() == 0
    assert net.tokens["fpETH"].functions.totalSupply().call() == 0
    for b in _everywhere(net, ALICE):
        assert b["BTC"] == {"balance": BTC_IN, "held": 0, "available": BTC_IN}
    # every replica reaches the same head (a follower may be one long-poll behind the coordinator:
    # seen beside another suite, so waited for, not read once)
    wait_for("replicas in step", lambda: _heads_equal(net))


def test_gross_trade_moves_every_leg_at_once_on_every_replica(funded: Net) -> None:
    net = funded
    before_a, before_b = _balances(net, ALICE, "node1"), _balances(net, BOB, "node1")
    legs = [(ALICE.public_key, "BTC", -10_000_000), (BOB.public_key, "BTC", 10_000_000),
            (ALICE.public_key, "ETH", ETHER), (BOB.public_key, "ETH", -ETHER)]
    with net.settlement("node1", ALICE) as a, net.settlement("node3", BOB) as b:
        tid = bytes(a.submit_trade(legs, mode="gross", reference="OTC-1").ref)
        a.affirm(tid)
        assert a.trade(tid).status == "pending"
        assert a.balances()["BTC"]["held"] == 10_000_000  # alice's delivery is held, nothing moved
        b.affirm(tid)
    wait_for("the trade settled everywhere", lambda: all(_trade(net, n, tid).status == "settled" for n in NODES))
    for node in NODES:
        a_now, b_now = _balances(net, ALICE, node), _balances(net, BOB, node)
        assert a_now["BTC"]["balance"] == before_a["BTC"]["balance"] - 10_000_000
        assert a_now["ETH"]["balance"] == before_a["ETH"]["balance"] + ETHER
        assert b_now["BTC"]["balance"] == before_b["BTC"]["balance"] + 10_000_000
        assert b_now["ETH"]["balance"] == before_b["ETH"]["balance"] - ETHER
        assert a_now["BTC"]["held"] == 0


def test_netting_cycle_settles_net_positions_and_the_group_signs_the_checkpoint(funded: Net) -> None:
    net = funded
    start = {p: _balances(net, p, "node1") for p in (ALICE, BOB)}
    expected = {(p, a): start[p][a]["balance"] for p in (ALICE, BOB) for a in ("BTC", "ETH")}
    tids, raws, affirms = [], [], []
    with net.settlement("node2", ALICE) as a, net.settlement("node3", BOB) as b:
        for i in range(12):
            btc, eth = 1_000_000 * (i + 1), ETHER // 100 * (i + 1)
            seller, buyer = (ALICE, BOB) if i % 3 else (BOB, ALICE)  # both directions: only the net moves
            legs = [(seller.public_key, "BTC", -btc), (buyer.public_key, "BTC", btc),
                    (seller.public_key, "ETH", eth), (buyer.public_key, "ETH", -eth)]
            raws.append(a.trade_bytes(legs, mode="net", reference=f"N-{i}"))
            for p, q in ((seller, -btc), (buyer, btc)):
                expected[(p, "BTC")] += q
            for p, q in ((seller, eth), (buyer, -eth)):
                expected[(p, "ETH")] += q
        # one bulk upload (one batch, so one cycle): the submissions, then both sides' affirmations
        tids = [SignedInstruction.from_bytes(raw).body.new_trade_id for raw in raws]
        # alice's sales matched first: bob's BTC sales (and alice's ETH for them) are then covered
        # by matched receipts, whatever the two held before this test
        for i in sorted(range(len(tids)), key=lambda i: i % 3 == 0):
            affirms += [a.affirm_bytes(tids[i]), b.affirm_bytes(tids[i])]
        answers = b.submit_many(raws + affirms)
        assert all(r.accepted for r in answers), [r.reason for r in answers]
        assert len({r.batch_seq for r in answers}) == 1
    wait_for("the cycle settled", lambda: {_trade(net, "node1", t).status for t in tids} == {"settled"})
    cycle = _trade(net, "node1", tids[0]).cycle
    assert {_trade(net, n, t).cycle for t in tids for n in NODES} == {cycle}
    wait_for("every node applied the cycle", lambda: all(
        {_trade(net, n, t).status for t in tids} == {"settled"} for n in NODES))
    for node in NODES:
        for p in (ALICE, BOB):
            b = _balances(net, p, node)
            assert (b["BTC"]["balance"], b["ETH"]["balance"]) == (expected[(p, "BTC")], expected[(p, "ETH")])

    # the checkpoint: every node computed the same, the group signed it, the registry holds it
    signed = wait_for("the cycle's checkpoint signed", lambda: _signed_checkpoint(net, "node1", cycle))
    raw = bytes(signed.checkpoint)
    wait_for("followers adopt the signature", lambda: all(_signed_checkpoint(net, n, cycle) for n in NODES))
    assert {bytes(_signed_checkpoint(net, n, cycle).checkpoint) for n in NODES} == {raw}
    checkpoint = cp.Checkpoint.from_bytes(raw)
    registry = net.overrides["node1"]["settlement"]["registry"]
    message = encode_typed_data(full_message={
        "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                   {"name": "chainId", "type": "uint256"},
                                   {"name": "verifyingContract", "type": "address"}],
                  "Checkpoint": [{"name": "cycle", "type": "uint64"}, {"name": "prevRoot", "type": "bytes32"},
                                 {"name": "root", "type": "bytes32"}, {"name": "batchSeq", "type": "uint64"},
                                 {"name": "batchHash", "type": "bytes32"}, {"name": "totalsHash", "type": "bytes32"},
                                 {"name": "timeMs", "type": "uint64"}]},
        "primaryType": "Checkpoint",
        "domain": {"name": "FusionPrimeSettlement", "version": "1", "chainId": 31338, "verifyingContract": registry},
        "message": {"cycle": checkpoint.cycle, "prevRoot": checkpoint.prev_root, "root": checkpoint.root,
                    "batchSeq": checkpoint.batch_seq, "batchHash": checkpoint.batch_hash,
                    "totalsHash": checkpoint.totals_hash(), "timeMs": checkpoint.time_ms}})
    assert Account.recover_message(message, signature=bytes(signed.signature)) == _signer(net)
    totals = checkpoint.totals_map()
    assert totals["BTC"][0] == BTC_IN and totals["ETH"][0] == ETH_IN  # custody = the sum of all balances
    wait_for("published on the destination chain",
             lambda: published_root(net.dst, registry, cycle) == checkpoint.root)

    # a client's own Merkle proof against the signed root, verified offline
    with net.settlement("node3", ALICE) as a:
        proof_file = cp.CheckpointFile.from_json(a.proof())
    assert cp.verify_signed_checkpoint(proof_file.signed, _signer(net))
    assert {p.leaf.asset: p.leaf.balance for p in proof_file.proofs} == {
        "BTC": _balances(net, ALICE, "node1")["BTC"]["balance"],
        "ETH": _balances(net, ALICE, "node1")["ETH"]["balance"]} or proof_file.signed.checkpoint.cycle > cycle
    for proof in proof_file.proofs:
        cp.check_proof(proof_file.signed.checkpoint, proof)

    # the back office's report: admin only, JSON and CSV of the same net positions
    with net.settlement("node2", ADMIN) as admin:
        report = admin.cycle_report(cycle)
    data = json.loads(report.json)
    assert sorted(data["settled_net"]) == sorted(t.hex() for t in tids)
    nets = {(n["party"], n["asset"]): int(n["net"]) for n in data["net_positions"]}
    assert nets[(ALICE.public_key.hex(), "BTC")] == expected[(ALICE, "BTC")] - start[ALICE]["BTC"]["balance"]
    assert sum(v for (_, asset), v in nets.items() if asset == "BTC") == 0
    assert report.csv.count("\nnet,") == len(nets) and data["checkpoint"]["root"] == "0x" + checkpoint.root.hex()
    with net.settlement("node2", ALICE) as a, pytest.raises(grpc.RpcError) as denied:
        a.cycle_report(cycle)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_rules_hold_through_the_api(funded: Net) -> None:
    net = funded
    mallory = PartyIdentity.generate()
    with net.settlement("node1", ALICE) as a, net.settlement("node2", BOB) as b, \
            net.settlement("node3", mallory) as m:
        avail = a.balances()["BTC"]["available"]
        legs = [(ALICE.public_key, "BTC", -(avail // 2 + 1)), (BOB.public_key, "BTC", avail // 2 + 1),
                (ALICE.public_key, "ETH", 1), (BOB.public_key, "ETH", -1)]
        t1 = bytes(a.submit_trade(legs, mode="gross", reference="DS-1").ref)
        t2 = bytes(a.submit_trade(legs, mode="gross", reference="DS-2").ref)
        a.affirm(t1)
        # a double-spend of one balance across two trades: the second affirmation holds nothing
        with pytest.raises(SettlementRejected, match="insufficient"):
            a.affirm(t2)
        assert a.balances()["BTC"]["held"] == avail // 2 + 1

        # a forged affirmation: mallory signs an affirmation naming bob as the client
        forged = InstructionBody(AFFIRM, BOB.public_key, "forged-1", int(time.time() * 1000), trade_id=t1)
        raw = SignedInstruction(forged, mallory.sign(forged.digest_to_sign())).to_bytes()
        with pytest.raises(grpc.RpcError) as bad:
            m.submit(raw)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # a non-party's own signed affirmation is rejected by the ledger
        with pytest.raises(SettlementRejected, match=r"no account|not a party"):
            m.affirm(t1)
        assert a.trade(t1).status == "pending"

        # a replayed instruction: the first outcome, nothing changes
        first = a.cancel_bytes(t2, key="cancel-ds2")
        r1, r2 = a.submit(first), a.submit(first)
        assert r1.accepted and r2.accepted and r2.duplicate and not r1.duplicate and r1.ref == r2.ref
        again = a.submit(a._body("cancel", "cancel-ds2", trade_id=t1), check=False)  # same key, another body
        assert not again.accepted and "idempotency key" in again.reason
        assert a.trade(t1).status == "pending" and a.trade(t2).status == "cancelled"

        # a missing affirmation: bob never affirms t1; past its deadline it is unwound, the hold released
        short = [(ALICE.public_key, "BTC", -5), (BOB.public_key, "BTC", 5), (ALICE.public_key, "ETH", 1),
                 (BOB.public_key, "ETH", -1)]
        t3 = bytes(a.submit_trade(short, mode="gross", deadline_ms=int(time.time() * 1000) + 3000).ref)
        a.affirm(t3)
        wait_for("the unaffirmed trade expired", lambda: _trade(net, "node2", t3).status == "expired")
        a.cancel(t1)
        assert a.balances()["BTC"]["held"] == 0
        with pytest.raises(SettlementRejected, match="expired"):
            b.affirm(t3)

        # a disputed trade: cut into the cycle, disputed inside the window, not settled; both
        # affirm again and it settles in a later cycle
        before = a.balances()["BTC"]["balance"]
        legs = [(ALICE.public_key, "BTC", -7_000), (BOB.public_key, "BTC", 7_000),
                (ALICE.public_key, "ETH", 3), (BOB.public_key, "ETH", -3)]
        t4 = bytes(a.submit_trade(legs, mode="net", reference="DISPUTE").ref)
        a.affirm(t4)
        b.affirm(t4)
        wait_for("cut into a cycle", lambda: a.trade(t4).status == "cut")
        b.dispute(t4, "price not as agreed")
        assert a.trade(t4).status == "disputed" and a.balances()["BTC"]["held"] == 0
        cut_cycle = _status(net, "node1")["awaiting_final"]
        wait_for("that cycle finalised", lambda: _status(net, "node1")["awaiting_final"] != cut_cycle
                 or _status(net, "node1")["open_cycle"] > cut_cycle + 1)
        assert a.trade(t4).status == "disputed" and a.balances()["BTC"]["balance"] == before
        a.submit(a.affirm_bytes(t4, key="reaffirm-a"))
        b.submit(b.affirm_bytes(t4, key="reaffirm-b"))
        wait_for("settled after both re-affirmed", lambda: a.trade(t4).status == "settled")
        assert a.balances()["BTC"]["balance"] == before - 7_000


def _tamper_snapshot(net: Net, node: str) -> None:
    """Move 12,345 sat of alice's BTC to bob in the node's newest replica snapshot, as an insider with
    file access could (the total is unchanged: no solvency alarm, only a different ledger)."""
    path = net.devnode(node).folder / "bridge.sqlite3"
    with sqlite3.connect(path) as db:
        seq, raw = db.execute("SELECT seq, snapshot FROM settlement_snapshots ORDER BY seq DESC LIMIT 1").fetchone()
        snap = json.loads(raw)
        moved = 0
        for row in snap["accounts"]:
            if row[1] == "BTC" and row[0] in (ALICE.public_key.hex(), BOB.public_key.hex()):
                row[2] = str(int(row[2]) + (-12_345 if row[0] == ALICE.public_key.hex() else 12_345))
                moved += 1
        assert moved == 2, "alice and bob both hold BTC by now"
        db.execute("UPDATE settlement_snapshots SET snapshot = ? WHERE seq = ?",
                   (json.dumps(snap, sort_keys=True, separators=(",", ":")).encode(), seq))


def test_tampered_replica_refuses_is_named_and_resyncs(funded: Net) -> None:
    net = funded
    with net.settlement("node1", ALICE) as a, net.settlement("node1", BOB) as b:  # bob holds BTC too
        legs = [(ALICE.public_key, "BTC", -50_000), (BOB.public_key, "BTC", 50_000), (ALICE.public_key, "ETH", 1),
                (BOB.public_key, "ETH", -1)]
        tid = bytes(a.submit_trade(legs, mode="gross", reference="BEFORE-TAMPER").ref)
        a.affirm(tid)
        b.affirm(tid)
    wait_for("replicas in step", lambda: _heads_equal(net))
    net.stop("node3")
    _tamper_snapshot(net, "node3")
    net.start("node3")
    wait_for("node3 serves its (edited) replica", lambda: _balances(net, ALICE, "node3")["BTC"]["balance"]
             == _balances(net, ALICE, "node1")["BTC"]["balance"] - 12_345)
    with net.settlement("node2", ALICE) as a, net.settlement("node2", BOB) as b:
        legs = [(ALICE.public_key, "BTC", -1_000), (BOB.public_key, "BTC", 1_000), (ALICE.public_key, "ETH", 2),
                (BOB.public_key, "ETH", -2)]
        tid = bytes(a.submit_trade(legs, mode="net", reference="AFTER-TAMPER").ref)
        a.affirm(tid)
        b.affirm(tid)
    wait_for("the cycle settled", lambda: _trade(net, "node1", tid).status == "settled")
    cycle = _trade(net, "node1", tid).cycle
    # the group still signs (node1 + node2); node3 refused and the coordinator names it
    wait_for("checkpoint signed without node3", lambda: _signed_checkpoint(net, "node1", cycle))
    named = wait_for("node3 named divergent", lambda: [e for e in _status(net, "node1")["divergence_log"]
                                                         if e["node"] == "node3"])
    assert "root" in named[0]["reason"]
    assert any(e["node"] == "node3" for e in net.events("node1", "settlement.divergent"))
    # node3 adopts the group's checkpoint, sees its root differ, rebuilds from the signed batch log
    wait_for("node3 rebuilt", lambda: net.events("node3", "settlement.resynced"))
    wait_for("node3's replica is the network's again", lambda: _balances(net, ALICE, "node3")
             == _balances(net, ALICE, "node1"))
    wait_for("node3's checkpoint is the signed one", lambda: (s := _signed_checkpoint(net, "node3", cycle))
             is not None and bytes(s.checkpoint) == bytes(_signed_checkpoint(net, "node1", cycle).checkpoint))


def test_withdrawal_from_an_account_is_paid_on_bitcoin(funded: Net) -> None:
    """Alice withdraws BTC from her account: every node's payout machinery pays it from custody
    (the credited deposit), the devnet mines it, and the ledger records it paid everywhere."""
    net = funded
    destination = bech32_segwit("bcrt", 0, hash160((Point.generator() * 0xA11CE).to_bytes()))
    amount = 3_000_000
    wait_for("node3's replica is the network's",
             lambda: _balances(net, ALICE, "node3") == _balances(net, ALICE, "node1"))
    with net.settlement("node3", ALICE) as a:
        before = a.balances()["BTC"]["balance"]
        wid = bytes(a.withdraw("BTC", amount, BTC_CHAIN, destination).ref)
        assert a.balances()["BTC"]["balance"] == before - amount  # debited at once, pending

        def paid() -> Any:
            net.miner.mine(1)
            time.sleep(0.5)
            ws = {bytes(w.withdrawal_id): w for w in a.withdrawals()}
            return ws[wid] if ws[wid].status == "paid" else None
        w = wait_for("the withdrawal paid and recorded", paid, procs=net.procs)
    tx = net.rpc.getrawtransaction(w.txid, True)
    outs = [(o["scriptPubKey"].get("address"), round(float(o["value"]) * COIN)) for o in tx["vout"]]
    assert (destination, amount - BTC_WITHDRAWALS["withdrawal_fee"]) in outs
    wait_for("every replica has it paid", lambda: all(
        {bytes(x.withdrawal_id): x.status for x in _withdrawals(net, n)}.get(wid) == "paid" for n in NODES))


def _withdrawals(net: Net, node: str) -> list[Any]:
    with net.settlement(node, ALICE) as a:
        return a.withdrawals()


def test_killed_node_catches_up(funded: Net) -> None:
    net = funded
    net.stop("node2", signal.SIGKILL)
    with net.settlement("node1", ALICE) as a, net.settlement("node3", BOB) as b:
        for i in range(5):
            legs = [(ALICE.public_key, "BTC", -100 - i), (BOB.public_key, "BTC", 100 + i),
                    (ALICE.public_key, "ETH", 1 + i), (BOB.public_key, "ETH", -1 - i)]
            tid = bytes(a.submit_trade(legs, mode="gross", key=f"catch-up-{secrets.token_hex(4)}").ref)
            a.affirm(tid)
            b.affirm(tid)
    head = _status(net, "node1")["head"]
    net.start("node2")
    wait_for("node2 caught up", lambda: _head(net, "node2") >= head)
    assert _balances(net, ALICE, "node2") == _balances(net, ALICE, "node1")
    assert _balances(net, BOB, "node2") == _balances(net, BOB, "node1")
    assert not _status(net, "node2")["halted"]
