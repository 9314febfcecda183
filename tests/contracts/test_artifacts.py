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
    assert names == ["Gateway", "SettlementEscrow", "WrappedAsset"]
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
        "Minted(bytes32,address,address,uint256,uint256,bytes32,uint32,uint256,bytes32,address)"
    )
    esc = artifact("SettlementEscrow")["abi"]
    assert _event_signature(esc, "TradeSettled") == "TradeSettled(bytes32,address,address)"
    # the README documents topic0 values; keep them honest
    readme = (ROOT / "contracts" / "README.md").read_text()
    for sig in ("Burned(bytes32,address,address,uint256,uint256,bytes)",
                "Minted(bytes32,address,address,uint256,uint256,bytes32,uint32,uint256,bytes32,address)"):
        assert Web3.to_hex(Web3.keccak(text=sig)) in readme, sig


def test_storage_layout_is_the_documented_one() -> None:
    layout = {(s["label"]): (s["slot"], s["offset"]) for s in artifact("Gateway")["storageLayout"]}
    assert layout["_signer"] == (2, 0)
    assert layout["_pendingActivatesAt"] == (2, 20)
    assert layout["paused"] == (5, 20)
    assert layout["mintedDeposit"] == (8, 0)
    esc = {(s["label"]): (s["slot"], s["offset"]) for s in artifact("SettlementEscrow")["storageLayout"]}
    assert esc["trades"] == (2, 0)
    json.dumps(layout)  # plain data, loadable without the compiler
