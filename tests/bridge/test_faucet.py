"""``fusion-prime-faucet``'s own refusals (its payments run against real chains in the README
walkthrough of ``test_bridge_demo.py``): every error is one line with exit status 2, before any
chain is asked, and a key file is never overwritten or readable by others."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from fusion_prime.bridge.chains.bitcoin.encoding import REGTEST, address_to_script, p2wpkh_script, script_to_address

SOMEONE = script_to_address(p2wpkh_script(b"\x02" + b"\x11" * 32), REGTEST)


def _faucet(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusion_prime.bridge.chains.faucet", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd)


def _one_line_error(run: subprocess.CompletedProcess[str], words: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_a_fresh_address_is_a_regtest_p2wpkh_whose_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    key_file = tmp_path / "mine.key"
    run = _faucet("btc-address", "--key-file", str(key_file))
    assert run.returncode == 0, run.stderr
    address = json.loads(run.stdout)["address"]
    assert address_to_script(address, REGTEST)[:2] == b"\x00\x14"  # P2WPKH
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    before = key_file.read_text()
    _one_line_error(_faucet("btc-address", "--key-file", str(key_file)), "refusing to overwrite")
    assert key_file.read_text() == before


def test_without_a_devnet_file_it_says_where_to_find_one(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    _one_line_error(_faucet("btc-received", SOMEONE, env=env), "FP_DEVNET")
    bad = tmp_path / "devnet.json"
    bad.write_text("{not json")
    _one_line_error(_faucet("--devnet", str(bad), "btc-pay", "x", "1000"), "not a devnet file")


def test_bad_input_is_refused_before_any_chain_is_asked(tmp_path: Path) -> None:
    # endpoints nobody listens on: a refusal must come from the input check, not a connection error
    devnet = tmp_path / "devnet.json"
    devnet.write_text(json.dumps({"bitcoin": {"url": "http://127.0.0.1:9", "user": "u", "password": "p"},
                                  "evm": [{"url": "http://127.0.0.1:9", "chain_id": 1},
                                          {"url": "http://127.0.0.1:9", "chain_id": 2}]}))
    d = ("--devnet", str(devnet))
    _one_line_error(_faucet(*d, "btc-pay", "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "100000"),
                    "not a regtest address")
    _one_line_error(_faucet(*d, "btc-pay", SOMEONE, "500"), "dust")
    _one_line_error(_faucet(*d, "eth-pay", "0x1234", "1"), "not an EVM address")
    _one_line_error(_faucet(*d, "eth-pay", "0x" + "11" * 20, "0"), "positive amount")
    _one_line_error(_faucet(*d, "btc-pay", SOMEONE, "lots"), "invalid int")
