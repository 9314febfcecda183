"""`fusion-prime-node init` is atomic: every argument is checked before a file exists, the folder
is built beside its destination and renamed into place, a failed init leaves nothing and the
same command then succeeds. Also: --advertise (what peers dial, what the certificate names)."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from fusion_prime.node.cli import build_node_folder, plan_init
from fusion_prime.node.cli import main as cli
from fusion_prime.node.config import load_config
from fusion_prime.node.material import NodeMaterial
from fusion_prime.node.storage import StorageError
from fusion_prime.node.tls import certificate_hosts, certificate_node_id

PASSPHRASE = "a long operator passphrase"


def init(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "FUSION_PRIME_PASSPHRASE"}
    environ.update(env or {})
    # by its console-script name, as an operator runs it (installed beside the interpreter)
    return subprocess.run([str(Path(sys.executable).parent / "fusion-prime-node"), "init", *args],
                          capture_output=True, text=True, timeout=120, env=environ)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def test_init_without_passphrase_writes_nothing_and_the_retry_succeeds(tmp_path):
    folder = tmp_path / "ops" / "node1"
    args = ["--dir", str(folder), "--node-id", "node1", "--listen", "127.0.0.1:7001"]
    line = one_error_line(init(*args))
    assert "$FUSION_PRIME_PASSPHRASE, which is not set" in line
    assert leftovers(tmp_path) == []  # not even the parent folder

    short = init(*args, env={"FUSION_PRIME_PASSPHRASE": "short"})
    assert "at least 8 characters" in one_error_line(short)
    assert leftovers(tmp_path) == []

    done = init(*args, env={"FUSION_PRIME_PASSPHRASE": PASSPHRASE})
    assert done.returncode == 0, done.stderr
    assert leftovers(folder.parent) == ["node1"]  # no staging folder left beside it
    assert sorted(p.name for p in folder.iterdir()) == ["data", "identity.key", "node.toml", "peers", "tls.crt",
                                                        "tls.key"]
    for secret in ("identity.key", "tls.key"):
        assert stat.S_IMODE((folder / secret).stat().st_mode) == 0o600
    cfg = load_config(folder / "node.toml")
    assert cfg.database_path.exists() and cfg.me.address == "127.0.0.1:7001"
    NodeMaterial.load(cfg)  # identity, certificate and key agree with the roster entry

    again = init(*args, env={"FUSION_PRIME_PASSPHRASE": PASSPHRASE})
    assert "already exists" in one_error_line(again)
    assert load_config(folder / "node.toml").me == cfg.me  # the node is untouched


def test_a_failure_while_building_removes_the_half_built_folder(tmp_path):
    """The plan passes, then the build fails after the key files were written (the storage
    key is gone by the time the database is created): nothing is left, and the retry works."""
    folder = tmp_path / "node1"
    args = argparse.Namespace(dir=str(folder), node_id="node1", index=1, listen="127.0.0.1:7001", advertise=None,
                              metrics=None, level="128", test_mode=False, key_file=False,
                              passphrase_env="FUSION_PRIME_PASSPHRASE")
    plan = plan_init(args, {"FUSION_PRIME_PASSPHRASE": PASSPHRASE})
    with pytest.raises(StorageError, match="which is not set"):
        build_node_folder(plan, {})
    assert leftovers(tmp_path) == []
    cfg = build_node_folder(plan, {"FUSION_PRIME_PASSPHRASE": PASSPHRASE})
    assert cfg.path == folder / "node.toml" and leftovers(tmp_path) == ["node1"]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--listen", "0.0.0.0:7001"], "give --advertise HOST:PORT"),
    (["--listen", "[::]:7001"], "give --advertise HOST:PORT"),
    (["--listen", "0.0.0.0:7001", "--advertise", "0.0.0.0:7001"], "unspecified address"),
    (["--advertise", "[::]:7001"], "unspecified address"),
    (["--advertise", "node1.example.org"], "expected host:port"),
    (["--listen", "127.0.0.1:99999"], "is not 1-65535"),
    (["--metrics", "0.0.0.0:9101"], "loopback only"),
    (["--level", "test-2048"], "add --test-mode"),
    (["--level", "64"], "--level '64'"),
    (["--node-id", "Node_1"], "--node-id 'Node_1'"),
    (["--index", "0"], "--index 0"),
])
def test_every_bad_argument_is_one_line_and_writes_nothing(tmp_path, capsys, extra, expected):
    base = ["--dir", str(tmp_path / "n"), "--node-id", "node1", "--key-file"]
    assert cli(["init", *base, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert leftovers(tmp_path) == []


def test_a_non_empty_folder_is_refused_and_an_empty_one_is_used(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    line = one_error_line(init("--dir", str(tmp_path / "busy"), "--node-id", "node1", "--key-file"))
    assert "not an empty folder" in line
    assert leftovers(tmp_path / "busy") == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert init("--dir", str(tmp_path / "empty"), "--node-id", "node1", "--key-file").returncode == 0
    assert (tmp_path / "empty" / "node.toml").exists() and leftovers(tmp_path) == ["busy", "empty"]


def _san(folder: Path) -> tuple[str, set[str], set[str]]:
    pem = (folder / "tls.crt").read_bytes()
    x509.load_pem_x509_certificate(pem)
    dns, ips = certificate_hosts(pem)
    return certificate_node_id(pem), dns, ips


def test_advertise_is_the_roster_address_and_the_certificate_names_it(tmp_path):
    by_ip = init("--dir", str(tmp_path / "a"), "--node-id", "node1", "--listen", "0.0.0.0:7001",
                 "--advertise", "10.77.0.11:7001", "--key-file", "--level", "test-2048", "--test-mode")
    assert by_ip.returncode == 0, by_ip.stderr
    cfg = load_config(tmp_path / "a" / "node.toml")
    assert (cfg.listen, cfg.me.address, cfg.test_mode) == ("0.0.0.0:7001", "10.77.0.11:7001", True)
    assert _san(tmp_path / "a") == ("node1", {"node1"}, {"10.77.0.11"})
    assert "peers dial 10.77.0.11:7001" in by_ip.stdout and 'address = "10.77.0.11:7001"' in by_ip.stdout

    by_name = init("--dir", str(tmp_path / "b"), "--node-id", "node2", "--listen", "10.77.0.12:7001",
                   "--advertise", "signer-2.example.org:7001", "--key-file")
    assert by_name.returncode == 0, by_name.stderr
    assert _san(tmp_path / "b") == ("node2", {"node2", "signer-2.example.org"}, set())
    NodeMaterial.load(load_config(tmp_path / "b" / "node.toml"))  # the roster still pins the node id

    default = init("--dir", str(tmp_path / "c"), "--node-id", "node3", "--listen", "127.0.0.1:7003", "--key-file")
    assert default.returncode == 0
    assert load_config(tmp_path / "c" / "node.toml").me.address == "127.0.0.1:7003"
    assert _san(tmp_path / "c")[2] == {"127.0.0.1"}
