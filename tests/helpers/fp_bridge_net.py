"""The bridge's multi-process test network (issue 14), shared by the bridge's network tests.

The network itself - three bridge daemons, the Bitcoin devnet, two anvils, the Gateway deployed
with the group key - is :mod:`fusion_prime.bridge.localnet`, in the package so that ``make demo``
runs the very network these tests run; this module re-exports its names unchanged and keeps what
only tests need: :func:`wait_for` (bounded by the tests' own hang guard, ``fp_guards``) and
:class:`Attacker` (a malicious coordinator with node1's identity).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import grpc
from fp_guards import HANG_GUARD

from fusion_prime.bridge.localnet import (  # noqa: F401 - re-exported for the network tests
    ADMIN,
    BTC_CHAIN,
    BTC_RULES,
    BTC_WITHDRAWALS,
    COIN,
    DST_CHAIN,
    ETH_RULES,
    ETH_WITHDRAWALS,
    ETHER,
    LARGE_BTC,
    LARGE_ETH,
    LARGE_MINT_DELAY,
    SRC_CHAIN,
    Miner,
    Net,
    _bridge_peers,
    _following,
    _node_overrides,
    _port,
    _start,
    _tune_nodes,
    _write_bridge,
    bridge_network,
    wait_until,
)
from fusion_prime.node.config import load_config


def wait_for(what: str, check: Callable[[], Any], timeout: float = HANG_GUARD,
             procs: dict[str, Any] | None = None) -> Any:
    """Poll until ``check()`` is truthy; fail (never hang) after ``timeout`` - a hang guard
    (fp_guards), not a speed claim, and at once if a daemon in ``procs`` exited. The harness's
    own ``wait_until`` (its ``LocalnetError`` is an ``AssertionError``).

    A node that answers ``UNAVAILABLE`` is (re)starting - its API serves before its ledger or
    bridge runs - so that answer is "not yet", never a failure: a wait across a restart read one
    such answer on a loaded CI machine and failed. Every other error still fails at once."""
    def patient() -> Any:
        try:
            return check()
        except grpc.RpcError as e:
            if e.code() is grpc.StatusCode.UNAVAILABLE:
                return None
            raise
    return wait_until(what, patient, timeout=timeout, procs=procs)


class Attacker:
    """node1's storage, run in the test process as a node whose own hook accepts anything: a
    malicious coordinator with a real identity, talking to the honest nodes through the real
    message path (node1's daemon must be stopped first)."""

    def __init__(self, net: Net) -> None:
        from fusion_prime.node.daemon import Node
        from fusion_prime.node.material import storage_key

        d = net.devnode("node1")
        cfg = load_config(d.config_path)
        self.net = net
        self.node = Node(cfg, storage_key(cfg, dict(os.environ)), fill_pool=False, prime_pool=False)

    async def wait_healthy(self) -> None:
        import trio

        with trio.fail_after(HANG_GUARD):
            while not {"node2", "node3"} <= set(await self.node.sessions.healthy_peers("presign")):
                await trio.sleep(0.2)

    async def propose_request(self, honest: str, digest: bytes, path: tuple[int, ...], client_request: bytes) -> Any:
        """One sign session with exactly {node1, ``honest``} (a presignature for that pair is
        made first, so the proposal goes to the node under test)."""
        import trio

        from fusion_prime.node.daemon import COORDINATOR_RESERVATION

        await self.wait_healthy()
        signers = ["node1", honest]
        pre = await self.node.presign(self.net.key_id, signers)
        assert pre.ok, pre
        presig = pre.output["presignature_id"]
        assert await trio.to_thread.run_sync(self.node.storage.reserve_presignature_id, presig,
                                             COORDINATOR_RESERVATION)
        outcome, _refused = await self.node._sign_with(self.net.key_id, presig, signers, digest, path, client_request)
        return outcome

    async def propose(self, honest: str, order: Any, digest: bytes | None = None) -> Any:
        """A mint order (``digest``: what the proposal claims to sign; default the order's own)."""
        from fusion_prime.bridge.requests import MintRequest, encode

        chain_id = int(DST_CHAIN.partition(":")[2])
        digest = digest if digest is not None else order.digest(self.net.gateway.address, chain_id)
        return await self.propose_request(honest, digest, (), encode(MintRequest(order)))
