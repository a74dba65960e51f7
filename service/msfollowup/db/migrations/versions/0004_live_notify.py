"""Live provisional checks and notification deliveries (issue 15).

provisional_results keeps each changed provisional result of a study being acquired; notification_deliveries
is the persistent, claimed, retried queue of webhook and e-mail notifications (one row per event occurrence
and destination, unique, so an event is never queued twice).

Revision ID: 0004_live_notify
Revises: 0003_worklist_lifecycle
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_live_notify"
down_revision = "0003_worklist_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('notification_deliveries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('dedup_key', sa.String(length=255), nullable=False),
    sa.Column('destination', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=True),
    sa.Column('payload_json', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dedup_key', 'destination', name='uq_notification_deliveries_dest')
    )
    with op.batch_alter_table('notification_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notification_deliveries_event'), ['event'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_deliveries_next_attempt_at'), ['next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_deliveries_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_deliveries_study_uid'), ['study_uid'], unique=False)

    op.create_table('provisional_results',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('result_json', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('provisional_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provisional_results_study_uid'), ['study_uid'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('provisional_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provisional_results_study_uid'))

    op.drop_table('provisional_results')
    with op.batch_alter_table('notification_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notification_deliveries_study_uid'))
        batch_op.drop_index(batch_op.f('ix_notification_deliveries_state'))
        batch_op.drop_index(batch_op.f('ix_notification_deliveries_next_attempt_at'))
        batch_op.drop_index(batch_op.f('ix_notification_deliveries_event'))

    op.drop_table('notification_deliveries')
