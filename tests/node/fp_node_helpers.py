"""Helpers for node tests (importable because tests/node/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import io
import logging
from contextlib import asynccontextmanager

import trio

from fusion_prime.node.config import load_config
from fusion_prime.node.material import NodeMaterial
from fusion_prime.node.metrics import NodeMetrics
from fusion_prime.node.transport import Transport


def make_transport(config_path, *, epoch: int = 1, **kw) -> Transport:
    cfg = load_config(config_path)
    material = NodeMaterial.load(cfg)
    return Transport(node_id=cfg.node_id, identity=material.identity, peers=material.peers, tls=material.tls,
                     listen=cfg.listen, epoch=epoch, metrics=NodeMetrics(cfg.node_id), **kw)


@asynccontextmanager
async def running(*transports: Transport):
    async with trio.open_nursery() as nursery:
        for t in transports:
            await nursery.start(t.run)
        try:
            yield nursery
        finally:
            nursery.cancel_scope.cancel()


class LogCapture:
    """Collect the JSON lines the node's loggers write."""

    def __init__(self) -> None:
        from fusion_prime.node.logs import configure_logging

        self.stream = io.StringIO()
        self.handler = configure_logging(logging.DEBUG, self.stream)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self) -> list[dict]:
        import json

        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def close(self) -> None:
        logging.getLogger("fusion_prime").removeHandler(self.handler)


def counter_value(metrics: NodeMetrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def make_node(devnode, **kw):
    from fusion_prime.node.daemon import Node
    from fusion_prime.node.material import storage_key

    cfg = load_config(devnode.config_path)
    return Node(cfg, storage_key(cfg, {}), **kw)


@asynccontextmanager
async def running_nodes(*nodes):
    async with trio.open_nursery() as nursery:
        for n in nodes:
            await nursery.start(n.run)
        try:
            yield nursery
        finally:
            for n in nodes:
                n.stop()
