"""Bringing the bridge up on a deployed network (issue 17, item 2; docker/README.md): once the group
key exists, an operator runs ``fusion-prime-bridge deploy`` (the Gateway and the wrapped assets,
with the group key as the Gateway's signer; each asset's configuration signed by the group through
a node's wallet API), ``execute-queued`` once the configuration delay has passed on the chain's
clock, and ``configure`` on each node's bridge section - the file docker/prepare.py wrote, which
the running daemon polls until it is complete.

Three signer daemons as separate processes (wallet API over TLS), a real anvil, the commands run
by their console-script name. Checked on the chain: the Gateway's active signer is the group key's
address, each asset's limits are in effect only after execute-queued. Bad input is one line, exit
status 2, and sends nothing (the deployer's nonce) or changes nothing (the bridge section's bytes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from eth_account import Account
from fp_guards import HANG_GUARD
from fp_signer_net import SignerNet
from test_deploy_netns import DOCKER, load_prepare
from web3 import Web3

from fusion_prime.bridge.chains.evm.anvil import AnvilProcess
from fusion_prime.bridge.config import load_bridge_config
from fusion_prime.bridge.deploy import advance_time
from fusion_prime.protocol.identity import PartyIdentity

pytestmark = pytest.mark.xdist_group(name="deploy-bridge")
BRIDGE_CLI = Path(sys.executable).parent / "fusion-prime-bridge"
ADMIN = PartyIdentity.generate()
ETHER = 10**18
MINT_CAP = {a["symbol"]: a["mint_cap"] for a in tomllib.loads((DOCKER / "assets.toml").read_text())["asset"]}


def _bridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BRIDGE_CLI), *args], capture_output=True, text=True, timeout=HANG_GUARD)


def _ok(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


def _assets(*, drop: str = "") -> str:
    """docker/assets.toml (what the docker README runs), without the ``drop`` lines."""
    text = (DOCKER / "assets.toml").read_text()
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(f"{drop} =")) \
        if drop else text


@pytest.fixture(scope="module")
def world(tmp_path_factory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("deploy-bridge")
    net = SignerNet(base / "net", ADMIN)
    anvil = AnvilProcess(31_338).start()
    try:
        net.start_all()
        with net.client_for("node1") as w:
            key_id = bytes(w.create_key(2, 3, "bridge").key_id)
            group = w.public_key(key_id, "m").ethereum_address
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        deployer = Account.create()
        w3.provider.make_request("anvil_setBalance", [deployer.address, hex(100 * ETHER)])  # type: ignore[arg-type]
        files = {"client": base / "client.key", "deployer": base / "deployer.key"}
        files["client"].write_text(ADMIN.secret_bytes().hex())
        files["deployer"].write_text(deployer.key.hex())
        for path in files.values():
            path.chmod(0o600)
        yield net, anvil, w3, key_id, group, deployer, files, base
    finally:
        net.stop_all()
        anvil.stop()


def _deploy_args(net, anvil, key_id: bytes, files: dict[str, Path], assets: Path, out: Path) -> list[str]:  # type: ignore[no-untyped-def]
    return ["deploy", "--rpc", anvil.url, "--key-file", str(files["deployer"]),
            "--guardian", "0x" + "11" * 20, "--assets", str(assets), "--key", key_id.hex(),
            "--wallet-target", f"127.0.0.1:{net.ports['node1']}",
            "--wallet-cert", str(net.by_id["node1"].folder / "tls.crt"), "--wallet-name", "node1",
            "--client-key", str(files["client"]), "--admin-delay", "60", "--out", str(out)]


def test_deploy_execute_and_configure_bring_a_prepared_bridge_section_to_complete(world) -> None:  # type: ignore[no-untyped-def]
    net, anvil, w3, key_id, group, deployer, files, base = world
    prepare = load_prepare()

    # an asset table without its mint cap: refused in one line before any transaction
    broken = base / "broken-assets.toml"
    broken.write_text(_assets(drop="mint_cap"))
    line = _one_line_error(_bridge(*_deploy_args(net, anvil, key_id, files, broken, base / "never.json")))
    assert "missing mint_cap" in line, line
    assert w3.eth.get_transaction_count(deployer.address) == 0 and not (base / "never.json").exists()

    assets = DOCKER / "assets.toml"
    deployment_file = base / "deployment.json"
    out = _ok(_bridge(*_deploy_args(net, anvil, key_id, files, assets, deployment_file)))
    gateway = w3.eth.contract(address=out["gateway"], abi=json.loads(
        (Path(__file__).resolve().parents[2] / "contracts" / "artifacts" / "Gateway.json").read_text())["abi"])
    assert out["signer"] == group and gateway.functions.activeSigner().call() == group
    assert sorted(out["tokens"]) == ["fpBTC", "fpETH"] and [q["symbol"] for q in out["queued"]] == ["fpBTC", "fpETH"]
    for token in out["tokens"].values():  # queued behind the 60 s admin delay: not in effect yet
        assert gateway.functions.assetConfig(token).call()[2] == 0
    # the same file is never overwritten by a second deployment
    assert "exists" in _one_line_error(_bridge(*_deploy_args(net, anvil, key_id, files, assets, deployment_file)))

    # too early by the chain's clock: refused, naming when, nothing sent
    nonce = w3.eth.get_transaction_count(deployer.address)
    execute = ["execute-queued", "--rpc", anvil.url, "--key-file", str(files["deployer"]),
               "--deployment", str(deployment_file)]
    assert "not executable yet: fpBTC from chain time" in _one_line_error(_bridge(*execute))
    assert w3.eth.get_transaction_count(deployer.address) == nonce
    advance_time(w3, 61)
    assert _ok(_bridge(*execute)) == {"executed": ["fpBTC", "fpETH"], "already_in_effect": []}
    for symbol, token in out["tokens"].items():
        assert gateway.functions.assetConfig(token).call()[2] == MINT_CAP[symbol], symbol
    # again (as after a crash half-way): nothing left to send
    nonce = w3.eth.get_transaction_count(deployer.address)
    assert _ok(_bridge(*execute)) == {"executed": [], "already_in_effect": ["fpBTC", "fpETH"]}
    assert w3.eth.get_transaction_count(deployer.address) == nonce

    # the assets wrap the chains of the bridge section prepare.py writes
    assert {a["source_chain"] for a in tomllib.loads(assets.read_text())["asset"]} == {
        prepare.BITCOIN_REGTEST, f"eip155:{prepare.SOURCE_CHAIN_ID}"}
    # node1's bridge section as prepare.py writes it: incomplete until configured
    plan = prepare.load_plan(DOCKER / "operators.toml")
    section = base / "bridge.toml"
    section.write_text(prepare.bridge_toml(plan, plan.operators[0], "an rpc password"))
    section.chmod(0o600)
    assert not load_bridge_config(section).complete

    # a deployment that wraps only one of the section's two chains leaves it incomplete: refused, unchanged
    partial = base / "one-asset.json"
    data = json.loads(deployment_file.read_text())
    partial.write_text(json.dumps({**data, "tokens": {"fpBTC": data["tokens"]["fpBTC"]},
                                   "source_chains": {"fpBTC": data["source_chains"]["fpBTC"]}}))
    before = section.read_bytes()
    assert "still incomplete" in _one_line_error(_bridge("configure", "--bridge", str(section), "--deployment",
                                                         str(partial), "--key", key_id.hex()))
    assert section.read_bytes() == before and not section.with_name("bridge.toml.partial").exists()

    done = _ok(_bridge("configure", "--bridge", str(section), "--deployment", str(deployment_file),
                       "--key", key_id.hex()))
    bcfg = load_bridge_config(section)
    assert bcfg.complete and bcfg.key_id == key_id and bcfg.gateway == out["gateway"]
    assert {c.caip2: c.asset for c in bcfg.chains} == {
        prepare.BITCOIN_REGTEST: out["tokens"]["fpBTC"], f"eip155:{prepare.SOURCE_CHAIN_ID}": out["tokens"]["fpETH"]}
    assert done["assets"] == {c.caip2: c.asset for c in bcfg.chains}
    assert section.stat().st_mode & 0o777 == 0o600  # it holds the Bitcoin RPC password
    assert [p.node_id for p in bcfg.peers] == ["node2", "node3"]  # the rest of the section kept
