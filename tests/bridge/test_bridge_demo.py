"""`make demo` works: the bridge demo, run as a user runs it, completes every mission step.

``python -m fusion_prime.bridge.demo`` runs as a subprocess at its fastest settings (``--level
test-2048``): the network of ``fusion_prime.bridge.localnet`` comes up, and the output must show a
BTC deposit minted as fpBTC, an ETH deposit minted as fpETH, both burned back and paid out, a
proof of reserves that verifies, two clients' custody accounts funded by real deposits, a DvP
trade settled in a netting cycle, the cycle's checkpoint signed, published and proven, and three
daemons that exit 0 - then exit status 0. Its JSON summary is re-checked offline: the signed mint
orders recover to the group key's address, the raw Bitcoin payout is the transaction whose id the
demo printed, and the settlement section's raw instructions verify under the parties' keys, its
checkpoint file recovers to the group signer, alice's proof leads to its root, and the trade's
legs are what moved the balances.

A demo that cannot complete a step must say so in one line and exit non-zero, never hang: a run
whose hang guard is too short to bring the network up shows that.

Nothing here asserts a duration; the subprocess timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fp_bridge_net import wait_for
from fp_guards import HANG_GUARD
from web3 import Web3

from fusion_prime.bridge.chains.bitcoin.encoding import REGTEST, address_to_script
from fusion_prime.bridge.chains.bitcoin.tx import Tx
from fusion_prime.bridge.orders import MintOrder, evm_chain_id, recover_signer
from fusion_prime.bridge.settlement import checkpoint as cp
from fusion_prime.bridge.settlement.instructions import AFFIRM, OPEN_ACCOUNT, SUBMIT_TRADE, SignedInstruction

pytestmark = pytest.mark.xdist_group(name="bridge-network")

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("0. network up", "1. BTC deposit → fpBTC", "2. ETH deposit → fpETH", "3a. burn fpBTC → BTC paid out",
         "3b. burn fpETH → ETH paid out from custody", "4. proof of reserves",
         "5a. custody accounts: alice deposits BTC, bob ETH",
         "5b. DvP trade BTC against ETH (net), settled in a netting cycle",
         "5c. the cycle's checkpoint: signed by the group, published, proven", "6. clean shutdown")


def _demo(tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "fusion_prime.bridge.demo", "--workdir", str(tmp_path / "work"),
                           *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _readme_walkthrough() -> str:
    """The README's "Try it yourself" block, exactly as a user pastes it."""
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- walkthrough:")
    block = text[text.index("```sh\n", start) + len("```sh\n"):]
    return block[:block.index("```")]


def test_the_demo_runs_the_whole_mission_stays_up_for_the_readme_walkthrough_and_exits_0(tmp_path: Path) -> None:
    """The mission, then ``--stay``: the README's "Try it yourself" block, run by bash exactly as
    written against the stayed network (deposit → mint, burn → BTC paid, two custody accounts
    funded, a DvP trade settled, an account withdrawal paid), then SIGTERM: a clean shutdown."""
    summary_file = tmp_path / "summary.json"
    work = tmp_path / "work"
    out_file, err_file = tmp_path / "demo.out", tmp_path / "demo.err"
    env = {**os.environ, "PATH": f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    with out_file.open("w") as out_f, err_file.open("w") as err_f:
        # the demo's own guard per step - hang guards only
        demo = subprocess.Popen([sys.executable, "-m", "fusion_prime.bridge.demo", "--workdir", str(work),
                                 "--level", "test-2048", "--step-timeout", str(HANG_GUARD), "--summary",
                                 str(summary_file), "--stay"], stdout=out_f, stderr=err_f, text=True, env=env,
                                cwd=ROOT)
        try:
            wait_for("the demo to stay up", lambda: "the network stays up" in out_file.read_text(),
                     procs={"demo": demo})
            user = tmp_path / "user"
            user.mkdir()
            script = _readme_walkthrough().replace("var/demo/env.sh", str(work / "env.sh"))
            walk = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                                  cwd=user, env={k: v for k, v in env.items() if k != "FP_DEVNET"},
                                  timeout=4 * HANG_GUARD)
            assert walk.returncode == 0, f"walkthrough exit {walk.returncode}\n{walk.stdout[-4000:]}\n" \
                                         f"{walk.stderr[-4000:]}"
            _check_walkthrough(walk.stdout)
            demo.send_signal(signal.SIGTERM)
            demo.wait(timeout=2 * HANG_GUARD)
        finally:
            if demo.poll() is None:  # a failure above: SIGTERM, so that the demo stops its daemons and anvils
                demo.send_signal(signal.SIGTERM)
                try:
                    demo.wait(timeout=HANG_GUARD)
                except subprocess.TimeoutExpired:
                    demo.kill()
                    demo.wait()
    out, err = out_file.read_text(), err_file.read_text()
    assert demo.returncode == 0, f"exit {demo.returncode}\n{out[-4000:]}\n{err[-4000:]}"
    assert "Traceback" not in err and "DEMO FAILED" not in err, err[-4000:]

    # every step began and completed, in order
    positions = [out.index(f"== {step}") for step in STEPS]
    assert positions == sorted(positions)
    assert out.count("done      in ") == len(STEPS) - 1  # (the network's bring-up ends with "up in")
    assert re.search(r"network +up in [\d.]+ s: group key [0-9a-f]{66}", out)
    # the key's creation shown phase by phase as node1 reports it, before the key exists
    phases = [out.index(f"create-key {what}") for what in ("authorised", "running (keygen)", "running (aux-info)",
                                                            "done")]
    assert phases == sorted(phases) and phases[-1] < out.index("group key created"), out[:4000]

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
    # 5a: both accounts credited at every node, read back at two nodes each; 5b: the trade settled
    # in a cycle; 5c: the checkpoint signed by the group key and published
    assert re.search(r"node1, node2, node3 alice's account credited: 1\.00000000 BTC", out)
    assert re.search(r"node1, node2, node3 bob's account credited: 2 ETH", out)
    assert len(re.findall(r"alice's BTC account read at node[123]: balance 1\.00000000 BTC", out)) == 2
    # the trail of states the demo saw while polling: under load the cut-off can come before its
    # first poll ("cut → settled"), but a settled trade has always been cut into a cycle
    assert re.search(r"trade: (?:\w+ → )*cut → settled", out)
    assert re.search(r"trade settled at cycle \d+'s finalisation", out)
    assert len(re.findall(r"alice after, read at node[123]: 0\.95000000 BTC, 1\.25 ETH", out)) == 2
    assert re.search(r"recovers to 0x[0-9a-fA-F]{40} = the group key", out)
    assert re.search(r"rootOf\(\d+\) = 0x[0-9a-f]{16}… = the signed root", out)
    # 6: a clean shutdown
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
    assert steps["6. clean shutdown"]["exit_codes"] == {"node1": 0, "node2": 0, "node3": 0}
    _check_settlement(summary)


def _check_walkthrough(out: str) -> None:
    """What the README's commands printed: the mint, the payout of the burn (less the fee), the
    trade's balances, and the account withdrawal paid to the same address."""
    docs = _json_documents(out)
    updates = [d for d in docs if "deposit" in d and "event" in d]
    assert updates and updates[-1]["deposit"]["state"] == "minted" and updates[-1]["deposit"]["mint_tx"]
    assert updates[-1]["deposit"]["amount"] == "50000000"
    withdrawal = next(d for d in docs if "burn_id" in d and "state" in d)
    assert withdrawal["state"] == "confirmed" and withdrawal["amount"] == "20000000" and withdrawal["txid"]
    received = [d for d in docs if "coins" in d]
    assert received[0]["sats"] == 20_000_000 - 20_000  # the burn, less the withdrawal fee
    assert {c["txid"] for c in received[0]["coins"]} == {withdrawal["txid"]}
    assert received[-1]["sats"] == 20_000_000 - 20_000 + 1_000_000 - 20_000  # and alice's account withdrawal
    assert re.search(r"^BTC +5000000 +0 +5000000$", out, re.M), out[-3000:]
    assert re.search(r"^ETH +1250000000000000000 +0 +1250000000000000000$", out, re.M), out[-3000:]
    assert re.search(r"^[0-9a-f]{64} paid +1000000 BTC to bcrt1\w+ on bip122:\w+ txid [0-9a-f]{64}$", out, re.M)


def _json_documents(text: str) -> list[dict[str, Any]]:
    """Every JSON object printed (pretty or one per line), in order; text lines are skipped."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) >= 0:
        try:
            doc, end = decoder.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(doc, dict):
            docs.append(doc)
        i = end
    return docs


def _check_settlement(summary: dict[str, Any]) -> None:
    """The summary's settlement section, re-verified with nothing but its own contents."""
    s = summary["settlement"]
    parties = {name: bytes.fromhex(p["public_key"]) for name, p in s["parties"].items()}
    alice, bob = parties["alice"], parties["bob"]
    # the accounts were funded by real deposits: alice's Bitcoin output pays her account's address,
    # bob's raw ETH transaction is the one whose hash the demo printed
    btc_in, eth_in = s["parties"]["alice"], s["parties"]["bob"]
    deposit = Tx.from_hex(btc_in["deposit_raw"])
    txid, vout = btc_in["deposit_txid"].split(":")
    assert deposit.txid_hex == txid
    assert deposit.vout[int(vout)].value == int(btc_in["amount"])
    assert deposit.vout[int(vout)].script_pubkey == address_to_script(btc_in["deposit_address"], REGTEST)
    assert Web3.keccak(hexstr=eth_in["deposit_raw"]).hex().removeprefix("0x") == eth_in["deposit_txid"][2:]

    # the raw signed instructions: each verifies under its client's key and says what the demo did
    ins = {k: SignedInstruction.from_bytes(bytes.fromhex(v)) for k, v in s["instructions"].items()}
    for name, key in parties.items():
        assert ins[f"open_account_{name}"].body.kind == OPEN_ACCOUNT and ins[f"open_account_{name}"].body.client == key
    submit = ins["submit_trade"].body
    trade_id = bytes.fromhex(s["trade"]["trade_id"][2:])
    assert submit.kind == SUBMIT_TRADE and submit.client == alice and submit.mode == s["trade"]["mode"] == "net"
    assert submit.new_trade_id == trade_id  # the id the ledger gave is the submission's
    assert {(leg.party.hex(), leg.asset, str(leg.quantity)) for leg in submit.legs} == {
        (leg["party"], leg["asset"], leg["quantity"]) for leg in s["trade"]["legs"]}
    for name in ("alice", "bob"):
        affirm = ins[f"affirm_{name}"].body
        assert affirm.kind == AFFIRM and affirm.client == parties[name] and affirm.trade_id == trade_id

    # the trade's legs moved the balances, and nothing else did
    before, after = s["balances"]["before"], s["balances"]["after"]
    for leg in s["trade"]["legs"]:
        who = "alice" if bytes.fromhex(leg["party"]) == alice else "bob"
        assert int(after[who][leg["asset"]]["balance"]) - int(before[who][leg["asset"]]["balance"]) \
            == int(leg["quantity"])
        assert after[who][leg["asset"]]["held"] == "0"
    assert s["trade"]["status"] == "settled" and s["trade"]["cycle"] == s["cycle"]
    assert {leg["party"] for leg in s["trade"]["legs"]} == {alice.hex(), bob.hex()}

    # the checkpoint file: the cycle's, signed by the group signer the summary names (the Gateway's)
    checkpoint_file = cp.CheckpointFile.from_json(json.dumps(s["checkpoint"]))
    signed = checkpoint_file.signed
    assert signed.checkpoint.cycle == s["cycle"]
    assert s["signer"] == summary["group_address"]
    assert cp.verify_signed_checkpoint(signed, summary["group_address"])
    assert signed.registry == s["registry"] and signed.chain_id == evm_chain_id(summary["chains"]["destination"])
    totals = signed.checkpoint.totals_map()
    assert totals["BTC"][0] == int(s["parties"]["alice"]["amount"])  # the ledger holds what was deposited
    assert totals["ETH"][0] == int(s["parties"]["bob"]["amount"])

    # alice's proof: signed by the group, every path leads to the root, and states her balances after
    proof = cp.CheckpointFile.from_json(json.dumps(s["alice_proof"]))
    assert cp.verify_signed_checkpoint(proof.signed, summary["group_address"])
    assert proof.signed.checkpoint.cycle >= s["cycle"]
    if proof.signed.checkpoint.cycle == s["cycle"]:
        assert proof.signed == signed
    assert proof.proofs
    for p in proof.proofs:
        assert p.leaf.party == alice
        cp.check_proof(proof.signed.checkpoint, p)
        assert str(p.leaf.balance) == after["alice"][p.leaf.asset]["balance"]
    # ... and against the cycle's checkpoint itself when it is the same one
    if proof.signed.checkpoint.cycle == s["cycle"]:
        for p in proof.proofs:
            cp.check_proof(signed.checkpoint, p)


def test_a_step_that_cannot_complete_fails_in_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    """A 1-second hang guard cannot bring the network up: the demo names the step and exits 1,
    after stopping what it started."""
    run = _demo(tmp_path, "--level", "test-2048", "--step-timeout", "1", timeout=HANG_GUARD)
    assert run.returncode == 1, f"exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    failure = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(failure) == 1 and failure[0].startswith("DEMO FAILED at 0. network up: "), run.stderr[-2000:]
    assert "MISSION COMPLETE" not in run.stdout
