"""Prime settlement (issue 16): trades settled per second on one node, and cut-off → signed checkpoint.

``one_node``: the replica's own work per batch, on SQLite and on a real PostgreSQL server —
parse the signed batch (the coordinator's signature and every client signature checked, as a
follower does), apply it to the ledger, store it (batch log + materialised rows, one
transaction). Gross trades: each is a submission and two affirmations, and it settles on the
second. Reported: trades settled per second.

``network``: three bridge daemons (``bridge.localnet``, the same network as the tests), 100
parties funded by real deposits, 10,000 net trades among them submitted and affirmed through the
Settlement API, then the time from the cycle's cut-off (the cutting batch's time) to the group's
signature on the checkpoint (dispute window 0), and the ingestion rate through the API.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))

from fp_guards import HANG_GUARD  # noqa: E402

from fusion_prime.bridge.db import open_database  # noqa: E402
from fusion_prime.bridge.settlement.batch import GENESIS_HASH, Batch, Credit, decode_batch, sign_batch  # noqa: E402
from fusion_prime.bridge.settlement.instructions import (  # noqa: E402
    AFFIRM,
    GROSS,
    OPEN_ACCOUNT,
    SUBMIT_TRADE,
    InstructionBody,
    sign_instruction,
    trade_legs,
)
from fusion_prime.bridge.settlement.ledger import Ledger, LedgerParams  # noqa: E402
from fusion_prime.bridge.settlement.store import SettlementStore  # noqa: E402
from fusion_prime.protocol.identity import PartyIdentity  # noqa: E402

BATCH_TRADES = 600  # 1,800 instructions: the coordinator's batches are about this size under load


def _progress(msg: str) -> None:
    print(f"[bench settlement] {msg}", file=sys.stderr, flush=True)


def _instructions(parties: list[PartyIdentity], n: int, now: int) -> list[list[Any]]:
    """n gross trades (submit + both affirmations), grouped per batch; deterministic amounts."""
    rng = random.Random(7)
    batches, current = [], []
    for i in range(n):
        a, b = rng.sample(parties, 2)
        legs = trade_legs([(a.public_key, "BTC", -1_000), (b.public_key, "BTC", 1_000),
                           (a.public_key, "ETH", 10_000), (b.public_key, "ETH", -10_000)])
        sub = sign_instruction(a, InstructionBody(SUBMIT_TRADE, a.public_key, f"t{i}", now, legs=legs, mode=GROSS,
                                                  deadline_ms=now + 3_600_000))
        tid = sub.body.new_trade_id
        current += [sub] + [sign_instruction(p, InstructionBody(AFFIRM, p.public_key, f"a{i}", now, trade_id=tid))
                            for p in (a, b)]
        if len(current) >= 3 * BATCH_TRADES:
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches


def _one_node(url: str, n_trades: int, parties: int = 100) -> dict[str, Any]:
    db = open_database(url)
    try:
        params = LedgerParams(("BTC", "ETH"), cycle_ms=3_600_000)
        store = SettlementStore(db, params)
        ledger = Ledger(params)
        coordinator = PartyIdentity.generate()
        keys = {"node1": coordinator.public_key}
        now = int(time.time() * 1000)
        ids = [PartyIdentity.generate() for _ in range(parties)]
        setup: list[Any] = [sign_instruction(p, InstructionBody(OPEN_ACCOUNT, p.public_key, "open", now)) for p in ids]
        setup += [Credit(hashlib.sha256(p.public_key + a.encode()).digest(), p.public_key, a, 10**15)
                  for p in ids for a in ("BTC", "ETH")]
        signed_batches = [sign_batch(coordinator, Batch(1, GENESIS_HASH, now, "node1", tuple(setup)))]
        work = _instructions(ids, n_trades, now)
        # the coordinator's side (signing) is not part of a replica's cost: pre-sign every batch
        prev = signed_batches[0].hash
        for i, entries in enumerate(work):
            sb = sign_batch(coordinator, Batch(i + 2, prev, now + i, "node1", tuple(entries)))
            signed_batches.append(sb)
            prev = sb.hash
        raws = [sb.to_bytes() for sb in signed_batches]
        first = decode_batch(raws[0], keys)
        store.append(first, ledger.apply(first.batch), ledger)
        started = time.perf_counter()
        parse = apply = persist = 0.0
        for raw in raws[1:]:
            t0 = time.perf_counter()
            sb = decode_batch(raw, keys)
            t1 = time.perf_counter()
            applied = ledger.apply(sb.batch)
            t2 = time.perf_counter()
            store.append(sb, applied, ledger)
            t3 = time.perf_counter()
            parse, apply, persist = parse + t1 - t0, apply + t2 - t1, persist + t3 - t2
        total = time.perf_counter() - started
        settled = sum(1 for t in ledger.trades.values() if t.status == "settled")
        assert settled == n_trades, f"{settled} of {n_trades} trades settled"
        ledger.check_invariants()
        return {"trades": n_trades, "batches": len(raws) - 1, "seconds": round(total, 3),
                "trades_per_second": round(n_trades / total, 1),
                "seconds_parse_and_verify_signatures": round(parse, 3), "seconds_apply": round(apply, 3),
                "seconds_store": round(persist, 3)}
    finally:
        db.close()


def run(quick: bool = False) -> dict[str, Any]:
    n = 600 if quick else 6_000
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fp-bench-settle-") as tmp:
        _progress(f"one node, SQLite: {n} gross trades ({3 * n} signed instructions)")
        out["one_node_sqlite"] = _one_node(f"sqlite:///{Path(tmp) / 'bench.sqlite3'}", n)
        _progress(f"  {out['one_node_sqlite']['trades_per_second']} trades/s")
    from fp_postgres import PostgresCluster

    cluster = PostgresCluster()
    try:
        cluster.start()
        with cluster.database("bench") as url:
            _progress(f"one node, PostgreSQL: {n} gross trades")
            out["one_node_postgresql"] = _one_node(url, n)
            _progress(f"  {out['one_node_postgresql']['trades_per_second']} trades/s")
    finally:
        cluster.stop()
    out["network"] = _network(quick)
    return out


LEVEL = "128"
QUICK_LEVEL = "test-2048"  # --quick: the section end to end in about a minute, not its figures


def _pay_many(net: Any, addresses: list[str], amount: int) -> str:
    """One Bitcoin transaction paying ``amount`` to each address (the deposits of many accounts)."""
    from fusion_prime.bridge.chains.bitcoin.encoding import REGTEST, address_to_script, parse_hash_hex
    from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
    from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut

    txid, vout, value = net.miner.coins.pop(0)
    outs = [TxOut(amount, address_to_script(a, REGTEST)) for a in addresses]
    change = value - amount * len(addresses) - 50_000
    outs.append(TxOut(change, net.miner.script))
    tx = Tx(2, [TxIn(OutPoint(parse_hash_hex(txid), vout), sequence=0xFFFFFFFD)], outs)
    sign_p2wpkh(tx, 0, net.miner.key.secret, value)
    sent = net.rpc.sendrawtransaction(tx.serialize().hex())
    net.miner.coins.append((sent, len(outs) - 1, change))
    return sent


def _network(quick: bool) -> dict[str, Any]:
    from fp_bridge_net import ADMIN, COIN, ETHER, bridge_network, wait_for

    n_parties, n_trades = (10, 300) if quick else (100, 10_000)
    cycle_seconds = 10 if quick else 90
    level = QUICK_LEVEL if quick else LEVEL
    result: dict[str, Any] = {"level": level, "quick": quick, "parties": n_parties, "trades": n_trades,
                              "cycle_seconds": cycle_seconds, "dispute_window_seconds": 0}
    with tempfile.TemporaryDirectory(prefix="fp-bench-settle-net-") as tmp:
        t0 = time.perf_counter()
        _progress(f"starting the network at level {level} ...")
        with bridge_network(Path(tmp), security_level=level, round_deadline_seconds=120.0,
                            settlement={"cycle_seconds": cycle_seconds, "dispute_window_seconds": 0,
                                        "max_batch_entries": 3000, "snapshot_every": 100_000}) as net:
            result["network_setup_s"] = round(time.perf_counter() - t0, 1)
            parties = [PartyIdentity.generate() for _ in range(n_parties)]
            clients = [net.settlement(f"node{1 + i % 3}", p) for i, p in enumerate(parties)]
            try:
                _progress(f"network up in {result['network_setup_s']} s; {n_parties} accounts funded by deposits")
                with net.settlement("node1", parties[0]) as c:
                    c.submit_many([cl.open_account_bytes(f"party {i}") for i, cl in enumerate(clients)])
                btc = [cl.deposit_address("BTC").address for cl in clients]
                eth = [cl.deposit_address("ETH").address for cl in clients]
                _pay_many(net, btc, COIN // 10)
                for address in eth:
                    net.src.eth.send_transaction({"from": net.src.eth.accounts[2], "to": address, "value": ETHER})

                def funded() -> bool:
                    net.miner.mine(1)
                    net.src.provider.make_request("anvil_mine", [1])
                    time.sleep(1.0)
                    return all(b["BTC"]["balance"] and b["ETH"]["balance"] for b in (clients[0].balances(),
                                                                                       clients[-1].balances()))
                wait_for("every account credited", funded)
                rng = random.Random(11)
                now = int(time.time() * 1000)
                submits, affirms = [], []
                for i in range(n_trades):
                    a, b = rng.sample(range(n_parties), 2)
                    legs = [(parties[a].public_key, "BTC", -1_000 - i % 97), (parties[b].public_key, "BTC",
                                                                                 1_000 + i % 97),
                            (parties[a].public_key, "ETH", 10**12), (parties[b].public_key, "ETH", -(10**12))]
                    raw = clients[a].trade_bytes(legs, mode="net", deadline_ms=now + 3_600_000, key=f"t{i}")
                    tid = sign_instruction(parties[a], InstructionBody(
                        SUBMIT_TRADE, parties[a].public_key, f"t{i}", 1, legs=trade_legs(legs), mode="net",
                        deadline_ms=now + 3_600_000)).body.new_trade_id
                    submits.append(raw)
                    affirms += [clients[a].affirm_bytes(tid), clients[b].affirm_bytes(tid)]
                with net.settlement("node1", ADMIN) as admin:
                    cycle_now = admin.status()["open_cycle"]
                    _progress(f"waiting for cycle {cycle_now}'s cut-off so all trades fall in one cycle")
                    wait_for("a fresh cycle", lambda: admin.status()["open_cycle"] > cycle_now)
                    cycle = admin.status()["open_cycle"]
                    t1 = time.perf_counter()
                    for chunk in range(0, len(submits), 1500):
                        admin.submit_many(submits[chunk:chunk + 1500])
                    for chunk in range(0, len(affirms), 1500):
                        admin.submit_many(affirms[chunk:chunk + 1500])
                    ingest = time.perf_counter() - t1
                    result["ingest_seconds"] = round(ingest, 2)
                    result["instructions_per_second_through_the_api"] = round(3 * n_trades / ingest, 1)
                    _progress(f"{3 * n_trades} instructions ordered in {ingest:.1f} s; waiting for the cut-off")
                    if admin.status()["open_cycle"] != cycle:
                        result["note"] = "the cut-off came during ingestion: the trades span two cycles"

                    def signed() -> Any:
                        try:
                            r = admin.checkpoint(cycle)
                        except Exception:
                            return None
                        return r if r.signature else None
                    deadline = time.monotonic() + HANG_GUARD  # a hang guard, not a speed bound
                    while not signed():
                        assert time.monotonic() < deadline, f"cycle {cycle}'s checkpoint never signed (hang guard)"
                        time.sleep(0.02)
                    seen_ms = int(time.time() * 1000)
                    report = json.loads(admin.cycle_report(cycle).json)
                    result["cycle"] = cycle
                    result["trades_in_cycle"] = len(report["settled_net"])
                    result["net_positions"] = len(report["net_positions"])
                    result["cutoff_to_signed_checkpoint_s"] = round((seen_ms - report["cut_ms"]) / 1000, 3)
                    result["cutoff_to_finalized_s"] = round((report["finalized_ms"] - report["cut_ms"]) / 1000, 3)
                    result["coordinator_sign_s"] = admin.status()["last_checkpoint_seconds"]
                    _progress(f"cut-off → signed checkpoint {result['cutoff_to_signed_checkpoint_s']} s "
                              f"({result['trades_in_cycle']} trades)")
            finally:
                for cl in clients:
                    cl.close()
    return result
