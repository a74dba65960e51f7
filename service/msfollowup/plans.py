"""Monitoring plans and the next due exam(s) of each patient.

A plan (diagnosis, therapy, JCV status, flags, manual override) lives in the index database with every
change kept. The interval rules are data (`protocols/intervals.toml`); `compute_due` is a pure function of
(plan, exam history, today, rules), so the clinical logic is tested without a database. The DB-facing
functions only gather its inputs. Nothing here logs or raises with a patient identifier.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import getpass
import importlib.resources
import json
import math
import operator
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Date, Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup import audit
from msfollowup.db import Base, UTCDateTime, utcnow

INTERVALS_FILE = "intervals.toml"
JCV_VALUES: tuple[str, ...] = ("positive", "negative", "unknown")
DAYS_PER_MONTH = 365.25 / 12
Unit = Literal["months", "days"]


class PlanError(ValueError):
    """A plan change that cannot be applied; the message names the field and the bad value."""


class IntervalRulesError(ValueError):
    """An intervals file that cannot be used; the message names the file, the rule and the key."""


# --- the rules (data) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    earliest: float
    target: float
    latest: float
    unit: Unit = "months"

    def dates(self, anchor: dt.date) -> tuple[dt.date, dt.date, dt.date]:
        return (
            add_offset(anchor, self.earliest, self.unit),
            add_offset(anchor, self.target, self.unit),
            add_offset(anchor, self.latest, self.unit),
        )


@dataclass(frozen=True)
class Condition:
    variable: str
    op: str
    value: Any


@dataclass(frozen=True)
class Rule:
    id: str
    purpose: str
    profile: str
    window: Window
    source: str
    conditions: tuple[Condition, ...] = ()
    description: str = ""
    not_before: str | None = None  # plan date field or flag (its set day): no window opens before it
    event: str | None = None  # flag name: one-off rule anchored on the day the flag was set
    overridable: bool = True


@dataclass(frozen=True)
class Substitution:
    id: str
    flag: str
    mapping: Mapping[str, str]
    source: str = ""


@dataclass(frozen=True)
class IntervalRules:
    version: str
    rules: tuple[Rule, ...]
    site_default: tuple[str, ...]
    flags: tuple[str, ...]
    richness: tuple[str, ...]
    purposes: Mapping[str, str]
    substitutions: tuple[Substitution, ...]
    recall_window: Window
    unverifiable_recall_prefixes: tuple[str, ...]
    baseline_window: Window
    override_earliest_fraction: float
    override_latest_fraction: float
    source_path: str = ""

    def purpose_of(self, profile_id: str) -> str:
        return self.purposes.get(profile_id, "brain")

    def rank(self, profile_id: str) -> int:
        """Lower is richer; unknown profiles rank last so a known rich profile always wins."""
        return self.richness.index(profile_id) if profile_id in self.richness else len(self.richness)


# Condition vocabulary: variable -> (kind, allowed operators). Kept in code because it is the
# interface between the plan model and the data; the rules themselves are data.
_STRING_OPS = ("eq", "ne", "in", "not_in")
_NUMBER_OPS = ("lt", "le", "gt", "ge")
_VARIABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "dmt": ("string", _STRING_OPS),
    "previous_dmt": ("string", _STRING_OPS),
    "jcv": ("string", _STRING_OPS),
    "months_on_dmt": ("number", _NUMBER_OPS),
    "months_since_switch": ("number", _NUMBER_OPS),
    "months_since_diagnosis": ("number", _NUMBER_OPS),
    "flags": ("flags", ("has", "lacks")),
}
_PLAN_DATES = ("dmt_start", "switch_date", "diagnosed")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


def _err(where: str, msg: str) -> IntervalRulesError:
    return IntervalRulesError(f"{where}: {msg}")


def _window(raw: Any, unit: Unit, where: str) -> Window:
    if not isinstance(raw, dict) or set(raw) != {"earliest", "target", "latest"}:
        raise _err(where, "must be a table with exactly earliest, target, latest")
    vals = [raw[k] for k in ("earliest", "target", "latest")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in vals):
        raise _err(where, "earliest, target, latest must be numbers >= 0")
    if not vals[0] <= vals[1] <= vals[2]:
        raise _err(where, "must satisfy earliest <= target <= latest")
    return Window(float(vals[0]), float(vals[1]), float(vals[2]), unit)


def _window_of(raw: Mapping[str, Any], where: str) -> Window:
    has_m, has_d = "window" in raw, "window_days" in raw
    if has_m == has_d:
        raise _err(where, "needs exactly one of window (months) or window_days")
    if has_m:
        return _window(raw["window"], "months", f"{where}.window")
    return _window(raw["window_days"], "days", f"{where}.window_days")


def _conditions(raw: Any, flags: tuple[str, ...], where: str) -> tuple[Condition, ...]:
    if not isinstance(raw, dict):
        raise _err(where, "must be a table of variable = { operator = value }")
    out: list[Condition] = []
    for var, ops in raw.items():
        if var not in _VARIABLES:
            raise _err(f"{where}.{var}", f"unknown variable (known: {', '.join(_VARIABLES)})")
        kind, allowed = _VARIABLES[var]
        if not isinstance(ops, dict) or not ops:
            raise _err(f"{where}.{var}", "must be a non-empty table of operators")
        for op, value in ops.items():
            key = f"{where}.{var}.{op}"
            if op not in allowed:
                raise _err(key, f"operator not allowed for {var} (allowed: {', '.join(allowed)})")
            out.append(Condition(var, op, _condition_value(kind, op, value, flags, key)))
    return tuple(out)


def _condition_value(kind: str, op: str, value: Any, flags: tuple[str, ...], key: str) -> Any:
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _err(key, "must be a number")
        return float(value)
    if kind == "flags":
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _err(key, "must be a flag name or a list of flag names")
        unknown = [n for n in names if n not in flags]
        if unknown:
            raise _err(key, f"unknown flag {unknown[0]!r} (not in flags)")
        return tuple(names)
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _err(key, "must be a list of strings")
        return tuple(v.lower() for v in value)
    if not isinstance(value, str):
        raise _err(key, "must be a string")
    return value.lower()


_RULE_KEYS = {
    "id", "purpose", "profile", "window", "window_days", "source", "when", "description",
    "not_before", "event", "overridable",
}  # fmt: skip


def _rule(raw: Any, index: int, flags: tuple[str, ...], richness: tuple[str, ...], purposes: Mapping[str, str]) -> Rule:
    where = f"rule[{index}]"
    if not isinstance(raw, dict):
        raise _err(where, "must be a table")
    if isinstance(raw.get("id"), str):
        where = f"rule {raw['id']!r}"
    extra = set(raw) - _RULE_KEYS
    if extra:
        raise _err(where, f"unknown key {sorted(extra)[0]!r}")
    for key in ("id", "purpose", "profile", "source"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _err(where, f"{key} is required and must be a non-empty string")
    if raw["profile"] not in richness:
        raise _err(where, f"profile {raw['profile']!r} is not listed in [profiles].richness")
    if purposes.get(raw["profile"], "brain") != raw["purpose"]:
        raise _err(where, f"purpose {raw['purpose']!r} does not match the purpose of profile {raw['profile']!r}")
    not_before = raw.get("not_before")
    if not_before is not None and not_before not in _PLAN_DATES and not_before not in flags:
        raise _err(where, f"not_before must be a flag or one of {', '.join(_PLAN_DATES)}")
    event = raw.get("event")
    if event is not None and event not in flags:
        raise _err(where, f"event {event!r} is not a known flag")
    overridable = raw.get("overridable", True)
    if not isinstance(overridable, bool):
        raise _err(where, "overridable must be true or false")
    return Rule(
        id=raw["id"],
        purpose=raw["purpose"],
        profile=raw["profile"],
        window=_window_of(raw, where),
        source=raw["source"],
        conditions=_conditions(raw.get("when", {}), flags, f"{where}.when"),
        description=str(raw.get("description", "")),
        not_before=not_before,
        event=event,
        overridable=overridable,
    )


def _str_list(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise _err(where, "must be a list of non-empty strings")
    return tuple(raw)


def _fraction(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise _err(where, "must be a number > 0")
    return float(raw)


def parse_interval_rules(data: Mapping[str, Any], source: str = "<data>") -> IntervalRules:
    """Validate the parsed TOML; every error names `source` and the offending key."""

    def where(key: str) -> str:
        return f"{source}: {key}"

    flags = _str_list(data.get("flags"), where("flags"))
    profiles = data.get("profiles")
    if not isinstance(profiles, dict):
        raise _err(where("profiles"), "table is required")
    richness = _str_list(profiles.get("richness"), where("profiles.richness"))
    purposes = profiles.get("purpose", {})
    if not isinstance(purposes, dict) or not all(isinstance(v, str) for v in purposes.values()):
        raise _err(where("profiles.purpose"), "must map profile ids to purpose names")
    raw_rules = data.get("rule")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise _err(where("rule"), "at least one [[rule]] is required")
    rules = tuple(_rule(r, i, flags, richness, purposes) for i, r in enumerate(raw_rules))
    ids = [r.id for r in rules]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise _err(where("rule"), f"duplicate rule id {dup!r}")
    site_default = _str_list(data.get("site_default"), where("site_default"))
    for rid in site_default:
        if rid not in ids:
            raise _err(where("site_default"), f"unknown rule id {rid!r}")
    recall = data.get("recall", {})
    baseline = data.get("baseline", {})
    override = data.get("override", {})
    if not all(isinstance(t, dict) for t in (recall, baseline, override)):
        raise _err(where("recall/baseline/override"), "must be tables")
    return IntervalRules(
        version=str(data.get("version", "")),
        rules=rules,
        site_default=site_default,
        flags=flags,
        richness=richness,
        purposes=dict(purposes),
        substitutions=_substitutions(data.get("substitutions", {}), flags, richness, where),
        recall_window=_window(recall.get("window_days"), "days", where("recall.window_days")),
        unverifiable_recall_prefixes=_str_list(
            recall.get("unverifiable_recall_prefixes", []) or ["sequence."], where("recall.unverifiable_recall_prefixes")
        ),
        baseline_window=_window(baseline.get("window_days"), "days", where("baseline.window_days")),
        override_earliest_fraction=_fraction(override.get("earliest_fraction", 0.9), where("override.earliest_fraction")),
        override_latest_fraction=_fraction(override.get("latest_fraction", 1.1), where("override.latest_fraction")),
        source_path=source,
    )


def _substitutions(
    raw: Any, flags: tuple[str, ...], richness: tuple[str, ...], where: Callable[[str], str]
) -> tuple[Substitution, ...]:
    if not isinstance(raw, dict):
        raise _err(where("substitutions"), "must be a table of flag -> substitution")
    out = []
    for flag, sub in raw.items():
        key = where(f"substitutions.{flag}")
        if flag not in flags:
            raise _err(key, "unknown flag")
        if not isinstance(sub, dict) or not isinstance(sub.get("map"), dict):
            raise _err(key, "needs a map = { profile = profile } table")
        for a, b in sub["map"].items():
            if a not in richness or b not in richness:
                raise _err(f"{key}.map", f"{a!r} -> {b!r}: both profiles must be listed in [profiles].richness")
        out.append(Substitution(str(sub.get("id", flag)), flag, dict(sub["map"]), str(sub.get("source", ""))))
    return tuple(out)


def load_interval_rules(directory: Path | None = None) -> IntervalRules:
    """Load intervals.toml from `directory` if the site put one there, else the packaged default.

    A site protocols_dir may hold only the files the site changed (see protocols/__init__.py).
    """
    if directory is not None and (Path(directory) / INTERVALS_FILE).is_file():
        path = Path(directory) / INTERVALS_FILE
        source, text = str(path), _read(path)
    else:
        res = importlib.resources.files("msfollowup.protocols") / INTERVALS_FILE
        source, text = str(res), res.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise IntervalRulesError(f"{source}: not valid TOML: {exc}") from None
    return parse_interval_rules(data, source)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IntervalRulesError(f"{path}: cannot read: {exc}") from None


# --- the plan and the exams (inputs of the computation) ----------------------------------------------


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

    def to_json(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "diagnosed": _iso(self.diagnosed),
            "dmt": self.dmt,
            "dmt_start": _iso(self.dmt_start),
            "previous_dmt": self.previous_dmt,
            "switch_date": _iso(self.switch_date),
            "jcv": self.jcv,
            "flags": {k: _iso(v) for k, v in sorted(self.flags.items())},
            "override_interval_months": self.override_interval_months,
            "override_protocol": self.override_protocol,
        }


@dataclass(frozen=True)
class ExamRecord:
    study_uid: str
    date: dt.date
    profile_id: str
    verdict: str
    failed: tuple[str, ...]  # requirement ids not passed
    purpose: str = "brain"


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
        }


def _iso(d: dt.date | None) -> str | None:
    return d.isoformat() if d else None


# --- date arithmetic ---------------------------------------------------------------------------------


def add_months(d: dt.date, months: float) -> dt.date:
    """Calendar months for the whole part (31 Jan + 1 -> 28/29 Feb), average-month days for the rest."""
    whole = int(months)
    month0 = d.month - 1 + whole
    year, month = d.year + month0 // 12, month0 % 12 + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return dt.date(year, month, day) + dt.timedelta(days=round((months - whole) * DAYS_PER_MONTH))


def add_offset(d: dt.date, value: float, unit: Unit) -> dt.date:
    return add_months(d, value) if unit == "months" else d + dt.timedelta(days=round(value))


def months_between(start: dt.date | None, at: dt.date) -> float | None:
    """Elapsed months, or None when the start is unknown or still in the future (never matches)."""
    if start is None or at < start:
        return None
    return (at - start).days / DAYS_PER_MONTH


# --- the pure computation ----------------------------------------------------------------------------


_TIME_VARIABLES = ("months_on_dmt", "months_since_switch", "months_since_diagnosis")


def _start_of(plan: PlanData, variable: str) -> dt.date | None:
    """The plan date a time variable counts from."""
    if variable == "months_on_dmt":
        return plan.dmt_start
    if variable == "months_since_switch":
        # A switch without its own date happened when the current drug started.
        return plan.switch_date or (plan.dmt_start if plan.previous_dmt else None)
    return plan.diagnosed


def _variable(plan: PlanData, name: str, at: dt.date) -> Any:
    if name in _TIME_VARIABLES:
        return months_between(_start_of(plan, name), at)
    if name == "flags":
        return set(plan.flags)
    value = getattr(plan, name)
    return value.lower() if isinstance(value, str) else value


def _holds(cond: Condition, plan: PlanData, at: dt.date) -> bool:
    value = _variable(plan, cond.variable, at)
    if cond.op == "has":
        return all(f in value for f in cond.value)
    if cond.op == "lacks":
        return not any(f in value for f in cond.value)
    if value is None:
        return False
    if cond.op == "eq":
        return bool(value == cond.value)
    if cond.op == "ne":
        return bool(value != cond.value)
    if cond.op == "in":
        return value in cond.value
    if cond.op == "not_in":
        return value not in cond.value
    return _COMPARE[cond.op](value, cond.value)


def rule_applies(rule: Rule, plan: PlanData, at: dt.date) -> bool:
    return all(_holds(c, plan, at) for c in rule.conditions)


def counts_as_compliant(exam: ExamRecord, rules: IntervalRules) -> bool:
    """Does this exam restart the clock? Unverifiable counts unless a required sequence was missing."""
    if exam.verdict == "compliant":
        return True
    if exam.verdict == "unverifiable":
        prefixes = rules.unverifiable_recall_prefixes
        return not any(f.startswith(p) for f in exam.failed for p in prefixes)
    return False


@dataclass(frozen=True)
class _Candidate:
    """One contribution to a purpose's decision: a window and/or a profile, with the rule id."""

    rule_id: str
    window: tuple[dt.date, dt.date, dt.date] | None
    profile: str | None
    baseline: bool = False  # the window is "no exam yet, due now", not the rule's own interval


def _last_compliant(exams: Sequence[ExamRecord], rules: IntervalRules) -> ExamRecord | None:
    ok = [e for e in exams if counts_as_compliant(e, rules)]
    return max(ok, key=lambda e: (e.date, e.study_uid)) if ok else None


def _onset(rule: Rule, plan: PlanData, today: dt.date, last: dt.date | None) -> dt.date | None:
    """Today if the rule applies now (or applied at the last exam); else the future day it starts to
    apply because a duration crosses its threshold (natalizumab >= 18 months); else None."""
    if any(rule_applies(rule, plan, d) for d in [today] + ([last] if last else [])):
        return today
    starts: list[dt.date] = []
    for c in rule.conditions:
        start = _start_of(plan, c.variable) if c.variable in _TIME_VARIABLES else None
        if start is not None and c.op in ("ge", "gt"):
            starts.append(start + dt.timedelta(days=math.ceil(c.value * DAYS_PER_MONTH)))
    if not starts or max(starts) <= today:
        return None
    onset = max(starts)
    for day in (onset, onset + dt.timedelta(days=1)):  # `gt` at an exact boundary needs one more day
        if rule_applies(rule, plan, day):
            return day
    return None


def _not_before(plan: PlanData | None, name: str | None) -> dt.date | None:
    """A plan date (dmt_start ...) or the day a flag was set: no window of the rule opens before it."""
    if plan is None or name is None:
        return None
    if name in _PLAN_DATES:
        value: dt.date | None = getattr(plan, name)
        return value
    return plan.flags.get(name)


def _rule_candidate(
    rule: Rule, plan: PlanData | None, exams: Sequence[ExamRecord], today: dt.date, rules: IntervalRules
) -> _Candidate | None:
    """The window this rule asks for, or None if it does not apply (or its event was answered)."""
    last = _last_compliant(exams, rules)
    onset = today
    if plan is not None:
        found = _onset(rule, plan, today, last.date if last else None)
        if found is None:
            return None
        onset = found
    if rule.event is not None:
        since = (plan.flags.get(rule.event) if plan else None) or today
        if last is not None and last.date >= since:
            return None  # the immediate exam was done; follow-up rules take over
        return _Candidate(rule.id, rule.window.dates(since), rule.profile)
    if last is None:
        e, t, l = rules.baseline_window.dates(today)
    else:
        anchor = last.date
        floor = _not_before(plan, rule.not_before)
        if floor is not None and floor > anchor:
            anchor = floor
        e, t, l = rule.window.dates(anchor)
    if onset > today:
        # Not yet applicable: its window cannot open before the day it starts to apply.
        e, t, l = max(e, onset), max(t, onset), max(l, onset + (l - t))
    return _Candidate(rule.id, (e, t, l), rule.profile, baseline=last is None and onset == today)


def _override_candidates(
    plan: PlanData, purpose: str, exams: Sequence[ExamRecord], today: dt.date, rules: IntervalRules
) -> list[_Candidate]:
    out: list[_Candidate] = []
    if plan.override_interval_months is not None and purpose == "brain":
        last = _last_compliant(exams, rules)
        if last is None:
            out.append(_Candidate("override-interval", rules.baseline_window.dates(today), None, baseline=True))
        else:
            n = plan.override_interval_months
            w = Window(n * rules.override_earliest_fraction, n, n * rules.override_latest_fraction)
            out.append(_Candidate("override-interval", w.dates(last.date), None))
    if plan.override_protocol is not None and rules.purpose_of(plan.override_protocol) == purpose:
        out.append(_Candidate("override-protocol", None, plan.override_protocol))
    return out


def _candidates(
    plan: PlanData | None, purpose: str, exams: Sequence[ExamRecord], today: dt.date, rules: IntervalRules
) -> list[_Candidate]:
    pool = [r for r in rules.rules if r.purpose == purpose]
    if plan is None:
        pool = [r for r in pool if r.id in rules.site_default]
    found = [c for r in pool if (c := _rule_candidate(r, plan, exams, today, rules)) is not None]
    if plan is None or not found:
        return found
    overrides = _override_candidates(plan, purpose, exams, today, rules)
    if not overrides:
        return found
    fixed = {r.id for r in pool if not r.overridable}
    kept: list[_Candidate] = []
    for c in found:
        if c.rule_id in fixed:
            kept.append(c)
            continue
        # An override replaces what it names; the other half of an overridable rule still counts.
        window = None if any(o.window for o in overrides) else c.window
        profile = None if any(o.profile for o in overrides) else c.profile
        if window or profile:
            kept.append(_Candidate(c.rule_id, window, profile, c.baseline))
    return overrides + kept


def _purposes(plan: PlanData | None, exams: Sequence[ExamRecord], today: dt.date, rules: IntervalRules) -> list[str]:
    """Purposes with at least one applicable rule, brain first."""
    purposes = sorted({r.purpose for r in rules.rules}, key=lambda p: (p != "brain", p))
    return [p for p in purposes if _candidates(plan, p, [e for e in exams if e.purpose == p], today, rules)]


def _substitute(profile: str, plan: PlanData | None, rules: IntervalRules) -> tuple[str, list[str], list[str]]:
    """Apply flag substitutions (gadolinium contraindicated); returns (profile, rule ids, notes)."""
    ids: list[str] = []
    notes: list[str] = []
    for sub in rules.substitutions:
        if plan is None or sub.flag not in plan.flags:
            continue
        if profile in sub.mapping:
            ids.append(sub.id)
            notes.append(f"{sub.flag}: {profile} -> {sub.mapping[profile]}")
            profile = sub.mapping[profile]
        else:
            notes.append(f"{sub.flag}: no alternative to {profile}, check with the radiologist")
    return profile, ids, notes


def _decide(
    plan: PlanData | None,
    purpose: str,
    exams: Sequence[ExamRecord],
    today: dt.date,
    rules: IntervalRules,
    patient_id: str,
) -> DueExam | None:
    cands = _candidates(plan, purpose, exams, today, rules)
    windows = [c for c in cands if c.window is not None]
    profiles = [c for c in cands if c.profile is not None]
    if not windows or not profiles:
        return None
    best_w = min((c.window for c in windows if c.window is not None), key=lambda w: (w[1], w[2], w[0]))
    winners = [c for c in windows if c.window == best_w]
    # Before the first exam every rule says "now": report that once instead of listing them all.
    w_ids = ["baseline"] if all(c.baseline for c in winners) else [c.rule_id for c in winners if not c.baseline]
    best_p = min((c.profile for c in profiles if c.profile is not None), key=rules.rank)
    p_all = [c.rule_id for c in profiles if c.profile == best_p]
    # Ties on the profile are common (most rules say "routine"): credit the interval winner if it is one.
    p_ids = [i for i in p_all if i in w_ids] or p_all
    profile, s_ids, notes = _substitute(best_p, plan, rules)
    rule_ids = tuple(dict.fromkeys(w_ids + p_ids + s_ids))
    last = _last_compliant(exams, rules)
    reason = f"interval: {', '.join(w_ids)}; protocol {best_p}: {', '.join(p_ids)}"
    if last is None:
        reason += "; no compliant exam yet"
    if notes:
        reason += "; " + "; ".join(notes)
    due = DueExam(
        patient_id=patient_id,
        purpose=purpose,
        profile_id=profile,
        earliest=best_w[0],
        target=best_w[1],
        latest=best_w[2],
        rule_ids=rule_ids,
        reason=reason,
        recall=False,
        recall_items=(),
        based_on_study=last.study_uid if last else None,
    )
    return _with_recall(due, plan, exams, rules)


def _with_recall(due: DueExam, plan: PlanData | None, exams: Sequence[ExamRecord], rules: IntervalRules) -> DueExam:
    """A failed study after the last compliant one turns the due exam into a recall for what was missing."""
    last = _last_compliant(exams, rules)
    failed = sorted(
        (e for e in exams if not counts_as_compliant(e, rules) and (last is None or e.date > last.date)),
        key=lambda e: (e.date, e.study_uid),
    )
    if not failed:
        return due
    first, latest = failed[0], failed[-1]
    r_e, r_t, r_l = rules.recall_window.dates(first.date)
    # The richer of the failed study's profile and today's decision: the repeat must satisfy both.
    profile = min((latest.profile_id, due.profile_id), key=rules.rank)
    profile, _, _ = _substitute(profile, plan, rules)
    items = latest.failed or (f"verdict:{latest.verdict}",)
    return replace(
        due,
        profile_id=profile,
        # Whichever comes sooner: the recall, or the regular exam that is still owed.
        earliest=min(r_e, due.earliest),
        target=min(r_t, due.target),
        latest=min(r_l, due.latest),
        rule_ids=("recall",) + due.rule_ids,
        reason=f"recall: study {latest.study_uid} was {latest.verdict} ({', '.join(items)}); regular {due.reason}",
        recall=True,
        recall_items=tuple(items),
        based_on_study=latest.study_uid,
    )


def compute_due(
    plan: PlanData | None,
    exams: Sequence[ExamRecord],
    today: dt.date,
    rules: IntervalRules,
    patient_id: str | None = None,
) -> list[DueExam]:
    """The next due exam of every purpose (brain first). `plan=None`: the site default only."""
    pid = patient_id if patient_id is not None else (plan.patient_id if plan else "")
    out: list[DueExam] = []
    for purpose in _purposes(plan, exams, today, rules):
        of_purpose = [e for e in exams if e.purpose == purpose]
        due = _decide(plan, purpose, of_purpose, today, rules, pid)
        if due is not None:
            out.append(due)
    return out


# --- database ----------------------------------------------------------------------------------------


class MonitoringPlan(Base):
    __tablename__ = "monitoring_plans"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    diagnosed: Mapped[dt.date | None] = mapped_column(Date)
    dmt: Mapped[str | None] = mapped_column(String(64))
    dmt_start: Mapped[dt.date | None] = mapped_column(Date)
    previous_dmt: Mapped[str | None] = mapped_column(String(64))
    switch_date: Mapped[dt.date | None] = mapped_column(Date)
    jcv: Mapped[str] = mapped_column(String(16), default="unknown")
    flags_json: Mapped[str] = mapped_column(Text, default="{}")  # {"flag": "YYYY-MM-DD" set on}
    override_interval_months: Mapped[float | None] = mapped_column(Float)
    override_protocol: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(128))


class MonitoringPlanChange(Base):
    __tablename__ = "monitoring_plan_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    author: Mapped[str] = mapped_column(String(128))
    changes_json: Mapped[str] = mapped_column(Text)  # {"field": {"old": ..., "new": ...}}


@dataclass(frozen=True)
class PlanChange:
    changed_at: dt.datetime
    author: str
    changes: Mapping[str, Mapping[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"changed_at": self.changed_at.isoformat(), "author": self.author, "changes": dict(self.changes)}


def default_author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def _row_to_plan(row: MonitoringPlan) -> PlanData:
    flags = {k: (dt.date.fromisoformat(v) if v else None) for k, v in json.loads(row.flags_json or "{}").items()}
    return PlanData(
        patient_id=row.patient_id,
        diagnosed=row.diagnosed,
        dmt=row.dmt,
        dmt_start=row.dmt_start,
        previous_dmt=row.previous_dmt,
        switch_date=row.switch_date,
        jcv=row.jcv,
        flags=flags,
        override_interval_months=row.override_interval_months,
        override_protocol=row.override_protocol,
    )


def get_plan(session: Session, patient_id: str) -> PlanData | None:
    row = session.get(MonitoringPlan, patient_id)
    return _row_to_plan(row) if row is not None else None


# Plan fields a change may name, and the CLI/CSV spelling of the others.
_DATE_FIELDS = ("diagnosed", "dmt_start", "switch_date")
_NAME_FIELDS = ("dmt", "previous_dmt")
CHANGE_KEYS = (
    "diagnosed", "dmt", "dmt_start", "previous_dmt", "switch_date", "jcv", "set_flags", "clear_flags",
    "override_interval", "override_protocol", "clear_override",
)  # fmt: skip


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
            new[key] = _parse_name(changes[key], key)
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
    for item in _names(changes.get("set_flags"), "set_flags"):
        name, since = _parse_flag(item, rules.flags, today)
        explicit = "=" in item
        flags[name] = since if explicit or name not in flags else flags[name]
    new["flags"] = flags
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


def _check_consistent(plan: PlanData) -> None:
    if plan.dmt_start is not None and plan.dmt is None:
        raise PlanError("dmt_start: a start date needs the drug name (dmt)")
    if plan.switch_date is not None and plan.previous_dmt is None:
        raise PlanError("switch_date: a switch date needs the previous drug (previous_dmt)")


def _diff(old: PlanData, new: PlanData) -> dict[str, dict[str, Any]]:
    a, b = old.to_json(), new.to_json()
    return {k: {"old": a[k], "new": b[k]} for k in a if k != "patient_id" and a[k] != b[k]}


def set_plan(
    session: Session,
    patient_id: str,
    changes: Mapping[str, Any],
    author: str,
    rules: IntervalRules | None = None,
    today: dt.date | None = None,
) -> PlanData:
    """Create or change a plan; every changed field is written to the history (old/new, author, time)."""
    if not isinstance(patient_id, str) or not patient_id.strip() or len(patient_id) > 64:
        raise PlanError("patient id: must be 1-64 characters")
    if not author or len(author) > 128:
        raise PlanError("author: must be 1-128 characters")
    rules = rules or load_interval_rules()
    now = utcnow()
    row = session.get(MonitoringPlan, patient_id)
    old = _row_to_plan(row) if row is not None else PlanData(patient_id=patient_id)
    new = apply_changes(old, changes, rules, today or dt.date.today())  # the clinic's day
    diff = _diff(old, new)
    if row is None:
        diff = {"plan": {"old": None, "new": "created"}, **diff}
        row = MonitoringPlan(patient_id=patient_id, created_at=now)
        session.add(row)
    elif not diff:
        return old
    row.diagnosed, row.dmt, row.dmt_start = new.diagnosed, new.dmt, new.dmt_start
    row.previous_dmt, row.switch_date, row.jcv = new.previous_dmt, new.switch_date, new.jcv
    row.flags_json = json.dumps({k: _iso(v) for k, v in sorted(new.flags.items())})
    row.override_interval_months, row.override_protocol = new.override_interval_months, new.override_protocol
    row.updated_at, row.updated_by = now, author
    session.add(MonitoringPlanChange(patient_id=patient_id, changed_at=now, author=author, changes_json=json.dumps(diff)))
    audit.record(session, audit.PLAN_CHANGE, actor_user=author, patient_id=patient_id, detail={"fields": sorted(diff)})
    session.flush()
    return new


def plan_history(session: Session, patient_id: str) -> list[PlanChange]:
    rows = session.scalars(
        select(MonitoringPlanChange)
        .where(MonitoringPlanChange.patient_id == patient_id)
        .order_by(MonitoringPlanChange.changed_at, MonitoringPlanChange.id)
    )
    return [PlanChange(r.changed_at, r.author, json.loads(r.changes_json)) for r in rows]


def _study_date(value: str | None, fallback: dt.datetime) -> dt.date:
    if value and len(value.strip()) == 8 and value.strip().isdigit():
        try:
            return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
        except ValueError:
            pass
    return fallback.date()  # no usable StudyDate: the day it was checked is the best we know


def _failed_ids(result_json: str) -> tuple[str, ...]:
    """Requirement ids not passed; a result we cannot read is itself a failure, not a pass."""
    try:
        reqs = json.loads(result_json).get("requirements", [])
        return tuple(str(r["id"]) for r in reqs if r.get("status") != "pass")
    except (ValueError, AttributeError, TypeError, KeyError):
        return ("result.unreadable",)


def exam_history(session: Session, patient_id: str, rules: IntervalRules | None = None) -> list[ExamRecord]:
    """The patient's checked studies (latest check version per study), oldest first."""
    from msfollowup.pipeline import StudyCheck

    rules = rules or load_interval_rules()
    latest: dict[str, StudyCheck] = {}
    for row in session.scalars(select(StudyCheck).where(StudyCheck.patient_id == patient_id)):
        if row.study_uid not in latest or row.version > latest[row.study_uid].version:
            latest[row.study_uid] = row
    exams = [
        ExamRecord(
            study_uid=r.study_uid,
            date=_study_date(r.study_date, r.created_at),
            profile_id=r.profile_id,
            verdict=r.verdict,
            failed=_failed_ids(r.result_json) if r.verdict != "compliant" else (),
            purpose=rules.purpose_of(r.profile_id),
        )
        for r in latest.values()
    ]
    return sorted(exams, key=lambda e: (e.date, e.study_uid))


def refresh_patient(session: Session, patient_id: str, today: dt.date, rules: IntervalRules) -> list[DueExam]:
    """Recompute from the current plan and checks; the caller hands the result to the worklist."""
    plan = get_plan(session, patient_id)
    return compute_due(plan, exam_history(session, patient_id, rules), today, rules, patient_id=patient_id)


def due_for_all(session: Session, today: dt.date, rules: IntervalRules) -> list[DueExam]:
    """Every patient with a plan or a checked study, ordered by latest date (most urgent first)."""
    from msfollowup.pipeline import StudyCheck

    ids = set(session.scalars(select(MonitoringPlan.patient_id)))
    ids |= {p for p in session.scalars(select(StudyCheck.patient_id).distinct()) if p}
    out = [d for pid in sorted(ids) for d in refresh_patient(session, pid, today, rules)]
    return sorted(out, key=lambda d: (d.latest, d.target, d.patient_id, d.purpose))


def profile_for_patient(session: Session, patient_id: str, today: dt.date, rules: IntervalRules) -> str:
    """Profile the validator should use for a newly arrived (brain) study of this patient."""
    for due in refresh_patient(session, patient_id, today, rules):
        if due.purpose == "brain":
            return due.profile_id
    return _site_default_profile(rules)


def _site_default_profile(rules: IntervalRules) -> str:
    for rule in rules.rules:
        if rule.id in rules.site_default and rule.purpose == "brain":
            return rule.profile
    return rules.richness[0]


# --- CSV import (one transaction: the caller's session) ----------------------------------------------

CSV_COLUMNS = (
    "patient_id", "diagnosed", "dmt", "dmt_start", "previous_dmt", "switch_date", "jcv", "flags",
    "clear_flags", "override_interval", "override_protocol", "clear_override",
)  # fmt: skip
_TRUE = ("1", "true", "yes", "y", "x")


class PlanImportError(PlanError):
    """A CSV row that cannot be applied; `line` is the file's line number (header = line 1)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def _split_names(cell: str) -> list[str]:
    return [n for n in cell.replace(";", " ").replace("|", " ").split() if n]


def _row_changes(row: Mapping[str, str]) -> dict[str, Any]:
    """Empty cells leave a field unchanged; flags are separated by ';', '|' or spaces."""
    changes: dict[str, Any] = {}
    for key in ("diagnosed", "dmt", "dmt_start", "previous_dmt", "switch_date", "jcv", "override_interval", "override_protocol"):
        value = (row.get(key) or "").strip()
        if value:
            changes[key] = value
    if (row.get("flags") or "").strip():
        changes["set_flags"] = _split_names(row["flags"])
    if (row.get("clear_flags") or "").strip():
        changes["clear_flags"] = _split_names(row["clear_flags"])
    clear = (row.get("clear_override") or "").strip().lower()
    if clear:
        if clear not in _TRUE + ("0", "false", "no", "n"):
            raise PlanError(f"clear_override: {clear[:10]!r} is not yes/no")
        changes["clear_override"] = clear in _TRUE
    return changes


def import_plans_csv(
    session: Session, lines: Iterable[str], author: str, rules: IntervalRules, today: dt.date | None = None
) -> list[str]:
    """Apply every row of a plans CSV in `session`; the first bad row raises PlanImportError (the
    caller rolls the whole file back). Returns the patient ID of every row applied, in file order
    (the caller reschedules those patients)."""
    reader = csv.DictReader(lines)
    header = [(h or "").strip().lower().replace("-", "_") for h in (reader.fieldnames or [])]
    if "patient_id" not in header:
        raise PlanImportError(1, "header needs a patient_id column")
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise PlanImportError(1, f"unknown column {unknown[0]!r} (known: {', '.join(CSV_COLUMNS)})")
    reader.fieldnames = header
    applied: list[str] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            raise PlanImportError(line, "more cells than header columns")
        pid = (row.get("patient_id") or "").strip()
        if not pid:
            raise PlanImportError(line, "patient_id is empty")
        try:
            set_plan(session, pid, _row_changes(row), author, rules=rules, today=today)
        except PlanError as exc:
            raise PlanImportError(line, str(exc)) from None
        applied.append(pid)
    return applied
