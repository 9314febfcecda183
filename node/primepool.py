"""A pool of pre-generated safe primes, so aux info and key refresh do not wait for them.

Safe-prime generation dominates both phases (DESIGN §2). The pool keeps ``depth`` primes of
the node's level (``level.prime_bits``) in storage, sealed like key shares, and refills in
the background:

* **Where the work runs**: in one separate OS process (a minimal Python child that imports
  only the prime sieve - a ``multiprocessing`` spawn child would re-import the node's main
  module, and forking a process that runs gRPC threads is unsafe), at a lower scheduling
  priority (``nice``). The trio loop only waits, in a worker thread, for the process's
  answer on a pipe, so neither the loop nor running sessions are stalled by the sieve. The
  process is started lazily, asked for one prime at a time (so a full pool costs no CPU),
  and terminated when the node stops.
* **Consumption**: :meth:`PrimePool.take` is the ``primes=`` hook of the aux-info and
  key-refresh phases. It takes two primes in one committed transaction that deletes them
  (``Storage.take_primes``) *before* they are handed to the machine: a prime is used at most
  once, even across a crash - a prime in two Paillier moduli would factor both by a gcd. With
  fewer than two stored it returns ``None`` and the machine generates its own.
* **Restart**: unused primes stay in storage and are used after a restart; backups leave
  them out.

Primes are secrets: nothing here logs a prime or puts one in an exception message.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import trio

from ..protocol.levels import SecurityLevel
from .logs import log_event
from .storage import Storage

log = logging.getLogger("fusion_prime.node.primepool")

WORKER_NICE = 10
POLL_SECONDS = 1.0
RETRY_SECONDS = 5.0


# The child imports nothing but the prime sieve: a ``multiprocessing`` *spawn* child would
# re-import the node's main module (gRPC, the CLI, ...), and *fork* is unsafe in a process
# that runs gRPC threads. One request per line on stdin (bits), one prime per line on stdout.
WORKER_SOURCE = f"""
import os, sys
try:
    os.nice({WORKER_NICE})
except OSError:
    pass
from fusion_prime.protocol.primes import random_safe_prime
for line in sys.stdin:
    sys.stdout.write(format(random_safe_prime(int(line)), "x") + "\\n")
    sys.stdout.flush()
"""


class PrimeWorker:
    """One child process that generates safe primes on request (one at a time)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def generate(self, bits: int) -> int:
        """Blocking: ask the child for one safe prime of ``bits`` bits (call from a thread)."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                proc = self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and source
                    [sys.executable, "-c", WORKER_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True, close_fds=True,
                )
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{int(bits)}\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line.strip():
                raise RuntimeError("the prime worker process ended")
            return int(line, 16)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # a prime half-way through is worth nothing: do not wait for it
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


class PrimePool:
    """Keeps ``depth`` safe primes of ``bits`` bits in ``storage``; see the module docstring."""

    def __init__(self, storage: Storage, bits: int, depth: int, *, worker: PrimeWorker | None = None) -> None:
        if depth < 0:
            raise ValueError("prime pool depth must be >= 0")
        self.storage = storage
        self.bits = bits
        self.depth = depth
        self.worker = worker or PrimeWorker()
        self.generated = 0
        self.taken = 0
        self._wake: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def available(self) -> int:
        return self.storage.prime_count(self.bits)

    # consumption (the phases' primes= hook; called from worker threads) -----------------------
    def take(self, level: SecurityLevel, me: int = 0) -> tuple[int, int] | None:
        """Two primes for one Paillier modulus, deleted durably before they are returned; None
        when the pool does not hold two of this level's size (the caller then generates)."""
        if level.prime_bits != self.bits:
            return None
        primes = self.storage.take_primes(self.bits, 2)
        self._poke()
        if primes is None:
            log_event(log, logging.INFO, "prime pool empty: the session generates its own primes", bits=self.bits)
            return None
        self.taken += 2
        return primes[0], primes[1]

    def _poke(self) -> None:
        if self._token is None or self._wake is None:
            return
        try:
            trio.from_thread.run_sync(self._wake.set, trio_token=self._token)
        except (RuntimeError, trio.RunFinishedError):
            pass  # called on the loop itself, or the loop is gone: the poll catches up

    # refilling --------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refill to ``depth`` whenever the pool runs low, until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        try:
            while True:
                self._wake = trio.Event()
                try:
                    await self._fill()
                except Exception as exc:  # a dead worker or a storage error must not stop the node
                    self.worker.stop()
                    log_event(log, logging.WARNING, "prime pool refill failed; retrying",
                              error=type(exc).__name__, retry_seconds=RETRY_SECONDS)
                    await trio.sleep(RETRY_SECONDS)
                    continue
                with trio.move_on_after(POLL_SECONDS):
                    await self._wake.wait()
        finally:
            self._token = None
            self.worker.stop()

    async def _fill(self) -> None:
        while self.depth and await trio.to_thread.run_sync(self.available) < self.depth:
            prime = await trio.to_thread.run_sync(self.worker.generate, self.bits, abandon_on_cancel=True)
            await trio.to_thread.run_sync(self.storage.put_prime, self.bits, prime)
            del prime
            self.generated += 1
            log_event(log, logging.DEBUG, "safe prime added to the pool", bits=self.bits,
                      available=await trio.to_thread.run_sync(self.available))
