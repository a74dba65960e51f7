"""Shared pytest fixtures: a running node on loopback, generated studies."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodeutil import RunningNode  # noqa: E402
from pgutil import PostgresServer, server_binaries  # noqa: E402
from msfollowup.net.compat import keep_replies_for_their_caller  # noqa: E402

# The tests' pynetdicom senders stand for real peers, but pynetdicom 3.0's SCU can lose a reply that
# arrives within a moment to its own reactor (docs/pynetdicom-notes.md item 12): the same fix as the
# node's own SCU, so a fast answer of the node is not taken for no answer.
keep_replies_for_their_caller()

PG_MISSING = ("PostgreSQL server binaries not installed (apt-get install postgresql)" if server_binaries() is None
              else "psycopg missing (pip install .[postgres])" if importlib.util.find_spec("psycopg") is None
              else None)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run (each test gets its own database)."""
    if PG_MISSING:
        pytest.skip(PG_MISSING)
    bindir = server_binaries()
    assert bindir is not None
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg: PostgresServer) -> str:
    return pg.new_database(f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The index on both backends the product supports: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    """A started node (stable_seconds=1) with the default test allow-list; stopped afterwards."""
    n = RunningNode(tmp_path).start()
    yield n
    if n.proc is not None and n.proc.poll() is None:
        n.stop()
