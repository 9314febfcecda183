"""Burns become BTC payouts and unpayable burns are refunded (issue 15), through real processes.

The network of ``fp_bridge_net`` (three signer daemons with their bridges, the Bitcoin devnet with
libbitcoinkernel's script checks, two anvils, the Gateway). A holder of fpBTC burns to every
Bitcoin destination type; every node follows the burns on its own, the payout coordinator batches
them into one transaction that every co-signer rebuilt from its own view, and the devnet accepts
and mines it: the outputs are read back from the chain with their exact values. A burn to an
address no node can pay, and one below the minimum withdrawal, are each refunded exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import signal
import sqlite3
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import trio
from eth_account import Account
from fp_bridge_net import (
    BTC_CHAIN,
    BTC_WITHDRAWALS,
    COIN,
    DST_CHAIN,
    ETH_WITHDRAWALS,
    ETHER,
    SRC_CHAIN,
    Attacker,
    Net,
    bridge_network,
    wait_for,
)
from web3 import Web3
from web3.logs import DISCARD

from fusion_prime.bridge.chains.bitcoin.encoding import parse_hash_hex
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn
from fusion_prime.bridge.cli import main as cli_main
from fusion_prime.bridge.config import load_bridge_config
from fusion_prime.bridge.db import open_database
from fusion_prime.bridge.derivation import path_string
from fusion_prime.bridge.orders import EVM_NATIVE_VOUT, deposit_id
from fusion_prime.bridge.payouts import PayoutBurn, PayoutProposal, finalize_payout, plan_payout
from fusion_prime.bridge.requests import PayoutInputRequest, encode
from fusion_prime.bridge.reserves import BitcoinRPCReader, Web3Reader, verify_report
from fusion_prime.bridge.withdrawal_runtime import PAYOUT_REFUSED, build_sides
from fusion_prime.node.phases import load_key_share
from fusion_prime.protocol.addresses import b58check, bech32_segwit, hash160
from fusion_prime.protocol.curve import Point
from fusion_prime.signer.bitcoin import TxOut, address_to_script, finalize_p2wpkh_input, p2wpkh_sighash

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


def test_burns_to_every_destination_type_are_paid_in_payouts_the_chain_accepts(net: Net) -> None:
    """Usually the five burns share one batched payout; on a loaded machine the batch can close
    between two burns (seen beside another suite: two payouts), which is correct too - what must
    hold is that every burn is paid once, to its own script, in a transaction the chain took."""
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
    txid_of = {kind: _paid(net, bid)["txid"] for kind, (_, bid) in burns.items()}
    assert 1 <= len(set(txid_of.values())) <= len(burns)
    for kind, address in _destinations().items():
        tx = net.rpc.getrawtransaction(txid_of[kind], True)
        assert int(tx["confirmations"]) >= 1
        paid = {o["scriptPubKey"]["hex"]: int((Decimal(str(o["value"])) * COIN).to_integral_exact())
                for o in tx["vout"]}
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
    # this one through the CLI, from an account of its own key (as a user would)
    user = Account.create()
    key_file = net.base / "user.key"
    key_file.write_text(user.key.hex())
    net.dst.eth.send_transaction({"from": holder, "to": user.address, "value": 10**18})
    net.tokens["fpBTC"].functions.transfer(user.address, small).transact({"from": holder})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["burn", "--rpc", net.dst.provider.endpoint_uri, "--gateway", net.gateway.address,
                         "--token", net.tokens["fpBTC"].address, "--amount", str(small),
                         "--destination", _destinations()["p2wpkh"], "--key-file", str(key_file)]) == 0
    small_id = bytes.fromhex(json.loads(out.getvalue())["burn_id"][2:])
    # both burns took their tokens (read from the Gateway's own record: the unpayable one's refund
    # may already have landed on a loaded machine, so the holder's balance here proves nothing)
    burned = {bytes(e["args"]["burnId"]): (e["args"]["burner"], int(e["args"]["amount"]))
              for e in net.gateway.events.Burned().get_logs(from_block=0)}
    assert burned[bad_id] == (holder, 5_000_000) and burned[small_id] == (user.address, small)
    refunded = net.gateway.events.Refunded()
    wait_for("both refunded", lambda: net.balance("fpBTC", holder) == before - small
             and net.balance("fpBTC", user.address) == small, procs=net.procs)
    logs = refunded.get_logs(from_block=0)
    ids = [bytes(e["args"]["burnId"]) for e in logs]
    assert ids.count(bad_id) == 1 and ids.count(small_id) == 1
    for bid in (bad_id, small_id):
        wait_for("refund seen everywhere", lambda bid=bid: all(
            (r := net.withdrawal(n, bid)) is not None and r["state"] == "refunded" for n in NODES), procs=net.procs)
        row = net.withdrawal("node1", bid)
        assert row is not None and row["txid"] is None, "a refunded burn was never in a payout"
        with net.bridge("node3") as b:
            status = b.withdrawal(bid)
        assert status.state == "refunded" and status.refund_tx and status.reason, status



def test_an_fpeth_burn_is_paid_in_eth_from_custody_after_the_deposit_is_swept(net: Net) -> None:
    holder = net.dst.eth.accounts[5]
    address = net.address(SRC_CHAIN, holder)
    sent = net.src.eth.send_transaction({"from": net.src.eth.accounts[1], "to": address, "value": 2 * ETHER})
    assert net.src.eth.wait_for_transaction_receipt(sent)["status"] == 1
    net.src.provider.make_request("evm_mine", [])  # the second confirmation
    did = deposit_id(SRC_CHAIN, bytes(sent), EVM_NATIVE_VOUT)
    wait_for("fpETH minted", lambda: len(net.minted_events(did)) == 1, procs=net.procs)
    wait_for("minted everywhere", lambda: net.states(did) == {"minted"}, procs=net.procs)
    # the coordinator sweeps the minted deposit address into custody (it keeps back only gas)
    wait_for("deposit swept", lambda: net.src.eth.get_balance(address) < ETHER // 100, procs=net.procs)
    payee = Account.create().address
    _, bid = net.burn("fpETH", holder, ETHER, bytes.fromhex(payee[2:]))
    fee = ETH_WITHDRAWALS["withdrawal_fee"]
    wait_for("ETH paid", lambda: net.src.eth.get_balance(payee) > 0, procs=net.procs)
    assert net.src.eth.get_balance(payee) == ETHER - fee
    wait_for("confirmed everywhere", lambda: all(
        (r := net.withdrawal(n, bid)) is not None and r["state"] in ("broadcast", "confirmed") for n in NODES),
        procs=net.procs)
    row = next(r for n in NODES if (r := net.withdrawal(n, bid)) and r["txid"])
    tx = net.src.eth.get_transaction(row["txid"] if row["txid"].startswith("0x") else "0x" + row["txid"])
    assert Web3.to_checksum_address(tx["to"]) == payee and int(tx["value"]) == ETHER - fee
    # paid from the custody address, which every node derives alone; the deposit address is empty
    assert net.src.eth.get_balance(tx["from"]) > 0 and Web3.to_checksum_address(tx["from"]) != address


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


# ----------------------------------------------------------------------- batching, bumps, crashes


def _coordinator(net: Net) -> str:
    asset = net.tokens["fpBTC"].address
    found = wait_for("a payout coordinator", lambda: [n for n in NODES if net.status(n).get(
        "withdrawals", {}).get(asset, {}).get("coordinating")], procs=net.procs)
    return found[0]


def _archive(net: Net, node_id: str) -> list[dict[str, Any]]:
    path = net.base / node_id / "bridge.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM payout_archive ORDER BY created_at").fetchall()]


def _mine_until_paid(net: Net, ids: list[bytes]) -> set[str]:
    def all_paid() -> bool:
        if all(_paid(net, bid) for bid in ids):
            return True
        net.miner.mine(1)
        return False

    wait_for("every burn paid and confirmed", all_paid, procs=net.procs)
    return {_paid(net, bid)["txid"] for bid in ids}


def test_ten_burns_in_one_block_are_paid_in_one_transaction(net: Net) -> None:
    holder = net.dst.eth.accounts[9]
    _fund(net, holder, COIN)
    token = net.tokens["fpBTC"].address
    destination = _destinations()["p2wsh"].encode()
    net.dst.provider.make_request("evm_setAutomine", [False])
    try:
        hashes = [net.gateway.functions.burn(token, 1_000_000 + i, destination).transact({"from": holder})
                  for i in range(10)]
        net.dst.provider.make_request("evm_mine", [])
    finally:
        net.dst.provider.make_request("evm_setAutomine", [True])
    receipts = [net.dst.eth.wait_for_transaction_receipt(h) for h in hashes]
    assert len({r["blockNumber"] for r in receipts}) == 1 and all(r["status"] == 1 for r in receipts)
    ids = [bytes(net.gateway.events.Burned().process_receipt(r, errors=DISCARD)[0]["args"]["burnId"])
           for r in receipts]
    txids = _mine_until_paid(net, ids)
    assert len(txids) == 1, txids
    tx = net.rpc.getrawtransaction(txids.pop(), True)
    script = address_to_script(_destinations()["p2wsh"], "regtest").hex()
    values = sorted(int((Decimal(str(o["value"])) * COIN).to_integral_exact()) for o in tx["vout"]
                    if o["scriptPubKey"]["hex"] == script)
    assert values == [1_000_000 + i - FEE for i in range(10)]


def test_a_stuck_payout_is_bumped_on_the_same_inputs_and_confirms_once(net: Net) -> None:
    net.restart_all(btc={"stuck_after_seconds": 3})
    try:
        holder = net.dst.eth.accounts[1]
        _fund(net, holder, COIN)
        coordinator = _coordinator(net)
        _, bid = net.burn("fpBTC", holder, 25_000_000, _destinations()["p2tr"].encode())
        # no block while the payout waits: it is stuck until bumped at least once
        wait_for("a bump", lambda: len([p for p in _archive(net, coordinator) if bid.hex() in json.dumps(p["burn_ids"])
                                        and p["raw"]]) >= 2, procs=net.procs)
        variants = [p for p in _archive(net, coordinator) if "0x" + bid.hex() in p["burn_ids"]]
        assert len({json.dumps(p["inputs"]) for p in variants}) == 1, "every variant spends the same inputs"
        assert all(p["replaces"] for p in variants[1:]) and variants[0]["replaces"] is None
        fees = [int(p["fee"]) for p in variants]
        assert fees == sorted(fees) and fees[-1] > fees[0], fees
        (txid,) = _mine_until_paid(net, [bid])
        assert txid in {p["txid"] for p in variants}
        mined = [p["txid"] for p in variants if _in_chain(net, p["txid"])]
        assert mined == [txid], "exactly one variant confirmed"
        tx = net.rpc.getrawtransaction(txid, True)
        script = address_to_script(_destinations()["p2tr"], "regtest").hex()
        assert [int((Decimal(str(o["value"])) * COIN).to_integral_exact()) for o in tx["vout"]
                if o["scriptPubKey"]["hex"] == script] == [25_000_000 - FEE]
    finally:
        net.restart_all(btc={})


def _in_chain(net: Net, txid: str) -> bool:
    try:
        return int(net.rpc.getrawtransaction(txid, True).get("confirmations", 0)) >= 1
    except Exception:  # unknown to the node: a conflicted variant
        return False


def test_a_coordinator_killed_while_signing_pays_the_identical_transaction_after_restart(net: Net) -> None:
    holder = net.dst.eth.accounts[2]
    _fund(net, holder, COIN)
    coordinator = _coordinator(net)
    others = [n for n in NODES if n != coordinator]
    # the co-signers are away: the coordinator plans, archives and waits in its sign sessions
    for n in others:
        net.stop(n)
    _, bid = net.burn("fpBTC", holder, 33_000_000, _destinations()["p2pkh"].encode())
    planned = wait_for("the payout planned", lambda: [p for p in _archive(net, coordinator)
                                                      if "0x" + bid.hex() in p["burn_ids"]], procs=net.procs)
    assert len(planned) == 1 and not planned[0]["raw"], "planned, not signed"
    net.stop(coordinator, signal.SIGKILL)
    for n in others:
        net.start(n)
    net.start(coordinator)
    (txid,) = _mine_until_paid(net, [bid])
    assert txid == planned[0]["txid"], "the retry signed the identical transaction"



# ----------------------------------------------------------------------- proof of reserves


def test_a_proof_of_reserves_built_by_the_network_verifies_and_a_tampered_one_does_not(net: Net) -> None:
    """A node builds the report over the Bridge API: one attestation per custody and minted-deposit
    address, each signed by the group key only after every participant derived the address and
    recomputed the digest itself. An independent verifier (its own chain connections) accepts it;
    a raised balance, a swapped signature and an understated supply are each caught."""
    with net.bridge("node2") as b:
        report = b.prove_reserves()
    readers = {BTC_CHAIN: BitcoinRPCReader(BitcoinRPC(net.rpc_url, "tester", "secret")), SRC_CHAIN: Web3Reader(net.src),
               DST_CHAIN: Web3Reader(net.dst)}
    assert verify_report(report, readers) == []
    data = json.loads(report)
    btc = next(a for a in data["assets"] if a["source_chain"] == BTC_CHAIN)
    assert len(btc["addresses"]) >= 2 and any(a["role"] == "custody" for a in btc["addresses"])
    assert any(net.events(n, "attestation-cosigned") for n in ("node1", "node3")), "participants co-signed"

    def tampered(change: Callable[[dict[str, Any]], None]) -> list[str]:
        copy = json.loads(report)
        change(next(a for a in copy["assets"] if a["source_chain"] == BTC_CHAIN))
        return verify_report(json.dumps(copy, sort_keys=True, separators=(",", ":")), readers)

    def raise_balance(asset: dict[str, Any]) -> None:
        entry = next(a for a in asset["addresses"] if a.get("utxos"))
        entry["utxos"][0]["value"] = str(int(entry["utxos"][0]["value"]) + 1)
        entry["balance"] = str(int(entry["balance"]) + 1)

    def swap_signatures(asset: dict[str, Any]) -> None:
        a, b = asset["addresses"][:2]
        a["signature"], b["signature"] = b["signature"], a["signature"]

    def understate_supply(asset: dict[str, Any]) -> None:
        asset["supply"]["amount"] = str(int(asset["supply"]["amount"]) - 1)

    for change in (raise_balance, swap_signatures, understate_supply):
        assert tampered(change), change.__name__


# ----------------------------------------------------------------------- custody made short


def test_custody_moved_out_behind_the_bridges_back_halts_mints_and_payouts(net: Net) -> None:
    """An operator's admin client signs a custody coin away through the wallet API (not through the
    bridge). Every node's solvency check sees custody below supply + burns in flight: it reports
    it, pauses the Gateway with a group-signed Pause, and refuses to co-sign any mint or payout.
    (Last in this module: it leaves the bridge halted.)"""
    net.restart_all(btc={"batch_wait_seconds": 100_000, "payout_takeover_seconds": 100_000})
    holder = net.dst.eth.accounts[4]
    _fund(net, holder, COIN)
    _, waiting_burn = net.burn("fpBTC", holder, 30_000_000, _destinations()["p2wpkh"].encode())
    wait_for("the burn queued everywhere", lambda: all(
        (r := net.withdrawal(n, waiting_burn)) is not None and r["state"] == "queued" for n in NODES),
        procs=net.procs)
    asset = net.tokens["fpBTC"].address
    assert all(net.status(n)["withdrawals"][asset]["solvent"] for n in NODES)
    # the theft: the largest unspent custody coin, signed away by the admin wallet client
    with contextlib.closing(sqlite3.connect(f"file:{net.base / 'node2' / 'bridge.sqlite3'}?mode=ro", uri=True)) as c:
        rows = c.execute("SELECT txid, vout, value, path, public_key FROM custody_coins").fetchall()
    unspent = [r for r in rows if net.rpc.gettxout(r[0], r[1], True)]
    txid, vout, value, path, pubkey = max(unspent, key=lambda r: int(r[2]))
    tx = Tx(2, [TxIn(OutPoint(parse_hash_hex(txid), vout), sequence=0xFFFFFFFD)],
            [TxOut(int(value) - 1_000, net.miner.script)])
    digest = p2wpkh_sighash(tx, 0, bytes.fromhex(pubkey), int(value))
    with net.wallet("node1") as w:
        sig = w.sign(net.key_id, digest, path_string(tuple(json.loads(path))))
    finalize_p2wpkh_input(tx, 0, bytes.fromhex(pubkey), sig.r, sig.s)
    net.rpc.sendrawtransaction(tx.serialize().hex())
    net.miner.mine(1)
    wait_for("every node finds custody short", lambda: all(
        not net.status(n).get("withdrawals", {}).get(asset, {}).get("solvent", True) for n in NODES),
        procs=net.procs)
    wait_for("the Gateway paused", lambda: bool(net.gateway.functions.paused().call()), procs=net.procs)
    reason = net.status("node2")["withdrawals"][asset]["solvency_reason"]
    assert "short by" in reason, reason
    # a new deposit is not minted: every node refuses the mint as insolvent
    txid2, vout2 = net.miner.pay(net.address(BTC_CHAIN, holder), 20_000_000)
    did = deposit_id(BTC_CHAIN, txid2, vout2)
    net.miner.mine(2)
    wait_for("the mint refused as insolvent", lambda: any(
        e.get("code") == "insolvent" for n in NODES for e in net.events(n, "mint-refused", did)), procs=net.procs)
    assert net.minted_events(did) == []
    # the waiting burn is not paid: batching is allowed again, and every payout is refused
    net.restart_all(btc={"batch_wait_seconds": 0})
    wait_for("the payout refused as insolvent", lambda: any(
        e.get("code") == "insolvent" for n in NODES for e in net.events(n, "payout-refused", waiting_burn))
        or any("insolvent" in (net.withdrawal(n, waiting_burn) or {}).get("reason", "") for n in NODES)
        or "insolvent" in net.log_text(_coordinator(net), current=True), procs=net.procs)
    assert all((net.withdrawal(n, waiting_burn) or {}).get("state") in ("queued", "signing") for n in NODES)
    assert not [p for n in NODES for p in _archive(net, n) if "0x" + waiting_burn.hex() in p["burn_ids"]
                and p["raw"]], "nothing signed for the burn"
