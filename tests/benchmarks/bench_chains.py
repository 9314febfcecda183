"""Chain benchmarks: devnet block throughput with 100 transactions per block, getblock latency.

``run()`` returns JSON-able figures for the benchmark runner. Each block's 100 P2WPKH spends go
through the full path a bitcoind user sees: ``sendrawtransaction`` over HTTP JSON-RPC (decode,
policy, libbitcoinkernel script verification), then ``generatetoaddress`` (template, grinding,
kernel validation and connection, index update). The 100 outputs of one block are the inputs
of the next, so the UTXO set stays small and every block is comparable.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from coincurve import PrivateKey

from fusion_prime.bridge.chains.bitcoin.encoding import REGTEST, p2wpkh_script, script_to_address
from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer
from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut

TXS_PER_BLOCK = 100
FEE = 1_000


def run(quick: bool = False, blocks: int | None = None, getblock_samples: int | None = None) -> dict[str, object]:
    """``quick``: 3 blocks and 50 getblock samples instead of 10 and 200."""
    blocks = blocks or (3 if quick else 10)
    getblock_samples = getblock_samples or (50 if quick else 200)
    key = PrivateKey(b"\x42" * 32)
    pub = key.public_key.format(compressed=True)
    script = p2wpkh_script(pub)
    address = script_to_address(script, REGTEST)
    with tempfile.TemporaryDirectory(prefix="bench-chains-") as tmp:
        node = RegtestNode(Path(tmp) / "btc", persist_mempool=False)
        server = BitcoinRPCServer(node, user="bench", password="bench").start()
        rpc = BitcoinRPC(server.url, "bench", "bench")
        try:
            rpc.generatetoaddress(101, address)
            # Fan the first coinbase out into 100 outputs.
            cb = node.read_block(node.block_hash_at(1)).txs[0]
            value = (cb.vout[0].value - 10_000) // TXS_PER_BLOCK
            fan = Tx(2, [TxIn(OutPoint(cb.txid, 0))], [TxOut(value, script) for _ in range(TXS_PER_BLOCK)])
            sign_p2wpkh(fan, 0, key.secret, cb.vout[0].value)
            rpc.sendrawtransaction(fan.serialize().hex())
            rpc.generatetoaddress(1, address)
            coins = [(OutPoint(fan.txid, n), value) for n in range(TXS_PER_BLOCK)]

            sign_s = submit_s = mine_s = 0.0
            for _ in range(blocks):
                t0 = time.perf_counter()
                txs = []
                for outpoint, amount in coins:
                    tx = Tx(2, [TxIn(outpoint)], [TxOut(amount - FEE, script)])
                    sign_p2wpkh(tx, 0, key.secret, amount)
                    txs.append(tx)
                t1 = time.perf_counter()
                for tx in txs:
                    rpc.sendrawtransaction(tx.serialize().hex())
                t2 = time.perf_counter()
                block_hash = rpc.generatetoaddress(1, address)[0]
                t3 = time.perf_counter()
                assert len(rpc.getblock(block_hash)["tx"]) == TXS_PER_BLOCK + 1
                coins = [(OutPoint(tx.txid, 0), amount - FEE) for tx, (_, amount) in zip(txs, coins, strict=True)]
                sign_s += t1 - t0
                submit_s += t2 - t1
                mine_s += t3 - t2

            tip = rpc.getbestblockhash()
            lat: dict[int, list[float]] = {1: [], 2: []}
            for verbosity in (1, 2):
                for _ in range(getblock_samples):
                    t = time.perf_counter()
                    rpc.getblock(tip, verbosity)
                    lat[verbosity].append((time.perf_counter() - t) * 1000)
        finally:
            rpc.close()
            server.stop()
            node.close()

    def pct(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100)[int(q) - 1], 3)

    per_block = submit_s + mine_s
    return {
        "btc_devnet_blocks": blocks,
        "btc_devnet_txs_per_block": TXS_PER_BLOCK,
        "btc_devnet_blocks_per_second": round(blocks / per_block, 3),
        "btc_devnet_blocks_per_second_incl_signing": round(blocks / (per_block + sign_s), 3),
        "btc_devnet_sendrawtransaction_ms_mean": round(submit_s / (blocks * TXS_PER_BLOCK) * 1000, 3),
        "btc_devnet_mine_block_ms_mean": round(mine_s / blocks * 1000, 3),
        "btc_rpc_getblock_v1_ms_p50": pct(lat[1], 50),
        "btc_rpc_getblock_v1_ms_p95": pct(lat[1], 95),
        "btc_rpc_getblock_v2_ms_p50": pct(lat[2], 50),
        "btc_rpc_getblock_v2_ms_p95": pct(lat[2], 95),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
