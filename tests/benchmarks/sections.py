"""The benchmark sections `make bench` runs, how long each takes, and which figures headline it.

This module is the runner's default ``--sections-module``. Another module can stand in for it
(the runner's own test does, with two tiny sections) by exposing the same two names:
``SECTIONS`` (a sequence of :class:`Section`, in run order) and, optionally, ``HEADLINES`` (a
sequence of :class:`Headline` for the plot).

Expected durations are kept per mode because progress must say how long a section *should*
take: a run that has been quiet for ten minutes is only alarming if the section usually takes
two. They come from runs on this project's 2-core machine while other work shared it; the
runner also shows the duration of the section's previous run in the same mode, read back from
its result file, which tracks the machine better than any table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SectionRun = Callable[[bool], Mapping[str, Any]]


@dataclass(frozen=True)
class Section:
    """One benchmark section: a name (its result file is ``<name>.json``), what runs it, and
    its expected seconds in each mode.

    ``target`` is either the function itself or the name of a module whose ``run(quick)`` is
    imported only when the section starts - so a section whose imports fail is recorded as a
    failed section and the others still run."""

    name: str
    target: str | SectionRun
    expected_full_s: float
    expected_quick_s: float

    def expected_s(self, quick: bool) -> float:
        return self.expected_quick_s if quick else self.expected_full_s

    def load(self) -> SectionRun:
        if callable(self.target):
            return self.target
        module = importlib.import_module(self.target)
        run: SectionRun = module.run
        return run


@dataclass(frozen=True)
class Headline:
    """A figure the plot shows: ``path`` is the chain of keys into the section's result.

    ``unit`` picks the plot's panel ("ms", "s" or "/s"); ``scale`` converts the stored value
    into that unit (proof timings are stored in seconds but read better in milliseconds)."""

    label: str
    section: str
    path: tuple[str, ...]
    unit: str
    scale: float = 1.0

    def value(self, figures: Mapping[str, Any]) -> float | None:
        node: Any = figures
        for key in self.path:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        if isinstance(node, bool) or not isinstance(node, int | float):
            return None
        return float(node) * self.scale


# Expected seconds (full, quick), on this 2-core machine shared with other work (load 3 to 17).
# Quick: measured, whole quick runs of the suite (217 s in all on 2026-12-01). Full: measured for
# primitives (144 s) and chains (13 s); the others are estimates - their sample counts times the
# per-sample costs seen in quick runs, scaled to level 128 (a presignature at level 128 costs
# about 2.5 times one at test-2048, and the network makes about one a second) - because a full run
# of them takes most of an hour of both cores. The previous run's own duration, which progress
# shows beside these, replaces the estimate after the first full run.
SECTIONS: tuple[Section, ...] = (
    Section("primitives", "bench_primitives", expected_full_s=150, expected_quick_s=20),
    Section("protocol", "bench_protocol", expected_full_s=240, expected_quick_s=6),  # full: 14 primes, n = 7
    Section("chains", "bench_chains", expected_full_s=15, expected_quick_s=6),
    Section("node", "bench_node", expected_full_s=240, expected_quick_s=42),  # full: 110 presignatures
    Section("wallet", "bench_wallet", expected_full_s=240, expected_quick_s=30),  # full: 100 signs in flight
    Section("bridge", "bench_bridge", expected_full_s=300, expected_quick_s=28),  # full: pools of 25, burst 50
    Section("withdrawals", "bench_withdrawals", expected_full_s=720, expected_quick_s=40),  # full: pools of 105
    Section("settlement", "bench_settlement", expected_full_s=300, expected_quick_s=45),  # full: 90 s cycles
)

HEADLINES: tuple[Headline, ...] = (
    # latency, milliseconds
    Headline("online sign p50 (3 nodes, gRPC+mTLS)", "node", ("online_sign", "p50_ms"), "ms"),
    Headline("online sign p95 (3 nodes, gRPC+mTLS)", "node", ("online_sign", "p95_ms"), "ms"),
    Headline("online sign p50 (in process)", "node", ("in_process", "online_sign", "p50_ms"), "ms"),
    Headline("wallet request → verified signature p50", "wallet", ("request_to_verified_signature_ms", "p50"), "ms"),
    Headline("wallet request → verified signature p95", "wallet", ("request_to_verified_signature_ms", "p95"), "ms"),
    Headline("proof Π^enc prove", "primitives", ("proofs_level_128", "enc", "prove", "median_s"), "ms", 1000),
    Headline("proof Π^aff-g prove", "primitives", ("proofs_level_128", "aff-g", "prove", "median_s"), "ms", 1000),
    Headline("proof Π^aff-g verify", "primitives", ("proofs_level_128", "aff-g", "verify", "median_s"), "ms", 1000),
    Headline("proof Π^mod prove", "primitives", ("proofs_level_128", "mod", "prove", "median_s"), "ms", 1000),
    Headline("proof Π^fac prove", "primitives", ("proofs_level_128", "fac", "prove", "median_s"), "ms", 1000),
    Headline("BTC deposit → mint p50", "bridge", ("confirmation_to_mint", "p50_ms"), "ms"),
    Headline("BTC deposit → mint p95", "bridge", ("confirmation_to_mint", "p95_ms"), "ms"),
    Headline("burn → payout broadcast p50", "withdrawals", ("burn_to_broadcast", "p50_ms"), "ms"),
    Headline("burn → payout broadcast p95", "withdrawals", ("burn_to_broadcast", "p95_ms"), "ms"),
    # durations, seconds
    Headline("keygen 2-of-3 (network)", "node", ("keygen_wall_s",), "s"),
    Headline("aux info (network, primes included)", "node", ("aux_info_wall_s",), "s"),
    Headline("aux info safe primes, one party", "protocol", ("aux_info_prime_generation_per_party_s", "median"), "s"),
    Headline("aux info proofs, one party (CPU)", "protocol", ("t2_n3", "aux_info_proofs", "cpu_per_party_median_s"),
             "s"),
    Headline("aux info proof set, one party", "primitives",
             ("proofs_level_128", "aux_info_proof_set_one_party_two_peers_s"), "s"),
    Headline("presign 2 signers, one party (CPU)", "protocol", ("t2_n3", "presign", "cpu_per_party_median_s"), "s"),
    Headline("wallet CreateKey (keygen + aux info)", "wallet", ("create_key_with_aux_info_s",), "s"),
    Headline("payout of many: burns mined → broadcast", "withdrawals",
             ("payout_of_many", "seconds_burns_mined_to_broadcast"), "s"),
    Headline("settlement cut-off → signed checkpoint", "settlement", ("network", "cutoff_to_signed_checkpoint_s"), "s"),
    # rates, per second
    Headline("presignatures/s (network)", "node", ("presign", "throughput_per_s"), "/s"),
    Headline("sustained signatures/s (network)", "node", ("sustained_sign", "signatures_per_s"), "/s"),
    Headline("wallet signatures/s (many in flight)", "wallet", ("spread_signing", "signatures_per_s"), "/s"),
    Headline("bridge burst deposits/s", "bridge", ("burst", "deposits_per_s"), "/s"),
    Headline("settled trades/s, one node (SQLite)", "settlement", ("one_node_sqlite", "trades_per_second"), "/s"),
    Headline("settled trades/s, one node (PostgreSQL)", "settlement", ("one_node_postgresql", "trades_per_second"),
             "/s"),
    Headline("settlement instructions/s through the API", "settlement",
             ("network", "instructions_per_second_through_the_api"), "/s"),
    Headline("BTC devnet blocks/s (100 txs each)", "chains", ("btc_devnet_blocks_per_second",), "/s"),
)
