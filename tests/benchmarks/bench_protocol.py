"""Benchmarks of the CGGMP21 phases, in process, at the default 128-bit level.

``--quick`` runs (2, 3) only, at the test level ``test-2048`` and without the refresh and
resharing: a check that every phase still runs, in seconds, not figures to compare with a full run.

For each (t, n): per-party CPU time of each phase (time.process_time spent inside that
party's machine calls — the runner is single-threaded, so the attribution is exact) and the
wall time of the whole in-process run. Aux info is split into prime generation (two 1536-bit
safe primes per party, measured one by one) and the protocol with those primes supplied.
"""

from __future__ import annotations

import hashlib
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Any

from fusion_prime.protocol.aux_info import AuxInfoMachine
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.protocol.keygen import KeygenMachine
from fusion_prime.protocol.levels import LEVEL_128, LEVEL_TEST, SecurityLevel
from fusion_prime.protocol.machine import RoundMachine
from fusion_prime.protocol.presign import PresignMachine
from fusion_prime.protocol.primes import random_safe_prime
from fusion_prime.protocol.refresh import KeyRefreshMachine
from fusion_prime.protocol.reshare import KeyPublicInfo, ReshareMachine
from fusion_prime.protocol.runner import run_in_process
from fusion_prime.protocol.sign import SignMachine


def _instrument(machines: dict[int, RoundMachine]) -> dict[int, float]:
    cpu = dict.fromkeys(machines, 0.0)
    for i, m in machines.items():
        for name in ("start", "receive"):
            original = getattr(m, name)

            def wrapped(*args: Any, _orig: Callable[..., Any] = original, _i: int = i) -> Any:
                t0 = time.process_time()
                try:
                    return _orig(*args)
                finally:
                    cpu[_i] += time.process_time() - t0

            setattr(m, name, wrapped)
    return cpu


def _run(make: Callable[[], dict[int, RoundMachine]]) -> tuple[dict[int, Any], dict[str, float]]:
    t0 = time.process_time()
    machines = make()  # construction does real work too (e.g. presign round-1 encryption)
    construct = (time.process_time() - t0) / len(machines)
    cpu = _instrument(machines)
    start = time.perf_counter()
    out = run_in_process(machines)
    wall = time.perf_counter() - start
    if len(out) != len(machines):
        raise RuntimeError(f"phase failed: {[m.abort for m in machines.values()]}")
    per_party = [c + construct for c in cpu.values()]
    return out, {
        "cpu_per_party_median_s": round(statistics.median(per_party), 4),
        "cpu_per_party_max_s": round(max(per_party), 4),
        "wall_total_s": round(wall, 4),
    }


def bench_committee(t: int, n: int, level: SecurityLevel, primes: list[int], sign_runs: int) -> dict[str, Any]:
    parties = list(range(1, n + 1))
    ids = {i: PartyIdentity.generate() for i in parties}
    roster = {i: k.public_key for i, k in ids.items()}
    result: dict[str, Any] = {}

    sid = secrets.token_bytes(32)
    shares, result["keygen"] = _run(lambda: {i: KeygenMachine(sid, i, parties, ids[i], roster, threshold=t,
                                                              level=level) for i in parties})
    sid = secrets.token_bytes(32)
    aux, result["aux_info_proofs"] = _run(lambda: {
        i: AuxInfoMachine(sid, i, parties, ids[i], roster, level=level, primes=(primes[2 * i - 2], primes[2 * i - 1]))
        for i in parties})
    signers = parties[:t]
    sid = secrets.token_bytes(32)
    pre, result["presign"] = _run(lambda: {i: PresignMachine(sid, i, signers, ids[i], roster, key_share=shares[i],
                                                             aux_info=aux[i]) for i in signers})
    sign_cpu, sign_wall = [], []
    for run_no in range(sign_runs):
        if run_no:  # a presignature signs once: every sample gets its own
            psid = secrets.token_bytes(32)
            pre, _ = _run(lambda s=psid: {i: PresignMachine(s, i, signers, ids[i], roster, key_share=shares[i],
                                                            aux_info=aux[i]) for i in signers})
        digest = hashlib.sha256(secrets.token_bytes(16)).digest()
        ssid = secrets.token_bytes(32)
        _, fig = _run(lambda p=pre, d=digest, s=ssid: {
            i: SignMachine(s, i, signers, ids[i], roster, key_share=shares[i], presignature=p[i], digest=d)
            for i in signers})
        sign_cpu.append(fig["cpu_per_party_median_s"])
        sign_wall.append(fig["wall_total_s"])
    result["sign_online"] = {
        "cpu_per_party_median_s": round(statistics.median(sign_cpu), 5),
        "wall_total_median_s": round(statistics.median(sign_wall), 5),
        "runs": sign_runs,
    }
    result["signers"] = signers
    if n == 3 and len(primes) >= 4 * n:
        # proactive refresh (fresh aux info + zero-sharing), primes from the pool like aux info
        rsid = secrets.token_bytes(32)
        refreshed, result["key_refresh_proofs"] = _run(lambda: {
            i: KeyRefreshMachine(rsid, i, ids[i], roster, key_share=shares[i],
                                 primes=(primes[2 * (n + i) - 2], primes[2 * (n + i) - 1])) for i in parties})
        # resharing (t, n) = (2, 3) -> (3, 5): two newcomers join
        new_parties = list(range(1, 6))
        more = {i: ids.get(i) or PartyIdentity.generate() for i in new_parties}
        big_roster = {i: k.public_key for i, k in more.items()}
        old = KeyPublicInfo.of(refreshed[1].key_share)
        dealers = parties[:t]
        xsid = secrets.token_bytes(32)
        _, result["reshare_2of3_to_3of5"] = _run(lambda: {
            i: ReshareMachine(xsid, i, more[i], big_roster, old=old, dealers=dealers, new_parties=new_parties,
                              new_threshold=3, key_share=refreshed[i].key_share if i in dealers else None)
            for i in sorted(set(dealers) | set(new_parties))})
    return result



def run(quick: bool = False) -> dict[str, Any]:
    level = LEVEL_TEST if quick else LEVEL_128
    sizes = [(2, 3)] if quick else [(2, 3), (3, 5), (5, 7)]
    max_n = max(n for _, n in sizes)
    prime_times, primes = [], []
    # 12: aux info and then a refresh for n = 3; quick skips the refresh and the resharing after it
    for _ in range(2 * max_n if quick else max(2 * max_n, 12)):
        t0 = time.perf_counter()
        primes.append(random_safe_prime(level.prime_bits))
        prime_times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {
        "level": level.name,
        "quick": quick,
        "aux_info_prime_generation_per_party_s": {
            "median": round(2 * statistics.median(prime_times), 3),
            "min": round(2 * min(prime_times), 3),
            "max": round(2 * max(prime_times), 3),
            "primes_measured": len(prime_times),
        },
    }
    for t, n in sizes:
        out[f"t{t}_n{n}"] = bench_committee(t, n, level, primes, sign_runs=3 if n == 3 else 1)
    out["presign_cpu_per_party_by_signers"] = {
        f"{t}_signers": out[f"t{t}_n{n}"]["presign"]["cpu_per_party_median_s"] for t, n in sizes
    }
    return out
