"""Burns become BTC payouts and unpayable burns are refunded (issue 15), through real processes.

The network of ``fp_bridge_net`` (three signer daemons with their bridges, the Bitcoin devnet with
libbitcoinkernel's script checks, two anvils, the Gateway). A holder of fpBTC burns to every
Bitcoin destination type; every node follows the burns on its own, the payout coordinator batches
them into one transaction that every co-signer rebuilt from its own view, and the devnet accepts
and mines it: the outputs are read back from the chain with their exact values. A burn to an
address no node can pay, and one below the minimum withdrawal, are each refunded exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import trio
from fp_bridge_net import BTC_CHAIN, BTC_WITHDRAWALS, COIN, Attacker, Net, bridge_network, wait_for

from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.tx import Tx
from fusion_prime.bridge.config import load_bridge_config
from fusion_prime.bridge.db import open_database
from fusion_prime.bridge.orders import deposit_id
from fusion_prime.bridge.payouts import PayoutBurn, PayoutProposal, finalize_payout, plan_payout
from fusion_prime.bridge.requests import PayoutInputRequest, encode
from fusion_prime.bridge.withdrawal_runtime import PAYOUT_REFUSED, build_sides
from fusion_prime.node.phases import load_key_share
from fusion_prime.protocol.addresses import b58check, bech32_segwit, hash160
from fusion_prime.protocol.curve import Point
from fusion_prime.signer.bitcoin import TxOut, address_to_script, p2wpkh_sighash

pytestmark = pytest.mark.xdist_group(name="bridge-network")

FEE = BTC_WITHDRAWALS["withdrawal_fee"]
NODES = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with bridge_network(tmp_path_factory.mktemp("bridge-withdrawals")) as n:
        yield n


def _destinations() -> dict[str, str]:
    """One regtest address of each kind Bitcoin pays (keys and scripts of no one: nobody spends them)."""
    key = Point.generator() * 0x1234567
    script = bytes([0x51])  # OP_TRUE: a P2WSH/P2SH redeem script
    return {
        "p2wpkh": bech32_segwit("bcrt", 0, hash160(key.to_bytes())),
        "p2wsh": bech32_segwit("bcrt", 0, hashlib.sha256(script).digest()),
        "p2tr": bech32_segwit("bcrt", 1, key.to_bytes()[1:]),
        "p2pkh": b58check(b"\x6f" + hash160(key.to_bytes())),
        "p2sh": b58check(b"\xc4" + hash160(script)),
    }


def _fund(net: Net, holder: str, amount: int) -> None:
    txid, vout = net.miner.pay(net.address(BTC_CHAIN, holder), amount)
    did = deposit_id(BTC_CHAIN, txid, vout)
    net.miner.mine(2)
    wait_for("deposit minted", lambda: len(net.minted_events(did)) == 1, procs=net.procs)
    # the Minted log must be at depth at every node before its output is a custody coin there
    wait_for("minted everywhere", lambda: net.states(did) == {"minted"}, procs=net.procs)


def _paid(net: Net, burn_id: bytes) -> dict | None:
    rows = [net.withdrawal(n, burn_id) for n in NODES]
    done = [r for r in rows if r is not None and r["state"] == "confirmed"]
    return done[0] if done else None


def test_burns_to_every_destination_type_are_paid_in_one_batch_the_chain_accepts(net: Net) -> None:
    holder = net.dst.eth.accounts[6]
    _fund(net, holder, 3 * COIN)
    burns = {}
    amounts = {"p2wpkh": 10_000_000, "p2wsh": 20_000_000, "p2tr": 30_000_000, "p2pkh": 40_000_000,
               "p2sh": 50_000_000}
    for kind, address in _destinations().items():
        burns[kind] = net.burn("fpBTC", holder, amounts[kind], address.encode())
    assert net.balance("fpBTC", holder) == 3 * COIN - sum(amounts.values())
    # a block to confirm the payout once it is in the mempool, then the wait for every row
    def all_paid() -> bool:
        if all(_paid(net, bid) for _, bid in burns.values()):
            return True
        net.miner.mine(1)
        return False

    wait_for("every burn paid and confirmed", all_paid, procs=net.procs)
    txids = {_paid(net, bid)["txid"] for _, bid in burns.values()}
    assert len(txids) == 1, f"one batched payout, got {txids}"
    (txid,) = txids
    tx = net.rpc.getrawtransaction(txid, True)
    assert int(tx["confirmations"]) >= 1
    paid = {o["scriptPubKey"]["hex"]: int((Decimal(str(o["value"])) * COIN).to_integral_exact()) for o in tx["vout"]}
    for kind, address in _destinations().items():
        script = address_to_script(address, "regtest").hex()
        assert paid.get(script) == amounts[kind] - FEE, (kind, paid.get(script))
    # every honest node followed the burn and knows it is paid, coordinator or not
    for _, bid in burns.values():
        wait_for("every node sees the payout", lambda bid=bid: all(
            (r := net.withdrawal(n, bid)) is not None and r["state"] in ("broadcast", "confirmed") for n in NODES),
            procs=net.procs)
    # the co-signers archived and recorded what they co-signed
    cosigned = [n for n in NODES if net.events(n, "payout-cosigned", burns["p2tr"][1])]
    assert cosigned, "some participant co-signed the payout after rebuilding it"


def test_an_unpayable_and_a_below_minimum_burn_are_refunded_once(net: Net) -> None:
    holder = net.dst.eth.accounts[7]
    _fund(net, holder, COIN)
    before = net.balance("fpBTC", holder)
    bad = b"bcrt1qnotavalidaddressatallxxxxxxxxxxxxxxxxx"  # passes the Gateway's form check only
    _, bad_id = net.burn("fpBTC", holder, 5_000_000, bad)
    small = FEE + 100  # above the Gateway's minimum burn, below fee + dust
    _, small_id = net.burn("fpBTC", holder, small, _destinations()["p2wpkh"].encode())
    assert net.balance("fpBTC", holder) == before - 5_000_000 - small
    refunded = net.gateway.events.Refunded()
    wait_for("both refunded", lambda: net.balance("fpBTC", holder) == before, procs=net.procs)
    logs = refunded.get_logs(from_block=0)
    ids = [bytes(e["args"]["burnId"]) for e in logs]
    assert ids.count(bad_id) == 1 and ids.count(small_id) == 1
    for bid in (bad_id, small_id):
        wait_for("refund seen everywhere", lambda bid=bid: all(
            (r := net.withdrawal(n, bid)) is not None and r["state"] == "refunded" for n in NODES), procs=net.procs)
        row = net.withdrawal("node1", bid)
        assert row is not None and row["txid"] is None, "a refunded burn was never in a payout"


# ----------------------------------------------------------------------- a malicious coordinator


def test_a_malicious_coordinator_gets_no_signature_for_a_bad_payout(net: Net) -> None:
    """node1, run as an impostor that signs whatever it proposes, offers node2 and node3 payouts
    of a real burn: to another address, for more, at a fee above the band, with change to a
    non-custody address, and a second payout of a burn already paid. Every honest node rebuilds
    the transaction from its own view and refuses each, naming why; the honest payout of the same
    burn through the same path *is* signed, and the devnet accepts it."""
    # no honest payout races the impostor: batches wait (and nobody takes over) for a long time
    slow = {"batch_wait_seconds": 100_000, "payout_takeover_seconds": 100_000}
    net.restart_all(btc=slow)
    holder = net.dst.eth.accounts[8]
    _fund(net, holder, COIN)
    _fund(net, holder, COIN)  # two coins: the second payout of one burn has other coins to spend
    destination = _destinations()["p2wpkh"]
    _, bid = net.burn("fpBTC", holder, 40_000_000, destination.encode())
    wait_for("the burn queued everywhere", lambda: all(
        (r := net.withdrawal(n, bid)) is not None and r["state"] == "queued" for n in NODES), procs=net.procs)
    net.stop("node1")
    attacker = Attacker(net)
    view_side = _side(net, "node2", attacker)
    view, params = view_side.view, view_side.params
    tip = view.tip_height()
    coins = view.custody_coins(tip, None)
    facts = view.burn(bid)
    burn = PayoutBurn(bid, facts.nonce, facts.amount, facts.destination)
    honest = plan_payout([burn], coins, view.fee_estimate(), view.change_script(), params, view_height=tip)
    block = view.block_hash(tip)
    attacker_script = bytes.fromhex("0014") + bytes(range(20))

    def mutated(change: Callable[[Tx], None], rate: Any = None) -> tuple[PayoutProposal, bytes]:
        tx = Tx.from_bytes(honest.unsigned_tx, allow_witness=False)
        change(tx)
        proposal = PayoutProposal(tx.serialize(with_witness=False), honest.burn_ids, tip, block,
                                  rate if rate is not None else honest.fee_rate)
        coin = honest.inputs[0]
        return proposal, p2wpkh_sighash(tx, 0, coin.public_key, coin.value)

    def to_attacker(tx: Tx) -> None:
        tx.vout[0] = TxOut(tx.vout[0].value, attacker_script)

    def more(tx: Tx) -> None:
        tx.vout[0] = TxOut(tx.vout[0].value + 10_000, tx.vout[0].script_pubkey)
        tx.vout[-1] = TxOut(tx.vout[-1].value - 10_000, tx.vout[-1].script_pubkey)

    def change_away(tx: Tx) -> None:
        tx.vout[-1] = TxOut(tx.vout[-1].value, attacker_script)

    def fat_fee(tx: Tx) -> None:
        tx.vout[-1] = TxOut(tx.vout[-1].value - 15_000, tx.vout[-1].script_pubkey)

    cases = {"to_another_address": mutated(to_attacker), "higher_amount": mutated(more),
             "change_not_to_custody": mutated(change_away), "fee_above_band": mutated(fat_fee, rate=20)}
    results: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(attacker.node.run)
            try:
                for name, (proposal, digest) in cases.items():
                    for honest_node in ("node2", "node3"):
                        results[(name, honest_node)] = await attacker.propose_request(
                            honest_node, digest, honest.inputs[0].path,
                            encode(PayoutInputRequest(0, proposal.to_bytes())))
                good = PayoutProposal.of(honest, block)
                results["control"] = await attacker.propose_request(
                    "node2", honest.sighash(0), honest.inputs[0].path, encode(PayoutInputRequest(0, good.to_bytes())))
            finally:
                attacker.node.stop()

    try:
        trio.run(main)
    finally:
        net.start("node1")
    for key, outcome in results.items():
        if key != "control":
            assert not outcome.ok and outcome.output is None, (key, outcome)
    for name in cases:
        for honest_node in ("node2", "node3"):
            codes = [e["code"] for e in net.events(honest_node, PAYOUT_REFUSED, bid)]
            expected = {"fee_above_band": {"fee_out_of_band"}}.get(name, {"rebuilt_different"})
            assert expected & set(codes), (name, honest_node, codes)
    # the control: signed, and the transaction it completes is accepted and pays the burn once
    control = results["control"]
    assert control.ok, control
    tx = finalize_payout(honest, [control.output])
    net.rpc.sendrawtransaction(tx.serialize().hex())
    net.miner.mine(1)
    wait_for("every node sees the burn paid", lambda: all(
        (r := net.withdrawal(n, bid)) is not None and r["state"] in ("broadcast", "confirmed") for n in NODES),
        procs=net.procs)
    # a second payout of the same burn, from the other coin, is refused by both honest nodes
    tip2 = view.tip_height()
    coins2 = view.custody_coins(tip2, None)
    assert coins2 and all(c.txid != honest.inputs[0].txid for c in coins2)
    second = plan_payout([burn], coins2, view.fee_estimate(), view.change_script(), params, view_height=tip2)
    proposal2 = PayoutProposal.of(second, view.block_hash(tip2))
    net.stop("node1")
    attacker = Attacker(net)
    again: dict[str, Any] = {}

    async def second_round() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(attacker.node.run)
            try:
                for honest_node in ("node2", "node3"):
                    again[honest_node] = await attacker.propose_request(
                        honest_node, second.sighash(0), second.inputs[0].path,
                        encode(PayoutInputRequest(0, proposal2.to_bytes())))
            finally:
                attacker.node.stop()

    try:
        trio.run(second_round)
    finally:
        net.start("node1")
        net.restart_all(btc={})
    for honest_node, outcome in again.items():
        assert not outcome.ok, (honest_node, outcome)
        codes = [e["code"] for e in net.events(honest_node, PAYOUT_REFUSED, bid)]
        assert "burn_already_paid" in codes, (honest_node, codes)
    paid = net.rpc.getrawtransaction(tx.txid_hex, True)
    assert int(paid["confirmations"]) >= 1
    view_side.view.db.close()


def _side(net: Net, node_id: str, attacker: Any) -> Any:
    """``node_id``'s own Bitcoin payout side, opened beside its running daemon (its database and
    its chain endpoint: exactly what its authorize hook rebuilds from). The group key and chain
    code come from node1's key share (the impostor holds node1's storage)."""
    share = load_key_share(attacker.node.storage, net.key_id)
    bcfg = load_bridge_config(net.base / node_id / "bridge.toml")
    db = open_database(bcfg.database)
    sides = build_sides(bcfg, group_key=share.group_key, chain_code=share.chain_code,
                        bitcoin=BitcoinRPC(net.rpc_url, "tester", "secret"), db=db)
    return sides[net.tokens["fpBTC"].address]
