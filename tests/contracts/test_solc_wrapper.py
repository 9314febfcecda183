"""contracts/tools/solc, the solc-js front end forge drives: imports reached through a symlinked
folder inside an allowed root compile (forge failed when ``node_modules`` was a symlink, issue
13), and a symlink that leads out of every allowed root is still refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from fp_contracts import ROOT

WRAPPER = ROOT / "contracts" / "tools" / "solc"
LIBRARY = "// SPDX-License-Identifier: MIT\npragma solidity ^0.8.0;\nlibrary Lib { function one() internal pure returns (uint256) { return 1; } }\n"  # noqa: E501


def _compile(base: Path, includes: list[Path], main: str) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    request = {"language": "Solidity", "sources": {"main.sol": {"content": main}},
               "settings": {"outputSelection": {"*": {"*": ["abi"]}}}}
    args = [node, str(WRAPPER), "--base-path", str(base)]
    for path in includes:
        args += ["--include-path", str(path)]
    done = subprocess.run([*args, "--standard-json"], input=json.dumps(request), capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _errors(output: dict) -> list[str]:
    return [e["message"] for e in output.get("errors", []) if e.get("severity") == "error"]


def _main(import_path: str) -> str:
    return ("// SPDX-License-Identifier: MIT\npragma solidity ^0.8.0;\n"
            f'import "{import_path}";\ncontract Main {{ function f() external pure returns (uint256) '
            "{ return Lib.one(); } }\n")


def test_an_import_through_a_symlinked_node_modules_compiles(tmp_path: Path) -> None:
    store = tmp_path / "store" / "node_modules" / "pkg"
    store.mkdir(parents=True)
    (store / "Lib.sol").write_text(LIBRARY)
    project = tmp_path / "project"
    project.mkdir()
    (project / "node_modules").symlink_to(tmp_path / "store" / "node_modules", target_is_directory=True)
    # forge passes the include path as the symlink; the file's real path lies under the store
    out = _compile(project, [project / "node_modules"], _main("pkg/Lib.sol"))
    assert _errors(out) == []
    assert "Main" in out["contracts"]["main.sol"]


def test_a_symlink_out_of_every_allowed_root_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "Lib.sol").write_text(LIBRARY)
    project = tmp_path / "project"
    project.mkdir()
    (project / "escape").symlink_to(secret, target_is_directory=True)
    out = _compile(project, [], _main("escape/Lib.sol"))
    errors = _errors(out)
    assert errors and any("outside the allowed paths" in e or "not found" in e.lower() for e in errors), errors
    assert "contracts" not in out or "Main" not in out.get("contracts", {}).get("main.sol", {})
