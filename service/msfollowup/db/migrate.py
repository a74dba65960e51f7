"""Schema versions of the index database: Alembic migrations run through its Python API.

One rule at every start: a fresh database is created by running every migration up to the head of
this release; a database at the head is used as it is; an older one is upgraded only when asked
(`msfollowup db upgrade`, or `storage.auto_upgrade = true`), otherwise the node refuses to start
with a message naming the command; a database newer than this release (a node that was not upgraded,
sharing a database with one that was) is always refused: old code must not write a newer schema.

A database from before Alembic (release 0.1.0, `create_all` at every start) has the tables but no
`alembic_version` row; it is exactly the baseline revision and is stamped as such first.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib import resources

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from msfollowup.core.errors import MsFollowupError
from msfollowup.db.base import Base

log = logging.getLogger(__name__)

# Modules that declare tables on `Base`; imported lazily (they import db, not the other way round).
SCHEMA_MODULES = (
    "msfollowup.db.index",
    "msfollowup.db.checks",
    "msfollowup.reports.files",
    "msfollowup.db.deliveries",
    "msfollowup.app.plans",
    "msfollowup.app.worklist",
    "msfollowup.db.audit",
    "msfollowup.app.metrics",
    "msfollowup.runtime.jobs",
    "msfollowup.db.provisional",
    "msfollowup.db.notifications",
    "msfollowup.app.results",
    "msfollowup.app.rollup",
    "msfollowup.app.accounts",
    "msfollowup.app.study_review",
    "msfollowup.db.cluster",
)
BASELINE = "0001_baseline"  # the schema of release 0.1.0 (create_all at commit 9b0320c)
LEGACY_MARKER_TABLE = "studies"  # present in every database a 0.1.0 node ever opened
EXTERNAL_TABLES: frozenset[str] = frozenset()
BASELINE_TABLES = frozenset({
    "audit_events", "health_probes", "instances", "monitoring_plan_history", "monitoring_plans",
    "report_deliveries", "reports", "series", "studies", "study_checks", "worklist_mpps",
    "worklist_mpps_instances", "worklist_mpps_studies", "worklist_steps",
})
UPGRADE_COMMAND = "msfollowup db upgrade"
_PG_LOCK_KEY = 0x6D7366_0001  # pg_advisory_xact_lock key: one schema change at a time per database


class SchemaError(MsFollowupError):
    """The database's schema version does not fit this release; the message says what to do."""


def metadata() -> MetaData:
    """Every table of the package (the modules are imported here, so the list is complete)."""
    for name in SCHEMA_MODULES:
        importlib.import_module(name)
    return Base.metadata


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("msfollowup.db") / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # None: no alembic_version (fresh, or a pre-Alembic database)
    head: str
    legacy: bool  # tables of release 0.1.0 without a version stamp
    fresh: bool

    @property
    def known(self) -> bool:
        script = ScriptDirectory.from_config(alembic_config())
        return self.current is None or any(r.revision == self.current for r in script.walk_revisions())

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def newer(self) -> bool:
        return not self.known


def _state(conn: Connection) -> SchemaState:
    current = MigrationContext.configure(conn).get_current_revision()
    tables = set(inspect(conn).get_table_names())
    legacy = current is None and LEGACY_MARKER_TABLE in tables
    return SchemaState(current=current, head=head_revision(), legacy=legacy, fresh=current is None and not legacy)


def schema_state(engine: Engine) -> SchemaState:
    with engine.connect() as conn:
        return _state(conn)


def _lock(conn: Connection) -> None:
    """Serialise schema changes of nodes starting together (SQLite: BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})


def _stamp_legacy(conn: Connection) -> None:
    """A 0.1.0 database is the baseline, except that 0.1.0 created `health_probes` only when the
    node ran (`serve`), not from the command line: that scratch table is added when missing."""
    tables = set(inspect(conn).get_table_names())
    if "health_probes" not in tables:
        conn.execute(text("CREATE TABLE health_probes (id INTEGER NOT NULL, at TIMESTAMP WITH TIME ZONE NOT NULL, "
                          "PRIMARY KEY (id))"))
    missing = sorted(BASELINE_TABLES - tables - {"health_probes"})
    if missing:
        raise SchemaError(f"the index database has no schema version and lacks tables of release 0.1.0 "
                          f"({', '.join(missing)}): not an msfollowup database, or a damaged one")
    command.stamp(alembic_config(conn), BASELINE)


def _upgrade(conn: Connection, state: SchemaState) -> None:
    cfg = alembic_config(conn)
    if state.legacy:
        _stamp_legacy(conn)
    command.upgrade(cfg, "head")


def _describe(state: SchemaState) -> str:
    return "a database from before schema versions (release 0.1.0)" if state.legacy else f"revision {state.current}"


def ensure_schema(engine: Engine, auto_upgrade: bool = False) -> SchemaState:
    """Make the database usable by this release or raise SchemaError (see the module docstring).

    Runs in one transaction under a lock, so two nodes starting on one fresh PostgreSQL database do
    not both create it, and a failed migration leaves the database as it was (transactional DDL).
    """
    with engine.begin() as conn:
        _lock(conn)
        state = _state(conn)
        if state.up_to_date:
            return state
        if state.newer:
            raise SchemaError(
                f"the index database is at schema revision {state.current}, newer than this msfollowup "
                f"(which knows up to {state.head}): a newer release wrote it; upgrade msfollowup on this node"
            )
        if not state.fresh and not auto_upgrade:
            raise SchemaError(
                f"the index database is at {_describe(state)}, older than this msfollowup (needs {state.head}): "
                f"back it up and run `{UPGRADE_COMMAND}` (or set storage.auto_upgrade = true)"
            )
        if not state.fresh:
            log.warning("upgrading the index database from %s to %s", _describe(state), state.head)
        _upgrade(conn, state)
    return schema_state(engine)


def upgrade(engine: Engine) -> tuple[SchemaState, SchemaState]:
    """`msfollowup db upgrade`: (state before, state after); refuses a newer database."""
    before = schema_state(engine)
    after = ensure_schema(engine, auto_upgrade=True)
    return before, after
