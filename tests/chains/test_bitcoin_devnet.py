"""The Bitcoin devnet through its real JSON-RPC server, checked the way one would check bitcoind."""

from __future__ import annotations

import base64
import http.client
import json
from decimal import Decimal
from pathlib import Path

import pytest

from fusion_prime.bridge.chains.bitcoin.encoding import COIN, parse_hash_hex
from fusion_prime.bridge.chains.bitcoin.node import RegtestNode, block_subsidy
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC, BitcoinRPCError, BitcoinRPCTransportError
from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut


def spend(wallet, txid_hex: str, vout: int, amount: int, to_script: bytes, fee: int = 1000,
          high_s: bool = False, sequence: int = 0xFFFFFFFD) -> Tx:
    tx = Tx(2, [TxIn(OutPoint(parse_hash_hex(txid_hex), vout), sequence=sequence)],
            [TxOut(amount - fee, to_script)])
    sign_p2wpkh(tx, 0, wallet.key.secret, amount, high_s=high_s)
    return tx


def first_coinbase(rpc: BitcoinRPC) -> tuple[str, int]:
    block = rpc.getblock(rpc.getblockhash(1), 2)
    cb = block["tx"][0]
    return cb["txid"], int(Decimal(cb["vout"][0]["value"]) * COIN)


def test_mine_spend_and_duplicate(rpc: BitcoinRPC, alice, bob) -> None:
    hashes = rpc.generatetoaddress(101, alice.address)
    assert len(hashes) == 101 and rpc.getblockcount() == 101
    assert rpc.getbestblockhash() == hashes[-1]
    info = rpc.getblockchaininfo()
    assert info["chain"] == "regtest" and info["blocks"] == 101 and info["bestblockhash"] == hashes[-1]

    scan = rpc.scantxoutset("start", [f"addr({alice.address})"])
    assert scan["success"] and len(scan["unspents"]) == 101
    assert Decimal(scan["total_amount"]) == Decimal(101 * 50)
    mature = [u for u in scan["unspents"] if u["confirmations"] >= 100]
    # Coinbases at heights 1 and 2 may be spent in block 102 (100 blocks deep); the rest may not.
    assert sorted(u["height"] for u in mature) == [1, 2] and all(u["coinbase"] for u in mature)

    cb_txid, cb_value = first_coinbase(rpc)
    assert cb_value == block_subsidy(1) == 50 * COIN
    tx = spend(alice, cb_txid, 0, cb_value, bob.script, fee=2000)
    txid = rpc.sendrawtransaction(tx.serialize().hex())
    assert txid == tx.txid_hex
    assert rpc.getrawmempool() == [txid]
    entry = rpc.getmempoolentry(txid)
    assert Decimal(entry["fees"]["base"]) == Decimal("0.00002000") and entry["vsize"] == tx.vsize
    # Re-sending a transaction already in the mempool succeeds, as in bitcoind.
    assert rpc.sendrawtransaction(tx.serialize().hex()) == txid
    rejected = rpc.testmempoolaccept([tx.serialize().hex()])[0]
    assert rejected["allowed"] is False and rejected["reject-reason"] == "txn-already-in-mempool"

    block_hash = rpc.generatetoaddress(1, alice.address)[0]
    block = rpc.getblock(block_hash, 2)
    assert [t["txid"] for t in block["tx"]][1:] == [txid]
    assert Decimal(block["tx"][1]["fee"]) == Decimal("0.00002000")
    assert Decimal(block["tx"][0]["vout"][0]["value"]) == Decimal(50) + Decimal("0.00002000")
    assert rpc.getrawmempool() == []

    bob_scan = rpc.scantxoutset("start", [{"desc": f"addr({bob.address})"}])
    assert [(u["txid"], u["vout"]) for u in bob_scan["unspents"]] == [(txid, 0)]
    assert Decimal(bob_scan["total_amount"]) == Decimal(cb_value - 2000) / COIN
    alice_scan = rpc.scantxoutset("start", [f"addr({alice.address})"])
    assert cb_txid not in {u["txid"] for u in alice_scan["unspents"]}
    assert Decimal(alice_scan["total_amount"]) == Decimal(102 * 50) + Decimal("0.00002000") - 50

    raw = rpc.getrawtransaction(txid, True)
    assert raw["blockhash"] == block_hash and raw["confirmations"] == 1
    assert raw["vout"][0]["scriptPubKey"]["address"] == bob.address
    assert raw["vout"][0]["scriptPubKey"]["type"] == "witness_v0_keyhash"

    with pytest.raises(BitcoinRPCError) as again:
        rpc.sendrawtransaction(tx.serialize().hex())
    assert again.value.code == -27
    # A conflicting spend of the same (now spent) coin: missing inputs, -25.
    double = spend(alice, cb_txid, 0, cb_value, alice.script, fee=5000)
    with pytest.raises(BitcoinRPCError) as missing:
        rpc.sendrawtransaction(double.serialize().hex())
    assert missing.value.code == -25 and missing.value.message == "bad-txns-inputs-missingorspent"


def test_high_s_is_policy_not_consensus(rpc: BitcoinRPC, alice, bob) -> None:
    rpc.generatetoaddress(101, alice.address)
    cb_txid, cb_value = first_coinbase(rpc)
    high = spend(alice, cb_txid, 0, cb_value, bob.script, high_s=True)
    with pytest.raises(BitcoinRPCError) as err:
        rpc.sendrawtransaction(high.serialize().hex())
    assert err.value.code == -26
    assert "S value is unnecessarily high" in err.value.message
    assert rpc.getrawmempool() == []
    # generateblock with a raw transaction bypasses policy; consensus (the kernel) accepts it.
    res = rpc.generateblock(alice.address, [high.serialize().hex()])
    assert rpc.getbestblockhash() == res["hash"]
    assert rpc.getblock(res["hash"])["tx"][1] == high.txid_hex


def test_consensus_failures(rpc: BitcoinRPC, node: RegtestNode, alice, bob) -> None:
    rpc.generatetoaddress(101, alice.address)
    cb_txid, cb_value = first_coinbase(rpc)
    # Signed by the wrong key: consensus script failure, also refused inside a block.
    forged = spend(bob, cb_txid, 0, cb_value, bob.script)
    forged.vin[0].witness[1] = alice.pubkey
    with pytest.raises(BitcoinRPCError) as err:
        rpc.sendrawtransaction(forged.serialize().hex())
    assert err.value.code == -26 and err.value.message.startswith("mandatory-script-verify-flag-failed")
    tip = rpc.getbestblockhash()
    with pytest.raises(BitcoinRPCError) as blk:
        rpc.generateblock(alice.address, [forged.serialize().hex()])
    assert blk.value.code == -25
    assert rpc.getbestblockhash() == tip
    # Immature coinbase: height 50 is only 52 blocks deep at the next height 102.
    young_txid = rpc.getblock(rpc.getblockhash(50), 1)["tx"][0]
    young = spend(alice, young_txid, 0, 50 * COIN, bob.script)
    with pytest.raises(BitcoinRPCError) as imm:
        rpc.sendrawtransaction(young.serialize().hex())
    assert imm.value.code == -26 and "premature-spend-of-coinbase" in imm.value.message
    # Policy: dust output and fee below the min relay fee.
    dust = spend(alice, cb_txid, 0, cb_value, bob.script)
    dust.vout = [TxOut(cb_value - 10_000, bob.script), TxOut(100, bob.script)]
    sign_p2wpkh(dust, 0, alice.key.secret, cb_value)
    with pytest.raises(BitcoinRPCError) as d:
        rpc.sendrawtransaction(dust.serialize().hex())
    assert (d.value.code, d.value.message) == (-26, "dust")
    cheap = spend(alice, cb_txid, 0, cb_value, bob.script, fee=50)
    with pytest.raises(BitcoinRPCError) as c:
        rpc.sendrawtransaction(cheap.serialize().hex())
    assert c.value.code == -26 and c.value.message.startswith("min relay fee not met, 50 < ")
    assert node.mempool_entries() == []


def test_replace_by_fee(rpc: BitcoinRPC, alice, bob) -> None:
    rpc.generatetoaddress(101, alice.address)
    cb_txid, cb_value = first_coinbase(rpc)
    first = spend(alice, cb_txid, 0, cb_value, bob.script, fee=1000)
    rpc.sendrawtransaction(first.serialize().hex())
    assert rpc.getmempoolentry(first.txid_hex)["bip125-replaceable"] is True
    same_fee = spend(alice, cb_txid, 0, cb_value, alice.script, fee=1000)
    with pytest.raises(BitcoinRPCError) as err:
        rpc.sendrawtransaction(same_fee.serialize().hex())
    assert err.value.code == -26 and err.value.message.startswith("insufficient fee")
    better = spend(alice, cb_txid, 0, cb_value, alice.script, fee=5000)
    rpc.sendrawtransaction(better.serialize().hex())
    assert rpc.getrawmempool() == [better.txid_hex]


def test_reorg_returns_transactions_to_mempool(rpc: BitcoinRPC, node: RegtestNode, alice, bob) -> None:
    rpc.generatetoaddress(101, alice.address)
    cb_txid, cb_value = first_coinbase(rpc)
    tx = spend(alice, cb_txid, 0, cb_value, bob.script)
    rpc.sendrawtransaction(tx.serialize().hex())
    old = rpc.generatetoaddress(2, alice.address)  # heights 102 (with tx) and 103
    assert rpc.getrawtransaction(tx.txid_hex, True)["blockhash"] == old[0]
    fork_point = parse_hash_hex(rpc.getblockhash(101))
    branch = node.mine_branch(fork_point, 3, bob.script)  # 102', 103', 104' replace 102, 103
    assert rpc.getblockcount() == 104
    assert rpc.getbestblockhash() == branch[-1][::-1].hex()
    assert rpc.getblockhash(102) == branch[0][::-1].hex()
    assert rpc.getrawmempool() == [tx.txid_hex]
    assert rpc.getblockheader(old[0])["confirmations"] == -1
    with pytest.raises(BitcoinRPCError):
        rpc.getrawtransaction(tx.txid_hex, True, rpc.getblockhash(102))
    bob_scan = rpc.scantxoutset("start", [f"addr({bob.address})"])
    assert {u["height"] for u in bob_scan["unspents"]} == {102, 103, 104}  # only the branch coinbases
    tips = {t["hash"]: t["status"] for t in rpc.getchaintips()}
    assert tips[old[1]] == "valid-fork" and tips[branch[-1][::-1].hex()] == "active"
    # The old transaction is mined again on the new chain.
    rpc.generatetoaddress(1, alice.address)
    assert rpc.getrawmempool() == []
    assert Decimal(rpc.scantxoutset("start", [f"addr({bob.address})"])["total_amount"]) > Decimal(150)


def test_invalidate_and_reconsider(rpc: BitcoinRPC, alice, bob) -> None:
    rpc.generatetoaddress(101, alice.address)
    cb_txid, cb_value = first_coinbase(rpc)
    tx = spend(alice, cb_txid, 0, cb_value, bob.script)
    rpc.sendrawtransaction(tx.serialize().hex())
    mined = rpc.generatetoaddress(1, alice.address)[0]
    rpc.invalidateblock(mined)
    assert rpc.getblockcount() == 101
    assert rpc.getrawmempool() == [tx.txid_hex]
    assert rpc.scantxoutset("start", [f"addr({bob.address})"])["unspents"] == []
    rpc.reconsiderblock(mined)
    assert rpc.getbestblockhash() == mined and rpc.getrawmempool() == []
    with pytest.raises(BitcoinRPCError) as err:
        rpc.invalidateblock("00" * 32)
    assert (err.value.code, err.value.message) == (-5, "Block not found")


def test_restart_keeps_chain_and_mempool(tmp_path: Path, alice, bob) -> None:
    datadir = tmp_path / "persist"
    with RegtestNode(datadir) as node:
        node.generate(102, alice.script)
        block1 = node.read_block(node.block_hash_at(1))
        tip = node.tip_hash
        tx = Tx(2, [TxIn(OutPoint(block1.txs[0].txid, 0))], [TxOut(50 * COIN - 1000, bob.script)])
        sign_p2wpkh(tx, 0, alice.key.secret, 50 * COIN)
        node.accept_to_mempool(tx)
        balance = node.index.balance(alice.script)
    with RegtestNode(datadir) as node:
        assert node.height == 102 and node.tip_hash == tip
        assert node.index.balance(alice.script) == balance
        assert [e.txid for e in node.mempool_entries()] == [tx.txid]
        node.generate(1, alice.script)
        assert node.index.balance(bob.script) == 50 * COIN - 1000


def test_halving_schedule() -> None:
    assert block_subsidy(149) == 50 * COIN
    assert block_subsidy(150) == 25 * COIN
    assert block_subsidy(300) == 12.5 * COIN
    assert block_subsidy(150 * 64) == 0


def test_estimatesmartfee_shapes(rpc: BitcoinRPC, alice) -> None:
    rpc.generatetoaddress(1, alice.address)
    res = rpc.estimatesmartfee(6)
    assert res == {"errors": ["Insufficient data or no feerate found"], "blocks": 6}
    with pytest.raises(BitcoinRPCError) as err:
        rpc.estimatesmartfee(0)
    assert err.value.code == -8


def _post(server, body: bytes, auth: bool = True) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(b"tester:secret").decode()
    conn.request("POST", "/", body, headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_malformed_requests_get_jsonrpc_errors(rpc_server, rpc: BitcoinRPC) -> None:
    status, _ = _post(rpc_server, b'{"method":"getblockcount"}', auth=False)
    assert status == 401
    with pytest.raises(BitcoinRPCTransportError):
        BitcoinRPC(rpc_server.url, "tester", "wrong").getblockcount()
    status, body = _post(rpc_server, b"{not json")
    assert status == 500 and json.loads(body)["error"]["code"] == -32700
    status, body = _post(rpc_server, b'"just a string"')
    assert json.loads(body)["error"]["code"] == -32600
    status, body = _post(rpc_server, b'{"id":1,"method":"nosuchmethod","params":[]}')
    assert status == 404 and json.loads(body)["error"]["code"] == -32601
    status, body = _post(rpc_server, b'{"id":1,"method":42}')
    assert json.loads(body)["error"]["code"] == -32600
    status, body = _post(rpc_server, b'{"id":1,"method":"getblockhash","params":"x"}')
    assert json.loads(body)["error"]["code"] == -32600
    batch = b'[{"id":1,"method":"getblockcount"},{"id":2,"method":"getblockhash","params":[9]}]'
    status, body = _post(rpc_server, batch)
    replies = json.loads(body)
    assert status == 200 and replies[0]["result"] == 0 and replies[1]["error"]["code"] == -8
    status, body = _post(rpc_server, b'{"jsonrpc":"2.0","id":7,"method":"getblockcount"}')
    assert json.loads(body) == {"jsonrpc": "2.0", "result": 0, "id": 7}
    cases = [
        (("getblockhash", "x"), -3),
        (("getblockhash", -1), -8),
        (("getblockhash",), -1),
        (("getblock", "zz"), -8),
        (("getblock", "00" * 32), -5),
        (("getblock", rpc.getblockhash(0), 7), -8),
        (("sendrawtransaction", "00"), -22),
        (("sendrawtransaction", 5), -3),
        (("getrawtransaction", "11" * 32), -5),
        (("getmempoolentry", "11" * 32), -5),
        (("generatetoaddress", 1, "notanaddress"), -5),
        (("scantxoutset", "start", ["addr(bogus)"]), -5),
        (("scantxoutset", "start", ["raw(00)#deadbeef"]), -5),
        (("testmempoolaccept", []), -8),
    ]
    for (method, *params), code in cases:
        with pytest.raises(BitcoinRPCError) as err:
            rpc.call(method, *params)
        assert err.value.code == code, (method, params, err.value)
    with pytest.raises(BitcoinRPCError) as named:
        rpc.call("getblockhash", heigth=0)
    assert named.value.code == -8
    assert rpc.call("getblockhash", height=0) == rpc.getblockhash(0)
    assert rpc.getblockcount() == 0  # the server is still alive


def test_getblock_shapes_match_core(rpc: BitcoinRPC, alice) -> None:
    genesis = rpc.getblockhash(0)
    assert genesis == "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    h = rpc.generatetoaddress(1, alice.address)[0]
    b1 = rpc.getblock(h)
    for key in ("hash", "confirmations", "height", "version", "versionHex", "merkleroot", "time", "mediantime",
                "nonce", "bits", "difficulty", "chainwork", "nTx", "previousblockhash", "strippedsize", "size",
                "weight", "tx"):
        assert key in b1
    assert b1["bits"] == "207fffff" and b1["chainwork"] == "0" * 63 + "4"
    assert b1["previousblockhash"] == genesis and rpc.getblock(genesis)["nextblockhash"] == h
    raw = rpc.getblock(h, 0)
    assert raw.startswith(rpc.getblockheader(h, False))
    cb = rpc.getblock(h, 2)["tx"][0]
    assert "coinbase" in cb["vin"][0] and cb["vin"][0]["txinwitness"] == ["00" * 32]
    assert cb["vout"][1]["scriptPubKey"]["type"] == "nulldata"
    assert cb["vout"][0]["scriptPubKey"]["desc"].startswith(f"addr({alice.address})#")
