"""The next due exam(s): a pure function of (plan, exam history, today, rules).

No database, network or clock here, so the clinical logic is tested on values. Nothing logs or raises
with a patient identifier. How it decides (GUIDELINES.md section 3, issue 10):
- every applicable rule of a purpose gives a window; the earliest target wins;
- the protocol is the union of what every applicable rule needs (compose.py), with contrast removed
  when gadolinium is contraindicated;
- a plan override replaces only what overridable rules ask; safety rules always count;
- a study that missed required series is a recall for only what was missing; an unverifiable study
  counts only once a QA lead accepted it (until then it is listed for review).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from msfollowup.site.compose import compose_id, compose_ids, parse_id
from msfollowup.followup.facts import events_of, onset, period_end, plan_date, rule_applies
from msfollowup.followup.model import DueExam, ExamRecord, PlanData
from msfollowup.site.rules import IntervalRules, Rule, Window
from msfollowup.site.profiles import Profile, ProfileError

__all__ = ["compute_due", "counts_as_compliant", "rule_applies", "needs_review", "is_failed", "safety_rules_applying"]


# --- what an exam counts for ------------------------------------------------------------------------


def counts_as_compliant(exam: ExamRecord, rules: IntervalRules) -> bool:
    """Does this exam restart the clock? Compliant, or unverifiable and accepted by a QA lead."""
    return exam.verdict == "compliant" or (exam.verdict == "unverifiable" and exam.accepted)


def is_failed(exam: ExamRecord, rules: IntervalRules) -> bool:
    """Missing or failed required series: a recall. Unverifiable is one only when a sequence is missing."""
    if exam.verdict == "non-compliant":
        return True
    if exam.verdict == "unverifiable" and not exam.accepted:
        return any(f.startswith(p) for f in exam.failed for p in rules.unverifiable_recall_prefixes)
    return False


def needs_review(exam: ExamRecord, rules: IntervalRules) -> bool:
    """Unverifiable (e.g. contrast timing unknown), not accepted, nothing missing: a QA lead decides."""
    return exam.verdict == "unverifiable" and not exam.accepted and not is_failed(exam, rules)


def _last_compliant(exams: Sequence[ExamRecord], rules: IntervalRules) -> ExamRecord | None:
    """The latest exam that counts. A compliant recall for a missing part completes the failed exam
    it was for: the clock then counts from that exam's date."""
    ok = [e for e in exams if counts_as_compliant(e, rules)]
    if not ok:
        return None
    last = max(ok, key=lambda e: (e.date, e.study_uid))
    if "@" in last.profile_id:
        failed = [e for e in exams if is_failed(e, rules) and e.date <= last.date]
        if failed:
            return replace(last, date=max(failed, key=lambda e: e.date).date)
    return last


# --- candidates -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    """One contribution to a purpose's decision: a window and/or a profile, with the rule id."""

    rule_id: str
    window: tuple[dt.date, dt.date, dt.date] | None
    profile: str | None
    baseline: bool = False  # the window is "no exam yet, due now", not the rule's own interval
    source: str = ""
    fixed: bool = False  # a safety rule: an override never removes it


def _cand(rule: Rule, window: tuple[dt.date, dt.date, dt.date], baseline: bool = False) -> _Candidate:
    return _Candidate(rule.id, window, rule.profile, baseline, rule.source, rule.fixed)


def _event_candidate(rule: Rule, plan: PlanData | None, exams: Sequence[ExamRecord], today: dt.date,
                     rules: IntervalRules) -> _Candidate | None:
    """Each event schedules its own exam, counted from the event date, until an exam on or after it."""
    counted = [e.date for e in exams if counts_as_compliant(e, rules)]
    open_events = [ev for ev in events_of(plan, rules) if ev.kind == rule.event and ev.date <= today
                   and not any(d >= ev.date for d in counted)]
    if not open_events or (plan is not None and rule.when and not rule_applies(rule, plan, today, rules)):
        return None
    first = min(open_events, key=lambda ev: ev.date)
    return _cand(rule, rule.interval.dates(first.date))


def _milestone_candidate(rule: Rule, plan: PlanData | None, exams: Sequence[ExamRecord],
                         rules: IntervalRules) -> _Candidate | None:
    """Fixed points after a plan date (reference scan ~6 months after treatment start, follow-up at 12):
    the first one no counted exam answered. An interim scan before a point's window does not answer it."""
    anchor = plan_date(plan, rule.not_before)
    if anchor is None:
        return None
    w = rule.interval
    counted = [e.date for e in exams if counts_as_compliant(e, rules)]
    for m in rule.milestones:
        shifted = Window(earliest=m - (w.target - w.earliest), target=m, latest=m + (w.latest - w.target))
        e, t, l = shifted.dates(anchor)
        if not any(d >= e for d in counted):
            return _cand(rule, (e, t, l))
    return None


def _rule_candidate(rule: Rule, plan: PlanData | None, exams: Sequence[ExamRecord], today: dt.date,
                    rules: IntervalRules) -> _Candidate | None:
    """The window this rule asks for, or None if it does not apply (or its event was answered)."""
    if rule.event is not None:
        return _event_candidate(rule, plan, exams, today, rules)
    last = _last_compliant(exams, rules)
    start = today
    if plan is not None:
        found = onset(rule, plan, today, last.date if last else None, rules)
        if found is None:
            return None
        start = found
    if rule.milestones:
        cand = _milestone_candidate(rule, plan, exams, rules)
        return cand if last is not None or cand is None else _cand(rule, rules.baseline_window.dates(today), True)
    if last is None:
        e, t, l = rules.baseline_window.dates(today)
    else:
        anchor = last.date
        floor = plan_date(plan, rule.not_before, rules)
        if floor is not None and floor > anchor:
            anchor = floor
        e, t, l = rule.interval.dates(anchor)
    if start > today:
        # Not yet applicable: its window cannot open before the day it starts to apply.
        e, t, l = max(e, start), max(t, start), max(l, start + (l - t))
    end = period_end(rule, plan)
    if end is not None and e >= end:
        return None  # the next exam would fall after the rule's period: it ends here
    return _cand(rule, (e, t, l), baseline=last is None and start == today)


def _override_candidates(plan: PlanData, purpose: str, exams: Sequence[ExamRecord], today: dt.date,
                         rules: IntervalRules) -> list[_Candidate]:
    out: list[_Candidate] = []
    if plan.override_interval_months is not None and purpose == "brain":
        last = _last_compliant(exams, rules)
        if last is None:
            out.append(_Candidate("override-interval", rules.baseline_window.dates(today), None, True, "plan override"))
        else:
            n = plan.override_interval_months
            w = Window(earliest=n * rules.override_earliest_fraction, target=n, latest=n * rules.override_latest_fraction)
            out.append(_Candidate("override-interval", w.dates(last.date), None, source="plan override"))
    if plan.override_protocol is not None and rules.purpose_of(plan.override_protocol) == purpose:
        out.append(_Candidate("override-protocol", None, plan.override_protocol, source="plan override"))
    return out


def _candidates(plan: PlanData | None, purpose: str, exams: Sequence[ExamRecord], today: dt.date,
                rules: IntervalRules) -> list[_Candidate]:
    pool = [r for r in rules.rules if r.purpose == purpose]
    if plan is None:
        pool = [r for r in pool if r.id in rules.site_default]
    found = [c for r in pool if (c := _rule_candidate(r, plan, exams, today, rules)) is not None]
    if plan is None or not found:
        return found
    overrides = _override_candidates(plan, purpose, exams, today, rules)
    if not overrides:
        return found
    kept: list[_Candidate] = []
    for c in found:
        if c.fixed:
            kept.append(c)  # a safety rule: never relaxed by an override
            continue
        # An override replaces what it names; the other half of an overridable rule still counts.
        window = None if any(o.window for o in overrides) else c.window
        profile = None if any(o.profile for o in overrides) else c.profile
        if window or profile:
            kept.append(replace(c, window=window, profile=profile))
    return overrides + kept


def safety_rules_applying(plan: PlanData, exams: Sequence[ExamRecord], today: dt.date, rules: IntervalRules
                          ) -> list[Rule]:
    """Safety rules that apply to this plan now: an override may not be set while one does."""
    out = []
    for rule in rules.rules:
        if rule.safety and _rule_candidate(rule, plan, [e for e in exams if e.purpose == rule.purpose],
                                           today, rules) is not None:
            out.append(rule)
    return out


# --- the decision -----------------------------------------------------------------------------------


def _protocol(profiles: Sequence[str], plan: PlanData | None, rules: IntervalRules) -> tuple[str, list[str]]:
    """Union of every applicable rule's profile; gadolinium contraindicated removes every contrast
    requirement (site substitutions first, so a known no-contrast profile keeps its name)."""
    no_gd = plan is not None and any(s.flag in plan.flags for s in rules.substitutions
                                     if s.flag == "gadolinium_contraindicated")
    ids = sorted(dict.fromkeys(profiles), key=rules.rank)
    notes: list[str] = []
    for sub in rules.substitutions:
        if plan is not None and sub.flag in plan.flags:
            mapped = [sub.mapping.get(i, i) for i in ids]
            if mapped != ids:
                notes.append(sub.id)
            ids = sorted(dict.fromkeys(mapped), key=rules.rank)
    return compose_ids(ids, rules.profiles, no_gadolinium=no_gd), notes


def _rule_entry(rules: IntervalRules, rule_id: str, decided: str) -> dict[str, Any]:
    rule = rules.get(rule_id)
    source = rule.source if rule else ("plan override" if rule_id.startswith("override") else "intervals.toml")
    return {"id": rule_id, "decided": decided, "source": source,
            "description": rule.description if rule else "", "safety": bool(rule and rule.fixed)}


def _decide(plan: PlanData | None, purpose: str, exams: Sequence[ExamRecord], today: dt.date,
            rules: IntervalRules, patient_id: str) -> DueExam | None:
    cands = _candidates(plan, purpose, exams, today, rules)
    windows = [c for c in cands if c.window is not None]
    if not windows or not any(c.profile for c in cands):
        return None
    best_w = min((c.window for c in windows if c.window is not None), key=lambda w: (w[1], w[2], w[0]))
    # The exam carries what every rule due by then needs: a rule whose own window opens by the latest
    # day of this exam adds its series (yearly contrast T1 joins the PML screening scan of that time).
    # Safety rules (PML surveillance ...) add their series to every exam: a scan of a natalizumab patient
    # always includes the diffusion imaging.
    profiles = [c for c in cands if c.profile is not None and (c.fixed or c.window is None or c.window[0] <= best_w[2])]
    winners = [c for c in windows if c.window == best_w]
    # Before the first exam every rule says "now": report that once instead of listing them all.
    w_ids = ["baseline"] if all(c.baseline for c in winners) else [c.rule_id for c in winners if not c.baseline]
    profile, s_ids = _protocol([c.profile for c in profiles if c.profile], plan, rules)
    parts = set(parse_id(profile)[0])
    p_all = list(dict.fromkeys(c.rule_id for c in profiles if c.profile and
                               (c.profile in parts or c.profile in _substituted(rules, plan, parts))))
    # Ties on the profile are common (most rules say "routine"): credit the interval winner if it is one.
    p_ids = [i for i in p_all if i in w_ids] or p_all
    if len(parts) > 1:
        p_ids = p_all
    rule_ids = tuple(dict.fromkeys(w_ids + p_ids + s_ids))
    decided = [_rule_entry(rules, i, "window" + ("+protocol" if i in p_ids else "")) for i in w_ids]
    decided += [_rule_entry(rules, i, "protocol") for i in p_ids if i not in w_ids]
    decided += [_rule_entry(rules, i, "protocol (no contrast)") for i in s_ids]
    last = _last_compliant(exams, rules)
    override = None
    if plan is not None and any(i.startswith("override") for i in rule_ids):
        override = {"interval_months": plan.override_interval_months, "protocol": plan.override_protocol,
                    "decided": [i for i in rule_ids if i.startswith("override")]}
    # Deciding rules with their sources first: the worklist's Reason for the Requested Procedure (LO, 64
    # characters) shows the start of this text to the radiographer.
    reason = ("OVERRIDE; " if override else "") + ", ".join(f"{d['id']} [{_short(d['source'])}]" for d in decided)
    reason += f"; interval: {', '.join(w_ids)}; protocol {profile}: {', '.join(p_ids)}"
    if last is None:
        reason += "; no compliant exam yet"
    if override:
        reason += "; decided by a plan override"
    due = DueExam(
        patient_id=patient_id, purpose=purpose, profile_id=profile, earliest=best_w[0], target=best_w[1],
        latest=best_w[2], rule_ids=rule_ids, reason=reason, recall=False, recall_items=(),
        based_on_study=last.study_uid if last else None, decided_by=tuple(decided), override=override,
        required_series=_series(profile, rules),
        review=tuple(e.study_uid for e in exams if needs_review(e, rules) and (last is None or e.date >= last.date)),
    )
    return _with_recall(due, plan, exams, rules)


def _short(source: str) -> str:
    """Seed numbers of a source ("002 Detection of adverse effects (...); 001" -> "002;001")."""
    seeds = [w for w in source.replace(";", " ").replace(",", " ").split() if w.isdigit() and len(w) == 3]
    return ";".join(dict.fromkeys(seeds)) or source[:12]


def _substituted(rules: IntervalRules, plan: PlanData | None, parts: set[str]) -> set[str]:
    """Profiles whose substitute is one of `parts` (credit the rule that asked for routine when no-contrast is used)."""
    return {a for s in rules.substitutions if plan is not None and s.flag in plan.flags
            for a, b in s.mapping.items() if b in parts}


def _profile(profile_id: str, rules: IntervalRules) -> Profile:
    if profile_id in rules.profiles:
        return rules.profiles[profile_id]
    return compose_id(profile_id, rules.profiles)


def _series(profile_id: str, rules: IntervalRules) -> tuple[str, ...]:
    return tuple(s.label + (f" ({', '.join(s.regions)})" if s.regions else "")
                 for s in _profile(profile_id, rules).sequences)


def _missing_sequences(failed: Sequence[str], profile_id: str, rules: IntervalRules) -> list[str] | None:
    """Sequence ids a recall must supply, or None when the whole protocol must be repeated."""
    try:
        profile = _profile(profile_id, rules)
    except ProfileError:  # a profile no longer known: repeat what the rules ask today
        return None
    ids = {s.id for s in profile.sequences}
    post = [s.id for s in profile.sequences if s.contrast == "post"]
    out: list[str] = []
    for item in failed:
        head, _, rest = item.partition(".")
        seq = rest.split(".")[0] if rest else ""
        if head in ("sequence", "resolution", "reference") and seq in ids:
            out.append(seq)
        elif head == "contrast_delay":
            out += [seq] if seq in ids else post
        elif head != "reference":
            return None  # field strength, an unreadable result: the whole exam again
    return list(dict.fromkeys(out)) or None


def _partial_id(profile_id: str, missing: Sequence[str], rules: IntervalRules) -> str:
    names, only, no_gd = parse_id(profile_id)
    parts = []
    for n in names:
        seqs = {s.id for s in rules.profiles[n].sequences} if n in rules.profiles else set()
        keep = [m for m in missing if m in seqs and (n not in only or m in only[n])]
        if keep:
            parts.append(f"{n}@{','.join(keep)}")
    return "+".join(parts) + ("~nogd" if no_gd else "") if parts else profile_id


def _with_recall(due: DueExam, plan: PlanData | None, exams: Sequence[ExamRecord], rules: IntervalRules) -> DueExam:
    """A failed study after the last compliant one: a recall for only what was missing."""
    last = _last_compliant(exams, rules)
    failed = sorted((e for e in exams if is_failed(e, rules) and (last is None or e.date > last.date)),
                    key=lambda e: (e.date, e.study_uid))
    if not failed:
        return due
    first, latest = failed[0], failed[-1]
    r_e, r_t, r_l = rules.recall_window.dates(first.date)
    items = latest.failed or (f"verdict:{latest.verdict}",)
    missing = _missing_sequences(items, latest.profile_id, rules)
    if missing is not None:
        profile = _partial_id(latest.profile_id, missing, rules)
    else:
        profile, _ = _protocol([latest.profile_id.split("@")[0], *parse_id(due.profile_id)[0]], plan, rules)
    return replace(
        due,
        profile_id=profile,
        # Whichever comes sooner: the recall, or the regular exam that is still owed.
        earliest=min(r_e, due.earliest),
        target=min(r_t, due.target),
        latest=min(r_l, due.latest),
        rule_ids=("recall",) + due.rule_ids,
        reason=f"recall: repeat only {', '.join(missing) if missing else 'the whole protocol'} (study "
               f"{latest.study_uid} was {latest.verdict}: {', '.join(items)}); regular {due.reason}",
        recall=True,
        recall_items=tuple(items),
        based_on_study=latest.study_uid,
        required_series=_series(profile, rules),
        decided_by=({"id": "recall", "decided": "window+protocol", "source": "GUIDELINES.md section 3: "
                     "a recall for the missing part", "description": "", "safety": False},) + tuple(due.decided_by),
    )


def _purposes(plan: PlanData | None, exams: Sequence[ExamRecord], today: dt.date, rules: IntervalRules) -> list[str]:
    """Purposes with at least one applicable rule, brain first."""
    purposes = sorted({r.purpose for r in rules.rules}, key=lambda p: (p != "brain", p))
    return [p for p in purposes if _candidates(plan, p, [e for e in exams if e.purpose == p], today, rules)]


def compute_due(plan: PlanData | None, exams: Sequence[ExamRecord], today: dt.date, rules: IntervalRules,
                patient_id: str | None = None) -> list[DueExam]:
    """The next due exam of every purpose (brain first). `plan=None`: the site default only."""
    pid = patient_id if patient_id is not None else (plan.patient_id if plan else "")
    exams = [e for e in exams if e.date <= today]  # as of `today`: a later study has not happened yet
    out: list[DueExam] = []
    for purpose in _purposes(plan, exams, today, rules):
        due = _decide(plan, purpose, [e for e in exams if e.purpose == purpose], today, rules, pid)
        if due is not None:
            out.append(due)
    return out



