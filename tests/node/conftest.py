"""Fixtures for node tests: real key material on disk, real loopback ports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def devnet3(tmp_path):
    from fusion_prime.node.devnet import create_devnet

    return create_devnet(tmp_path / "net", 3, round_deadline_seconds=10.0, scrypt_log2_n=10)
