"""Fixtures for the cluster tests: one private PostgreSQL server for the session (see
tests/pg_server.py), and a fresh database per test so queues and locks never leak."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from pg_server import PostgresServer, pg_bindir

_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (make apt installs Debian's postgresql)")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return pg_server.new_database(f"t{next(_names)}")


@pytest.fixture
def pg_private() -> Iterator[PostgresServer]:
    """A server of this test's own, for tests that stop or restart it."""
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (make apt installs Debian's postgresql)")
    with PostgresServer() as server:
        yield server
