"""A real wallet server (WalletServicer behind gRPC + TLS) in this process, over a real storage
and policy database, for tests whose node is a stand-in (tests/signer/test_wallet_tools.py,
tests/signer/test_status_bounds.py): the servicer needs a trio token for the node's async
calls, so a trio loop runs in a thread until the server stops."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

from fusion_prime.node.storage import KeyMaterial, Storage
from fusion_prime.node.tls import create_certificate_files
from fusion_prime.signer.policy import PolicyBook, PolicyEnforcer
from fusion_prime.signer.service import WalletServicer, start_wallet_server


def wallet_storage(folder: Path) -> Storage:
    """The node's storage at a test-only scrypt cost."""
    return Storage(folder / "node.sqlite3", KeyMaterial.passphrase("a long passphrase"), scrypt_log2_n=10,
                   allow_weak_kdf=True)


@contextlib.contextmanager
def serving_wallet(folder: Path, policy_text: str, make_node: Callable[[Storage], Any],
                   prepare: Callable[[Storage], None] = lambda storage: None,
                   **bounds: Any) -> Iterator[SimpleNamespace]:
    """(servicer, node, enforcer, storage, port, cert, key) of a wallet server named "node1" on
    loopback; ``prepare`` fills the storage before the server starts; everything stops after."""
    policy = folder / "policy.toml"
    policy.write_text(policy_text)
    storage = wallet_storage(folder)
    prepare(storage)
    enforcer = PolicyEnforcer(PolicyBook.load(policy), folder / "wallet-policy.sqlite3")
    tokens: queue.Queue = queue.Queue()
    stop = threading.Event()

    async def loop() -> None:
        tokens.put(trio.lowlevel.current_trio_token())
        await trio.to_thread.run_sync(stop.wait)

    runner = threading.Thread(target=trio.run, args=(loop,))
    runner.start()
    server = None
    try:
        node = make_node(storage)
        servicer = WalletServicer(node, enforcer, tokens.get(), **bounds)
        create_certificate_files("node1", folder / "tls.crt", folder / "tls.key")
        cert, key = (folder / "tls.crt").read_bytes(), (folder / "tls.key").read_bytes()
        server, port = start_wallet_server(servicer, "127.0.0.1:0", cert, key)
        yield SimpleNamespace(servicer=servicer, node=node, enforcer=enforcer, storage=storage, port=port,
                              cert=cert, key=key)
    finally:
        if server is not None:
            server.stop(grace=None).wait()
        stop.set()
        runner.join()
        enforcer.close()
        storage.close()
