"""Fixtures for the signer SDK tests: a local digest signer, a real anvil, a real regtest devnet."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ is not a package: make this directory's helper importable under a unique name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fp_local_signer import LocalDigestSigner

from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer
from fusion_prime.bridge.chains.evm.anvil import AnvilProcess


@pytest.fixture
def signer() -> LocalDigestSigner:
    return LocalDigestSigner()


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilProcess]:
    with AnvilProcess(chain_id=31_337) as chain:
        yield chain


@pytest.fixture
def btc_rpc(tmp_path: Path) -> Iterator[BitcoinRPC]:
    node = RegtestNode(tmp_path / "btc")
    server = BitcoinRPCServer(node, user="tester", password="secret").start()
    client = BitcoinRPC(server.url, "tester", "secret")
    yield client
    client.close()
    server.stop()
    node.close()
