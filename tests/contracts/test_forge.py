"""Runs the Solidity test suite (unit, fuzz and invariant tests) with forge, offline.

forge drives the repository's solc-js through contracts/tools/solc; output and cache go to a
temporary directory so concurrent runs never share forge state.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from fp_contracts import ROOT

FORGE = ROOT / "node_modules" / ".bin" / "forge"


def test_forge_suite_passes(tmp_path: Path, record_property) -> None:
    env = {**os.environ, "FOUNDRY_OFFLINE": "true", "NO_COLOR": "1"}
    result = subprocess.run(
        [str(FORGE), "test", "-vv", "--offline",
         "--out", str(tmp_path / "out"), "--cache-path", str(tmp_path / "cache")],
        cwd=ROOT / "contracts", capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    summary = re.search(r"(\d+) tests passed, (\d+) failed", output)
    assert summary, output[-4000:]
    passed, failed = int(summary.group(1)), int(summary.group(2))
    assert failed == 0
    assert passed >= 50, f"suspiciously few forge tests ran: {passed}"
    # the fuzz and invariant tests really ran, at the configured strength
    assert "runs: 256" in output
    assert re.search(r"invariant_bothLegsOrNeither\(\) \(runs: \d+, calls: \d+", output)
    for line in output.splitlines():
        m = re.match(r"\s*gas (.+): (\d+)$", line)
        if m:
            record_property(f"gas forge {m.group(1)} [execution]", int(m.group(2)))
            print(line.strip())
