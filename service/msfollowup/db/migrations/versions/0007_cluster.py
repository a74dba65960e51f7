"""Cluster mode (issue 16): the cluster's identity, the node registry with heartbeats, and stage leases.

Used only when [cluster] is enabled (PostgreSQL); an embedded node leaves them empty.

Revision ID: 0007_cluster
Revises: 0006_study_failure
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_cluster"
down_revision = "0006_study_failure"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cluster_identity',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('cluster_id', sa.String(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('cluster_leases',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('holder', sa.String(length=64), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('cluster_leases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cluster_leases_done_at'), ['done_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_cluster_leases_holder'), ['holder'], unique=False)

    op.create_table('cluster_nodes',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('schema_revision', sa.String(length=64), nullable=True),
    sa.Column('dicom_address', sa.String(length=300), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_heartbeat', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('cluster_nodes')
    with op.batch_alter_table('cluster_leases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cluster_leases_holder'))
        batch_op.drop_index(batch_op.f('ix_cluster_leases_done_at'))

    op.drop_table('cluster_leases')
    op.drop_table('cluster_identity')
