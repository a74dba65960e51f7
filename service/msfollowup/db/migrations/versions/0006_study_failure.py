"""A study that a later stage cannot process is marked failed once, with the reason (issue 12 item 8).

The reason is a fixed sentence naming the stage and the problem, never an element value.

Revision ID: 0006_study_failure
Revises: 0005_web
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_study_failure"
down_revision = "0005_web"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failure_reason', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('failure_reason')
