"""Fixtures for the contract tests; the helpers they use live in fp_contracts.py.

Gas figures recorded with `record_property("gas ...", n)` are printed by tests/conftest.py in a terminal-summary
section whenever this directory's conftest is loaded by the reporting process (for example
`pytest tests/contracts`, with or without -n); with -s they are also printed inline.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ is not a package (see tests/conftest.py): make this directory's helper module importable,
# under a name no installed distribution uses.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fp_contracts import CHAIN_A, CHAIN_B, Anvil, start_anvil, stop_anvil


@pytest.fixture(scope="module")
def chain_a() -> Iterator[Anvil]:
    node = start_anvil(CHAIN_A)
    yield node
    stop_anvil(node.process)


@pytest.fixture(scope="module")
def chain_b() -> Iterator[Anvil]:
    node = start_anvil(CHAIN_B)
    yield node
    stop_anvil(node.process)
