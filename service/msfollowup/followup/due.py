"""The next due exam(s): a pure function of (plan, exam history, today, rules).

No database, network or clock here, so the clinical logic is tested on values. Nothing logs or raises
with a patient identifier.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from msfollowup.followup.dates import DAYS_PER_MONTH, months_between
from msfollowup.followup.model import DueExam, ExamRecord, PlanData
from msfollowup.followup.rules import PLAN_DATES, Condition, IntervalRules, Rule, Window

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


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
    return all(_holds(c, plan, at) for c in rule.when)


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
    for c in rule.when:
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
    if name in PLAN_DATES:
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
        return _Candidate(rule.id, rule.interval.dates(since), rule.profile)
    if last is None:
        e, t, l = rules.baseline_window.dates(today)
    else:
        anchor = last.date
        floor = _not_before(plan, rule.not_before)
        if floor is not None and floor > anchor:
            anchor = floor
        e, t, l = rule.interval.dates(anchor)
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
            w = Window(earliest=n * rules.override_earliest_fraction, target=n, latest=n * rules.override_latest_fraction)
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

