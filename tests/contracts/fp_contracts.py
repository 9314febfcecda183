"""Helpers for the contract tests: anvil chains, the committed artefacts, EIP-712 signing.

Every anvil is started on a free loopback port by a fixture (see conftest.py) and killed at the
end, so the tests need nothing running beforehand and leave nothing behind. Contracts are deployed
from `contracts/artifacts/*.json` (the same files the bridge loads), never compiled at test time.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi import encode as abi_encode
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from fp_guards import HANG_GUARD
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from fusion_prime.node.devnet import free_port

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


def start_anvil(chain_id: int) -> Anvil:
    """Start anvil on a free loopback port and wait until it answers with `chain_id`."""
    if not ANVIL.exists():
        raise RuntimeError(f"{ANVIL} is missing: run `make setup` (npm ci installs anvil)")
    last_error = ""
    for _attempt in range(3):  # the probed port can be taken before anvil binds it; retry then
        port = free_port()
        proc = subprocess.Popen(
            [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id),
             "--accounts", "4", "--silent"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 30}))
        deadline = time.monotonic() + HANG_GUARD
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


# ---- a gateway deployment driven from Python (shared by the gateway and escrow tests) ----

ADMIN_DELAY = 3600
GUARDIAN_DELAY = 7200
LARGE_MINT_DELAY = 600
RETENTION = 600
CAP = 100 * 10**8
BURN_CAP = 100 * 10**8
CEILING = 1_000 * 10**8
LARGE_MINT_THRESHOLD = 50 * 10**8
WINDOW = 86_400
MIN_BURN = 10_000
DEST_EVM = 1
DEST_BITCOIN = 2
# CAIP-2 id of Bitcoin mainnet (the genesis hash prefix); the gateway keys a chain by keccak256 of it.
BTC_CAIP2 = "bip122:000000000019d6689c085ae165831e93"
TEST_VECTORS = ROOT / "contracts" / "test-vectors" / "deposit_ids.json"


def chain_key(caip2: str) -> bytes:
    """The gateway's key of a chain: keccak256 of its canonical CAIP-2 id (see Gateway.chainKeyOf)."""
    return bytes(Web3.keccak(text=caip2))


def deposit_id(caip2: str, source_tx_id: bytes, vout: int) -> bytes:
    """keccak256(abi.encode(bytes32 chainKey, bytes32 sourceTxId, uint32 vout)) — Gateway.depositIdOf."""
    return bytes(Web3.keccak(abi_encode(["bytes32", "bytes32", "uint32"], [chain_key(caip2), source_tx_id, vout])))


BTC_CHAIN = chain_key(BTC_CAIP2)

MINT_ORDER_TYPES = {
    "MintOrder": [
        {"name": "asset", "type": "address"},
        {"name": "sourceChain", "type": "bytes32"},
        {"name": "sourceTxId", "type": "bytes32"},
        {"name": "vout", "type": "uint32"},
        {"name": "recipient", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "signerEpoch", "type": "uint32"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}
REFUND_TYPES = {
    "RefundBurn": [
        {"name": "burnNonce", "type": "uint256"},
        {"name": "asset", "type": "address"},
        {"name": "burner", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "signerEpoch", "type": "uint32"},
        {"name": "deadline", "type": "uint256"},
    ]
}
ASSET_CONFIG_FIELDS = [
    ("sourceChain", "string"), ("destinationKind", "uint8"), ("mintCap", "uint256"), ("burnCap", "uint256"),
    ("windowLength", "uint256"), ("supplyCeiling", "uint256"), ("largeMintThreshold", "uint256"),
    ("minBurn", "uint256"),
]
CONFIGURE_TYPES = {
    "ConfigureAsset": [
        {"name": "asset", "type": "address"},
        {"name": "config", "type": "AssetConfig"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ],
    "AssetConfig": [{"name": n, "type": t} for n, t in ASSET_CONFIG_FIELDS],
}


def btc_config(**overrides: Any) -> dict[str, Any]:
    config = {"sourceChain": BTC_CAIP2, "destinationKind": DEST_BITCOIN, "mintCap": CAP, "burnCap": BURN_CAP,
              "windowLength": WINDOW, "supplyCeiling": CEILING, "largeMintThreshold": LARGE_MINT_THRESHOLD,
              "minBurn": MIN_BURN}
    config.update(overrides)
    return config


def config_tuple(config: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(config[n] for n, _ in ASSET_CONFIG_FIELDS)


def domain(chain: Anvil, gateway: Contract) -> dict[str, Any]:
    return {"name": "Fusion Prime Gateway", "version": "1", "chainId": chain.chain_id,
            "verifyingContract": gateway.address}


def now(chain: Anvil) -> int:
    return chain.w3.eth.get_block("latest")["timestamp"]


def advance(chain: Anvil, seconds: int) -> None:
    """Move the chain's clock forward and mine a block."""
    chain.w3.provider.make_request("evm_increaseTime", [seconds])
    chain.w3.provider.make_request("evm_mine", [])


def admin_sign(key: LocalAccount, chain: Anvil, gateway: Contract, primary: str,
               fields: list[tuple[str, str, Any]]) -> bytes:
    types = {primary: [{"name": n, "type": t} for n, t, _ in fields]}
    return sign_typed(key, domain(chain, gateway), types, primary, {n: v for n, _, v in fields})


class Bridge:
    """One deployment: gateway + fpBTC configured (the first configuration waits ADMIN_DELAY), group key held
    locally, the guardian an unlocked anvil account."""

    def __init__(self, chain: Anvil, group: LocalAccount, deployer: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        w3 = chain.w3
        self.chain = chain
        self.group = group
        self.deployer = deployer or w3.eth.accounts[0]
        self.relayer = w3.eth.accounts[1]
        self.guardian = w3.eth.accounts[3]
        self.gateway = deploy(w3, "Gateway", self.deployer, group.address, self.guardian, ADMIN_DELAY,
                              GUARDIAN_DELAY, LARGE_MINT_DELAY, RETENTION)
        self.token = deploy(w3, "WrappedAsset", self.deployer, "Fusion Prime BTC", "fpBTC", 8, self.gateway.address)
        self.configure(config or btc_config(), wait=True)

    def epoch(self) -> int:
        return self.gateway.functions.signerSchedule().call()[1]

    def sign_configure(self, config: dict[str, Any], nonce: int, deadline: int,
                       key: LocalAccount | None = None) -> bytes:
        message = {"asset": self.token.address, "config": config, "nonce": nonce, "deadline": deadline}
        return sign_typed(key or self.group, domain(self.chain, self.gateway), CONFIGURE_TYPES, "ConfigureAsset",
                          message)

    def configure(self, config: dict[str, Any], wait: bool = False) -> Any:
        """Propose a configuration; with wait=True also wait out the delay and execute it if it was queued."""
        nonce = self.gateway.functions.adminNonce().call()
        deadline = now(self.chain) + 3600
        sig = self.sign_configure(config, nonce, deadline)
        receipt = transact(self.chain.w3, self.gateway.functions.configureAsset(
            self.token.address, config_tuple(config), nonce, deadline, sig), self.relayer)
        queued = self.gateway.events.AssetConfigProposed().process_receipt(receipt, errors=DISCARD)
        if wait and queued:
            advance(self.chain, ADMIN_DELAY)
            receipt = transact(self.chain.w3, self.gateway.functions.executeConfigureAsset(
                self.token.address, config_tuple(config), nonce, deadline), self.relayer)
        return receipt

    def admin(self, primary: str, fields: list[tuple[str, str, Any]], call: Any, key: LocalAccount | None = None):
        nonce = self.gateway.functions.adminNonce().call()
        deadline = now(self.chain) + 3600
        sig = admin_sign(key or self.group, self.chain, self.gateway, primary,
                         [*fields, ("nonce", "uint256", nonce), ("deadline", "uint256", deadline)])
        return transact(self.chain.w3, call(nonce, deadline, sig), self.relayer), nonce, deadline

    def order(self, txid: bytes, vout: int, amount: int, recipient: str) -> dict[str, Any]:
        return {"asset": self.token.address, "sourceChain": BTC_CHAIN, "sourceTxId": txid, "vout": vout,
                "recipient": recipient, "amount": amount, "signerEpoch": self.epoch(),
                "nonce": int.from_bytes(txid[:8], "big") + vout, "deadline": now(self.chain) + 3600}

    def sign(self, order: dict[str, Any], key: LocalAccount | None = None) -> bytes:
        return sign_typed(key or self.group, domain(self.chain, self.gateway), MINT_ORDER_TYPES, "MintOrder", order)

    def mint_call(self, order: dict[str, Any], sig: bytes) -> Any:
        as_tuple = tuple(order[f["name"]] for f in MINT_ORDER_TYPES["MintOrder"])
        return self.gateway.functions.mint(as_tuple, sig)

    def refund(self, burn_nonce: int, burner: str, amount: int) -> dict[str, Any]:
        return {"burnNonce": burn_nonce, "asset": self.token.address, "burner": burner, "amount": amount,
                "signerEpoch": self.epoch(), "deadline": now(self.chain) + 3600}

    def sign_refund(self, refund: dict[str, Any], key: LocalAccount | None = None) -> bytes:
        return sign_typed(key or self.group, domain(self.chain, self.gateway), REFUND_TYPES, "RefundBurn", refund)

    def refund_call(self, refund: dict[str, Any], sig: bytes) -> Any:
        as_tuple = tuple(refund[f["name"]] for f in REFUND_TYPES["RefundBurn"])
        return self.gateway.functions.refund(as_tuple, sig)
