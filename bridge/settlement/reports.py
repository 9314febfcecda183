"""The settlement report of a cycle, for a back office: JSON and CSV of the same facts.

What it holds: the cycle's times, every trade settled in it (with its legs), the multilateral net
position of every (party, asset) that moved, the trades that failed and rolled on, the disputed
ones, and the checkpoint (root, totals, the group's signature once made). Everything comes from
this node's replica, so two nodes' reports of a cycle are byte-identical — a back office can
compare reports from two operators instead of trusting one.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .checkpoint import Checkpoint
from .ledger import Ledger


def cycle_report(ledger: Ledger, cycle: int, checkpoint_row: dict[str, Any] | None) -> dict[str, Any]:
    c = ledger.cycles.get(cycle)
    if c is None:
        raise KeyError(f"no cycle {cycle}")
    gross = sorted(t.trade_id.hex() for t in ledger.trades.values()
                   if t.mode == "gross" and t.status == "settled" and t.cycle == cycle)
    trades = []
    for tid in list(c.settled) + [bytes.fromhex(x) for x in gross]:
        t = ledger.trades[tid]
        trades.append({"trade_id": tid.hex(), "mode": t.mode, "reference": t.reference,
                       "legs": [{"party": leg.party.hex(), "asset": leg.asset, "quantity": str(leg.quantity)}
                                for leg in t.legs]})
    out: dict[str, Any] = {
        "cycle": cycle, "opened_ms": c.opened_ms, "cut_ms": c.cut_ms, "finalized_ms": c.finalized_ms,
        "state": "final" if c.finalized_ms else ("dispute-window" if c.cut_ms else "open"),
        "settled_net": [t.hex() for t in c.settled], "settled_gross": gross,
        "rolled": [t.hex() for t in c.rolled], "disputed": [t.hex() for t in c.disputed],
        "net_positions": [{"party": p.hex(), "asset": a, "net": str(q)} for (p, a), q in sorted(c.net.items())],
        "trades": trades, "batch_seq": c.batch_seq, "checkpoint": None}
    if checkpoint_row is not None:
        checkpoint = Checkpoint.from_bytes(checkpoint_row["checkpoint"])
        out["checkpoint"] = {**checkpoint.to_dict(), "signature": (checkpoint_row["signature"] or b"").hex(),
                             "published_tx": checkpoint_row.get("published_tx")}
    return out


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)


def report_csv(report: dict[str, Any]) -> str:
    """One row per net position, then one per trade leg: ``record,cycle,trade_id,mode,party,asset,quantity``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["record", "cycle", "trade_id", "mode", "party", "asset", "quantity"])
    for n in report["net_positions"]:
        w.writerow(["net", report["cycle"], "", "", n["party"], n["asset"], n["net"]])
    for t in report["trades"]:
        for leg in t["legs"]:
            w.writerow(["leg", report["cycle"], t["trade_id"], t["mode"], leg["party"], leg["asset"], leg["quantity"]])
    for tid in report["rolled"]:
        w.writerow(["rolled", report["cycle"], tid, "net", "", "", ""])
    for tid in report["disputed"]:
        w.writerow(["disputed", report["cycle"], tid, "net", "", "", ""])
    if report["checkpoint"]:
        w.writerow(["root", report["cycle"], report["checkpoint"]["root"], "", "", "", ""])
    return buf.getvalue()
