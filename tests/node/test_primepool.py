"""The safe-prime pool: background generation in another process, durable once-only use."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import trio
from fp_guards import HANG_GUARD

from fusion_prime.node.primepool import PrimePool
from fusion_prime.node.storage import KeyMaterial, Storage
from fusion_prime.protocol.primes import is_safe_prime

BITS = 256
PASS = KeyMaterial.passphrase("correct horse battery staple")


@dataclass(frozen=True)
class Level:
    prime_bits: int


def open_store(path) -> Storage:
    return Storage(path, PASS, node_id="node1", scrypt_log2_n=10, allow_weak_kdf=True)


async def fill(pool: PrimePool, timeout: float = HANG_GUARD) -> float:
    """Run the pool until it is full; returns the longest event-loop stall seen meanwhile."""
    worst = 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        with trio.fail_after(timeout):
            while pool.available() < pool.depth:
                t0 = trio.current_time()
                await trio.sleep(0.005)
                worst = max(worst, trio.current_time() - t0 - 0.005)
        nursery.cancel_scope.cancel()
    return worst


def test_fills_in_the_background_in_another_process(tmp_path):
    store = open_store(tmp_path / "node.sqlite3")
    pool = PrimePool(store, BITS, 6)
    pids = []
    real_generate = pool.worker.generate

    def spy(bits: int) -> int:
        prime = real_generate(bits)
        pids.append(pool.worker.pid)
        return prime

    pool.worker.generate = spy  # type: ignore[method-assign]
    stall = trio.run(fill, pool)
    assert store.prime_count(BITS) == 6 and pool.generated == 6
    assert pids and all(pid is not None and pid != os.getpid() for pid in pids), "generated in a child process"
    assert pool.worker.pid is None, "the worker process is stopped with the pool"
    # The generation itself runs in the child (asserted above): the parent's loop is never the one
    # computing (the stall is measured, not bounded - a loaded machine may stretch any tick).
    print(f"longest event-loop stall while 6 primes were generated: {stall:.3f}s")
    primes = store.take_primes(BITS, 6)
    assert primes is not None and len(set(primes)) == 6
    assert all(p.bit_length() == BITS and is_safe_prime(p) for p in primes)
    store.close()


def test_consumption_is_durable_and_once_only(tmp_path):
    path = tmp_path / "node.sqlite3"
    store = open_store(path)
    for i in range(5):  # not checked for primality by the pool: stand-ins are fine here
        store.put_prime(BITS, (1 << (BITS - 1)) + 2 * i + 1)
    pool = PrimePool(store, BITS, 0)
    assert pool.take(Level(BITS * 2)) is None, "another level's size is not served"
    got: list[tuple[int, int] | None] = []
    lock = threading.Lock()

    def taker() -> None:
        result = pool.take(Level(BITS))
        with lock:
            got.append(result)

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pairs = [g for g in got if g is not None]
    assert len(pairs) == 2, "five primes serve two sessions; the others generate their own"
    handed_out = [p for pair in pairs for p in pair]
    assert len(set(handed_out)) == 4, "no prime handed out twice"
    store.close()
    with open_store(path) as again:
        assert again.prime_count(BITS) == 1, "the four taken primes are gone from disk"
        left = again.take_primes(BITS, 1)
        assert left is not None and left[0] not in handed_out


def test_restart_keeps_unused_primes(tmp_path):
    path = tmp_path / "node.sqlite3"
    store = open_store(path)
    trio.run(fill, PrimePool(store, BITS, 4))
    first = PrimePool(store, BITS, 4).take(Level(BITS))
    assert first is not None
    store.close()

    store = open_store(path)
    assert store.prime_count(BITS) == 2, "unused primes survive the restart"
    pool = PrimePool(store, BITS, 4)
    trio.run(fill, pool)
    assert pool.generated == 2, "only the two that were used are replaced"
    rest = [pool.take(Level(BITS)), pool.take(Level(BITS))]
    assert all(r is not None for r in rest)
    assert not set(first) & {p for r in rest for p in r}  # type: ignore[union-attr]
    store.close()


def test_prime_pool_depth_is_configured_and_validated(tmp_path):
    import pytest

    from fusion_prime.node.config import ConfigError, load_config
    from fusion_prime.node.devnet import create_devnet

    (node,) = create_devnet(tmp_path / "net", 1, scrypt_log2_n=10)
    cfg = load_config(node.config_path)
    assert cfg.prime_pool_depth == 4 and "prime_pool_depth = 4" in node.config_path.read_text()
    text = node.config_path.read_text()
    for bad in ("-1", "100000", '"many"'):
        node.config_path.write_text(text.replace("prime_pool_depth = 4", f"prime_pool_depth = {bad}"))
        with pytest.raises(ConfigError, match="prime_pool_depth"):
            load_config(node.config_path)
    node.config_path.write_text(text.replace("prime_pool_depth = 4", "prime_pool_depth = 0"))
    assert load_config(node.config_path).prime_pool_depth == 0
