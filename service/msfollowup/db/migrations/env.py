"""Alembic environment: always run on a connection handed over by msfollowup.schema.

The node never builds an engine from an alembic.ini: the caller passes its own connection in
`config.attributes["connection"]`, so migrations run with the same engine settings (SQLite pragmas,
PostgreSQL pool) as the node itself.
"""

from __future__ import annotations

from alembic import context

from msfollowup.db.migrate import EXTERNAL_TABLES, metadata


def _include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Tables owned by something else (none today) are left alone by autogenerate comparisons.
    return not (type_ == "table" and name in EXTERNAL_TABLES)


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("msfollowup migrations run only through msfollowup.schema (no alembic.ini)")
    context.configure(
        connection=connection,
        target_metadata=metadata(),
        include_object=_include_object,
        render_as_batch=True,  # SQLite cannot ALTER most things: future migrations copy-and-move tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
