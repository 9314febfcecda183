"""Start and stop local ``anvil`` chains (foundry) for the devnet and tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from fusion_prime.node.devnet import free_ports


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (the caller binds it promptly); one home for the
    choice, below the ephemeral range: :func:`fusion_prime.node.devnet.free_ports`."""
    return free_ports(1, host)[0]


def find_anvil() -> str:
    """``$ANVIL_BIN``, else the repository's ``node_modules/.bin/anvil``, else ``anvil`` on PATH."""
    env = os.environ.get("ANVIL_BIN")
    if env:
        return env
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "node_modules" / ".bin" / "anvil"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("anvil")
    if found:
        return found
    raise FileNotFoundError("anvil not found: run `make setup` (npm) or set ANVIL_BIN")


class AnvilProcess:
    """One anvil chain on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(self, chain_id: int, port: int | None = None, block_time: float | None = None,
                 host: str = "127.0.0.1") -> None:
        if not 0 < chain_id < 2**63:
            raise ValueError("chain id out of range")
        self.chain_id = chain_id
        self.host = host
        self.port = port or free_port(host)
        self.block_time = block_time
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> AnvilProcess:
        cmd = [find_anvil(), "--host", self.host, "--port", str(self.port), "--chain-id", str(self.chain_id),
               "--silent"]
        if self.block_time is not None:
            cmd += ["--block-time", str(self.block_time)]
        # its own session: a Ctrl-C in the terminal reaches the program that owns this anvil, which
        # stops it in order (the demo's --stay shuts the daemons down first), not anvil directly
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,  # noqa: S603
                                      start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"anvil exited with {self._proc.returncode}: {err.strip()}")
            try:
                if self._rpc("eth_chainId") == hex(self.chain_id):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"anvil did not answer on {self.url} within {timeout}s")

    def _rpc(self, method: str, params: list[object] | None = None) -> object:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})  # noqa: S310
        with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310 - local http url we built
            return json.loads(resp.read())["result"]

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def __enter__(self) -> AnvilProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
