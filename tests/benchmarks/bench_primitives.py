"""Benchmarks of the primitives and proofs (issue: foundation).

Figures are wall-clock seconds on this machine, measured with time.perf_counter; each entry
reports the median and the spread (min, max) over its runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from phe import paillier as phe_paillier

from fusion_prime.protocol.curve import Point, random_scalar
from fusion_prime.protocol.levels import LEVEL_128, SecurityLevel
from fusion_prime.protocol.paillier import PaillierSecretKey, sample_unit
from fusion_prime.protocol.primes import naive_safe_prime, random_safe_prime
from fusion_prime.protocol.ring_pedersen import RingPedersenSecret
from fusion_prime.protocol.zk import aff_g, enc, fac, log_star, mod, prm, sch
from fusion_prime.protocol.zk.common import ProofContext, paillier_raw, sample_pm_bits


def timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {
        "median_s": round(statistics.median(samples), 6),
        "min_s": round(min(samples), 6),
        "max_s": round(max(samples), 6),
        "runs": runs,
    }


def bench_safe_primes(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # quick: no naive search (6-7 s for one 1024-bit prime, most of the quick section otherwise)
    plan = {1024: (9, 3), 1536: (5, 1)} if not quick else {1024: (3, 0), 1536: (1, 0)}
    for bits, (sieve_runs, naive_runs) in plan.items():
        entry: dict[str, Any] = {"combined_sieve": timed(lambda b=bits: random_safe_prime(b), sieve_runs)}
        if naive_runs:
            entry["naive_next_prime"] = timed(lambda b=bits: naive_safe_prime(b), naive_runs)
            entry["speedup_at_median"] = round(
                entry["naive_next_prime"]["median_s"] / entry["combined_sieve"]["median_s"], 1
            )
        out[str(bits)] = entry
    return out


def bench_paillier(quick: bool, keys_3072: list[PaillierSecretKey]) -> dict[str, Any]:
    """Paillier figures; the 3072-bit keys it generates are appended to ``keys_3072`` for the
    proofs, which need two (four 1536-bit safe primes: most of a quick run's time otherwise)."""
    out: dict[str, Any] = {}
    runs = 5 if quick else 20
    for bits in (2048, 3072):
        key = PaillierSecretKey.generate(bits)
        if bits == 3072:
            keys_3072.append(key)
        pub = key.public_key()
        phe_pub, phe_priv = phe_paillier.generate_paillier_keypair(n_length=bits)
        m = random_scalar()
        c_ours, _ = pub.encrypt(m)
        c_phe = phe_pub.encrypt(m)
        out[str(bits)] = {
            "ours_encrypt_own_key_crt": timed(lambda k=key, m=m: k.encrypt(m), runs),
            "ours_encrypt_public_key": timed(lambda p=pub, m=m: p.encrypt(m), runs),
            "ours_decrypt_crt": timed(lambda k=key, c=c_ours: k.decrypt(c), runs),
            "phe_encrypt": timed(lambda p=phe_pub, m=m: p.encrypt(m), runs),
            "phe_decrypt": timed(lambda k=phe_priv, c=c_phe: k.decrypt(c), runs),
            "phe_raw_decrypt": timed(lambda k=phe_priv, c=c_phe: k.raw_decrypt(c.ciphertext(be_secure=False)), runs),
        }
    out["keygen_3072_from_fresh_primes"] = timed(lambda: keys_3072.append(PaillierSecretKey.generate(3072)),
                                                 1 if quick else 2)
    return out


def _keys(level: SecurityLevel, ready: list[PaillierSecretKey]
          ) -> tuple[PaillierSecretKey, PaillierSecretKey, RingPedersenSecret, RingPedersenSecret]:
    """Two keys of the level's size, taken from ``ready`` (keys already generated and timed)
    when it has them."""
    fitting = [k for k in ready if k.n.bit_length() == level.paillier_bits]
    while len(fitting) < 2:
        fitting.append(PaillierSecretKey.generate(level.paillier_bits))
    k0, k1 = fitting[:2]
    return k0, k1, RingPedersenSecret.from_paillier(k0), RingPedersenSecret.from_paillier(k1)


def bench_proofs(level: SecurityLevel, quick: bool, ready: list[PaillierSecretKey]) -> dict[str, Any]:
    """Prover is party 0 (key k0), verifier party 1 (key k1, ring-Pedersen r1)."""
    k0, k1, r0, r1 = _keys(level, ready)
    ctx = ProofContext(b"benchmark-session-id-0001", 1)
    runs = 2 if quick else 5
    out: dict[str, Any] = {}

    def record(name: str, prove: Callable[[], Any], verify: Callable[[Any], None]) -> None:
        proof = prove()
        verify(proof)
        out[name] = {"prove": timed(prove, runs), "verify": timed(lambda: verify(proof), runs),
                     "proof_bytes": len(proof.to_bytes())}

    x = random_scalar()
    X = Point.base_mul(x)
    record("sch", lambda: sch.prove(ctx, level, X, x), lambda p: sch.verify(ctx, level, X, p))
    K, rho = k0.encrypt(x)
    record("enc", lambda: enc.prove(ctx, level, k0, K, r1.public(), x, rho),
           lambda p: enc.verify(ctx, level, k0.public_key(), K, r1, p))
    # aff-g as in presigning: C under the verifier's key, prover's own key N1
    C, _ = k1.public_key().encrypt(random_scalar())
    y = sample_pm_bits(level.ell_prime)
    rho0, rho1 = sample_unit(k1.n), sample_unit(k0.n)
    D = k1.public_key().pow_n2(C, x) * paillier_raw(k1.public_key(), y, rho0) % k1.n2
    Y = paillier_raw(k0, y, rho1)
    st_p = aff_g.AffGStatement(k1.public_key(), k0, C, D, Y, X)
    st_v = aff_g.AffGStatement(k1, k0.public_key(), C, D, Y, X)
    record("aff-g", lambda: aff_g.prove(ctx, level, st_p, r1.public(), x, y, rho0, rho1),
           lambda p: aff_g.verify(ctx, level, st_v, r1, p))
    g = Point.base_mul(random_scalar())
    ls_p = log_star.LogStarStatement(k0, K, g * x, g)
    ls_v = log_star.LogStarStatement(k0.public_key(), K, g * x, g)
    record("log*", lambda: log_star.prove(ctx, level, ls_p, r1.public(), x, rho),
           lambda p: log_star.verify(ctx, level, ls_v, r1, p))
    record("mod", lambda: mod.prove(ctx, level, k0), lambda p: mod.verify(ctx, level, k0.n, p))
    record("prm", lambda: prm.prove(ctx, level, r0), lambda p: prm.verify(ctx, level, r0.public(), p))
    record("fac", lambda: fac.prove(ctx, level, k0, r1.public()), lambda p: fac.verify(ctx, level, k0.n, r1, p))

    # One party's aux-info proof set: Π^mod + Π^prm + Π^fac for 2 peers, prove and verify.
    per_party = sum(out[n]["prove"]["median_s"] + out[n]["verify"]["median_s"] for n in ("mod", "prm"))
    per_party += 2 * (out["fac"]["prove"]["median_s"] + out["fac"]["verify"]["median_s"])
    out["aux_info_proof_set_one_party_two_peers_s"] = round(per_party, 4)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    keys_3072: list[PaillierSecretKey] = []
    return {
        "safe_primes": bench_safe_primes(quick),
        "paillier": bench_paillier(quick, keys_3072),
        "proofs_level_128": bench_proofs(LEVEL_128, quick, keys_3072),
    }
