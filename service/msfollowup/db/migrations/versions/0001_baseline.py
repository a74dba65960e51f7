"""Baseline: the schema of release 0.1.0 (what `create_all` built at commit 9b0320c).

Every later schema change is a new revision on top of this one. A database created by 0.1.0 has
exactly these tables and is stamped with this revision before it is upgraded (see dbmigrate.py).
Frozen: never edit it; the model classes may change, this file describes history.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor_ae', sa.String(length=16), nullable=True),
    sa.Column('actor_host', sa.String(length=255), nullable=True),
    sa.Column('actor_user', sa.String(length=128), nullable=True),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('object_uid', sa.String(length=64), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_audit_events_action'), 'audit_events', ['action'], unique=False)
    op.create_index(op.f('ix_audit_events_object_uid'), 'audit_events', ['object_uid'], unique=False)
    op.create_index(op.f('ix_audit_events_patient_id'), 'audit_events', ['patient_id'], unique=False)
    op.create_index(op.f('ix_audit_events_time'), 'audit_events', ['time'], unique=False)
    op.create_table('health_probes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('monitoring_plan_history',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('author', sa.String(length=128), nullable=False),
    sa.Column('changes_json', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_monitoring_plan_history_patient_id'), 'monitoring_plan_history', ['patient_id'], unique=False)
    op.create_table('monitoring_plans',
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('diagnosed', sa.Date(), nullable=True),
    sa.Column('dmt', sa.String(length=64), nullable=True),
    sa.Column('dmt_start', sa.Date(), nullable=True),
    sa.Column('previous_dmt', sa.String(length=64), nullable=True),
    sa.Column('switch_date', sa.Date(), nullable=True),
    sa.Column('jcv', sa.String(length=16), nullable=False),
    sa.Column('flags_json', sa.Text(), nullable=False),
    sa.Column('override_interval_months', sa.Float(), nullable=True),
    sa.Column('override_protocol', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('patient_id')
    )
    op.create_table('reports',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('sr_sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sr_series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('predecessor_sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('verdict', sa.String(length=16), nullable=True),
    sa.Column('sr_path', sa.Text(), nullable=True),
    sa.Column('json_path', sa.Text(), nullable=True),
    sa.Column('html_path', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('written_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sr_sop_instance_uid'),
    sa.UniqueConstraint('study_uid', 'version', name='uq_reports_version')
    )
    op.create_index(op.f('ix_reports_study_uid'), 'reports', ['study_uid'], unique=False)
    op.create_table('studies',
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('patient_name', sa.String(length=324), nullable=True),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=True),
    sa.Column('patient_sex', sa.String(length=16), nullable=True),
    sa.Column('specific_character_set', sa.String(length=128), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('study_time', sa.String(length=16), nullable=True),
    sa.Column('study_description', sa.String(length=64), nullable=True),
    sa.Column('station_name', sa.String(length=16), nullable=True),
    sa.Column('first_received', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_received', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('complete_requested', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('study_uid')
    )
    op.create_index(op.f('ix_studies_accession_number'), 'studies', ['accession_number'], unique=False)
    op.create_index(op.f('ix_studies_last_received'), 'studies', ['last_received'], unique=False)
    op.create_index(op.f('ix_studies_patient_id'), 'studies', ['patient_id'], unique=False)
    op.create_index(op.f('ix_studies_state'), 'studies', ['state'], unique=False)
    op.create_table('worklist_steps',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('open_key', sa.String(length=128), nullable=True),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('profile_id', sa.String(length=64), nullable=False),
    sa.Column('profile_version', sa.String(length=32), nullable=True),
    sa.Column('recall', sa.Boolean(), nullable=False),
    sa.Column('based_on_study', sa.String(length=64), nullable=True),
    sa.Column('earliest', sa.Date(), nullable=False),
    sa.Column('target', sa.Date(), nullable=False),
    sa.Column('latest', sa.Date(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('requested_procedure_id', sa.String(length=16), nullable=False),
    sa.Column('sps_id', sa.String(length=16), nullable=False),
    sa.Column('station_ae', sa.String(length=16), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('start_date', sa.String(length=8), nullable=False),
    sa.Column('start_time', sa.String(length=16), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=True),
    sa.Column('patient_name_fold', sa.String(length=324), nullable=True),
    sa.Column('patient_name_key', sa.String(length=256), nullable=True),
    sa.Column('specific_character_set', sa.String(length=128), nullable=True),
    sa.Column('sps_status', sa.String(length=16), nullable=False),
    sa.Column('identifier', sa.LargeBinary(), nullable=False),
    sa.Column('export_file', sa.Text(), nullable=True),
    sa.Column('mpps_uid', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('close_reason', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('accession_number'),
    sa.UniqueConstraint('open_key'),
    sa.UniqueConstraint('study_uid')
    )
    op.create_index(op.f('ix_worklist_steps_latest'), 'worklist_steps', ['latest'], unique=False)
    op.create_index(op.f('ix_worklist_steps_patient_id'), 'worklist_steps', ['patient_id'], unique=False)
    op.create_index(op.f('ix_worklist_steps_patient_name_key'), 'worklist_steps', ['patient_name_key'], unique=False)
    op.create_index(op.f('ix_worklist_steps_sps_id'), 'worklist_steps', ['sps_id'], unique=False)
    op.create_index('ix_worklist_steps_station_date', 'worklist_steps', ['station_ae', 'start_date'], unique=False)
    op.create_table('report_deliveries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('sr_sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sr_path', sa.Text(), nullable=False),
    sa.Column('destination', sa.String(length=300), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('report_id', 'destination', name='uq_report_deliveries_dest')
    )
    op.create_index(op.f('ix_report_deliveries_next_attempt_at'), 'report_deliveries', ['next_attempt_at'], unique=False)
    op.create_index(op.f('ix_report_deliveries_report_id'), 'report_deliveries', ['report_id'], unique=False)
    op.create_index(op.f('ix_report_deliveries_state'), 'report_deliveries', ['state'], unique=False)
    op.create_index(op.f('ix_report_deliveries_study_uid'), 'report_deliveries', ['study_uid'], unique=False)
    op.create_table('series',
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('description', sa.String(length=64), nullable=True),
    sa.Column('first_received', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_uid'], ['studies.study_uid'], ),
    sa.PrimaryKeyConstraint('series_uid')
    )
    op.create_index(op.f('ix_series_study_uid'), 'series', ['study_uid'], unique=False)
    op.create_table('study_checks',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('profile_id', sa.String(length=64), nullable=False),
    sa.Column('profile_version', sa.String(length=32), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('result_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('followup_done', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['study_uid'], ['studies.study_uid'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_uid', 'version', name='uq_study_checks_version')
    )
    op.create_index(op.f('ix_study_checks_patient_id'), 'study_checks', ['patient_id'], unique=False)
    op.create_index(op.f('ix_study_checks_study_uid'), 'study_checks', ['study_uid'], unique=False)
    op.create_table('worklist_mpps',
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('step_id', sa.Integer(), nullable=True),
    sa.Column('calling_ae', sa.String(length=16), nullable=True),
    sa.Column('attributes_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['step_id'], ['worklist_steps.id'], ),
    sa.PrimaryKeyConstraint('sop_instance_uid')
    )
    op.create_index(op.f('ix_worklist_mpps_step_id'), 'worklist_mpps', ['step_id'], unique=False)
    op.create_table('instances',
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['series_uid'], ['series.series_uid'], ),
    sa.ForeignKeyConstraint(['study_uid'], ['studies.study_uid'], ),
    sa.PrimaryKeyConstraint('sop_instance_uid')
    )
    op.create_index(op.f('ix_instances_series_uid'), 'instances', ['series_uid'], unique=False)
    op.create_index('ix_instances_study_series', 'instances', ['study_uid', 'series_uid'], unique=False)
    op.create_index(op.f('ix_instances_study_uid'), 'instances', ['study_uid'], unique=False)
    op.create_table('worklist_mpps_instances',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('mpps_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['mpps_uid'], ['worklist_mpps.sop_instance_uid'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('mpps_uid', 'sop_instance_uid', name='uq_worklist_mpps_instance')
    )
    op.create_index(op.f('ix_worklist_mpps_instances_mpps_uid'), 'worklist_mpps_instances', ['mpps_uid'], unique=False)
    op.create_table('worklist_mpps_studies',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('mpps_uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['mpps_uid'], ['worklist_mpps.sop_instance_uid'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('mpps_uid', 'study_uid', name='uq_worklist_mpps_study')
    )
    op.create_index(op.f('ix_worklist_mpps_studies_study_uid'), 'worklist_mpps_studies', ['study_uid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_worklist_mpps_studies_study_uid'), table_name='worklist_mpps_studies')
    op.drop_table('worklist_mpps_studies')
    op.drop_index(op.f('ix_worklist_mpps_instances_mpps_uid'), table_name='worklist_mpps_instances')
    op.drop_table('worklist_mpps_instances')
    op.drop_index(op.f('ix_instances_study_uid'), table_name='instances')
    op.drop_index('ix_instances_study_series', table_name='instances')
    op.drop_index(op.f('ix_instances_series_uid'), table_name='instances')
    op.drop_table('instances')
    op.drop_index(op.f('ix_worklist_mpps_step_id'), table_name='worklist_mpps')
    op.drop_table('worklist_mpps')
    op.drop_index(op.f('ix_study_checks_study_uid'), table_name='study_checks')
    op.drop_index(op.f('ix_study_checks_patient_id'), table_name='study_checks')
    op.drop_table('study_checks')
    op.drop_index(op.f('ix_series_study_uid'), table_name='series')
    op.drop_table('series')
    op.drop_index(op.f('ix_report_deliveries_study_uid'), table_name='report_deliveries')
    op.drop_index(op.f('ix_report_deliveries_state'), table_name='report_deliveries')
    op.drop_index(op.f('ix_report_deliveries_report_id'), table_name='report_deliveries')
    op.drop_index(op.f('ix_report_deliveries_next_attempt_at'), table_name='report_deliveries')
    op.drop_table('report_deliveries')
    op.drop_index('ix_worklist_steps_station_date', table_name='worklist_steps')
    op.drop_index(op.f('ix_worklist_steps_sps_id'), table_name='worklist_steps')
    op.drop_index(op.f('ix_worklist_steps_patient_name_key'), table_name='worklist_steps')
    op.drop_index(op.f('ix_worklist_steps_patient_id'), table_name='worklist_steps')
    op.drop_index(op.f('ix_worklist_steps_latest'), table_name='worklist_steps')
    op.drop_table('worklist_steps')
    op.drop_index(op.f('ix_studies_state'), table_name='studies')
    op.drop_index(op.f('ix_studies_patient_id'), table_name='studies')
    op.drop_index(op.f('ix_studies_last_received'), table_name='studies')
    op.drop_index(op.f('ix_studies_accession_number'), table_name='studies')
    op.drop_table('studies')
    op.drop_index(op.f('ix_reports_study_uid'), table_name='reports')
    op.drop_table('reports')
    op.drop_table('monitoring_plans')
    op.drop_index(op.f('ix_monitoring_plan_history_patient_id'), table_name='monitoring_plan_history')
    op.drop_table('monitoring_plan_history')
    op.drop_table('health_probes')
    op.drop_index(op.f('ix_audit_events_time'), table_name='audit_events')
    op.drop_index(op.f('ix_audit_events_patient_id'), table_name='audit_events')
    op.drop_index(op.f('ix_audit_events_object_uid'), table_name='audit_events')
    op.drop_index(op.f('ix_audit_events_action'), table_name='audit_events')
    op.drop_table('audit_events')
