"""What an operator sees when a deployment is wrong: one line on stderr, exit status 2, no
traceback - from the node CLI, the signer daemon and the bridge daemon (real processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fusion_prime.node.config import load_config, parse_address
from fusion_prime.node.devnet import DevnetNode, create_devnet, free_port

CLI = "fusion_prime.node.cli"
SIGNER = "fusion_prime.signer.daemon"
BRIDGE = "fusion_prime.bridge.daemon"


def run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def the_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one non-JSON stderr line (JSON lines are the daemon's log), asserting the rules."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Exception Group" not in result.stderr, result.stderr
    plain = []
    for line in result.stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            plain.append(line)
    assert len(plain) == 1 and plain[0].startswith("error: "), result.stderr
    return plain[0]


@pytest.fixture
def node(tmp_path: Path) -> DevnetNode:
    first = create_devnet(tmp_path / "net", 3, with_metrics=False, scrypt_log2_n=10)[0]
    (tmp_path / "policy.toml").write_text("[default]\nclients = []\n")
    (tmp_path / "bridge.toml").write_text(  # not set up yet: the daemon would wait for the key and Gateway
        f'[bridge]\ndatabase = "sqlite:///{tmp_path}/bridge.sqlite3"\ndestination_chain = "eip155:31338"\n'
        'destination_rpc = "http://127.0.0.1:1"\n')
    return first


@contextmanager
def occupied(address: str) -> Iterator[None]:
    """Someone else listening on ``address`` (a plain socket, not a gRPC server)."""
    host, port = parse_address(address)
    with socket.socket() as s:
        s.bind((host, port))
        s.listen()
        yield


def daemons(node: DevnetNode, tmp_path: Path, *extra: str) -> dict[str, tuple[str, ...]]:
    config = str(node.config_path)
    policy, bridge = str(tmp_path / "policy.toml"), str(tmp_path / "bridge.toml")
    return {
        "node run": (CLI, "run", "--config", config),
        "signer daemon": (SIGNER, "--config", config, "--policy", policy, *extra),
        "bridge daemon": (BRIDGE, "--config", config, "--policy", policy, "--bridge", bridge, *extra),
    }


def test_missing_policy_or_bridge_file(node, tmp_path):
    config = str(node.config_path)
    line = the_error(run(SIGNER, "--config", config, "--policy", str(tmp_path / "nope.toml")))
    assert "policy file" in line and "nope.toml" in line
    line = the_error(run(BRIDGE, "--config", config, "--policy", str(tmp_path / "policy.toml"), "--bridge",
                         str(tmp_path / "missing-bridge.toml")))
    assert "missing-bridge.toml" in line


def test_peer_port_in_use_in_every_daemon(node, tmp_path):
    listen = load_config(node.config_path).listen
    with occupied(listen):
        for name, args in daemons(node, tmp_path).items():
            line = the_error(run(*args))
            assert line == f"error: cannot listen on {listen}: the port is in use, or the address is not one " \
                           "of this host's", name


def test_wallet_port_in_use(node, tmp_path):
    wallet = f"127.0.0.1:{free_port()}"
    with occupied(wallet):
        for name in ("signer daemon", "bridge daemon"):
            line = the_error(run(*daemons(node, tmp_path, "--wallet-listen", wallet)[name]))
            assert f"cannot listen on {wallet}: the port is in use" in line, name


def test_wrong_or_missing_passphrase(tmp_path):
    folder = tmp_path / "alice"
    created = run(CLI, "init", "--dir", str(folder), "--node-id", "alice", "--listen", f"127.0.0.1:{free_port()}",
                  env={"FUSION_PRIME_PASSPHRASE": "the right passphrase"})
    assert created.returncode == 0, created.stderr
    (tmp_path / "policy.toml").write_text("[default]\nclients = []\n")
    config, policy = str(folder / "node.toml"), str(tmp_path / "policy.toml")
    for args in ((CLI, "run", "--config", config), (SIGNER, "--config", config, "--policy", policy)):
        line = the_error(run(*args, env={"FUSION_PRIME_PASSPHRASE": "not the right one"}))
        assert "wrong passphrase" in line, args
        line = the_error(run(*args, env={"FUSION_PRIME_PASSPHRASE": ""}))
        assert "$FUSION_PRIME_PASSPHRASE, which is not set" in line, args


@pytest.mark.parametrize("command", [["status"], ["roster", "list"]])
def test_a_reader_that_goes_away_is_one_line_not_a_broken_pipe_traceback(tmp_path, command):
    """``fusion-prime-node status | head``: the reader closes the pipe before the output is written."""
    created = run(CLI, "init", "--dir", str(tmp_path / "n"), "--node-id", "node1", "--key-file")
    assert created.returncode == 0, created.stderr
    proc = subprocess.Popen([sys.executable, "-m", CLI, *command, "--config", str(tmp_path / "n" / "node.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 2, err
    assert err == "error: the output was closed before it was complete (broken pipe)\n", err
