"""Proof of reserves against real chains: the Bitcoin devnet (libbitcoinkernel behind the Bitcoin
Core JSON-RPC façade), a source anvil holding ETH and a destination anvil with the Gateway, fpBTC
and fpETH deployed and minted by orders a local group key signed.

Coins sit at a custody and a deposit address of that key (and one deposit was swept, so a spent
deposit output exists), ETH at a custody and a deposit address, one fpBTC burn is in flight. A
report built over the real readers verifies; each tampering fails with its own problem. The checks
made here beside ``verify_report`` use other tools: eth-account recovers the signer of each EVM
attestation, the ``bip32`` package derives the child keys, web3 reads the supply directly.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bip32 import BIP32
from coincurve import PrivateKey
from eth_account import Account
from fp_bridge_net import Miner
from fp_guards import HANG_GUARD
from web3 import Web3

from fusion_prime.bridge.chains.bitcoin.encoding import parse_hash_hex
from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer
from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from fusion_prime.bridge.chains.evm.anvil import AnvilProcess
from fusion_prime.bridge.chainview import artifact, gateway_contract
from fusion_prime.bridge.custody import custody_address
from fusion_prime.bridge.deploy import DEST_BITCOIN, DEST_EVM, AssetSpec, deploy_bridge
from fusion_prime.bridge.derivation import deposit_address
from fusion_prime.bridge.orders import MintOrder, encode_signature
from fusion_prime.bridge.reserves import (
    AddressProof,
    AssetPlan,
    BitcoinRPCReader,
    Challenge,
    GatewayRef,
    InFlightWithdrawal,
    ReportUtxo,
    ReserveAddress,
    ReservesReport,
    Totals,
    Web3Reader,
    attestation_digest,
    build_report,
    latest_challenge,
    main,
    verify_report,
)
from fusion_prime.protocol.addresses import ethereum_address, p2wpkh_address
from fusion_prime.protocol.curve import Point, Q
from fusion_prime.protocol.hd import derive, xpub
from fusion_prime.signer.bitcoin import address_to_script, p2wpkh_script

BTC_CHAIN = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
SRC_CHAIN = "eip155:31337"
DST_CHAIN = "eip155:31338"
COIN = 100_000_000
ETHER = 10**18
FEE = 2_000


class Group:
    """The group key in one place: a test stand-in for the threshold network."""

    def __init__(self) -> None:
        self.secret = int.from_bytes(secrets.token_bytes(32), "big") % Q or 1
        self.key = Point.base_mul(self.secret)
        self.chain_code = secrets.token_bytes(32)

    def child_secret(self, path: Any) -> bytes:
        return ((self.secret + derive(self.key, self.chain_code, path).tweak) % Q).to_bytes(32, "big")

    def sign(self, digest: bytes, path: str) -> tuple[int, int]:
        sig = PrivateKey(self.child_secret(path)).sign_recoverable(digest, hasher=None)
        return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")

    def sign_root(self, digest: bytes) -> tuple[int, int, int]:
        sig = PrivateKey(self.secret.to_bytes(32, "big")).sign_recoverable(digest, hasher=None)
        return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]


@dataclass
class Env:
    rpc: BitcoinRPC
    rpc_url: str
    miner: Miner
    src: Web3
    dst: Web3
    src_url: str
    dst_url: str
    group: Group
    gateway: Any
    tokens: dict[str, Any]
    readers: dict[str, Any]
    btc_custody: Any
    btc_deposit: Any
    btc_swept: Any
    swept_outpoint: tuple[str, int, int, int]  # txid, vout, value, height of the spent deposit output
    eth_custody: Any
    eth_deposit: Any
    burner: str
    burned: int

    def addresses(self) -> list[ReserveAddress]:
        return [ReserveAddress.custody(BTC_CHAIN), ReserveAddress.deposit(BTC_CHAIN, self.btc_deposit.path),
                ReserveAddress.deposit(BTC_CHAIN, self.btc_swept.path), ReserveAddress.custody(SRC_CHAIN),
                ReserveAddress.deposit(SRC_CHAIN, self.eth_deposit.path)]

    def plans(self) -> list[AssetPlan]:
        return [AssetPlan("fpBTC", BTC_CHAIN, self.tokens["fpBTC"].address, tolerance=10_000,
                          in_flight=(InFlightWithdrawal(1, self.burner, self.burned),)),
                AssetPlan("fpETH", SRC_CHAIN, self.tokens["fpETH"].address, tolerance=10**15)]

    def build(self, **overrides: Any) -> ReservesReport:
        args: dict[str, Any] = dict(
            challenge=latest_challenge(self.readers[DST_CHAIN], DST_CHAIN), group_key=self.group.key.to_bytes(),
            chain_code=self.group.chain_code, gateway=GatewayRef(DST_CHAIN, self.gateway.address),
            assets=self.plans(), addresses=self.addresses(), sign=self.group.sign, readers=self.readers)
        args.update(overrides)
        return build_report(**args)

    def spend(self, txid: str, vout: int, value: int, path: Any, to_script: bytes) -> str:
        """Spend a group-controlled output (as the network would) and mine it."""
        tx = Tx(2, [TxIn(OutPoint(parse_hash_hex(txid), vout), sequence=0xFFFFFFFD)], [TxOut(value - FEE, to_script)])
        sign_p2wpkh(tx, 0, self.group.child_secret(path), value)
        sent = self.rpc.sendrawtransaction(tx.serialize().hex())
        self.miner.mine(1)
        return sent

    def mine_dst(self, blocks: int) -> None:
        for _ in range(blocks):
            self.dst.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def _transact(w3: Web3, fn: Any, sender: str) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}), timeout=HANG_GUARD)
    assert receipt["status"] == 1
    return receipt


def _mint(env_dst: Web3, gateway: Any, group: Group, token: str, source: str, txid: str, vout: int, recipient: str,
          amount: int, nonce: int) -> None:
    deadline = int(env_dst.eth.get_block("latest")["timestamp"]) + 3600
    order = MintOrder.create(asset=token, source_chain=source, source_txid=txid, vout=vout, recipient=recipient,
                             amount=amount, signer_epoch=0, nonce=nonce, deadline=deadline)
    r, s, rec = group.sign_root(order.digest(gateway.address, 31338))
    t = (order.asset, order.source_chain_key, bytes.fromhex(order.source_txid), order.vout, order.recipient,
         order.amount, order.signer_epoch, order.nonce, order.deadline)
    _transact(env_dst, gateway.functions.mint(t, encode_signature(r, s, rec)), env_dst.eth.accounts[2])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("reserves")
    btc_node = RegtestNode(base / "btc")
    server = BitcoinRPCServer(btc_node, user="tester", password="secret").start()
    rpc = BitcoinRPC(server.url, "tester", "secret")
    src_anvil, dst_anvil = AnvilProcess(31_337).start(), AnvilProcess(31_338).start()
    try:
        src, dst = Web3(Web3.HTTPProvider(src_anvil.url)), Web3(Web3.HTTPProvider(dst_anvil.url))
        group = Group()
        miner = Miner(rpc)
        miner.fund(4)
        recipient = dst.eth.accounts[1]
        btc_custody = custody_address(group.key, group.chain_code, BTC_CHAIN)
        btc_deposit = deposit_address(group.key, group.chain_code, BTC_CHAIN, DST_CHAIN, recipient)
        btc_swept = deposit_address(group.key, group.chain_code, BTC_CHAIN, DST_CHAIN, dst.eth.accounts[4])
        eth_custody = custody_address(group.key, group.chain_code, SRC_CHAIN)
        eth_deposit = deposit_address(group.key, group.chain_code, SRC_CHAIN, DST_CHAIN, recipient)
        # Bitcoin: 2 BTC at custody, 1 BTC at a deposit address, 0.5 BTC deposited and swept to custody
        custody_tx, custody_vout = miner.pay(btc_custody.address, 2 * COIN)
        deposit_tx, deposit_vout = miner.pay(btc_deposit.address, COIN)
        swept_tx, swept_vout = miner.pay(btc_swept.address, COIN // 2)
        miner.mine(1)
        swept_height = rpc.getblockcount()
        env_partial = Env(rpc, server.url, miner, src, dst, src_anvil.url, dst_anvil.url, group, None, {}, {},
                          btc_custody, btc_deposit, btc_swept, (swept_tx, swept_vout, COIN // 2, swept_height),
                          eth_custody, eth_deposit, recipient, 0)
        env_partial.spend(swept_tx, swept_vout, COIN // 2, btc_swept.path, p2wpkh_script(btc_custody.public_key))
        # ETH: 5 ETH at custody, 1 ETH at a deposit address
        for address, amount in ((eth_custody.address, 5 * ETHER), (eth_deposit.address, ETHER)):
            _transact(src, _eth_transfer(src, address, amount), src.eth.accounts[0])
        # the Gateway, signed for by the group key itself (signer path m)
        specs = [AssetSpec("Fusion Prime BTC", "fpBTC", 8, BTC_CHAIN, DEST_BITCOIN, 1000 * COIN, 1000 * COIN, 86_400,
                           10_000 * COIN, 500 * COIN, 10_000),
                 AssetSpec("Fusion Prime ETH", "fpETH", 18, SRC_CHAIN, DEST_EVM, 1000 * ETHER, 1000 * ETHER, 86_400,
                           10_000 * ETHER, 500 * ETHER, 10**15)]
        deployment = deploy_bridge(dst, sender=dst.eth.accounts[0], signer=ethereum_address(group.key),
                                   guardian=dst.eth.accounts[3], assets=specs, sign_digest=group.sign_root,
                                   devnet=True, admin_delay=60, guardian_delay=120, large_mint_delay=60,
                                   signer_retention=60)
        gateway = gateway_contract(dst, deployment.gateway)
        token_abi = artifact("WrappedAsset")["abi"]
        tokens = {s: dst.eth.contract(address=a, abi=token_abi) for s, a in deployment.tokens.items()}
        # supply: 3 fpBTC minted against the deposits (3.4999 BTC in custody), 0.2 burned and unpaid
        _mint(dst, gateway, group, tokens["fpBTC"].address, BTC_CHAIN, custody_tx, custody_vout, recipient,
              2 * COIN, 1)
        _mint(dst, gateway, group, tokens["fpBTC"].address, BTC_CHAIN, deposit_tx, deposit_vout, recipient, COIN, 2)
        burned = COIN // 5
        _transact(dst, gateway.functions.burn(tokens["fpBTC"].address, burned, miner.address.encode()), recipient)
        # 5 fpETH minted (6 ETH in custody)
        _mint(dst, gateway, group, tokens["fpETH"].address, SRC_CHAIN, "ab" * 32, 0, recipient, 5 * ETHER, 3)
        readers = {BTC_CHAIN: BitcoinRPCReader(rpc), SRC_CHAIN: Web3Reader(src), DST_CHAIN: Web3Reader(dst)}
        yield dataclasses.replace(env_partial, gateway=gateway, tokens=tokens, readers=readers, burned=burned)
    finally:
        src_anvil.stop()
        dst_anvil.stop()
        rpc.close()
        server.stop()
        btc_node.close()


def _eth_transfer(w3: Web3, to: str, value: int) -> Any:
    """A plain value transfer with the ``transact`` interface ``_transact`` expects."""
    class Transfer:
        def transact(self, tx: dict[str, Any]) -> Any:
            return w3.eth.send_transaction({**tx, "to": to, "value": value})

    return Transfer()


def _sign_proof(env: Env, report: ReservesReport, chain: str, path: Any, role: str, balance: int,
                utxos: tuple[ReportUtxo, ...] | None) -> AddressProof:
    """An address proof made here, by the group key, as the builder would."""
    child = derive(env.group.key, env.group.chain_code, path).public_key
    address = p2wpkh_address(child, "regtest") if chain == BTC_CHAIN else ethereum_address(child)
    r, s = env.group.sign(attestation_digest(report.challenge, chain, address), "m/" + "/".join(map(str, path)))
    return AddressProof(role, address, tuple(path), child.to_bytes(), r.to_bytes(32, "big") + s.to_bytes(32, "big"),
                        balance, utxos)


def _with_addresses(asset: Any, addresses: tuple[AddressProof, ...], supply: int | None = None) -> Any:
    """``asset`` with other address proofs (and supply), totals kept consistent."""
    custody = sum(p.balance for p in addresses)
    amount = asset.supply.amount if supply is None else supply
    pending = sum(w.amount for w in asset.in_flight)
    return dataclasses.replace(asset, addresses=addresses, supply=dataclasses.replace(asset.supply, amount=amount),
                               totals=Totals(custody, amount, pending, amount + pending))


def _replace_asset(report: ReservesReport, index: int, asset: Any) -> ReservesReport:
    assets = list(report.assets)
    assets[index] = asset
    return dataclasses.replace(report, assets=tuple(assets))


# -------------------------------------------------------------------------------- valid

def test_a_fresh_report_verifies_and_says_what_independent_tools_say(env: Env) -> None:
    report = env.build()
    assert verify_report(report.to_json(), env.readers, expected_group_key=env.group.key.to_bytes()) == []
    btc, eth = report.assets
    # balances as the chains report them, read here without the module's readers
    scan = env.rpc.scantxoutset("start", [f"addr({env.btc_custody.address})", f"addr({env.btc_deposit.address})"])
    on_chain = sum(round(u["amount"] * COIN) for u in scan["unspents"])
    assert btc.totals.custody == on_chain == 2 * COIN + COIN // 2 - FEE + COIN
    assert {p.address for p in btc.addresses} == {env.btc_custody.address, env.btc_deposit.address}  # swept: empty
    assert eth.totals.custody == env.src.eth.get_balance(env.eth_custody.address) + env.src.eth.get_balance(
        env.eth_deposit.address) == 6 * ETHER
    assert btc.totals.supply == env.tokens["fpBTC"].functions.totalSupply().call() == 3 * COIN - env.burned
    assert btc.totals.liabilities == 3 * COIN and eth.totals.liabilities == 5 * ETHER
    # the child keys are the group's (independent BIP32) and each EVM attestation recovers to its address
    root = BIP32.from_xpub(xpub(env.group.key, env.group.chain_code))
    for asset in report.assets:
        for p in asset.addresses:
            assert root.get_pubkey_from_path("m/" + "/".join(map(str, p.path))) == p.public_key
            digest = attestation_digest(report.challenge, asset.source_chain, p.address)
            if asset.source_chain == SRC_CHAIN:
                recovered = {Account._recover_hash(digest, vrs=(v, int.from_bytes(p.signature[:32], "big"),
                                                               int.from_bytes(p.signature[32:], "big")))
                             for v in (27, 28)}
                assert p.address in recovered
            else:
                assert address_to_script(p.address, "regtest") == p2wpkh_script(p.public_key)


def test_the_verify_command_accepts_a_valid_report_and_rejects_a_tampered_one(
        env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = env.build()
    good = tmp_path / "reserves.json"
    good.write_text(report.to_json())
    options = ["--bitcoin-rpc", env.rpc_url.replace("http://", "http://tester:secret@"),
               "--evm", f"{SRC_CHAIN}={env.src_url}", "--evm", f"{DST_CHAIN}={env.dst_url}",
               "--group-key", env.group.key.to_bytes().hex()]
    proc = subprocess.run([sys.executable, "-m", "fusion_prime.bridge.reserves", "verify", str(good), *options],
                          capture_output=True, text=True, timeout=HANG_GUARD, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("valid: proof of reserves against eip155:31338@"), lines
    data = json.loads(report.to_json())
    data["assets"][0]["supply"]["amount"] = "1"
    data["assets"][0]["totals"].update(supply="1", liabilities=str(1 + env.burned))
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["verify", str(bad), *options]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("problem: fpBTC: supply stated 1, but totalSupply") and out[-1] == "INVALID: 1 problem(s)"
    assert main(["verify", str(tmp_path / "missing.json"), *options]) == 2


def test_a_coin_spent_after_the_stated_height_keeps_the_report_valid(env: Env) -> None:
    report = env.build()
    coin = next(p for p in report.assets[0].addresses if p.address == env.btc_deposit.address).utxos[0]  # type: ignore[index]
    # the deposit is swept to custody after the report: at the stated height it was still there
    env.spend(coin.txid, coin.vout, coin.value, env.btc_deposit.path, p2wpkh_script(env.btc_custody.public_key))
    assert env.rpc.gettxout(coin.txid, coin.vout, False) is None
    # and half an ether leaves the ETH custody address (signed by its child key, as the network would)
    custody = Account.from_key(env.group.child_secret(env.eth_custody.path))
    assert custody.address == env.eth_custody.address
    tx = custody.sign_transaction({"to": env.src.eth.accounts[0], "value": ETHER // 2, "gas": 21_000,
                                   "gasPrice": env.src.eth.gas_price, "nonce": env.src.eth.get_transaction_count(
                                       custody.address), "chainId": 31337})
    env.src.eth.wait_for_transaction_receipt(env.src.eth.send_raw_transaction(tx.raw_transaction), timeout=HANG_GUARD)
    stated = next(p.balance for p in report.assets[1].addresses if p.address == custody.address)
    assert env.src.eth.get_balance(custody.address) < stated - ETHER // 2
    assert verify_report(report, env.readers) == []
    # the same report stated at the new head would not hold: the balances are read at the stated block
    eth = report.assets[1]
    head = env.src.eth.block_number
    moved = dataclasses.replace(eth, height=head, block_hash="0x" + bytes(env.src.eth.get_block(head)["hash"]).hex())
    problems = verify_report(_replace_asset(report, 1, moved), env.readers)
    assert len(problems) == 1 and "balance at block" in problems[0], problems


# -------------------------------------------------------------------------- tamperings

def test_a_raised_balance_is_caught_on_each_chain(env: Env) -> None:
    report = env.build()
    btc, eth = report.assets
    first = btc.addresses[0]
    u = first.utxos[0]  # type: ignore[index]
    raised_utxo = dataclasses.replace(first, utxos=(dataclasses.replace(u, value=u.value + 1), *first.utxos[1:]),  # type: ignore[index, misc]
                                      balance=first.balance + 1)
    tampered = _replace_asset(report, 0, _with_addresses(btc, (raised_utxo, *btc.addresses[1:])))
    problems = verify_report(tampered, env.readers)
    assert any(f"UTXO {u.txid}:{u.vout}: value on chain is {u.value} sat, the report says {u.value + 1}" in p
               for p in problems), problems
    assert len(problems) == 1, problems
    rich = dataclasses.replace(eth.addresses[0], balance=eth.addresses[0].balance + 1)
    tampered = _replace_asset(report, 1, _with_addresses(eth, (rich, *eth.addresses[1:])))
    problems = verify_report(tampered, env.readers)
    assert problems == [f"fpETH: {rich.address}: balance at block {eth.height} is {rich.balance - 1} wei, the report "
                        f"says {rich.balance}"], problems


def test_a_utxo_spent_before_the_stated_height_is_caught(env: Env) -> None:
    report = env.build()
    btc = report.assets[0]
    txid, vout, value, height = env.swept_outpoint
    stale = _sign_proof(env, report, BTC_CHAIN, env.btc_swept.path, "deposit", value,
                        (ReportUtxo(txid, vout, value, height),))
    tampered = _replace_asset(report, 0, _with_addresses(btc, (*btc.addresses, stale)))
    problems = verify_report(tampered, env.readers)
    assert problems == [f"fpBTC: {stale.address}: UTXO {txid}:{vout}: was spent at or before the stated height "
                        f"{btc.height}: not in custody there"], problems


def test_signatures_swapped_between_addresses_are_caught(env: Env) -> None:
    report = env.build()
    eth = report.assets[1]
    a, b = eth.addresses
    swapped = (dataclasses.replace(a, signature=b.signature), dataclasses.replace(b, signature=a.signature))
    problems = verify_report(_replace_asset(report, 1, dataclasses.replace(eth, addresses=swapped)), env.readers)
    for proof in swapped:
        assert any(f"fpETH: {proof.address}: signature does not verify" in p for p in problems), problems
    # and the ether behind the unverified attestations does not count: custody falls short
    assert any("fpETH insolvent" in p for p in problems), problems
    assert len(problems) == 3, problems


def test_an_address_not_derived_from_the_group_key_is_caught(env: Env) -> None:
    outsider = PrivateKey()
    key = outsider.public_key.format(compressed=True)
    script = p2wpkh_script(key)
    address = p2wpkh_address(Point.from_bytes(key), "regtest")
    txid, vout = env.miner.pay(address, COIN)  # real coins, but not the group's
    env.miner.mine(1)
    fresh = env.build()  # a report at the new height, then the outsider's coins slipped in
    btc = fresh.assets[0]
    height = env.rpc.getblockcount()
    sig = outsider.sign_recoverable(attestation_digest(fresh.challenge, BTC_CHAIN, address), hasher=None)
    proof = AddressProof("deposit", address, env.btc_deposit.path, key, sig[:64], COIN,
                         (ReportUtxo(txid, vout, COIN, height),))
    assert script == address_to_script(address, "regtest")
    problems = verify_report(_replace_asset(fresh, 0, _with_addresses(btc, (*btc.addresses, proof))), env.readers)
    assert any(f"fpBTC: {address}: public key {key.hex()} is not the group key's child at" in p
               and "not derived from the group key" in p for p in problems), problems
    assert len(problems) == 1, problems  # its signature and its coins are real; only the key is foreign


def test_an_unknown_or_stale_challenge_is_caught(env: Env) -> None:
    head = env.dst.eth.block_number
    made_up = Challenge(DST_CHAIN, head, "0x" + secrets.token_bytes(32).hex())
    report = env.build(challenge=made_up)  # signed over a hash no block has
    problems = verify_report(report, env.readers)
    assert len(problems) == 1 and problems[0].startswith(f"challenge: block {made_up.block_hash} is not on "
                                                         f"{DST_CHAIN}"), problems
    fresh = env.build()
    env.mine_dst(5)
    assert verify_report(fresh, env.readers, max_age={DST_CHAIN: 10}) == []
    problems = verify_report(fresh, env.readers, max_age={DST_CHAIN: 4})
    assert any(p.startswith(f"challenge: stale: block {fresh.challenge.height} of {DST_CHAIN} is 5 blocks behind")
               for p in problems), problems


def test_an_understated_supply_is_caught(env: Env) -> None:
    report = env.build()
    btc = report.assets[0]
    true_supply = btc.supply.amount
    low = _with_addresses(btc, btc.addresses, supply=true_supply - COIN)
    problems = verify_report(_replace_asset(report, 0, low), env.readers)
    assert problems == [f"fpBTC: supply stated {true_supply - COIN}, but totalSupply of {btc.supply.token} at block "
                        f"{btc.supply.block} is {true_supply}: understated by {COIN}"], problems


def test_an_asset_left_out_and_an_invented_burn_are_caught(env: Env) -> None:
    only_btc = env.build(assets=env.plans()[:1], addresses=env.addresses()[:3])
    problems = verify_report(only_btc, env.readers)
    assert len(problems) == 1 and f"asset {env.tokens['fpETH'].address} configured" in problems[0], problems
    plans = env.plans()
    plans[0] = dataclasses.replace(plans[0], in_flight=(*plans[0].in_flight, InFlightWithdrawal(2, env.burner, 5)))
    problems = verify_report(env.build(assets=plans), env.readers)
    assert problems == [f"fpBTC: in-flight burn 2 (5 by {env.burner}) is not a burn the Gateway recorded by block "
                        f"{env.dst.eth.block_number}"], problems


def test_a_group_key_that_is_not_the_gateways_signer_is_caught(env: Env) -> None:
    other = Group()
    problems = verify_report(env.build(group_key=other.key.to_bytes(), chain_code=other.chain_code, sign=other.sign,
                                       addresses=[ReserveAddress.custody(BTC_CHAIN)]), env.readers)
    assert any("not this group's Gateway" in p for p in problems), problems


def test_custody_made_short_by_coins_moved_out_is_caught(env: Env) -> None:
    custody_script = p2wpkh_script(env.btc_custody.public_key)
    coins = env.rpc.scantxoutset("start", [f"raw({custody_script.hex()})"])["unspents"]
    moved = []
    try:
        for c in coins:  # behind the bridge's back: everything at the custody address leaves
            value = round(c["amount"] * COIN)
            env.spend(c["txid"], c["vout"], value, env.btc_custody.path, env.miner.script)
            moved.append(value)
        report = env.build()
        btc = report.assets[0]
        problems = verify_report(report, env.readers)
        assert len(problems) == 1 and problems[0].startswith("fpBTC insolvent: custody "), problems
        short = btc.totals.liabilities - btc.totals.custody - btc.tolerance
        assert short > 0 and f"short by {short}" in problems[0], problems
    finally:
        for value in moved:  # put the coins back for whatever runs next
            env.miner.pay(env.btc_custody.address, value - FEE)
        env.miner.mine(1)
