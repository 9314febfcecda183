"""Benchmarks of the node network: 3 nodes over gRPC with mutual TLS on loopback, level 128.

Topology (the same as ``make demo`` and ``tests/node/test_network_processes.py``): node2 and
node3 are separate OS processes started with the operator CLI; node1 - the coordinator, the
node a wallet API would call - runs in the benchmark process. So the three nodes are three
processes, and every protocol message crosses gRPC + mTLS + signed envelopes + encrypted
SQLite (``synchronous=FULL``), exactly as in production. All on this machine's 2 cores.

Figures (all at the default production level ``128``: 3072-bit Paillier moduli; no test
level, and no primes supplied from outside - each node process generates its own safe primes
during aux info, in parallel; ``--quick`` runs the test level ``test-2048`` with fewer samples,
to check the section end to end in about a minute, not for its figures):

* ``keygen_wall_s``, ``aux_info_wall_s``: coordinator's request to the stored outcome.
* ``presign``: presignatures per second while the pool fills, with ``presign_concurrency``
  sessions in flight (alternating signer sets {node1, node2} and {node1, node3}).
* ``online_sign``: latency from ``Node.sign`` (the coordinator's request) to a signature
  verified by libsecp256k1 and eth-account, one request at a time with the pool already filled; p50/p95/p99.
* ``sustained_sign``: signatures per second with ``sustained_concurrency`` requests in flight,
  drawing on the pool (every signature verified).
* ``in_process``: the same SignMachines run by ``protocol.runner`` in one process (machine
  construction + run + the same two checks), and ``grpc_overhead_ms`` = network online-sign
  p50 - in-process p50. The overhead is everything the network adds: proposal signing and
  the Propose RPC, health probes (cached 2 s), the participant's durable consumption of its
  presignature (fsync) and audit records, signed envelopes and their gRPC round trips.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from fusion_prime.node.demo import (
    configure_node1_logging,
    create_network_files,
    node_processes,
    open_coordinator,
    verify_independently,
    wait_healthy,
)
from fusion_prime.protocol.aux_info import AuxInfoMachine
from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.protocol.keygen import KeygenMachine
from fusion_prime.protocol.levels import LEVEL_128, LEVEL_TEST, SecurityLevel
from fusion_prime.protocol.presign import PresignMachine
from fusion_prime.protocol.runner import run_in_process
from fusion_prime.protocol.sign import SignMachine

SETS = (["node1", "node2"], ["node1", "node3"])


def _progress(msg: str) -> None:
    print(f"[bench node] {msg}", file=sys.stderr, flush=True)


def _percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _latency_summary(seconds: list[float]) -> dict[str, Any]:
    ms = [1000 * s for s in seconds]
    return {
        "samples": len(ms),
        "p50_ms": round(_percentile(ms, 50), 2),
        "p95_ms": round(_percentile(ms, 95), 2),
        "p99_ms": round(_percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


async def _network(node1: Any, procs: dict[str, Any], *, level: SecurityLevel, sign_samples: int, sustained: int,
                   presign_concurrency: int, sustained_concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await wait_healthy(node1, ["node2", "node3"], procs)

    t0 = time.perf_counter()
    kg = await node1.keygen(2, 3, level=level.name)
    out["keygen_wall_s"] = round(time.perf_counter() - t0, 3)
    if not kg.ok:
        raise RuntimeError(f"keygen failed: {kg}")
    key_id, group_key = kg.output["key_id"], Point.from_bytes(kg.output["public_key"])
    _progress(f"keygen {out['keygen_wall_s']} s")

    t0 = time.perf_counter()
    aux = await node1.aux_info(["node1", "node2", "node3"], level=level.name)
    out["aux_info_wall_s"] = round(time.perf_counter() - t0, 3)
    if not aux.ok:
        raise RuntimeError(f"aux info failed: {aux}")
    _progress(f"aux info {out['aux_info_wall_s']} s")

    # Presign: fill the pool with `presign_concurrency` sessions in flight.
    total = sign_samples + sustained
    counter = iter(range(total))
    session_seconds: list[float] = []
    failures: list[str] = []

    async def worker() -> None:
        for i in counter:
            s0 = time.perf_counter()
            pre = await node1.presign(key_id, SETS[i % 2])
            if not pre.ok:
                failures.append(f"{pre.status}: {pre.reason}")
                continue
            session_seconds.append(time.perf_counter() - s0)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(presign_concurrency):
            nursery.start_soon(worker)
    wall = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} presign sessions failed: {failures[:3]}")
    out["presign"] = {
        "presignatures": total,
        "concurrency": presign_concurrency,
        "wall_s": round(wall, 3),
        "throughput_per_s": round(total / wall, 3),
        "session_latency": _latency_summary(session_seconds),
    }
    _progress(f"presign {total} in {wall:.1f} s")

    # Online sign, one request at a time, pool filled, nothing else running.
    latencies: list[float] = []
    rs: set[int] = set()
    for _ in range(sign_samples):
        digest = hashlib.sha256(secrets.token_bytes(32)).digest()
        s0 = time.perf_counter()
        res = await node1.sign(key_id, digest)
        if not res.ok:
            raise RuntimeError(f"sign failed: {res}")
        ok_secp, ok_eth, _ = verify_independently(group_key, digest, res.output)
        latencies.append(time.perf_counter() - s0)
        if not (ok_secp and ok_eth):
            raise RuntimeError("a signature did not verify")
        rs.add(res.output.r)
    out["online_sign"] = _latency_summary(latencies)
    out["online_sign"]["measured"] = ("Node.sign request -> signature checked by libsecp256k1 and eth-account "
                                      "recovery (both inside the timing)")
    _progress(f"online sign p50 {out['online_sign']['p50_ms']} ms")

    # Sustained: many requests in flight, drawing on the pool.
    queue = iter(range(sustained))
    done = 0

    async def signer() -> None:
        nonlocal done
        for _ in queue:
            digest = hashlib.sha256(secrets.token_bytes(32)).digest()
            res = await node1.sign(key_id, digest)
            if not res.ok:
                raise RuntimeError(f"sign failed: {res}")
            if not verify_independently(group_key, digest, res.output)[0]:
                raise RuntimeError("a signature did not verify")
            rs.add(res.output.r)
            done += 1

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(sustained_concurrency):
            nursery.start_soon(signer)
    wall = time.perf_counter() - t0
    out["sustained_sign"] = {
        "signatures": done,
        "concurrency": sustained_concurrency,
        "wall_s": round(wall, 3),
        "signatures_per_s": round(done / wall, 2),
    }
    if len(rs) != sign_samples + sustained:
        raise RuntimeError("two signatures share an R")
    out["all_signatures_verified_and_r_distinct"] = True
    _progress(f"sustained {out['sustained_sign']['signatures_per_s']} sig/s")
    return out


def _in_process(samples: int, level: SecurityLevel) -> dict[str, Any]:
    """The same phases by protocol.runner, in one process, for the overhead figure."""
    parties = [1, 2, 3]
    ids = {i: PartyIdentity.generate() for i in parties}
    roster = {i: k.public_key for i, k in ids.items()}
    sid = secrets.token_bytes(32)
    shares = run_in_process({i: KeygenMachine(sid, i, parties, ids[i], roster, threshold=2, level=level)
                             for i in parties})
    sid = secrets.token_bytes(32)
    aux = run_in_process({i: AuxInfoMachine(sid, i, parties, ids[i], roster, level=level) for i in parties})
    signers = [1, 2]
    presign_walls, sign_walls = [], []
    for _ in range(samples):
        sid = secrets.token_bytes(32)
        t0 = time.perf_counter()
        pre = run_in_process({i: PresignMachine(sid, i, signers, ids[i], roster, key_share=shares[i],
                                                aux_info=aux[i]) for i in signers})
        presign_walls.append(time.perf_counter() - t0)
        digest = hashlib.sha256(secrets.token_bytes(32)).digest()
        sid = secrets.token_bytes(32)
        t0 = time.perf_counter()
        sigs = run_in_process({i: SignMachine(sid, i, signers, ids[i], roster, key_share=shares[i],
                                              presignature=pre[i], digest=digest, aux_info=aux[i])
                               for i in signers})
        ok = all(verify_independently(shares[1].group_key, digest, sigs[1])[:2])
        sign_walls.append(time.perf_counter() - t0)
        if not ok:
            raise RuntimeError("in-process signature did not verify")
    return {
        "online_sign": _latency_summary(sign_walls),
        "presign_wall_median_s": round(statistics.median(presign_walls), 3),
        "measured": "SignMachine construction + run_in_process (2 signers) + libsecp256k1 and eth-account checks",
    }


def run(quick: bool = False) -> dict[str, Any]:
    level = LEVEL_TEST if quick else LEVEL_128
    sign_samples = 10 if quick else 60
    sustained = 10 if quick else 50
    presign_concurrency, sustained_concurrency = 2, 4
    result: dict[str, Any] = {
        "level": level.name,
        "paillier_bits": level.paillier_bits,
        "quick": quick,
        "topology": "3 nodes over gRPC + mutual TLS on 127.0.0.1: node2 and node3 as separate OS processes "
                    "(fusion_prime.node.cli run), node1 (coordinator) in the benchmark process",
        "primes": "generated by each node process during aux info (in parallel); none reused or supplied",
        "storage": "encrypted SQLite, WAL, synchronous=FULL (every presignature consumption is fsynced)",
        "round_deadline_s": 120.0,
    }
    with tempfile.TemporaryDirectory(prefix="fusion-prime-bench-") as tmp:
        base = Path(tmp)
        devnet = create_network_files(base / "net", level=level.name, round_deadline=120.0)
        handler, stream = configure_node1_logging(base / "node1.log")
        try:
            with node_processes(base, devnet, log_level="WARNING") as net:
                node1 = open_coordinator(devnet[0], fill_pool=False)
                figures: dict[str, Any] = {}

                async def main() -> None:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(node1.run)
                        try:
                            figures.update(await _network(
                                node1, net.procs, level=level, sign_samples=sign_samples, sustained=sustained,
                                presign_concurrency=presign_concurrency,
                                sustained_concurrency=sustained_concurrency))
                        finally:
                            node1.stop()

                try:
                    trio.run(main)
                except Exception:
                    _progress("network benchmark failed; node logs:\n" + net.log_tail())
                    raise
                codes = net.shutdown()
                result.update(figures)
                result["node_exit_codes_after_sigterm"] = codes
        finally:
            logging.getLogger("fusion_prime").removeHandler(handler)
            stream.close()

    _progress("in-process reference (keygen + aux info + presign/sign samples) ...")
    in_process_samples = 3 if quick else 10
    result["in_process"] = _in_process(in_process_samples, level)
    p50_net = result["online_sign"]["p50_ms"]
    p50_local = result["in_process"]["online_sign"]["p50_ms"]
    result["grpc_overhead_ms"] = round(p50_net - p50_local, 2)
    result["online_sign_p50_target_ms"] = 15.0
    # the target is the production level's: a quick run at the test level neither meets nor misses it
    result["online_sign_p50_meets_target"] = p50_net <= 15.0 if level is LEVEL_128 else None
    return result
