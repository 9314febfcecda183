"""The benchmark runner keeps what finished when it is stopped, records a failing section and goes
on, and draws its plot - tested on the real runner (``tests/benchmarks/run.py``) in a subprocess.

The sections are three tiny fakes written into the test's directory and named with
``--sections-module``, so the real registry is untouched and nothing heavy runs: ``alpha``
returns figures at once; ``broken`` waits for a gate file and then raises; ``omega`` returns
figures. Without the gate the run parks inside ``broken`` after ``alpha`` finished - the moment
to stop it. Completion and order are asserted, never speed: every wait is bounded only by the
shared hang guard.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fp_bridge_net import wait_for
from fp_guards import HANG_GUARD

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "benchmarks" / "run.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FAKE_SECTIONS = '''
"""Fake sections for the runner's test (never part of `make bench`)."""
import os
import time
from pathlib import Path

from sections import Headline, Section

GATE = Path(os.environ["FAKE_BENCH_GATE"])


def alpha(quick: bool = False) -> dict:
    return {"latency_ms": {"p50": 12.5, "p95": 40.0}, "rate_per_s": 250.0, "quick_seen": quick}


def broken(quick: bool = False) -> dict:
    while not GATE.exists():  # parked here until the test opens the gate or stops the run
        time.sleep(0.02)
    raise RuntimeError("fake section broke on purpose")


def omega(quick: bool = False) -> dict:
    return {"wall_s": 3.5}


SECTIONS = (
    Section("alpha", alpha, expected_full_s=2.0, expected_quick_s=1.0),
    Section("broken", broken, expected_full_s=2.0, expected_quick_s=1.0),
    Section("omega", omega, expected_full_s=2.0, expected_quick_s=1.0),
)
HEADLINES = (
    Headline("alpha p50", "alpha", ("latency_ms", "p50"), "ms"),
    Headline("alpha p95", "alpha", ("latency_ms", "p95"), "ms"),
    Headline("alpha rate", "alpha", ("rate_per_s",), "/s"),
    Headline("omega wall", "omega", ("wall_s",), "s"),
)
'''


@pytest.fixture
def bench(tmp_path: Path) -> dict[str, Any]:
    """``start(*options)`` runs the runner on the fake sections; its stderr goes to a file (read
    while it runs, to stop it at the right moment), stdout to a pipe."""
    module = tmp_path / "fake_sections.py"
    module.write_text(FAKE_SECTIONS)
    out = tmp_path / "out"
    stderr_path = tmp_path / "stderr.txt"
    env = {**os.environ, "FAKE_BENCH_GATE": str(tmp_path / "gate"), "FP_BENCH_HEARTBEAT_SECONDS": "0.2"}

    def start(*extra: str) -> subprocess.Popen[str]:
        with stderr_path.open("w") as stderr:
            return subprocess.Popen([sys.executable, str(RUNNER), "--sections-module", str(module),
                                     "--out-dir", str(out), *extra],
                                    stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=tmp_path)

    return {"start": start, "out": out, "gate": tmp_path / "gate", "stderr": stderr_path}


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _parked_in_broken(bench: dict[str, Any]) -> subprocess.Popen[str]:
    """Start a run and return once ``alpha`` is recorded and ``broken`` has said (by its
    heartbeat) that it is still running."""
    proc = bench["start"]("--quick")
    out: Path = bench["out"]

    def alpha_recorded() -> bool:
        try:
            return "alpha" in _json(out / "latest.json")
        except (OSError, ValueError):
            return False

    wait_for("alpha's result in the combined document", alpha_recorded, procs={"runner": proc})
    wait_for("broken's heartbeat", lambda: "[2/3] broken still running" in bench["stderr"].read_text(),
             procs={"runner": proc})
    return proc


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_keeps_the_finished_section_and_says_it_was_stopped(bench: dict[str, Any],
                                                                          stop: signal.Signals) -> None:
    proc = _parked_in_broken(bench)
    proc.send_signal(stop)
    stdout, _ = proc.communicate(timeout=HANG_GUARD)
    stderr = bench["stderr"].read_text()
    out: Path = bench["out"]

    assert proc.returncode == 128 + stop
    alpha = _json(out / "alpha.json")
    assert alpha["figures"]["latency_ms"] == {"p50": 12.5, "p95": 40.0}
    assert alpha["quick"] is True and alpha["figures"]["quick_seen"] is True
    assert not (out / "broken.json").exists(), "an interrupted section must not leave a result file"
    assert not (out / "omega.json").exists()
    combined = _json(out / "latest.json")
    assert combined["status"] == "interrupted"
    assert combined["alpha"]["rate_per_s"] == 250.0
    assert combined["broken"]["error"].startswith(f"interrupted by {stop.name}")
    assert "omega" not in combined
    assert json.loads(stdout) == combined  # stdout still carries the one document
    assert "Traceback" not in stderr
    assert "[2/3] broken: starting, expected ~1.0 s in quick mode" in stderr
    assert f"[2/3] broken: interrupted by {stop.name}" in stderr
    assert (out / "latest.png").read_bytes().startswith(PNG_MAGIC)  # the plot of what finished
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_a_killed_run_leaves_valid_json_files(bench: dict[str, Any]) -> None:
    proc = _parked_in_broken(bench)
    proc.kill()  # SIGKILL: no handler runs, only what was already written survives
    proc.communicate(timeout=HANG_GUARD)
    out: Path = bench["out"]

    assert proc.returncode == -signal.SIGKILL
    assert _json(out / "alpha.json")["figures"]["latency_ms"]["p95"] == 40.0
    combined = _json(out / "latest.json")
    assert combined["status"] == "running"  # nobody got to say otherwise
    assert combined["alpha"]["latency_ms"]["p50"] == 12.5
    assert combined["sections_planned"] == ["alpha", "broken", "omega"]


def test_a_failing_section_is_recorded_and_the_run_goes_on(bench: dict[str, Any]) -> None:
    bench["gate"].write_text("open")
    proc = bench["start"]()
    stdout, _ = proc.communicate(timeout=HANG_GUARD)
    stderr = bench["stderr"].read_text()
    out: Path = bench["out"]

    assert proc.returncode == 1, stderr  # a failed section is not a successful run
    broken = _json(out / "broken.json")
    assert broken["error"] == "RuntimeError: fake section broke on purpose"
    raise_line = FAKE_SECTIONS.splitlines().index('    raise RuntimeError("fake section broke on purpose")') + 1
    assert broken["error_at"] == f"fake_sections.py:{raise_line}"  # where it was raised, no traceback
    assert "figures" not in broken
    omega = _json(out / "omega.json")
    assert omega["figures"] == {"wall_s": 3.5} and omega["quick"] is False
    combined = _json(out / "latest.json")
    assert combined["status"] == "complete"
    assert list(combined["durations_s"]) == ["alpha", "broken", "omega"]  # in order, none skipped
    assert combined["broken"]["error"] == broken["error"]
    assert json.loads(stdout) == combined
    lines = [ln for ln in stderr.splitlines() if ": starting" in ln or "done in" in ln or "FAILED" in ln]
    assert [ln.split("] ")[2].split(":")[0] for ln in lines] == ["alpha", "alpha", "broken", "broken",
                                                                  "omega", "omega"]
    assert "Traceback" not in stderr


def test_only_runs_a_subset_and_refuses_an_unknown_section(bench: dict[str, Any]) -> None:
    proc = bench["start"]("--only", "omega,alpha")
    stdout, _ = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0
    combined = json.loads(stdout)
    assert combined["sections_planned"] == ["alpha", "omega"]  # the table's order, not the option's
    assert "broken" not in combined

    proc = bench["start"]("--only", "alpha,nonesuch")
    proc.communicate(timeout=HANG_GUARD)
    stderr = bench["stderr"].read_text()
    assert proc.returncode == 2
    assert "unknown section(s) nonesuch" in stderr and "Traceback" not in stderr


def test_plot_only_draws_the_headline_figures_into_a_png(bench: dict[str, Any]) -> None:
    import matplotlib.image

    bench["gate"].write_text("open")
    bench["start"]().communicate(timeout=HANG_GUARD)
    png: Path = bench["out"] / "latest.png"
    png.unlink()

    proc = bench["start"]("--plot-only")
    proc.communicate(timeout=HANG_GUARD)
    stderr = bench["stderr"].read_text()
    assert proc.returncode == 0, stderr
    assert "plot of 4 headline figures" in stderr  # alpha's three and omega's one; broken has none
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    pixels = matplotlib.image.imread(png)
    height, width = pixels.shape[:2]
    assert width > 500 and height > 300
    rgb = pixels[..., :3]
    inked = (rgb.min(axis=-1) < 0.9).mean()  # share of pixels that are not (near) white
    assert inked > 0.01, "the PNG is blank"
    coloured = ((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3).mean()  # bars are coloured, text is grey
    assert coloured > 0.002, "no bars drawn"
