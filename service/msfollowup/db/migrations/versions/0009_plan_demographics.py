"""Patient demographics in the monitoring plan (issue 11): name, birth date and sex, so a patient with a plan
and no study yet gets a complete worklist item (PS3.4 Table K.6-1 requires the name). All nullable: existing
plans keep using the last study's demographics until a user gives them.

Revision ID: 0009_plan_demographics
Revises: 0008_clinical_events
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_plan_demographics"
down_revision = "0008_clinical_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('monitoring_plans', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_name', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('birth_date', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('sex', sa.String(length=1), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('monitoring_plans', schema=None) as batch_op:
        batch_op.drop_column('sex')
        batch_op.drop_column('birth_date')
        batch_op.drop_column('patient_name')
