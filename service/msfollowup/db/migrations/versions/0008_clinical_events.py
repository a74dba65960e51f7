"""Clinical model (issue 10): one check per purpose of a study, dated plan events, QA decisions.

study_checks.purpose: brain, spine or undetermined (existing checks were brain checks); the unique key becomes
(study, version, purpose). monitoring_plans gains the therapy stop date, the JCV test date and the dated
clinical events (relapses, PML suspicion: JSON list, empty for existing plans). study_decisions holds QA
acceptances of unverifiable studies and designated reference studies.

Revision ID: 0008_clinical_events
Revises: 0007_cluster
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_clinical_events"
down_revision = "0007_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('study_decisions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=128), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('study_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_decisions_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_decisions_study_uid'), ['study_uid'], unique=False)

    with op.batch_alter_table('monitoring_plans', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dmt_stop', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('jcv_date', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('events_json', sa.Text(), nullable=False, server_default='[]'))

    with op.batch_alter_table('study_checks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purpose', sa.String(length=16), nullable=False, server_default='brain'))
        batch_op.drop_constraint(batch_op.f('uq_study_checks_version'), type_='unique')
        batch_op.create_unique_constraint('uq_study_checks_version', ['study_uid', 'version', 'purpose'])


def downgrade() -> None:
    with op.batch_alter_table('study_checks', schema=None) as batch_op:
        batch_op.drop_constraint('uq_study_checks_version', type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_study_checks_version'), ['study_uid', 'version'])
        batch_op.drop_column('purpose')

    with op.batch_alter_table('monitoring_plans', schema=None) as batch_op:
        batch_op.drop_column('events_json')
        batch_op.drop_column('jcv_date')
        batch_op.drop_column('dmt_stop')

    with op.batch_alter_table('study_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_decisions_study_uid'))
        batch_op.drop_index(batch_op.f('ix_study_decisions_patient_id'))

    op.drop_table('study_decisions')
