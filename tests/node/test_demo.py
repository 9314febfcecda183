"""`make demo` runs the real network: the demo entry point, at the test level, as a subprocess
(so its node processes, SIGTERM handling and exit status are the real ones)."""

from __future__ import annotations

import re
import subprocess
import sys

from fp_guards import HANG_GUARD


def test_network_demo_signs_and_verifies(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_prime.node.demo", "--level", "test-2048", "--signatures", "3",
         "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "on a 3-node network" in out and "TEST MODE" in out
    assert len(re.findall(r"libsecp256k1 verify OK; eth-account recovers 0x[0-9a-fA-F]{40} OK", out)) == 3
    assert "verified signatures: 3/3" in out
    assert re.search(r"Ethereum address\s+0x[0-9a-fA-F]{40}", out)
    assert re.search(r"Bitcoin regtest\s+bcrt1q[02-9ac-hj-np-z]+", out)
    assert "node2 exit 0, node3 exit 0" in out
    # The node processes really ran (their logs are in the kept folder) and drained on SIGTERM.
    for node in ("node2", "node3"):
        log = (tmp_path / "demo" / f"{node}.log").read_text()
        assert '"signal received"' in log and '"node stopped"' in log


def test_in_process_demo_still_available():
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_prime.node.demo", "--in-process", "--level", "test-2048"],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "libsecp256k1 verify    OK" in proc.stdout and "eth-account recovery" in proc.stdout
