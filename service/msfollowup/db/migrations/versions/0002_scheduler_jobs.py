"""Periodic jobs scheduled in our own table instead of APScheduler's pickled job store.

A 0.1.0 node that ran `serve` has APScheduler's `scheduler_jobs` (id, next_run_time as epoch
seconds, pickled job_state). Its next run times are carried over, so an upgrade does not postpone a
due job; the interval is filled in by the node at its next start (0 marks "not known yet").

Revision ID: 0002_scheduler_jobs
Revises: 0001_baseline
Create Date: 2026-05-01
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0002_scheduler_jobs"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    inspector = sa.inspect(conn)
    carried: list[tuple[str, float]] = []
    if "scheduler_jobs" in inspector.get_table_names():
        carried = [(str(r[0]), float(r[1])) for r in conn.execute(
            sa.text("SELECT id, next_run_time FROM scheduler_jobs WHERE next_run_time IS NOT NULL"))]
        op.drop_table("scheduler_jobs")  # its index goes with it
    table = op.create_table(
        "scheduler_jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_duration_seconds", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_scheduler_jobs_next_run_at"), "scheduler_jobs", ["next_run_at"], unique=False)
    if carried and table is not None:
        op.bulk_insert(table, [
            {"id": job_id[:64], "interval_seconds": 0.0, "runs": 0,
             "next_run_at": dt.datetime.fromtimestamp(epoch, dt.timezone.utc)}
            for job_id, epoch in carried
        ])


def downgrade() -> None:
    # APScheduler 3 recreates its own table at start; its schedules begin afresh.
    op.drop_index(op.f("ix_scheduler_jobs_next_run_at"), table_name="scheduler_jobs")
    op.drop_table("scheduler_jobs")
