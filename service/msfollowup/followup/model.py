"""The plan of one patient and the exam history, as pure values; plan changes validated without a database.

A change that cannot be applied raises PlanError naming the field (never the patient).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from msfollowup.site.drugs import DrugError
from msfollowup.site.rules import RECORDED_EVENTS, IntervalRules

JCV_VALUES: tuple[str, ...] = ("positive", "negative", "unknown")


class PlanError(ValueError):
    """A plan change that cannot be applied; the message names the field and the bad value."""


@dataclass(frozen=True)
class ClinicalEvent:
    """A dated clinical event (relapse-brain, relapse-spinal, pml-suspected): each schedules its own exam."""

    kind: str
    date: dt.date
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "date": self.date.isoformat(), "note": self.note}


@dataclass(frozen=True)
class PlanData:
    patient_id: str
    diagnosed: dt.date | None = None
    dmt: str | None = None
    dmt_start: dt.date | None = None
    previous_dmt: str | None = None
    switch_date: dt.date | None = None
    jcv: str = "unknown"
    flags: Mapping[str, dt.date | None] = field(default_factory=dict)  # flag -> day it was set
    override_interval_months: float | None = None
    override_protocol: str | None = None
    dmt_stop: dt.date | None = None  # the current drug was stopped (no successor yet)
    jcv_date: dt.date | None = None  # day of the JCV test
    events: tuple[ClinicalEvent, ...] = ()
    # Demographics a user typed (issue 11): the worklist serves them over the last study's, and a patient
    # with a plan but no study yet gets a complete item (PS3.4 Table K.6-1 requires the name).
    patient_name: str | None = None  # DICOM PN: family^given^middle^prefix^suffix
    birth_date: dt.date | None = None
    sex: str | None = None  # M, F or O (DICOM Patient's Sex)

    def to_json(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "diagnosed": iso(self.diagnosed),
            "dmt": self.dmt,
            "dmt_start": iso(self.dmt_start),
            "previous_dmt": self.previous_dmt,
            "switch_date": iso(self.switch_date),
            "jcv": self.jcv,
            "flags": {k: iso(v) for k, v in sorted(self.flags.items())},
            "override_interval_months": self.override_interval_months,
            "override_protocol": self.override_protocol,
            "dmt_stop": iso(self.dmt_stop),
            "jcv_date": iso(self.jcv_date),
            "events": [e.to_json() for e in self.events],
            "patient_name": self.patient_name,
            "birth_date": iso(self.birth_date),
            "sex": self.sex,
        }


@dataclass(frozen=True)
class ExamRecord:
    study_uid: str
    date: dt.date
    profile_id: str
    verdict: str
    failed: tuple[str, ...]  # requirement ids not passed
    purpose: str = "brain"
    accepted: bool = False  # an unverifiable study a QA lead accepted (`study accept`): it counts


@dataclass(frozen=True)
class DueExam:
    patient_id: str
    purpose: str
    profile_id: str
    earliest: dt.date
    target: dt.date
    latest: dt.date
    rule_ids: tuple[str, ...]
    reason: str
    recall: bool
    recall_items: tuple[str, ...]
    based_on_study: str | None
    # What decided, for `due --json`, the report and the worklist: one entry per rule (id, source, what
    # it decided: window / protocol / both), the override if one decided, the series required, and
    # unverifiable studies waiting for a QA decision (they do not reset the clock).
    decided_by: tuple[Mapping[str, Any], ...] = ()
    override: Mapping[str, Any] | None = None
    required_series: tuple[str, ...] = ()
    review: tuple[str, ...] = ()

    def overdue(self, today: dt.date) -> bool:
        return today > self.latest

    def to_json(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "purpose": self.purpose,
            "profile_id": self.profile_id,
            "earliest": self.earliest.isoformat(),
            "target": self.target.isoformat(),
            "latest": self.latest.isoformat(),
            "rule_ids": list(self.rule_ids),
            "reason": self.reason,
            "recall": self.recall,
            "recall_items": list(self.recall_items),
            "based_on_study": self.based_on_study,
            "window": {"earliest": self.earliest.isoformat(), "target": self.target.isoformat(),
                       "latest": self.latest.isoformat()},
            "profile": self.profile_id,
            "required_series": list(self.required_series),
            "rules": [dict(r) for r in self.decided_by],
            "override": dict(self.override) if self.override else None,
            "review": list(self.review),
        }


def iso(d: dt.date | None) -> str | None:
    return d.isoformat() if d else None


# Plan fields a change may name, and the CLI/CSV spelling of the others.
_DATE_FIELDS = ("diagnosed", "dmt_start", "switch_date", "dmt_stop", "jcv_date")
_NAME_FIELDS = ("dmt", "previous_dmt")
CHANGE_KEYS = (
    "diagnosed", "dmt", "dmt_start", "previous_dmt", "switch_date", "jcv", "set_flags", "clear_flags",
    "override_interval", "override_protocol", "clear_override", "dmt_stop", "jcv_date", "add_events",
    "patient_name", "birth_date", "sex",
)  # fmt: skip
SEX_VALUES: tuple[str, ...] = ("M", "F", "O")
# Flags that are really dated events: setting one records an event (a second relapse is a second event,
# not a flag that is already set). new_deficit becomes relapse-spinal when the patient has spinal symptoms.
EVENT_FLAGS = ("new_deficit", "pml_suspected")


def parse_date(value: Any, name: str) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        raise PlanError(f"{name}: expected a date (YYYY-MM-DD), got a date-time")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise PlanError(f"{name}: {str(value)[:40]!r} is not a date in ISO format (YYYY-MM-DD)")


def _parse_name(value: Any, name: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value.strip()) > 64:
        raise PlanError(f"{name}: must be a drug name of at most 64 characters")
    return value.strip().lower()  # rules compare lower-case names


def _parse_flag(item: Any, known: tuple[str, ...], today: dt.date) -> tuple[str, dt.date]:
    """`name` or `name=YYYY-MM-DD` (the day the flag became true; default today)."""
    if not isinstance(item, str) or not item.strip():
        raise PlanError(f"flag: {item!r} is not a flag name")
    name, _, when = item.strip().partition("=")
    if name not in known:
        raise PlanError(f"flag: unknown flag {name!r} (known: {', '.join(known)})")
    since = parse_date(when, f"flag {name}") if when else today
    assert since is not None
    return name, since


def _parse_override(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        months = float(value)
    except (TypeError, ValueError):
        raise PlanError(f"override_interval: {str(value)[:20]!r} is not a number of months") from None
    if not 0 < months <= 120:
        raise PlanError(f"override_interval: {months:g} months is outside 0 < months <= 120")
    return months


def _names(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise PlanError(f"{key}: must be a flag name or a list of flag names")


def apply_changes(
    plan: PlanData, changes: Mapping[str, Any], rules: IntervalRules, today: dt.date
) -> PlanData:
    """Validate `changes` and return the new plan (pure; set_plan persists it)."""
    unknown = sorted(set(changes) - set(CHANGE_KEYS))
    if unknown:
        raise PlanError(f"unknown plan field {unknown[0]!r} (known: {', '.join(CHANGE_KEYS)})")
    new: dict[str, Any] = {}
    for key in _DATE_FIELDS:
        if key in changes:
            new[key] = parse_date(changes[key], key)
    for key in _NAME_FIELDS:
        if key in changes:
            name = _parse_name(changes[key], key)
            try:
                new[key] = rules.drugs.normalize(name, key) if name else None
            except DrugError as exc:
                raise PlanError(str(exc)) from None
    if "jcv" in changes:
        jcv = str(changes["jcv"] or "unknown").strip().lower()
        if jcv not in JCV_VALUES:
            raise PlanError(f"jcv: {str(changes['jcv'])[:20]!r} is not one of {', '.join(JCV_VALUES)}")
        new["jcv"] = jcv
    flags = dict(plan.flags)
    for item in _names(changes.get("clear_flags"), "clear_flags"):
        if item not in rules.flags:
            raise PlanError(f"clear_flag: unknown flag {item!r} (known: {', '.join(rules.flags)})")
        flags.pop(item, None)
    events = list(plan.events)
    for item in _names(changes.get("set_flags"), "set_flags"):
        name, since = _parse_flag(item, rules.flags, today)
        explicit = "=" in item
        flags[name] = since if explicit or name not in flags else flags[name]
        if name in EVENT_FLAGS:
            kind = "pml-suspected" if name == "pml_suspected" else (
                "relapse-spinal" if "spinal_symptoms" in flags else "relapse-brain")
            events.append(ClinicalEvent(kind, since, f"flag {name}"))
    new["flags"] = flags
    for raw in changes.get("add_events") or ():
        events.append(_parse_event(raw, today))
    new["events"] = tuple(sorted(dict.fromkeys(events), key=lambda e: (e.date, e.kind)))
    new |= parse_demographics(changes, today)
    if changes.get("clear_override"):
        new["override_interval_months"] = None
        new["override_protocol"] = None
    if "override_interval" in changes:
        new["override_interval_months"] = _parse_override(changes["override_interval"])
    if "override_protocol" in changes:
        proto = changes["override_protocol"] or None
        if proto is not None and proto not in rules.richness:
            raise PlanError(f"override_protocol: unknown profile {str(proto)[:64]!r} (known: {', '.join(rules.richness)})")
        new["override_protocol"] = proto
    result = replace(plan, **new)
    _check_consistent(result)
    return result


def parse_demographics(changes: Mapping[str, Any], today: dt.date) -> dict[str, Any]:
    """Name, birth date and sex among `changes`, validated; an empty value clears the field.

    The messages name the field and the rule but never quote the value: it identifies the patient
    and error messages reach logs and HTTP error bodies."""
    out: dict[str, Any] = {}
    if "patient_name" in changes:
        out["patient_name"] = _parse_person_name(changes["patient_name"])
    if "birth_date" in changes:
        out["birth_date"] = _parse_birth_date(changes["birth_date"], today)
    if "sex" in changes:
        raw = changes["sex"]
        sex = raw.strip().upper() if isinstance(raw, str) else raw
        if sex in (None, ""):
            out["sex"] = None
        elif sex in SEX_VALUES:
            out["sex"] = sex
        else:
            raise PlanError(f"sex: must be one of {', '.join(SEX_VALUES)} (male, female, other)")
    return out


def _parse_person_name(value: Any) -> str | None:
    """A DICOM PN value (PS3.5 6.2): up to three component groups (alphabetic=ideographic=phonetic) of
    at most five `^`-separated components and 64 characters each; no backslash (it would make two
    names) and no control characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PlanError("patient_name: must be text (family^given, DICOM person name)")
    name = value.strip()
    if not name:
        return None
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise PlanError("patient_name: a backslash or control characters are not allowed")
    groups = name.split("=")
    if len(groups) > 3:
        raise PlanError("patient_name: at most 3 component groups separated by '='")
    for group in groups:
        if len(group) > 64:
            raise PlanError("patient_name: at most 64 characters per component group (DICOM PN)")
        if group.count("^") > 4:
            raise PlanError("patient_name: at most 5 components (family^given^middle^prefix^suffix)")
    if not groups[0].strip("^ "):
        raise PlanError("patient_name: the family or given name is required (family^given)")
    return name


def _parse_birth_date(value: Any, today: dt.date) -> dt.date | None:
    """YYYY-MM-DD (or the DICOM form YYYYMMDD), not after today nor before 1900."""
    if value is None or value == "":
        return None
    day: dt.date | None = None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        day = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) == 8 and text.isdigit():
            text = f"{text[:4]}-{text[4:6]}-{text[6:]}"
        try:
            day = dt.date.fromisoformat(text) if len(text) == 10 else None
        except ValueError:
            day = None
    if day is None:
        raise PlanError("birth_date: not a valid date (YYYY-MM-DD)")
    if day > today:
        raise PlanError(f"birth_date: after today ({today})")
    if day.year < 1900:
        raise PlanError("birth_date: before 1900")
    return day


def _parse_event(raw: Any, today: dt.date) -> ClinicalEvent:
    if not isinstance(raw, Mapping):
        raise PlanError("event: must be a table of kind, date, note")
    kind = str(raw.get("kind") or "").strip().lower()
    if kind not in RECORDED_EVENTS:
        raise PlanError(f"event kind: {kind[:30]!r} is not one of {', '.join(RECORDED_EVENTS)}")
    day = parse_date(raw.get("date"), f"event {kind} date") or today
    if day > today:
        raise PlanError(f"event {kind} date: {day} is after today ({today})")
    note = str(raw.get("note") or "").strip()
    if len(note) > 200:
        raise PlanError("event note: at most 200 characters")
    return ClinicalEvent(kind, day, note)


def _check_consistent(plan: PlanData) -> None:
    """Refuse contradictory dates, naming the fields."""
    if plan.dmt_start is not None and plan.dmt is None:
        raise PlanError("dmt_start: a start date needs the drug name (dmt)")
    if plan.switch_date is not None and plan.previous_dmt is None:
        raise PlanError("switch_date: a switch date needs the previous drug (previous_dmt)")
    if plan.dmt_stop is not None and plan.dmt_start is not None and plan.dmt_stop < plan.dmt_start:
        raise PlanError(f"dmt_stop: {plan.dmt_stop} is before dmt_start {plan.dmt_start}")
    if plan.dmt_stop is not None and plan.dmt is None:
        raise PlanError("dmt_stop: a stop date needs the drug name (dmt)")
    if plan.switch_date is not None and plan.dmt_start is not None and plan.dmt_start < plan.switch_date:
        raise PlanError(f"dmt_start: {plan.dmt_start} is before switch_date {plan.switch_date} "
                        "(the new therapy cannot start before the switch)")
    if plan.jcv_date is not None and plan.jcv == "unknown":
        raise PlanError("jcv_date: a test date needs a result (jcv positive or negative)")

