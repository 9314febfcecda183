"""`make demo` works: the bridge demo, run as a user runs it, completes every mission step.

``python -m fusion_prime.bridge.demo`` runs as a subprocess at its fastest settings (``--level
test-2048``): the network of ``fusion_prime.bridge.localnet`` comes up, and the output must show a
BTC deposit minted as fpBTC, an ETH deposit minted as fpETH, both burned back and paid out, a
proof of reserves that verifies, and three daemons that exit 0 - then exit status 0. Its JSON
summary is re-checked offline: the signed mint orders recover to the group key's address and the
raw Bitcoin payout is the transaction whose id the demo printed.

A demo that cannot complete a step must say so in one line and exit non-zero, never hang: a run
whose hang guard is too short to bring the network up shows that.

Nothing here asserts a duration; the subprocess timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fp_guards import HANG_GUARD

from fusion_prime.bridge.chains.bitcoin.tx import Tx
from fusion_prime.bridge.orders import MintOrder, evm_chain_id, recover_signer

pytestmark = pytest.mark.xdist_group(name="bridge-network")

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("0. network up", "1. BTC deposit → fpBTC", "2. ETH deposit → fpETH", "3a. burn fpBTC → BTC paid out",
         "3b. burn fpETH → ETH paid out from custody", "4. proof of reserves", "5. clean shutdown")


def _demo(tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "fusion_prime.bridge.demo", "--workdir", str(tmp_path / "work"),
                           *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_the_demo_runs_the_whole_mission_and_exits_0(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    # the demo's own guard per step, and one for the whole run (seven steps) - hang guards only
    run = _demo(tmp_path, "--level", "test-2048", "--step-timeout", str(HANG_GUARD), "--summary", str(summary_file),
                timeout=8 * HANG_GUARD)
    out = run.stdout
    assert run.returncode == 0, f"exit {run.returncode}\n{out[-4000:]}\n{run.stderr[-4000:]}"
    assert "Traceback" not in run.stderr and "DEMO FAILED" not in run.stderr, run.stderr[-4000:]

    # every step began and completed, in order
    positions = [out.index(f"== {step}") for step in STEPS]
    assert positions == sorted(positions)
    assert out.count("done      in ") == len(STEPS) - 1  # (the network's bring-up ends with "up in")
    assert re.search(r"network +up in [\d.]+ s: group key [0-9a-f]{66}", out)

    # 1 and 2: each deposit followed through the status stream to its mint, and the balance on-chain
    streams = re.findall(r"status stream: (.*)", out)
    assert len(streams) == 2 and all(s.endswith("→ minted") and "confirming (1 of 2)" in s for s in streams), streams
    assert len(re.findall(r"deposit minted: Gateway\.mint tx 0x[0-9a-f]{64}", out)) == 2
    assert re.search(r"fpBTC balance of 0x[0-9a-fA-F]{40}: 1\.00000000 fpBTC", out)
    assert re.search(r"fpETH balance of 0x[0-9a-fA-F]{40}: 2 fpETH", out)
    # 3: both burns paid out and confirmed (BTC: the payout's outputs read back from the chain)
    assert out.count("withdrawal confirmed (1 of 1)") == 2
    assert re.search(r"output \d: 0\.39980000 BTC to bcrt1\w+ \(the user\)", out)
    assert "received 0.39980000 BTC" in out and "received 0.999 ETH" in out
    assert re.search(r"deposit address swept into custody 0x[0-9a-fA-F]{40}", out)
    # 4: the report verified by the independent verifier
    assert "valid, 0 problems" in out
    # 5: a clean shutdown
    assert len(re.findall(r"node[123] +exited 0", out)) == 3
    assert "MISSION COMPLETE" in out

    # the summary, re-checked offline
    summary = json.loads(summary_file.read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == list(STEPS[1:])
    gateway, chain_id = summary["gateway"], evm_chain_id(summary["chains"]["destination"])
    for name in STEPS[1:3]:
        order = MintOrder.from_dict(json.loads(steps[name]["order"]))
        signature = bytes.fromhex(steps[name]["order_signature"][2:])
        assert recover_signer(order.digest(gateway, chain_id), signature) == summary["group_address"], name
    payout = steps["3a. burn fpBTC → BTC paid out"]
    assert Tx.from_hex(payout["payout_raw"]).txid_hex == payout["payout_txid"]
    assert steps["5. clean shutdown"]["exit_codes"] == {"node1": 0, "node2": 0, "node3": 0}


def test_a_step_that_cannot_complete_fails_in_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    """A 1-second hang guard cannot bring the network up: the demo names the step and exits 1,
    after stopping what it started."""
    run = _demo(tmp_path, "--level", "test-2048", "--step-timeout", "1", timeout=HANG_GUARD)
    assert run.returncode == 1, f"exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    failure = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(failure) == 1 and failure[0].startswith("DEMO FAILED at 0. network up: "), run.stderr[-2000:]
    assert "MISSION COMPLETE" not in run.stdout
