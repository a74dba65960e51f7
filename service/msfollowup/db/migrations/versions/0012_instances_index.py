"""Drop ix_instances_study_uid: ix_instances_study_series (study_uid, series_uid) answers every lookup by
study_uid as well (its leading column), on SQLite and PostgreSQL.

Why: every received instance inserts one entry into each index of `instances`. UIDs are long, so these
indexes split often: the WAL of a benchmark run (issue 17) held 1.64 pages of this index per committed
instance, of ~10.5 in all.

Revision ID: 0012_instances_index
Revises: 0011_compliance_rollup
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012_instances_index"
down_revision = "0011_compliance_rollup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_instances_study_uid", table_name="instances")


def downgrade() -> None:
    op.create_index("ix_instances_study_uid", "instances", ["study_uid"], unique=False)
