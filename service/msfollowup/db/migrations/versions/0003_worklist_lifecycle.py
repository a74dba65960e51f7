"""Worklist item life cycle (issue 11): the study that fulfilled an item, and an item version.

`fulfilled_by_study` lets a later version of the same study find its item and close nothing else;
`version` makes the export's Media Storage SOP Instance UID deterministic per item version, so an
unchanged item is not rewritten. Existing items start at version 1, fulfilled by no study.

Revision ID: 0003_worklist_lifecycle
Revises: 0002_scheduler_jobs
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_worklist_lifecycle"
down_revision = "0002_scheduler_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worklist_steps") as batch:
        batch.add_column(sa.Column("fulfilled_by_study", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch.create_index(op.f("ix_worklist_steps_fulfilled_by_study"), ["fulfilled_by_study"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("worklist_steps") as batch:
        batch.drop_index(op.f("ix_worklist_steps_fulfilled_by_study"))
        batch.drop_column("version")
        batch.drop_column("fulfilled_by_study")
