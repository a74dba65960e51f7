"""`msfollowup patient therapy|event|jcv`: dated clinical events of a monitoring plan (issue 10 item 2).

Each command is one plan change (kept in the plan history with time and author, audited) and moves the
patient's worklist item in the same transaction. Dates are explicit; the default day comes from the one
clock (`--today`, else MSFOLLOWUP_TODAY, else the local date). Patient IDs appear only on stdout.
"""

from __future__ import annotations

import argparse
from typing import Any

from msfollowup.cli import common as cli
from msfollowup.cli.common import today
from msfollowup.site.rules import RECORDED_EVENTS


def _apply(args: argparse.Namespace, changes: dict[str, Any]) -> int:
    from msfollowup.app.pipeline import schedule_patient
    from msfollowup.app.plans import refresh_patient, set_plan

    db, rules = cli._plan_context(args)
    day = today(args)
    with db.session() as s:
        plan = set_plan(s, args.patient_id, changes, args.author, rules=rules, today=day)
        due = refresh_patient(s, args.patient_id, day, rules)
        schedule_patient(s, cli._config(args), args.patient_id, day)
    cli._print_json({"plan": plan.to_json(), "due": [d.to_json() for d in due]})
    return 0


def _therapy_changes(args: argparse.Namespace) -> dict[str, Any]:
    """A new course, a stop of the running one, or (--replaces) a switch; contradictions name the fields."""
    from msfollowup.app.plans import PlanError, get_plan, parse_date

    db, rules = cli._plan_context(args)
    start = parse_date(args.start, "--start")
    stop = parse_date(args.stop, "--stop") if args.stop else None
    if start is None:
        raise PlanError("--start: a start date is required (YYYY-MM-DD)")
    if stop is not None and stop < start:
        raise PlanError(f"--stop: {stop} is before --start {start}")
    try:
        drug = rules.drugs.normalize(args.drug, "--drug")
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    with db.session() as s:
        plan = get_plan(s, args.patient_id)
    running = plan is not None and plan.dmt is not None and plan.dmt_stop is None
    if plan is not None and plan.dmt == drug and plan.dmt_start == start:
        return {"dmt_stop": stop}  # the same course: record its stop
    if args.replaces:
        if plan is None or plan.dmt is None:
            raise PlanError("--replaces: there is no therapy to replace")
        old_start = plan.dmt_start
        if old_start is not None and start < old_start:
            raise PlanError(f"--start: {start} is before the start of the replaced therapy ({old_start})")
        return {"previous_dmt": plan.dmt, "switch_date": plan.dmt_stop or start, "dmt": drug, "dmt_start": start,
                "dmt_stop": stop}
    if running:
        assert plan is not None
        raise PlanError(f"--drug: a therapy ({plan.dmt} since {plan.dmt_start}) is running; pass --replaces to "
                        "switch, or stop it first (patient therapy with its --drug/--start and --stop)")
    changes: dict[str, Any] = {"dmt": drug, "dmt_start": start, "dmt_stop": stop}
    if plan is not None and plan.dmt is not None and plan.dmt_stop is not None:
        if start < plan.dmt_stop:
            raise PlanError(f"--start: {start} is before the stop of the previous therapy ({plan.dmt_stop})")
        changes |= {"previous_dmt": plan.dmt, "switch_date": plan.dmt_stop}
    return changes


def _cmd_therapy(args: argparse.Namespace) -> int:
    return _apply(args, _therapy_changes(args))


def _cmd_event(args: argparse.Namespace) -> int:
    return _apply(args, {"add_events": [{"kind": args.kind, "date": args.date, "note": args.note}]})


def _cmd_jcv(args: argparse.Namespace) -> int:
    from msfollowup.app.plans import PlanError, parse_date

    day = parse_date(args.date, "--date")
    if day is None:
        raise PlanError("--date: the test date is required (YYYY-MM-DD)")
    if day > today(args):
        raise PlanError(f"--date: {day} is after today")
    return _apply(args, {"jcv": args.status, "jcv_date": day.isoformat()})


def add_common(p: argparse.ArgumentParser) -> None:
    from msfollowup.app.plans import default_author

    p.add_argument("--author", default=default_author(), help="who made the change (default: OS user)")
    p.add_argument("--today", help="the clinic's day (YYYY-MM-DD; default: MSFOLLOWUP_TODAY, else today)")
    cli._add_config_arg(p)


def register(patient: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds therapy, event and jcv under `msfollowup patient`."""
    p = patient.add_parser("therapy", help="add a therapy course (drug, start, stop); --replaces switches")
    p.add_argument("patient_id")
    p.add_argument("--drug", required=True, help="generic or brand name (protocols/drugs.toml) or unlisted:NAME")
    p.add_argument("--start", required=True, help="first day of the course (YYYY-MM-DD)")
    p.add_argument("--stop", help="last day of the course (YYYY-MM-DD)")
    p.add_argument("--replaces", action="store_true", help="this course replaces the running one (a switch)")
    p.set_defaults(func=cli._plan_errors(_cmd_therapy))
    q = patient.add_parser("event", help="record a dated clinical event (each schedules its own exam)")
    q.add_argument("patient_id")
    q.add_argument("kind", choices=RECORDED_EVENTS)
    q.add_argument("--date", required=True, help="day of the event (YYYY-MM-DD)")
    q.add_argument("--note", default="", help="free text (no patient identifiers)")
    q.set_defaults(func=cli._plan_errors(_cmd_event))
    r = patient.add_parser("jcv", help="record a JCV serostatus result with its date")
    r.add_argument("patient_id")
    r.add_argument("status", choices=("positive", "negative"))
    r.add_argument("--date", required=True, help="day of the test (YYYY-MM-DD)")
    r.set_defaults(func=cli._plan_errors(_cmd_jcv))
    for x in (p, q, r):
        add_common(x)
