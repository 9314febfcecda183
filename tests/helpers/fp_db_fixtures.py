"""Database fixtures for the bridge's and the settlement ledger's tests: both engines.

Imported by the root ``tests/conftest.py`` so one PostgreSQL cluster per pytest process serves
every folder.

``pg_cluster`` starts one real PostgreSQL server per pytest process (so each xdist worker has its
own, on its own free loopback port) the first time a test asks for it, and stops it when the
session ends, whatever happened. If PostgreSQL cannot start, every test that needs it fails with
the reason; none is skipped. ``pg_url`` is a fresh database of that cluster per test, dropped after.
``bridge_db`` is an open :class:`~fusion_prime.bridge.db.BridgeDB` on each engine in turn.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from pathlib import Path

import pytest
from fp_postgres import PostgresCluster, PostgresUnavailable

from fusion_prime.bridge.db import BridgeDB, open_database

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = PostgresCluster()
        atexit.register(cluster.stop)  # also on an interrupted session; stop() is idempotent
        cluster.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL is required by the bridge tests and could not start:\n{exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    with pg_cluster.database("bridge") as url:
        yield url


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(engine_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A URL for an empty database of the engine (a new SQLite file, or a new PostgreSQL database)."""
    if engine_name == "sqlite":
        return f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def bridge_db(db_url: str) -> Iterator[BridgeDB]:
    db = open_database(db_url)
    try:
        yield db
    finally:
        db.close()
