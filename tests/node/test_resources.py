"""File handles and memory stay flat (issue 12, item 2).

The node used to keep one SQLite connection (three file descriptors: database, -wal, -shm)
per thread that ever touched storage, for ever; trio and grpcio replace their worker threads,
so descriptors grew until "unable to open database file". Storage now uses a bounded pool
(see node/storage.py). Here: bursts from fresh threads, trio worker threads whose cache
expires between bursts, and a real signer daemon's /proc/<pid>/fd over idle/burst cycles of
wallet RPCs. Bounds are counts (descriptors, connections, bytes), never times.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import trio
from fp_guards import HANG_GUARD

from fusion_prime.node.devnet import create_devnet
from fusion_prime.node.storage import MAX_CONNECTIONS, KeyMaterial, Storage
from fusion_prime.proto.generated import wallet_pb2, wallet_pb2_grpc
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.requests import KIND_SIGN, RequestBody, list_keys_request, make_request, public_key_request

CLIENT = PartyIdentity.generate()
FDS_PER_CONNECTION = 3  # database, -wal, -shm


def _fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _store(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "node.sqlite3", KeyMaterial.passphrase("a long passphrase"), node_id="node1",
                   scrypt_log2_n=10, allow_weak_kdf=True)


def _work(store: Storage, i: int) -> None:
    store.meta("kdf")
    store.list_keys()
    store.presignature_counts()
    if i % 4 == 0:
        store.append_audit("resource-test", detail={"i": i})


def test_bursts_from_fresh_threads_keep_descriptors_connections_and_memory_flat(tmp_path):
    store = _store(tmp_path)
    try:
        def cycle(n: int) -> None:
            threads = [threading.Thread(target=_work, args=(store, i)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        cycle(32)  # warm-up: the pool reaches its size
        fds, rss = _fds(), _rss_kib()
        for _ in range(40):
            cycle(32)  # 1,280 fresh threads in all
            assert store.connection_count() <= store.max_connections == MAX_CONNECTIONS
        assert _fds() <= fds + FDS_PER_CONNECTION  # at most one more pooled connection than after warm-up
        assert _rss_kib() - rss < 32 * 1024  # no per-thread connection or page cache piling up
        assert store.verify_audit_chain()
    finally:
        store.close()
    assert store.connection_count() == 0


def test_trio_worker_threads_replaced_after_idle_periods_do_not_leak(tmp_path, monkeypatch):
    # trio keeps an idle worker thread for 10 s; a short idle timeout lets every idle period
    # below end all workers, so each burst runs on brand-new threads (what a node sees over hours)
    import trio._core._thread_cache as thread_cache

    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0.02)
    store = _store(tmp_path)
    # A native thread id can be handed out again once its thread exited, so count threads by a
    # token each one draws on first use instead.
    marks = threading.local()
    tokens = itertools.count()
    seen_threads: set[int] = set()

    def work(i: int) -> None:
        if not hasattr(marks, "token"):
            marks.token = next(tokens)
        seen_threads.add(marks.token)
        _work(store, i)

    def trio_workers() -> int:
        # trio names each idle worker "Trio thread N"; other threads of this process (an xdist
        # worker's channel thread, gRPC threads of earlier tests that exit at their own pace) are
        # not counted, so their coming and going cannot end an idle period early
        return sum(1 for t in threading.enumerate() if t.name.startswith("Trio thread"))

    async def main() -> tuple[int, int]:
        limiter = trio.CapacityLimiter(16)

        async def burst() -> None:
            async with trio.open_nursery() as nursery:
                for i in range(32):
                    nursery.start_soon(lambda i=i: trio.to_thread.run_sync(work, i, limiter=limiter))

        async def idle() -> None:  # until trio's idle workers have exited
            with trio.fail_after(HANG_GUARD):  # idle workers exit after 20 ms
                while trio_workers() > 0:
                    await trio.sleep(0.01)

        await burst()
        await idle()
        start = _fds()
        for _ in range(25):
            await burst()
            assert store.connection_count() <= store.max_connections
            await idle()
        return start, _fds()

    try:
        start, end = trio.run(main)
    finally:
        store.close()
    assert len(seen_threads) > 25 * 2  # the bursts really ran on fresh threads
    # One connection's descriptors of slack, plus a few for whatever else lives in this process
    # (an xdist worker keeps gRPC channels and sockets of earlier tests, closed by the garbage
    # collector at its own pace). The leak this guards against grew by ~28 per cycle: 46 -> 740.
    assert end <= start + FDS_PER_CONNECTION + 8


def _sign_request(i: int) -> wallet_pb2.SignedRequest:
    body = RequestBody(KIND_SIGN, CLIENT.public_key, f"fd-{i}-{os.getpid()}", int(time.time() * 1000),
                       key_id=bytes([i % 256]) * 16, digest=bytes(32), path=())
    return make_request(CLIENT, body)


def test_signer_daemon_descriptors_stay_flat_over_idle_and_burst_cycles(tmp_path):
    node = create_devnet(tmp_path / "net", 1, with_metrics=False, scrypt_log2_n=10)[0]
    policy = node.folder / "policy.toml"
    policy.write_text(f'[default]\nclients = ["{CLIENT.public_key.hex()}"]\nmax_signatures_per_window = 100000\n'
                      "window_seconds = 3600\n")
    port_file = tmp_path / "port"
    # A real signer daemon, whose trio worker threads expire after 50 ms instead of 10 s (so
    # that idle periods replace them quickly); nothing else differs from `python -m`.
    launcher = ("import sys, trio._core._thread_cache as c; c.IDLE_TIMEOUT = 0.05; "
                "from fusion_prime.signer.daemon import main; sys.exit(main(sys.argv[1:]))")
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", launcher, "--config", str(node.config_path), "--policy",
                             str(policy), "--port-file", str(port_file)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        while not (port_file.exists() and port_file.read_text()):
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        cert = (node.folder / "tls.crt").read_bytes()
        channel = grpc.secure_channel(f"127.0.0.1:{int(port_file.read_text())}",
                                      grpc.ssl_channel_credentials(root_certificates=cert),
                                      options=[("grpc.ssl_target_name_override", "node1")])
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        counter = iter(range(10**6))

        def burst() -> None:
            calls = []
            for _ in range(12):
                calls.append(stub.ListKeys.future(list_keys_request(CLIENT), timeout=60))
                # a sign for a key this node does not hold: policy, then the node's storage in trio worker threads
                calls.append(stub.Sign.future(_sign_request(next(counter)), timeout=60))
                calls.append(stub.GetPublicKey.future(public_key_request(CLIENT, b"\x01" * 16), timeout=60))
            for call in calls:
                try:
                    call.result()
                except grpc.RpcError as exc:
                    assert exc.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND,
                                          grpc.StatusCode.INVALID_ARGUMENT), exc

        def idle() -> None:  # long enough for the daemon's idle trio workers to exit
            time.sleep(0.3)

        for _ in range(3):  # warm-up: gRPC threads, pools and channels reach their size
            burst()
            idle()
        start = _fds(proc.pid)
        for _ in range(30):
            burst()
            idle()
        end = _fds(proc.pid)
        channel.close()
        assert end <= start + 2 * FDS_PER_CONNECTION, (start, end)
    finally:
        proc.terminate()
        assert proc.wait(timeout=HANG_GUARD) == 0
        log.close()
