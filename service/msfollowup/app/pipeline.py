"""After completion: classify -> validate -> report / schedule, once per study version.

The `study_checks` table is the hand-over record between stages: one row per (study, version) holding
the validation result as JSON. Later stages (reports, plans, worklist) read it, never recompute it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from msfollowup.core import clock
from msfollowup.dicom.classify import SeriesClassification, classify_study, read_headers
from msfollowup.site.config import Config
from msfollowup.db import Database, utcnow
from msfollowup.files.store import InstanceStore, Study, StudyState, mark_failed
from msfollowup.check.validate import ValidationResult, validate_study
from msfollowup.core.worker import PollingWorker
from msfollowup.db.checks import StudyCheck

if TYPE_CHECKING:
    from msfollowup.app.worklist import Demographics


log = logging.getLogger(__name__)


class StageLeases(Protocol):
    """Cluster mode (msfollowup.app.cluster.leases): which node runs a stage of a study."""

    def claim(self, key: str) -> bool: ...
    def finish(self, key: str) -> None: ...
    def release(self, key: str) -> None: ...


class Pipeline:
    """Runs the stages after completion. Every stage is driven by what the database says is missing,
    so a crash at any point is finished by the next pass (here or on another node)."""

    def __init__(self, db: Database, cfg: Config, store: InstanceStore) -> None:
        self.db = db
        self.cfg = cfg
        self.store = store
        self.leases: StageLeases | None = None  # cluster mode: set by the service

    # -- stage 1: classify + validate

    def unchecked(self) -> list[tuple[str, int]]:
        with self.db.session() as s:
            checked = (
                select(StudyCheck.study_uid, func.max(StudyCheck.version).label("v"))
                .group_by(StudyCheck.study_uid)
                .subquery()
            )
            rows = s.execute(
                select(Study.study_uid, Study.version)
                .outerjoin(checked, checked.c.study_uid == Study.study_uid)
                .where(Study.state == StudyState.COMPLETE.value, Study.version > func.coalesce(checked.c.v, 0))
            ).all()
        return [(uid, v) for uid, v in rows]

    def profile_for(self, patient_id: str | None, purpose: str = "brain", study_date: str | None = None,
                    study_uid: str | None = None) -> str:
        """What the patient's plan asked for this purpose on the study's date (the interval rules' site
        default when there is no plan); a study without a PatientID gets the configured default profile."""
        from msfollowup.app import plans

        rules = plans.load_interval_rules(self.cfg.validation.protocols_dir)
        if not patient_id:
            return self.cfg.validation.default_profile if purpose != "spine" else plans._site_default_profile(rules, purpose)
        day = _da_date(study_date) or clock.today()
        with self.db.session() as s:
            return plans.profile_for_patient(s, patient_id, day, rules, purpose, exclude_study=study_uid)

    def _reference_for(self, study_uid: str, patient_id: str | None, purpose: str = "brain",
                       study_date: str | None = None) -> list[SeriesClassification] | None:
        """The study to compare with: one a user designated (`study reference`), else the most recent
        compliant (or accepted) full study of the same purpose before this one, if its files remain."""
        if not patient_id:
            return None
        from msfollowup.app import study_review

        with self.db.session() as s:
            ref_uid = study_review.designated_reference(s, patient_id, purpose)
            if ref_uid is None or ref_uid == study_uid:
                ok = {u for u, p in study_review.accepted(s, [r for r in s.scalars(select(StudyCheck.study_uid).where(
                    StudyCheck.patient_id == patient_id, StudyCheck.verdict == "unverifiable"))]) if p == purpose}
                rows = s.execute(
                    select(StudyCheck.study_uid, StudyCheck.study_date, StudyCheck.verdict, StudyCheck.profile_id)
                    .where(StudyCheck.patient_id == patient_id, StudyCheck.purpose == purpose,
                           StudyCheck.study_uid != study_uid)
                    .order_by(StudyCheck.study_date.desc(), StudyCheck.created_at.desc())
                ).all()
                ref_uid = next((u for u, d, v, prof in rows if "@" not in prof and (v == "compliant" or u in ok)
                                and (not study_date or not d or d <= study_date)), None)
        if ref_uid is None:
            return None
        files = [p for paths in self.store.series_files(ref_uid).values() for p in paths if p.exists()]
        if not files:
            return None
        series, _, _ = read_headers(files)
        return classify_study(list(series.values()))

    def check(self, study_uid: str, version: int) -> list[ValidationResult] | None:
        """One check per purpose of the study (brain, spine; both for a combined session), each against
        its own profile; a study of undetermined purpose is checked against the brain profile for the
        report but marked for review."""
        from msfollowup.app import purpose as purposes
        from msfollowup.site.profiles import get_profile, load_profiles

        with self.db.session() as s:
            study = s.get(Study, study_uid)
            if study is None:
                return None
            patient_id, study_date, accession = study.patient_id, study.study_date, study.accession_number
        files = [p for paths in self.store.series_files(study_uid).values() for p in paths]
        series, errors, _ = read_headers(files)
        for message in errors:
            log.warning("study=%s unreadable instance: %s", study_uid, message)
        classified = classify_study(list(series.values()))
        profiles = load_profiles(self.cfg.validation.protocols_dir)
        regions = next(iter(profiles.values())).regions if profiles else ()
        with self.db.session() as s:
            found = purposes.study_purposes(s, study_uid, accession, classified, regions)
        rows, results = [], []
        for sp in found:
            judged_as = "brain" if sp.purpose == purposes.UNDETERMINED else sp.purpose
            profile_id = sp.profile_id or self.profile_for(patient_id, judged_as, study_date, study_uid)
            profile = get_profile(profile_id, self.cfg.validation.protocols_dir)
            reference = self._reference_for(study_uid, patient_id, judged_as, study_date)
            result = validate_study(classified, profile, reference)
            doc = result.to_json() | {"purpose": {"purpose": sp.purpose, "evidence": sp.evidence,
                                                  "regions": list(sp.regions)}}
            results.append(result)
            rows.append(StudyCheck(
                study_uid=study_uid, version=version, patient_id=patient_id, study_date=study_date,
                purpose=sp.purpose, profile_id=result.profile_id, profile_version=result.profile_version,
                verdict=result.verdict, result_json=json.dumps(doc, default=str), created_at=utcnow(),
            ))
        try:
            with self.db.session() as s:
                from msfollowup.app import rollup
                from msfollowup.app.results import record_check  # rows the compliance dashboard sums up
                from msfollowup.app.notify.emit import on_study_checked  # issue 15: same transaction as the check

                deltas = rollup.Deltas()  # the dashboard rollup of every purpose, written once in key order
                for row in rows:
                    s.add(row)
                    s.flush()
                    doc = json.loads(row.result_json)
                    record_check(s, row.id, study_uid, version, patient_id, study_date, doc, purpose=row.purpose,
                                 deltas=deltas)
                    on_study_checked(s, self.cfg, study_uid, version, doc)
                rollup.apply(s, deltas)
        except IntegrityError:
            log.info("study=%s version=%d already checked by another worker", study_uid, version)
            return None
        for row in rows:
            log.info("study checked study=%s version=%d purpose=%s profile=%s verdict=%s", study_uid, version,
                     row.purpose, row.profile_id, row.verdict)
        return results

    # -- stage 2: reports, worklist, next exam

    def pending_followups(self) -> list[tuple[int, str]]:
        """(check id, study UID) of checks whose follow-up is due; not for a study marked failed."""
        with self.db.session() as s:
            rows = s.execute(
                select(StudyCheck.id, StudyCheck.study_uid).join(Study, Study.study_uid == StudyCheck.study_uid)
                .where(StudyCheck.followup_done.is_(False), Study.state != StudyState.FAILED.value)
                .order_by(StudyCheck.id)
            ).all()
        return [(i, u) for i, u in rows]

    def followup(self, check_id: int) -> None:
        with self.db.session() as s:
            chk = s.get(StudyCheck, check_id)
            if chk is None or chk.followup_done:
                return
            study_uid, version, patient_id = chk.study_uid, chk.version, chk.patient_id
            result_json = json.loads(chk.result_json)
        for stage in self.followup_stages:
            stage(self, study_uid, version, patient_id, result_json)
        with self.db.session() as s:
            s.execute(update(StudyCheck).where(StudyCheck.id == check_id).values(followup_done=True))

    def write_reports(self, study_uid: str, version: int, patient_id: str | None, result: dict[str, Any]) -> None:
        from msfollowup.reports.files import write_reports

        write_reports(self.db, self.cfg, study_uid, version, result)

    def schedule(self, study_uid: str, version: int, patient_id: str | None, result: dict[str, Any]) -> None:
        """Close the worklist item this study fulfils, then put the patient's next exam on the worklist."""
        from msfollowup.app import worklist

        with self.db.session() as s:
            study = s.get(Study, study_uid)
            if study is None:
                return
            found = frozenset(s.scalars(select(StudyCheck.purpose).where(
                StudyCheck.study_uid == study_uid, StudyCheck.version == version,
                StudyCheck.purpose != "undetermined")))
            worklist.close_for_study(s, study_uid, study.accession_number, patient_id, study.study_date,
                                     purposes=found or None)
            if patient_id:
                schedule_patient(s, self.cfg, patient_id, clock.today())

    # Stages after validation, in data-flow order; each is idempotent for one (study, version).
    followup_stages: list[Callable[[Pipeline, str, int, str | None, dict[str, Any]], None]] = [
        write_reports,
        schedule,
    ]

    def run_pending(self) -> int:
        n = 0
        for study_uid, version in self.unchecked():
            n += self._leased(f"check:{study_uid}:{version}", f"study={study_uid} version={version} check",
                              study_uid, "check", self.check, study_uid, version)
        for check_id, study_uid in self.pending_followups():
            n += self._leased(f"followup:{check_id}", f"check_id={check_id} follow-up", study_uid, "follow-up",
                              self.followup, check_id)
        return n

    def _leased(self, key: str, what: str, study_uid: str, stage_name: str, stage: Callable[..., object],
                *args: Any) -> int:
        """Cluster mode: run the stage only on the node holding its lease; finished -> done, failed ->
        given back for the next pass (of any node)."""
        if self.leases is None:
            return self._isolated(what, study_uid, stage_name, stage, *args)
        if not self.leases.claim(key):
            return 0
        ran = 0
        try:
            ran = self._isolated(what, study_uid, stage_name, stage, *args)
        finally:
            (self.leases.finish if ran else self.leases.release)(key)
        return ran

    def _isolated(self, what: str, study_uid: str, stage_name: str, stage: Callable[..., object], *args: Any) -> int:
        """Run one study's stage; a failure caused by that study's data must not hold up every later
        study, nor be retried every pass: the study is marked failed with the reason (store.mark_failed).
        The database being down still ends the pass. Logged without the exception's message: parsers
        quote element values (a birth date, a name) in it."""
        try:
            stage(*args)
        except OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged, the study marked failed
            log.error("%s failed: %s\n%s", what, type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
            mark_failed(self.db, study_uid, f"{stage_name} failed: {type(exc).__name__}")
            return 0
        return 1


def schedule_patient(session: Session, cfg: Config, patient_id: str, today: dt.date) -> list[Any]:
    """The patient's next exam(s) from plan + checks, as open worklist items (replacing outdated ones).

    Called after every validated study and after every plan change.
    """
    from msfollowup.app import plans, worklist

    rules = plans.load_interval_rules(cfg.validation.protocols_dir)
    demographics = session.scalars(
        select(Study).where(Study.patient_id == patient_id).order_by(Study.last_received.desc()).limit(1)
    ).first() or worklist.Demographics(patient_id=patient_id, patient_name=None)
    return [worklist.schedule_due(session, due, demographics, cfg, today=today,
                                  plan_demographics=plan_demographics(session, patient_id))
            for due in plans.refresh_patient(session, patient_id, today, rules)]


def plan_demographics(session: Session, patient_id: str) -> Demographics | None:
    """What the patient's plan says about them (a user typed it: it wins over the last study's), as
    the worklist's Demographics; None without a plan."""
    from msfollowup.app import plans, worklist

    plan = plans.get_plan(session, patient_id)
    if plan is None:
        return None
    return worklist.Demographics(
        patient_id=patient_id,
        patient_name=plan.patient_name,
        patient_birth_date=plan.birth_date.strftime("%Y%m%d") if plan.birth_date else None,
        patient_sex=plan.sex,
    )


def _da_date(value: str | None) -> dt.date | None:
    if value and len(value.strip()) == 8 and value.strip().isdigit():
        try:
            return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
        except ValueError:
            return None
    return None


class PipelineWorker(PollingWorker):
    """Runs the pipeline when woken (after a completion) and every few seconds."""

    def __init__(self, pipeline: Pipeline, poll_seconds: float = 5.0) -> None:
        super().__init__("pipeline", poll_seconds, pipeline.run_pending)
        self.pipeline = pipeline
