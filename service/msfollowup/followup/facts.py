"""What the rules read from a plan on a given day: condition variables, dated events, rule periods."""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Callable
from typing import Any

from msfollowup.core.dates import DAYS_PER_MONTH, add_months, months_between
from msfollowup.followup.model import ClinicalEvent, PlanData
from msfollowup.site.rules import PLAN_DATES, Condition, IntervalRules, Rule

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
}  # fmt: skip
TIME_VARIABLES = ("months_on_dmt", "months_since_switch", "months_since_diagnosis")


def start_of(plan: PlanData, variable: str) -> dt.date | None:
    """The plan date a time variable counts from."""
    if variable == "months_on_dmt":
        return plan.dmt_start
    if variable == "months_since_switch":
        # A switch without its own date happened when the current drug started.
        return plan.switch_date or (plan.dmt_start if plan.previous_dmt else None)
    return plan.diagnosed


def events_of(plan: PlanData | None, rules: IntervalRules) -> list[ClinicalEvent]:
    """Recorded events, events of the older flags (new_deficit, pml_suspected), and the therapy events of
    002: "brain MRI at the time that the current treatment is discontinued and after the new treatment
    is started" for a switch away from a drug with a high opportunistic-infection risk."""
    if plan is None:
        return []
    out = list(plan.events)
    if "pml_suspected" in plan.flags:
        out.append(ClinicalEvent("pml-suspected", plan.flags["pml_suspected"] or dt.date.min))
    if "new_deficit" in plan.flags:
        kind = "relapse-spinal" if "spinal_symptoms" in plan.flags else "relapse-brain"
        out.append(ClinicalEvent(kind, plan.flags["new_deficit"] or dt.date.min))
    if plan.dmt_stop is not None and rules.drugs.risk(plan.dmt, "infection") == "high":
        out.append(ClinicalEvent("therapy-stop", plan.dmt_stop, f"{plan.dmt} stopped"))
    if plan.previous_dmt and rules.drugs.risk(plan.previous_dmt, "infection") == "high":
        switch = plan.switch_date or plan.dmt_start
        if switch is not None:
            out.append(ClinicalEvent("therapy-stop", switch, f"{plan.previous_dmt} stopped"))
        if plan.dmt_start is not None:
            out.append(ClinicalEvent("therapy-start-after-switch", plan.dmt_start, f"{plan.dmt} started"))
    seen: dict[tuple[str, dt.date], ClinicalEvent] = {}
    for e in out:
        seen.setdefault((e.kind, e.date), e)
    return sorted(seen.values(), key=lambda e: (e.date, e.kind))


def _variable(plan: PlanData, name: str, at: dt.date, rules: IntervalRules) -> Any:
    if name in TIME_VARIABLES:
        return months_between(start_of(plan, name), at)
    if name == "flags":
        return set(plan.flags)
    if name == "events":
        return {e.kind for e in events_of(plan, rules) if e.date <= at}
    if name == "dmt_pml_risk":
        return rules.drugs.risk(plan.dmt, "pml") if plan.dmt_stop is None or plan.dmt_stop > at else None
    if name == "previous_dmt_pml_risk":
        return rules.drugs.risk(plan.previous_dmt, "pml")
    if name == "previous_dmt_infection_risk":
        return rules.drugs.risk(plan.previous_dmt, "infection")
    if name == "dmt" and plan.dmt_stop is not None and plan.dmt_stop <= at:
        return None  # stopped: the drug's rules end with it
    value = getattr(plan, name)
    return value.lower() if isinstance(value, str) else value


def _holds(cond: Condition, plan: PlanData, at: dt.date, rules: IntervalRules) -> bool:
    value = _variable(plan, cond.variable, at, rules)
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


def rule_applies(rule: Rule, plan: PlanData, at: dt.date, rules: IntervalRules) -> bool:
    return all(_holds(c, plan, at, rules) for c in rule.when)


def period_end(rule: Rule, plan: PlanData | None) -> dt.date | None:
    """The day a rule with a period stops applying; None when it has none (or its start is unknown)."""
    if rule.period_from is None or rule.period_months is None or plan is None:
        return None
    start = plan_date(plan, rule.period_from)
    if start is None and rule.period_from == "switch_date":
        start = start_of(plan, "months_since_switch")
    return add_months(start, rule.period_months) if start is not None else None


def plan_date(plan: PlanData | None, name: str | None, rules: IntervalRules | None = None) -> dt.date | None:
    """A plan date (dmt_start ...), the day a flag was set, or the latest event of a kind."""
    if plan is None or name is None:
        return None
    if name in PLAN_DATES:
        value: dt.date | None = getattr(plan, name)
        return value
    if rules is not None:
        dates = [e.date for e in events_of(plan, rules) if e.kind == name]
        if dates:
            return max(dates)
    return plan.flags.get(name)


def onset(rule: Rule, plan: PlanData, today: dt.date, last: dt.date | None, rules: IntervalRules) -> dt.date | None:
    """Today if the rule applies now (or applied at the last exam); else the future day it starts to
    apply because a duration crosses its threshold (natalizumab >= 18 months); else None."""
    end = period_end(rule, plan)
    if end is not None and today >= end:
        return None  # its period is over (002: "for up to 12 months")
    if any(rule_applies(rule, plan, d, rules) for d in [today] + ([last] if last else [])):
        return today
    starts: list[dt.date] = []
    for c in rule.when:
        start = start_of(plan, c.variable) if c.variable in TIME_VARIABLES else None
        if start is not None and c.op in ("ge", "gt"):
            starts.append(start + dt.timedelta(days=math.ceil(c.value * DAYS_PER_MONTH)))
    if not starts or max(starts) <= today:
        return None
    first = max(starts)
    for day in (first, first + dt.timedelta(days=1)):  # `gt` at an exact boundary needs one more day
        if rule_applies(rule, plan, day, rules):
            return day
    return None
