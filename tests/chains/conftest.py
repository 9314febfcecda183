"""Fixtures for chain tests: a real libbitcoinkernel node in a temp dir, its real HTTP JSON-RPC
server on a free port, and real anvil processes (killed afterwards)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from coincurve import PrivateKey

from fusion_prime.bridge.chains.bitcoin.encoding import REGTEST, p2wpkh_script, script_to_address
from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer
from fusion_prime.bridge.chains.evm.anvil import AnvilProcess


class Wallet:
    """A single test key with its P2WPKH script and regtest address."""

    def __init__(self, seed: int) -> None:
        self.key = PrivateKey(seed.to_bytes(32, "big"))
        self.pubkey = self.key.public_key.format(compressed=True)
        self.script = p2wpkh_script(self.pubkey)
        address = script_to_address(self.script, REGTEST)
        assert address is not None
        self.address = address


@pytest.fixture
def alice() -> Wallet:
    return Wallet(0xA11CE)


@pytest.fixture
def bob() -> Wallet:
    return Wallet(0xB0B)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RegtestNode]:
    n = RegtestNode(tmp_path / "btc")
    yield n
    n.close()


@pytest.fixture
def rpc_server(node: RegtestNode) -> Iterator[BitcoinRPCServer]:
    server = BitcoinRPCServer(node, user="tester", password="secret").start()
    yield server
    server.stop()


@pytest.fixture
def rpc(rpc_server: BitcoinRPCServer) -> Iterator[BitcoinRPC]:
    client = BitcoinRPC(rpc_server.url, "tester", "secret")
    yield client
    client.close()


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilProcess]:
    with AnvilProcess(chain_id=31337) as a:
        yield a
