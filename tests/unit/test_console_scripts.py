"""Every command pyproject.toml declares is installed under its name and behaves like the
others at its edges (node/commandline.py): ``--help`` names the command as the user typed it,
and a usage error is one line and exit status 2, never argparse's usage block or a traceback.
The commands' real work by name is run elsewhere: ``fusion-prime-node init`` in
tests/node/test_init_atomic.py, ``fusion-prime-wallet`` in
tests/signer/test_wallet_usability_network.py."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from fp_guards import HANG_GUARD

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=HANG_GUARD, cwd=ROOT)


def test_the_installed_entry_points_are_the_declared_ones() -> None:
    installed = {ep.name: ep.value for ep in entry_points(group="console_scripts")
                 if ep.dist is not None and ep.dist.name == "fusion-prime"}
    assert installed == SCRIPTS
    assert len(SCRIPTS) >= 7


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_command_runs_by_name_and_a_usage_error_is_one_line(name: str) -> None:
    script = BIN / name
    assert script.is_file(), f"{name} is not installed beside {sys.executable}"
    helped = _run(str(script), "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith(f"usage: {name} "), helped.stdout[:200]

    wrong = _run(str(script), "--no-such-option")
    lines = wrong.stderr.splitlines()
    assert wrong.returncode == 2, wrong.stderr
    assert "Traceback" not in wrong.stderr and wrong.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(" --help)"), wrong.stderr
    assert f"see {name}" in lines[0]
