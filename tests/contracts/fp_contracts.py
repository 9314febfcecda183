"""Helpers for the contract tests: anvil chains, the committed artefacts, EIP-712 signing.

Every anvil is started on a free loopback port by a fixture (see conftest.py) and killed at the
end, so the tests need nothing running beforehand and leave nothing behind. Contracts are deployed
from `contracts/artifacts/*.json` (the same files the bridge loads), never compiled at test time.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "contracts" / "artifacts"
ANVIL = ROOT / "node_modules" / ".bin" / "anvil"

CHAIN_A = 31_337
CHAIN_B = 31_338

EIP712_DOMAIN = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def artifact(name: str) -> dict[str, Any]:
    return json.loads((ARTIFACTS / f"{name}.json").read_text())


@dataclass
class Anvil:
    chain_id: int
    url: str
    process: subprocess.Popen[bytes]
    w3: Web3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_anvil(chain_id: int) -> Anvil:
    """Start anvil on a free loopback port and wait until it answers with `chain_id`."""
    if not ANVIL.exists():
        raise RuntimeError(f"{ANVIL} is missing: run `make setup` (npm ci installs anvil)")
    last_error = ""
    for _attempt in range(3):  # the probed port can be taken before anvil binds it; retry then
        port = _free_port()
        proc = subprocess.Popen(
            [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id),
             "--accounts", "4", "--silent"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 30}))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if w3.eth.chain_id == chain_id:
                    return Anvil(chain_id, f"http://127.0.0.1:{port}", proc, w3)
            except Exception:  # not listening yet (requests raises its own connection errors)
                time.sleep(0.05)
        if proc.poll() is not None and proc.stderr:
            last_error = proc.stderr.read().decode(errors="replace")
        stop_anvil(proc)
    raise RuntimeError(f"anvil did not start: {last_error}")


def stop_anvil(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()


def transact(w3: Web3, fn: Any, sender: str, value: int = 0) -> Any:
    """Send a contract call as `sender` (an unlocked or impersonated anvil account), wait, and
    return the receipt; raises if the transaction reverted."""
    tx_hash = fn.transact({"from": sender, "value": value})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    assert receipt["status"] == 1, f"transaction reverted: {receipt}"
    return receipt


def deploy(w3: Web3, name: str, sender: str, *args: Any) -> Contract:
    art = artifact(name)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    receipt = transact(w3, factory.constructor(*args), sender)
    return w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])


def fund_and_impersonate(w3: Web3, address: str, wei: int = 10**20) -> None:
    """Let the address of a locally held key send transactions on anvil without a keystore."""
    w3.provider.make_request("anvil_setBalance", [address, hex(wei)])
    w3.provider.make_request("anvil_impersonateAccount", [address])


def error_selector(abi: list[dict[str, Any]], name: str) -> str:
    for item in abi:
        if item.get("type") == "error" and item["name"] == name:
            sig = f"{name}({','.join(i['type'] for i in item['inputs'])})"
            return Web3.to_hex(Web3.keccak(text=sig))[:10]
    raise KeyError(name)


def revert_selector(error: ContractLogicError) -> str:
    return error.data[:10] if isinstance(error.data, str) else ""


def sign_typed(account: LocalAccount, domain: dict[str, Any], types: dict[str, Any], primary: str,
               message: dict[str, Any]) -> bytes:
    """EIP-712 signature made by eth-account's own implementation, independent of the contracts."""
    full = {
        "types": {"EIP712Domain": EIP712_DOMAIN, **types},
        "primaryType": primary,
        "domain": domain,
        "message": message,
    }
    return bytes(account.sign_message(encode_typed_data(full_message=full)).signature)
