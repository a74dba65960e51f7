"""Web application (issue 14): accounts, API tokens, sessions, and one row per check and
per requirement result so the compliance dashboard aggregates in SQL (study_results, requirement_results,
patient_refs: internal patient numbers for URLs without patient IDs).

Existing checks get no result rows here; the dashboard counts checks recorded after the upgrade.

Revision ID: 0005_web
Revises: 0004_live_notify
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_web"
down_revision = "0004_live_notify"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patient_refs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('patient_id')
    )
    op.create_table('web_users',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('web_api_tokens',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['web_users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_sha256')
    )
    with op.batch_alter_table('web_api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_api_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('web_sessions',
    sa.Column('id_sha256', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['web_users.id'], ),
    sa.PrimaryKeyConstraint('id_sha256')
    )
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_sessions_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_web_sessions_user_id'), ['user_id'], unique=False)

    op.create_table('requirement_results',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('check_id', sa.Integer(), nullable=False),
    sa.Column('latest', sa.Boolean(), nullable=False),
    sa.Column('requirement_id', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('informational', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['check_id'], ['study_checks.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('requirement_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_requirement_results_check_id'), ['check_id'], unique=False)
        batch_op.create_index('ix_requirement_results_latest', ['latest', 'status', 'informational', 'requirement_id', 'label'], unique=False)
        batch_op.create_index('ix_requirement_results_status', ['status', 'informational', 'requirement_id', 'check_id'], unique=False)

    op.create_table('study_results',
    sa.Column('check_id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('latest', sa.Boolean(), nullable=False),
    sa.Column('patient_ref', sa.Integer(), nullable=True),
    sa.Column('profile_id', sa.String(length=64), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('reviewed_verdict', sa.String(length=16), nullable=True),
    sa.Column('scanner', sa.String(length=64), nullable=False),
    sa.Column('study_date', sa.Date(), nullable=True),
    sa.Column('week', sa.String(length=10), nullable=True),
    sa.Column('month', sa.String(length=7), nullable=True),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['check_id'], ['study_checks.id'], ),
    sa.ForeignKeyConstraint(['patient_ref'], ['patient_refs.id'], ),
    sa.PrimaryKeyConstraint('check_id')
    )
    with op.batch_alter_table('study_results', schema=None) as batch_op:
        batch_op.create_index('ix_study_results_latest_date', ['latest', 'study_date'], unique=False)
        batch_op.create_index('ix_study_results_latest_verdict', ['latest', 'verdict', 'reviewed_verdict'], unique=False)
        batch_op.create_index('ix_study_results_month', ['latest', 'scanner', 'profile_id', 'month', 'verdict', 'reviewed_verdict', 'study_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_results_patient_ref'), ['patient_ref'], unique=False)
        batch_op.create_index('ix_study_results_profile', ['latest', 'profile_id', 'study_date'], unique=False)
        batch_op.create_index('ix_study_results_scanner', ['latest', 'scanner', 'study_date', 'verdict', 'reviewed_verdict'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_results_study_uid'), ['study_uid'], unique=False)
        batch_op.create_index('ix_study_results_week', ['latest', 'scanner', 'profile_id', 'week', 'verdict', 'reviewed_verdict', 'study_date'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('study_results', schema=None) as batch_op:
        batch_op.drop_index('ix_study_results_week')
        batch_op.drop_index(batch_op.f('ix_study_results_study_uid'))
        batch_op.drop_index('ix_study_results_scanner')
        batch_op.drop_index('ix_study_results_profile')
        batch_op.drop_index(batch_op.f('ix_study_results_patient_ref'))
        batch_op.drop_index('ix_study_results_month')
        batch_op.drop_index('ix_study_results_latest_verdict')
        batch_op.drop_index('ix_study_results_latest_date')

    op.drop_table('study_results')
    with op.batch_alter_table('requirement_results', schema=None) as batch_op:
        batch_op.drop_index('ix_requirement_results_status')
        batch_op.drop_index('ix_requirement_results_latest')
        batch_op.drop_index(batch_op.f('ix_requirement_results_check_id'))

    op.drop_table('requirement_results')
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_sessions_user_id'))
        batch_op.drop_index(batch_op.f('ix_web_sessions_expires_at'))

    op.drop_table('web_sessions')
    with op.batch_alter_table('web_api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_api_tokens_user_id'))

    op.drop_table('web_api_tokens')
    op.drop_table('web_users')
    op.drop_table('patient_refs')
