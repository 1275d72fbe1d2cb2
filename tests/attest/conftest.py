"""Store fixtures: every store test runs against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from ultraviolet.attest.store import Store
from ultraviolet.testbed.pgserver import PostgresServer, postgres_bindir

_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (scripts/bootstrap installs it)")
    server = PostgresServer.create()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL (a file path for SQLite)."""
    if request.param == "sqlite":
        return str(tmp_path / "verifier.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"uv{next(_database_numbers)}")


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    opened = Store.open(database)
    try:
        yield opened
    finally:
        opened.close()
