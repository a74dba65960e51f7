"""Command line: `msfollowup <command>`. Each command is a small function returning an exit code.

Exit codes: 0 success, 1 a negative answer (e.g. non-compliant), 2 usage or input error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msfollowup.cli import db as cli_db, index as cli_index, nodes as cli_nodes, notify as cli_notify, patient as cli_patient, study as cli_study
from msfollowup.cli.common import (_add_config_arg, _config, _database, _plan_context, _plan_errors,
                                   _print_json, today)
from msfollowup.site.config import ConfigError
from msfollowup.core.errors import MsFollowupError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from msfollowup.app.plans import DueExam

# --- serve / studies (node, store, completion) ------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from msfollowup.runtime.service import run_service

    return run_service(_config(args))


def _cmd_studies(args: argparse.Namespace) -> int:
    from msfollowup.files.store import study_summaries

    cfg = _config(args)
    rows = study_summaries(_database(cfg))
    if args.json:
        from msfollowup.app.study_review import purposes_and_verdicts

        _print_json(purposes_and_verdicts(_database(cfg), rows))  # issue 10: each study's purposes and verdicts
        return 0
    print(f"{'STUDY INSTANCE UID':<64}  {'STATE':<9}  VER  SERIES  INSTANCES  LAST RECEIVED")
    for r in rows:
        print(f"{r['study_instance_uid']:<64}  {r['state']:<9}  {r['version']:>3}  {r['series']:>6}  {r['instances']:>9}  {r['last_received']}"
              + (f"  {r['failure_reason']}" if r.get("failure_reason") else ""))
    return 0


def _add_node_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the DICOM node")
    _add_config_arg(p)
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("studies", help="list the studies in the index")
    _add_config_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_studies)


# --- patient / due (monitoring plans) ---------------------------------------------------------
# Patient IDs appear only on these commands' stdout (the user asked for them), never in logs.


def _reschedule(session: Session, args: argparse.Namespace, patient_ids: list[str]) -> None:
    """A plan change moves the patient's worklist item (same transaction as the change)."""
    from msfollowup.app.pipeline import schedule_patient

    cfg = _config(args)
    for patient_id in patient_ids:
        schedule_patient(session, cfg, patient_id, _today(args))


def _today(args: argparse.Namespace) -> dt.date:
    return today(args)  # --today, else MSFOLLOWUP_TODAY, else the local date


def _plan_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for key in ("dmt", "dmt_start", "previous_dmt", "switch_date", "jcv", "diagnosed", "override_interval", "override_protocol"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    for key, arg in (("patient_name", "name"), ("birth_date", "birth_date"), ("sex", "sex")):
        if getattr(args, arg) is not None:
            changes[key] = getattr(args, arg)  # "" clears the field
    if args.flag:
        changes["set_flags"] = args.flag
    if args.clear_flag:
        changes["clear_flags"] = args.clear_flag
    if args.clear_override:
        changes["clear_override"] = True
    return changes


def _print_due_table(dues: Sequence[DueExam], today: dt.date) -> None:
    print(f"{'PATIENT ID':<20} {'PURPOSE':<7} {'PROFILE':<24} {'EARLIEST':<10} {'TARGET':<10} {'LATEST':<10} STATUS   RULES")
    for d in dues:
        status = "OVERDUE" if d.overdue(today) else ("RECALL" if d.recall else "")
        items = f" missing: {', '.join(d.recall_items)}" if d.recall else ""
        print(
            f"{d.patient_id:<20} {d.purpose:<7} {d.profile_id:<24} {d.earliest} {d.target} {d.latest} "
            f"{status:<8} {', '.join(d.rule_ids)}{items}"
        )


def _cmd_patient_set(args: argparse.Namespace) -> int:
    from msfollowup.app.plans import refresh_patient, set_plan

    db, rules = _plan_context(args)
    with db.session() as s:
        plan = set_plan(s, args.patient_id, _plan_changes(args), args.author, rules=rules, today=_today(args))
        due = refresh_patient(s, args.patient_id, _today(args), rules)
        _reschedule(s, args, [args.patient_id])
    _print_json({"plan": plan.to_json(), "due": [d.to_json() for d in due]})
    return 0


def _cmd_patient_show(args: argparse.Namespace) -> int:
    from msfollowup.app.plans import get_plan, plan_history, refresh_patient

    db, rules = _plan_context(args)
    today = _today(args)
    with db.session() as s:
        plan, history = get_plan(s, args.patient_id), plan_history(s, args.patient_id)
        due = refresh_patient(s, args.patient_id, today, rules)
    if args.json:
        _print_json(
            {
                "patient_id": args.patient_id,
                "plan": plan.to_json() if plan else None,
                "history": [h.to_json() for h in history],
                "due": [d.to_json() for d in due],
                "rules_version": rules.version,
            }
        )
        return 0
    print(f"Patient {args.patient_id}: " + ("no monitoring plan (site default)" if plan is None else "monitoring plan"))
    for key, value in (plan.to_json() if plan else {}).items():
        if key != "patient_id" and value not in (None, {}):
            print(f"  {key}: {value}")
    print("History:")
    for h in history:
        print(f"  {h.changed_at:%Y-%m-%d %H:%M} {h.author}: " + "; ".join(f"{k} {v['old']} -> {v['new']}" for k, v in h.changes.items()))
    print("Next due:")
    _print_due_table(due, today)
    for d in due:
        print(f"  {d.purpose}: {d.reason}")
    return 0


def _cmd_patient_import(args: argparse.Namespace) -> int:
    from msfollowup.app.plans_csv import import_plans_csv

    db, rules = _plan_context(args)
    try:
        with open(args.file, newline="", encoding="utf-8-sig") as fh, db.session() as s:
            applied = import_plans_csv(s, fh, args.author, rules, today=_today(args))
            _reschedule(s, args, sorted(set(applied)))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"msfollowup: {args.file}: cannot read: {exc}", file=sys.stderr)
        return 2
    print(f"imported {len(applied)} plan row(s)")
    return 0


def _cmd_due(args: argparse.Namespace) -> int:
    from msfollowup.app.plans import due_for_all

    db, rules = _plan_context(args)
    today = _today(args)
    with db.session() as s:
        dues = due_for_all(s, today, rules)
    if args.overdue:
        dues = [d for d in dues if d.overdue(today)]
    if args.json:
        _print_json([d.to_json() | {"overdue": d.overdue(today)} for d in dues])
    else:
        _print_due_table(dues, today)
    return 0


def _add_plan_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from msfollowup.app.plans import JCV_VALUES, default_author

    patient = sub.add_parser("patient", help="monitoring plans").add_subparsers(dest="patient_command", required=True)
    cli_patient.register(patient)  # therapy, event, jcv
    p = patient.add_parser("set", help="create or change a monitoring plan (every change is kept)")
    p.add_argument("patient_id")
    p.add_argument("--dmt", help="current disease-modifying therapy")
    p.add_argument("--dmt-start", help="start of the current therapy (YYYY-MM-DD)")
    p.add_argument("--previous-dmt", help="therapy before the current one")
    p.add_argument("--switch-date", help="day of the switch from --previous-dmt (YYYY-MM-DD)")
    p.add_argument("--jcv", choices=JCV_VALUES)
    p.add_argument("--diagnosed", help="date of diagnosis (YYYY-MM-DD)")
    p.add_argument("--flag", action="append", default=[], help="set a flag: NAME or NAME=YYYY-MM-DD (repeatable)")
    p.add_argument("--clear-flag", action="append", default=[], help="clear a flag (repeatable)")
    p.add_argument("--override-interval", help="manual interval in months")
    p.add_argument("--override-protocol", help="manual protocol profile id")
    p.add_argument("--clear-override", action="store_true")
    p.add_argument("--name", help="patient's name as DICOM PN (FAMILY^GIVEN); the worklist prefers it to the last study's")
    p.add_argument("--birth-date", help="patient's birth date (YYYY-MM-DD)")
    p.add_argument("--sex", help="patient's sex: M, F or O")
    p.add_argument("--today", help="the clinic's day (YYYY-MM-DD; default: MSFOLLOWUP_TODAY, else today)")
    p.set_defaults(func=_plan_errors(_cmd_patient_set))
    q = patient.add_parser("show", help="plan, history and next due exams of one patient")
    q.add_argument("patient_id")
    q.add_argument("--json", action="store_true")
    q.add_argument("--today", help="compute as of this day (YYYY-MM-DD)")
    q.set_defaults(func=_plan_errors(_cmd_patient_show))
    r = patient.add_parser("import", help="apply a CSV of plans in one transaction (a bad row applies nothing)")
    r.add_argument("file")
    r.add_argument("--today", help="the clinic's day (YYYY-MM-DD; default: MSFOLLOWUP_TODAY, else today)")
    r.set_defaults(func=_plan_errors(_cmd_patient_import))
    for x in (p, r):
        x.add_argument("--author", default=default_author(), help="who made the change (default: OS user)")
    d = sub.add_parser("due", help="next due exam(s) of every patient")
    d.add_argument("--overdue", action="store_true", help="only exams past their latest date")
    d.add_argument("--json", action="store_true")
    d.add_argument("--today", help="compute as of this day (YYYY-MM-DD)")
    d.set_defaults(func=_plan_errors(_cmd_due))
    for x in (p, q, r, d):
        _add_config_arg(x)


# --- report / outbox (reports and their delivery) ----------------------------------------------


def _cmd_report(args: argparse.Namespace) -> int:
    import shutil

    from msfollowup.reports.content import ReportError

    from msfollowup.reports.files import latest_report

    cfg = _config(args)
    if args.format == "sr" and not args.output:
        print("msfollowup: --format sr writes a binary DICOM file and needs --output PATH", file=sys.stderr)
        return 2
    db_file = cfg.storage.data_dir / "index.sqlite3"
    if cfg.storage.database is None and not db_file.exists():
        print(f"msfollowup: no report for study {args.study_uid} (no index database at {db_file})", file=sys.stderr)
        return 2
    try:
        rec = latest_report(_database(cfg), cfg, args.study_uid)
    except ReportError as exc:
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    source = {"json": rec.json_path, "html": rec.html_path, "sr": rec.sr_path}[args.format]
    try:
        if args.output:
            shutil.copyfile(source, args.output)
        else:
            sys.stdout.write(source.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"msfollowup: cannot copy {source} to {args.output or 'stdout'}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_outbox(args: argparse.Namespace) -> int:
    from msfollowup.app.outbox import list_deliveries

    cfg = _config(args)
    if cfg.storage.database is None:
        cfg.storage.data_dir.mkdir(parents=True, exist_ok=True)
    jobs = list_deliveries(_database(cfg), args.study)
    if args.json:
        _print_json([j.to_json() for j in jobs])
        return 0
    print(f"{'ID':>5}  {'DESTINATION':<32}  {'STATE':<9}  {'TRIES':>5}  {'NEXT ATTEMPT':<25}  STUDY / LAST ERROR")
    for j in jobs:
        row = j.to_json()
        print(f"{j.id:>5}  {j.destination:<32}  {j.state:<9}  {j.attempts:>5}  {row['next_attempt_at'] or '-':<25}  "
              f"{j.study_uid} v{j.version}")
        if j.last_error and j.state != "delivered":
            print(f"{'':>5}  last error: {j.last_error}")
    return 0


def _add_report_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="write the latest report of a study (JSON/HTML to stdout, or a file)")
    p.add_argument("study_uid", metavar="STUDY_UID")
    p.add_argument("--format", choices=("json", "html", "sr"), default="json")
    p.add_argument("--output", help="write to this file (required for --format sr)")
    _add_config_arg(p)
    p.set_defaults(func=_cmd_report)
    q = sub.add_parser("outbox", help="list report deliveries (destination, state, attempts, last error)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--study", help="only the deliveries of this Study Instance UID")
    _add_config_arg(q)
    q.set_defaults(func=_cmd_outbox)


# --- check (offline classification + validation of files) ---------------------------------------


class _InputError(Exception):
    """Paths that cannot be checked: no DICOM, a missing path, an ambiguous reference."""


def _files_under(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise _InputError(f"{name}: no such file or folder")
    return files


def _read_studies(paths: Sequence[str]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Classified series grouped by study, plus what was read, skipped and unreadable."""
    from msfollowup.dicom.classify import classify_study, read_headers, study_uid

    files = _files_under(paths)
    by_series, unreadable, skipped = read_headers(files)
    for message in unreadable:
        print(f"msfollowup: warning: unreadable DICOM file: {message}", file=sys.stderr)
    info = {"files": len(files), "non_dicom_skipped": skipped, "unreadable": list(unreadable)}
    if not by_series:
        raise _InputError(f"no DICOM files found in {', '.join(paths)} ({len(files)} file(s), {skipped} non-DICOM "
                          f"skipped, {len(unreadable)} unreadable)")
    grouped: dict[str, list[Any]] = {}
    for datasets in by_series.values():
        grouped.setdefault(study_uid(datasets[0]), []).append(datasets)
    return {uid: classify_study(series) for uid, series in grouped.items()}, info


def _brief(value: Any, width: int = 30) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_brief(v, 99)}" for k, v in value.items() if v not in (None, [], {}))
    elif isinstance(value, (list, tuple)):
        sep = " x " if all(isinstance(v, (int, float)) for v in value) else "/"  # pixel spacing vs kinds
        text = sep.join(_brief(v, 99) for v in value)
    elif isinstance(value, float):
        text = f"{round(value, 3):g}"
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_check(d: dict[str, Any]) -> None:
    prof = d["profile"]
    print(f"{d['verdict'].upper()}  study {d['study_instance_uid']}  profile {prof['id']} v{prof['version']}"
          + (f"  reference {d['reference_study_uid']}" if d.get("reference_study_uid") else ""))
    print(f"\n{'NO':>5}  {'DESCRIPTION':<32}  {'KIND':<9}  {'2D/3D':<5}  {'DERIVED':<7}  {'CONTRAST':<8}  CONF")
    for s in sorted(d["series"], key=lambda s: (s.get("series_number") is None, s.get("series_number") or 0)):
        print(f"{_brief(s.get('series_number'), 5):>5}  {_brief(s.get('description'), 32):<32}  {s['kind']:<9}  "
              f"{_brief(s.get('acquisition'), 5):<5}  {'yes' if s.get('derived') else 'no':<7}  "
              f"{_brief(s.get('contrast'), 8):<8}  {float(s.get('confidence') or 0):.2f}")
    print(f"\n{'STATUS':<19}  {'REQUIREMENT':<30}  {'MEASURED':<30}  {'LIMIT':<30}  MESSAGE")
    for r in d["requirements"]:
        status = r["status"] + (" (info)" if r.get("informational") else "")
        print(f"{status:<19}  {r['id']:<30}  {_brief(r['measured']):<30}  {_brief(r['limit']):<30}  {r['message']}")


def _cmd_check(args: argparse.Namespace) -> int:
    from msfollowup.site.profiles import ProfileError, get_profile
    from msfollowup.check.validate import validate_study

    cfg = _config(args)
    try:
        profile = get_profile(args.profile or cfg.validation.default_profile, cfg.validation.protocols_dir)
        studies, info = _read_studies(args.paths)
        reference = None
        if args.reference:
            refs, _ = _read_studies([args.reference])
            if len(refs) != 1:
                raise _InputError(f"--reference {args.reference}: holds {len(refs)} studies; give exactly one")
            reference = next(iter(refs.values()))
    except (ProfileError, _InputError) as exc:
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    results = [validate_study(series, profile, reference) for series in studies.values()]
    out = [r.to_json() | {"input": info} for r in results]  # input: totals of the whole run
    if args.json:
        _print_json(out[0] if len(out) == 1 else out)
    else:
        for n, d in enumerate(out):
            print("\n" if n else "", end="")
            _print_check(d)
        print(f"\n{len(out)} study(ies); {info['files']} file(s) read, {info['non_dicom_skipped']} non-DICOM skipped, "
              f"{len(info['unreadable'])} unreadable")
    return 0 if all(r.verdict == "compliant" for r in results) else 1


def _add_check_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="classify and validate DICOM files or folders offline (exit 0 = compliant)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (searched recursively)")
    p.add_argument("--profile", help="protocol profile id (default: [validation] default_profile)")
    p.add_argument("--reference", metavar="PATH", help="the patient's reference study (file or folder) to compare with")
    p.add_argument("--json", action="store_true", help="one JSON object per study (a list when there are several)")
    _add_config_arg(p)
    p.set_defaults(func=_cmd_check)


# --- audit --------------------------------------------------------------------------------------


def _cmd_audit(args: argparse.Namespace) -> int:
    from msfollowup.db import audit

    cfg = _config(args)
    try:
        since = audit.parse_since(args.since) if args.since else None
    except audit.AuditError as exc:
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    rows = audit.events(_database(cfg), since=since, action=args.action)
    if args.json:
        _print_json(list(rows))
        return 0
    for row in rows:
        print(audit.format_line(row))
    return 0


def _add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="the audit trail: who sent, queried, changed or received what")
    _add_config_arg(p)
    p.add_argument("--since", help="only events at or after this date (YYYY-MM-DD) or ISO date-time (UTC)")
    p.add_argument("--action", help="only this action (e.g. store, query.mwl, plan.change)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_audit)


# Each concern registers its commands here; keep the list in data-flow order.
# --- worklist (scheduled exams, export for a department worklist server) ---------------------------


def _add_worklist_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from msfollowup.cli.worklist import register  # imported late: it uses this module's helpers

    register(sub)


REGISTRARS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_node_commands,
    _add_check_commands,
    _add_report_commands,
    _add_plan_commands,
    _add_worklist_commands,
    _add_audit_commands,
    cli_db.register,
    cli_notify.register,  # issue 15: `notifications`
    cli_index.register,
    cli_nodes.register,
    cli_study.register,  # study accept / reference
]
from msfollowup.cli import web as cli_web  # noqa: E402 - web users and API tokens

REGISTRARS.append(cli_web.register)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msfollowup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    _today_everywhere(parser)
    return parser


def _today_everywhere(parser: argparse.ArgumentParser) -> None:
    """One clock: every command takes --today (the clinic's day); main() hands it to msfollowup.core.clock."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any(isinstance(a, argparse._SubParsersAction) for a in child._actions) and \
                        "--today" not in child._option_string_actions:
                    child.add_argument("--today", help="the clinic's day (YYYY-MM-DD; default: MSFOLLOWUP_TODAY)")
                _today_everywhere(child)


def _quiet_value_warnings() -> None:
    """pydicom's read-time validation warns quoting the value ("Invalid value for VR IS: <patient ID>"):
    patient data on stderr and in logs. Every command reads scanner data; the values that matter are
    checked by our own code (UIDs, dates, numbers), which names the attribute, never the value."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_value_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "today", None):
        import os

        from msfollowup.core.clock import ENV

        os.environ[ENV] = args.today  # one clock for everything this command computes
    try:
        rc: int = args.func(args)
    except (ConfigError, MsFollowupError) as exc:  # a schema of another revision: names the command
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
