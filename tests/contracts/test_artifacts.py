"""The committed artefacts are exactly what the pinned compiler makes of the sources."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from fp_contracts import ARTIFACTS, ROOT, artifact
from web3 import Web3

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is part of the toolchain (`make setup`)")
def test_committed_artefacts_match_a_fresh_compile() -> None:
    result = subprocess.run(
        [NODE, str(ROOT / "contracts" / "build.js"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_artefacts_have_what_the_bridge_loads() -> None:
    names = sorted(p.stem for p in ARTIFACTS.glob("*.json"))
    assert names == ["Gateway", "SettlementCheckpoints", "SettlementEscrow", "WrappedAsset"]
    for name in names:
        art = artifact(name)
        assert art["contractName"] == name
        assert art["compiler"]["solc"].startswith("0.8.30+commit.73712a01")
        assert art["compiler"]["evmVersion"] == "cancun"
        assert art["bytecode"].startswith("0x") and len(art["bytecode"]) > 1000
        bytes.fromhex(art["bytecode"][2:])
        assert isinstance(art["abi"], list)
        assert art["storageLayout"], "storage layout recorded for upgrade/watcher reviews"


def _event_signature(abi: list[dict], name: str) -> str:
    (ev,) = [e for e in abi if e.get("type") == "event" and e["name"] == name]
    return f"{name}({','.join(i['type'] for i in ev['inputs'])})"


def test_watcher_event_signatures_are_stable() -> None:
    """Watchers filter logs by topic0; changing these signatures is a breaking change."""
    gw = artifact("Gateway")["abi"]
    assert _event_signature(gw, "Burned") == "Burned(bytes32,address,address,uint256,uint256,bytes)"
    assert _event_signature(gw, "Minted") == (
        "Minted(bytes32,address,address,uint256,bytes32,bytes32,uint32,uint256,bytes32,address)"
    )
    assert _event_signature(gw, "Refunded") == "Refunded(bytes32,address,address,uint256,uint256,bytes32)"
    assert _event_signature(gw, "ActionQueued") == "ActionQueued(bytes32,bytes32,uint256)"
    assert _event_signature(gw, "ActionVetoed") == "ActionVetoed(bytes32,address)"
    esc = artifact("SettlementEscrow")["abi"]
    assert _event_signature(esc, "TradeSettled") == "TradeSettled(bytes32,address,address)"
    # the README documents topic0 values; keep them honest
    readme = (ROOT / "contracts" / "README.md").read_text()
    for ev in (e for e in gw + esc if e.get("type") == "event"):
        sig = f"{ev['name']}({','.join(_abi_type(i) for i in ev['inputs'])})"
        assert Web3.to_hex(Web3.keccak(text=sig)) in readme, sig


def _abi_type(item: dict) -> str:
    if item["type"].startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + item["type"][len("tuple"):]
    return item["type"]


def test_typehashes_are_the_documented_ones() -> None:
    """The README's EIP-712 type strings are the contract's (the nodes copy them from there)."""
    readme = (ROOT / "contracts" / "README.md").read_text()
    config = ("AssetConfig(string sourceChain,uint8 destinationKind,uint256 mintCap,uint256 burnCap,"
              "uint256 windowLength,uint256 supplyCeiling,uint256 largeMintThreshold,uint256 minBurn)")
    types = {
        "MINT_ORDER_TYPEHASH": "MintOrder(address asset,bytes32 sourceChain,bytes32 sourceTxId,uint32 vout,"
                               "address recipient,uint256 amount,uint32 signerEpoch,uint256 nonce,uint256 deadline)",
        "REFUND_BURN_TYPEHASH": "RefundBurn(uint256 burnNonce,address asset,address burner,uint256 amount,"
                                "uint32 signerEpoch,uint256 deadline)",
        "ROTATE_SIGNER_TYPEHASH": "RotateSigner(address newSigner,uint256 nonce,uint256 deadline)",
        "PAUSE_TYPEHASH": "Pause(uint256 unpauseCount,uint256 deadline)",
        "UNPAUSE_TYPEHASH": "Unpause(uint256 nonce,uint256 deadline)",
        "ASSET_CONFIG_TYPEHASH": config,
        "CONFIGURE_ASSET_TYPEHASH": "ConfigureAsset(address asset,AssetConfig config,uint256 nonce,uint256 deadline)"
                                    + config,
        "SET_GUARDIAN_TYPEHASH": "SetGuardian(address guardian,uint256 nonce,uint256 deadline)",
    }
    gw = artifact("Gateway")["abi"]
    names = {e["name"] for e in gw if e.get("type") == "function"}
    for name, text in types.items():
        assert name in names, name
        assert Web3.to_hex(Web3.keccak(text=text)) in readme, name
        assert text.split("(")[0] + "(" in readme, name


def test_storage_layout_is_the_documented_one() -> None:
    layout = {(s["label"]): (s["slot"], s["offset"]) for s in artifact("Gateway")["storageLayout"]}
    assert layout["_signer"] == (2, 0)
    assert layout["_epoch"] == (2, 20)
    assert layout["_retiredUntil"] == (2, 24)
    assert layout["_retiredSigner"] == (3, 0)
    assert layout["guardian"] == (4, 0)
    assert layout["paused"] == (4, 20)
    assert layout["unpauseCount"] == (4, 21)
    assert layout["adminNonce"] == (5, 0)
    assert layout["burnCount"] == (6, 0)
    assert layout["mintedDeposit"] == (7, 0)
    assert layout["_assets"] == (8, 0)
    assert layout["burnRecord"] == (9, 0)
    assert layout["_actions"] == (10, 0)
    esc = {(s["label"]): (s["slot"], s["offset"]) for s in artifact("SettlementEscrow")["storageLayout"]}
    assert esc["trades"] == (2, 0)
    json.dumps(layout)  # plain data, loadable without the compiler
