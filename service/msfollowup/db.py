"""The index database: one SQLAlchemy metadata for every concern, portable SQL only.

Each concern module declares its own tables on `Base` (store, results, outbox, plans, worklist ...).
The schema is versioned with Alembic (dbmigrate.py, migrations/): opening a database creates a fresh
one at the head revision and refuses one of another revision unless asked to upgrade it. SQLite (WAL)
is the embedded default; the same code runs on PostgreSQL, so no SQLite-only SQL anywhere.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops tzinfo otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_engine(url: str, busy_timeout: float = 30.0) -> Engine:
    """Engine with the pragmas that make SQLite a safe concurrent index (WAL, busy timeout)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged instance must survive power loss
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()
            # Let SQLAlchemy own transaction boundaries (pysqlite's own BEGIN handling is deferred).
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # IMMEDIATE takes the write lock up front: a read-then-write transaction can then never
            # fail with SQLITE_BUSY_SNAPSHOT when another thread committed in between.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def create_schema(engine: Engine, auto_upgrade: bool = False) -> None:
    """Bring the schema to this release's head (fresh database) or refuse (see dbmigrate)."""
    from msfollowup.dbmigrate import ensure_schema  # imports every table module, which import db

    ensure_schema(engine, auto_upgrade)


class Database:
    """Engine + session factory, created once per process and passed explicitly (no globals)."""

    def __init__(self, url: str, busy_timeout: float = 30.0, auto_upgrade: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout)
        try:
            create_schema(self.engine, auto_upgrade)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any exception."""
        with self._sessions() as s:
            with s.begin():
                yield s

    def dispose(self) -> None:
        self.engine.dispose()
