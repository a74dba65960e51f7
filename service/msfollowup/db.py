"""The index database: one SQLAlchemy metadata for every concern, portable SQL only.

Each concern module declares its own tables on `Base` (store, results, outbox, plans, worklist ...);
`create_schema` imports them so the metadata is complete before `create_all`. SQLite (WAL) is the
embedded default; the same code runs on PostgreSQL, so no SQLite-only SQL anywhere.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

# Modules that declare tables; imported lazily to keep `db` free of import cycles.
SCHEMA_MODULES = (
    "msfollowup.store",
    "msfollowup.pipeline",
    "msfollowup.report",
    "msfollowup.plans",
    "msfollowup.worklist",
    "msfollowup.audit",
)


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
    """Engine with the pragmas that make SQLite a safe concurrent index (WAL, busy timeout).

    hide_parameters: a database error's text never carries the statement's values (patient name,
    ID, birth date on the studies insert), so no logged exception can leak them.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout},
                               hide_parameters=True)

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
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def create_schema(engine: Engine) -> None:
    for name in SCHEMA_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside an existing module
                raise
    Base.metadata.create_all(engine)


class Database:
    """Engine + session factory, created once per process and passed explicitly (no globals)."""

    def __init__(self, url: str, busy_timeout: float = 30.0) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout)
        create_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any exception."""
        with self._sessions() as s:
            with s.begin():
                yield s

    def dispose(self) -> None:
        self.engine.dispose()
