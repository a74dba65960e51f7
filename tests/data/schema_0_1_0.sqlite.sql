-- The index schema of msfollowup 0.1.0 (commit 9b0320c) as its create_all built it on sqlite.
-- Frozen test data: the upgrade test starts from this, never regenerate it from the models.
CREATE TABLE audit_events (
	id INTEGER NOT NULL, 
	time DATETIME NOT NULL, 
	actor_ae VARCHAR(16), 
	actor_host VARCHAR(255), 
	actor_user VARCHAR(128), 
	action VARCHAR(32) NOT NULL, 
	object_uid VARCHAR(64), 
	patient_id VARCHAR(64), 
	detail TEXT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_audit_events_action ON audit_events (action);
CREATE INDEX ix_audit_events_object_uid ON audit_events (object_uid);
CREATE INDEX ix_audit_events_patient_id ON audit_events (patient_id);
CREATE INDEX ix_audit_events_time ON audit_events (time);
CREATE TABLE health_probes (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE monitoring_plan_history (
	id INTEGER NOT NULL, 
	patient_id VARCHAR(64) NOT NULL, 
	changed_at DATETIME NOT NULL, 
	author VARCHAR(128) NOT NULL, 
	changes_json TEXT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_monitoring_plan_history_patient_id ON monitoring_plan_history (patient_id);
CREATE TABLE monitoring_plans (
	patient_id VARCHAR(64) NOT NULL, 
	diagnosed DATE, 
	dmt VARCHAR(64), 
	dmt_start DATE, 
	previous_dmt VARCHAR(64), 
	switch_date DATE, 
	jcv VARCHAR(16) NOT NULL, 
	flags_json TEXT NOT NULL, 
	override_interval_months FLOAT, 
	override_protocol VARCHAR(64), 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	updated_by VARCHAR(128) NOT NULL, 
	PRIMARY KEY (patient_id)
);
CREATE TABLE reports (
	id INTEGER NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	version INTEGER NOT NULL, 
	sr_sop_instance_uid VARCHAR(64) NOT NULL, 
	sr_series_instance_uid VARCHAR(64) NOT NULL, 
	predecessor_sop_instance_uid VARCHAR(64), 
	verdict VARCHAR(16), 
	sr_path TEXT, 
	json_path TEXT, 
	html_path TEXT, 
	created_at DATETIME NOT NULL, 
	written_at DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_reports_version UNIQUE (study_uid, version), 
	UNIQUE (sr_sop_instance_uid)
);
CREATE INDEX ix_reports_study_uid ON reports (study_uid);
CREATE TABLE studies (
	study_uid VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	version INTEGER NOT NULL, 
	patient_id VARCHAR(64), 
	patient_name VARCHAR(324), 
	patient_birth_date VARCHAR(8), 
	patient_sex VARCHAR(16), 
	specific_character_set VARCHAR(128), 
	accession_number VARCHAR(16), 
	study_date VARCHAR(8), 
	study_time VARCHAR(16), 
	study_description VARCHAR(64), 
	station_name VARCHAR(16), 
	first_received DATETIME NOT NULL, 
	last_received DATETIME NOT NULL, 
	completed_at DATETIME, 
	complete_requested BOOLEAN NOT NULL, 
	PRIMARY KEY (study_uid)
);
CREATE INDEX ix_studies_accession_number ON studies (accession_number);
CREATE INDEX ix_studies_last_received ON studies (last_received);
CREATE INDEX ix_studies_patient_id ON studies (patient_id);
CREATE INDEX ix_studies_state ON studies (state);
CREATE TABLE worklist_steps (
	id INTEGER NOT NULL, 
	open_key VARCHAR(128), 
	purpose VARCHAR(16) NOT NULL, 
	profile_id VARCHAR(64) NOT NULL, 
	profile_version VARCHAR(32), 
	recall BOOLEAN NOT NULL, 
	based_on_study VARCHAR(64), 
	earliest DATE NOT NULL, 
	target DATE NOT NULL, 
	latest DATE NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	accession_number VARCHAR(16) NOT NULL, 
	requested_procedure_id VARCHAR(16) NOT NULL, 
	sps_id VARCHAR(16) NOT NULL, 
	station_ae VARCHAR(16) NOT NULL, 
	modality VARCHAR(16) NOT NULL, 
	start_date VARCHAR(8) NOT NULL, 
	start_time VARCHAR(16) NOT NULL, 
	patient_id VARCHAR(64) NOT NULL, 
	patient_name VARCHAR(324), 
	patient_name_fold VARCHAR(324), 
	patient_name_key VARCHAR(256), 
	specific_character_set VARCHAR(128), 
	sps_status VARCHAR(16) NOT NULL, 
	identifier BLOB NOT NULL, 
	export_file TEXT, 
	mpps_uid VARCHAR(64), 
	created_at DATETIME NOT NULL, 
	closed_at DATETIME, 
	close_reason VARCHAR(32), 
	PRIMARY KEY (id), 
	UNIQUE (open_key), 
	UNIQUE (study_uid), 
	UNIQUE (accession_number)
);
CREATE INDEX ix_worklist_steps_latest ON worklist_steps (latest);
CREATE INDEX ix_worklist_steps_patient_id ON worklist_steps (patient_id);
CREATE INDEX ix_worklist_steps_patient_name_key ON worklist_steps (patient_name_key);
CREATE INDEX ix_worklist_steps_sps_id ON worklist_steps (sps_id);
CREATE INDEX ix_worklist_steps_station_date ON worklist_steps (station_ae, start_date);
CREATE TABLE report_deliveries (
	id INTEGER NOT NULL, 
	report_id INTEGER NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	version INTEGER NOT NULL, 
	sr_sop_instance_uid VARCHAR(64) NOT NULL, 
	sr_path TEXT NOT NULL, 
	destination VARCHAR(300) NOT NULL, 
	ae_title VARCHAR(16) NOT NULL, 
	host VARCHAR(255) NOT NULL, 
	port INTEGER NOT NULL, 
	calling_ae_title VARCHAR(16) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at DATETIME NOT NULL, 
	last_error TEXT, 
	last_status INTEGER, 
	claimed_by VARCHAR(64), 
	claimed_at DATETIME, 
	delivered_at DATETIME, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_report_deliveries_dest UNIQUE (report_id, destination), 
	FOREIGN KEY(report_id) REFERENCES reports (id)
);
CREATE INDEX ix_report_deliveries_next_attempt_at ON report_deliveries (next_attempt_at);
CREATE INDEX ix_report_deliveries_report_id ON report_deliveries (report_id);
CREATE INDEX ix_report_deliveries_state ON report_deliveries (state);
CREATE INDEX ix_report_deliveries_study_uid ON report_deliveries (study_uid);
CREATE TABLE series (
	series_uid VARCHAR(64) NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	series_number INTEGER, 
	modality VARCHAR(16), 
	description VARCHAR(64), 
	first_received DATETIME NOT NULL, 
	PRIMARY KEY (series_uid), 
	FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
);
CREATE INDEX ix_series_study_uid ON series (study_uid);
CREATE TABLE study_checks (
	id INTEGER NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	version INTEGER NOT NULL, 
	patient_id VARCHAR(64), 
	study_date VARCHAR(8), 
	profile_id VARCHAR(64) NOT NULL, 
	profile_version VARCHAR(32) NOT NULL, 
	verdict VARCHAR(16) NOT NULL, 
	result_json TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	followup_done BOOLEAN NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_study_checks_version UNIQUE (study_uid, version), 
	FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
);
CREATE INDEX ix_study_checks_patient_id ON study_checks (patient_id);
CREATE INDEX ix_study_checks_study_uid ON study_checks (study_uid);
CREATE TABLE worklist_mpps (
	sop_instance_uid VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	step_id INTEGER, 
	calling_ae VARCHAR(16), 
	attributes_json TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (sop_instance_uid), 
	FOREIGN KEY(step_id) REFERENCES worklist_steps (id)
);
CREATE INDEX ix_worklist_mpps_step_id ON worklist_mpps (step_id);
CREATE TABLE instances (
	sop_instance_uid VARCHAR(64) NOT NULL, 
	series_uid VARCHAR(64) NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	sop_class_uid VARCHAR(64) NOT NULL, 
	transfer_syntax_uid VARCHAR(64) NOT NULL, 
	instance_number INTEGER, 
	path TEXT NOT NULL, 
	size BIGINT NOT NULL, 
	received_at DATETIME NOT NULL, 
	calling_ae VARCHAR(16), 
	PRIMARY KEY (sop_instance_uid), 
	FOREIGN KEY(series_uid) REFERENCES series (series_uid), 
	FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
);
CREATE INDEX ix_instances_series_uid ON instances (series_uid);
CREATE INDEX ix_instances_study_series ON instances (study_uid, series_uid);
CREATE INDEX ix_instances_study_uid ON instances (study_uid);
CREATE TABLE worklist_mpps_instances (
	id INTEGER NOT NULL, 
	mpps_uid VARCHAR(64) NOT NULL, 
	sop_instance_uid VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_worklist_mpps_instance UNIQUE (mpps_uid, sop_instance_uid), 
	FOREIGN KEY(mpps_uid) REFERENCES worklist_mpps (sop_instance_uid)
);
CREATE INDEX ix_worklist_mpps_instances_mpps_uid ON worklist_mpps_instances (mpps_uid);
CREATE TABLE worklist_mpps_studies (
	id INTEGER NOT NULL, 
	mpps_uid VARCHAR(64) NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_worklist_mpps_study UNIQUE (mpps_uid, study_uid), 
	FOREIGN KEY(mpps_uid) REFERENCES worklist_mpps (sop_instance_uid)
);
CREATE INDEX ix_worklist_mpps_studies_study_uid ON worklist_mpps_studies (study_uid);
-- APScheduler 3's job store table, which 0.1.0's `serve` created next to ours.
CREATE TABLE scheduler_jobs (
	id VARCHAR(191) NOT NULL, 
	next_run_time FLOAT, 
	job_state BLOB NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_scheduler_jobs_next_run_time ON scheduler_jobs (next_run_time);
