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
from collections.abc import Iterator
from decimal import Decimal

import pytest
from fp_bridge_net import BTC_CHAIN, BTC_WITHDRAWALS, COIN, Net, bridge_network, wait_for

from fusion_prime.bridge.orders import deposit_id
from fusion_prime.protocol.addresses import b58check, bech32_segwit, hash160
from fusion_prime.protocol.curve import Point
from fusion_prime.signer.bitcoin import address_to_script

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
