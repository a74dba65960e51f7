"""The settle detector: a worker thread that re-checks a study when one of its series settles.

A series settles after `settle_seconds` without a new instance; or at once when an MPPS (N-CREATE or
any N-SET, IN PROGRESS too) lists it and every instance listed for it has arrived (the modality said
that series is done); or with the whole study when an MPPS COMPLETED for it has all its listed
instances (the modality said the exam is done). Everything it needs is in
the index (instances' receive times), so ingest is not touched: the C-STORE path does not know this
worker exists. Each pass reads the per-series instance counts of the studies received within the
window; only when the set of settled series (or the series being received, or the study's state)
changed does it read the new series' headers, classify, judge, and record + publish the result if its
content changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from msfollowup.dicom.classify import SeriesClassification, classify_series, infer_study, read_headers
from msfollowup.site.config import Config
from msfollowup.db import Database, utcnow
from msfollowup.db import provisional as records
from msfollowup.app.live.broker import Broker
from msfollowup.check.provisional import Expected, ProfileSource, StudyContext, initials, provisional_check
from msfollowup.files.store import Instance, InstanceStore, Series, Study, StudyState
from msfollowup.core.worker import PollingWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _SeriesState:
    uid: str
    count: int
    last: dt.datetime


@dataclass(frozen=True)
class _StudyRow:
    uid: str
    complete: bool
    mpps_done: bool
    series: tuple[_SeriesState, ...]
    mpps_series: frozenset[str] = frozenset()  # series an MPPS lists whose instances have all arrived


def expected_profile(session: Any, cfg: Config, study: Study) -> tuple[str, ProfileSource]:
    """The worklist item the study fulfils (by StudyInstanceUID, then accession), else the patient's
    plan, else the site default. Read-only."""
    from msfollowup.app import plans, worklist

    step = session.scalar(select(worklist.ScheduledStep).where(worklist.ScheduledStep.study_uid == study.study_uid))
    if step is None and study.accession_number:
        step = session.scalar(select(worklist.ScheduledStep)
                              .where(worklist.ScheduledStep.accession_number == study.accession_number))
    if step is not None:
        return step.profile_id, "worklist"
    if study.patient_id:
        rules = plans.load_interval_rules(cfg.validation.protocols_dir)
        return plans.profile_for_patient(session, study.patient_id, dt.date.today(), rules), "plan"
    return cfg.validation.default_profile, "default"


class LiveChecker:
    """One pass = `run_once`; keeps per-study signatures, each settled series' classification and each
    study's expected profile between passes.

    A series is classified again only when its instance count changed, and the expected profile (worklist
    item or plan) is looked up again only when the set of settled series changed: a check that only
    lists a new series as arriving reuses both (issue 17: the live check had cost ~20% of the GIL time
    while four senders stored). The final check after completion looks everything up afresh."""

    def __init__(self, db: Database, cfg: Config, store: InstanceStore, broker: Broker,
                 on_result: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.db = db
        self.cfg = cfg
        self.store = store
        self.broker = broker
        self.on_result = on_result
        self._signature: dict[str, tuple[Any, ...]] = {}
        # series uid -> (instance count, classify_series result; None for a series without a readable header)
        self._series: dict[str, tuple[int, SeriesClassification | None]] = {}
        # study uid -> (settled series and counts, expected profile id, its source)
        self._expected: dict[str, tuple[tuple[tuple[str, int], ...], str, ProfileSource]] = {}
        self._content: dict[str, dict[str, Any]] = {}

    def _scan(self, now: dt.datetime) -> tuple[list[_StudyRow], set[str]]:
        """(studies to look at, every study uid in the window)."""
        from msfollowup.app.worklist import mpps_completed
        from msfollowup.db.worklist import mpps_settled_series

        since = now - dt.timedelta(minutes=self.cfg.live.window_minutes)
        with self.db.read_session() as s:
            studies = s.execute(
                select(Study.study_uid, Study.state, Study.complete_requested,
                       mpps_completed(Study.study_uid).label("mpps"))
                .where(Study.last_received >= since)
            ).all()
            in_window = {r[0] for r in studies}
            # A completed study already judged as complete cannot change (a late instance reopens it):
            # its instances are not counted again, so the pass stays short while the window fills.
            studies = [r for r in studies
                       if not (r[1] == StudyState.COMPLETE.value and self._signature.get(r[0], (False,))[0])]
            if not studies:
                return [], in_window
            rows = s.execute(
                select(Instance.study_uid, Instance.series_uid, func.count(), func.max(Instance.received_at))
                .where(Instance.study_uid.in_([r[0] for r in studies]))
                .group_by(Instance.study_uid, Instance.series_uid)
            ).all()
            by_mpps = mpps_settled_series(s, [r[0] for r in studies])
        series: dict[str, list[_SeriesState]] = {}
        for study_uid, series_uid, count, last in rows:
            if isinstance(last, str):  # a driver that returns the aggregate untyped
                last = dt.datetime.fromisoformat(last)
            if last.tzinfo is None:
                last = last.replace(tzinfo=dt.timezone.utc)
            series.setdefault(study_uid, []).append(_SeriesState(series_uid, int(count), last))
        return [
            _StudyRow(uid, state == StudyState.COMPLETE.value, bool(requested) or bool(mpps),
                      tuple(sorted(series.get(uid, []), key=lambda x: x.uid)), frozenset(by_mpps.get(uid, ())))
            for uid, state, requested, mpps in studies
        ], in_window

    def run_once(self, now: dt.datetime | None = None) -> int:
        """Re-check every study whose series changed; returns how many new results were published."""
        now = now or utcnow()
        cutoff = now - dt.timedelta(seconds=self.cfg.live.settle_seconds)
        studies, in_window = self._scan(now)
        gone = set(self._signature) - in_window
        for uid in gone:
            self._signature.pop(uid, None)
            self._content.pop(uid, None)
            self._expected.pop(uid, None)
        if gone:
            self.broker.forget(gone)
        published = 0
        for st in studies:
            all_settled = st.complete or st.mpps_done
            done = [all_settled or x.last <= cutoff or x.uid in st.mpps_series for x in st.series]
            settled = tuple((x.uid, x.count) for x, ok in zip(st.series, done) if ok)
            receiving = {x.uid: x.count for x, ok in zip(st.series, done) if not ok}
            signature = (st.complete, settled, tuple(receiving))
            if self._signature.get(st.uid) == signature:
                continue
            try:
                published += self._check(st.uid, dict(settled), receiving, st.complete, now)
            except Exception:  # noqa: BLE001 - one study's data must not stop the page for the others
                log.exception("provisional check failed study=%s", st.uid)
            self._signature[st.uid] = signature  # a failing study is retried when it changes again
        live = {x.uid for st in studies for x in st.series}
        for uid in set(self._series) - live:
            del self._series[uid]
        return published

    def _classified(self, study_uid: str, settled: dict[str, int]) -> list[SeriesClassification]:
        """The settled series classified (again only those whose instance count changed), then the
        study-level inference over all of them."""
        stale = [uid for uid, n in settled.items() if self._series.get(uid, (-1, None))[0] != n]
        if stale:
            files = self.store.series_files(study_uid)
            for uid in stale:
                by_series, errors, _ = read_headers(files.get(uid, []))
                for message in errors:
                    log.warning("study=%s unreadable instance: %s", study_uid, message)
                headers = [d for ds in by_series.values() for d in ds]
                self._series[uid] = (settled[uid], classify_series(headers) if headers else None)
        return infer_study([c for uid in settled if (c := self._series[uid][1]) is not None])

    def _profile(self, session: Any, study: Study, settled: dict[str, int]) -> tuple[str, ProfileSource]:
        """The expected profile, looked up again when the settled series changed."""
        key = tuple(settled.items())
        cached = self._expected.get(study.study_uid)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        profile_id, source = expected_profile(session, self.cfg, study)
        self._expected[study.study_uid] = (key, profile_id, source)
        return profile_id, source

    def _check(self, study_uid: str, settled: dict[str, int], receiving: dict[str, int], complete: bool,
               now: dt.datetime) -> int:
        from msfollowup.site.profiles import get_profile

        classified = self._classified(study_uid, settled)
        with self.db.read_session() as s:
            study = s.get(Study, study_uid)
            if study is None:
                return 0
            profile_id, source = self._profile(s, study, settled)
            calling_ae = s.scalars(select(Instance.calling_ae).where(Instance.study_uid == study_uid,
                                                                     Instance.calling_ae.is_not(None)).limit(1)).first()
            arriving = [
                {"series_instance_uid": r.series_uid, "series_number": r.series_number,
                 "description": r.description, "instances": receiving.get(r.series_uid, 0)}
                for r in s.scalars(select(Series).where(Series.series_uid.in_(list(receiving)))
                                   .order_by(Series.series_number))
            ] if receiving else []
            context = StudyContext(
                study_uid=study_uid,
                scanner=(calling_ae or study.station_name or "unknown").strip(),
                station_name=study.station_name,
                accession=study.accession_number,
                patient_initials=initials(study.patient_name),
                patient_name=study.patient_name if self.cfg.live.show_patient_names else None,
                complete=complete,
                receiving=tuple(arriving),
            )
            previous = self._content.get(study_uid) or records.latest_content(s, study_uid)
        profile = get_profile(profile_id, self.cfg.validation.protocols_dir)
        result = provisional_check(classified, Expected(profile, source), context, now=now)
        content = result.content()
        if content == previous:
            self._content[study_uid] = content
            return 0
        payload = result.to_json()
        with self.db.session() as s:
            records.record(s, study_uid, now, payload)
        self._content[study_uid] = content
        self.broker.publish(study_uid, payload)
        if self.on_result is not None:
            self.on_result(study_uid, payload)
        log.info("provisional result study=%s series=%d missing=%d failing=%d", study_uid, len(result.series),
                 len(result.missing), len(result.failing))
        return 1


class LiveWorker(PollingWorker):
    """The settle detector's thread inside `msfollowup serve`."""

    def __init__(self, db: Database, cfg: Config, store: InstanceStore, broker: Broker | None = None) -> None:
        self.broker = broker or Broker(cfg.live.subscriber_queue)
        self.checker = LiveChecker(db, cfg, store, self.broker)
        super().__init__("live", cfg.live.poll_seconds, self.checker.run_once)
