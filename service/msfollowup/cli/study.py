"""`msfollowup study accept|reference`: QA decisions on received studies (issue 10 item 5), audited.

accept: an unverifiable study (e.g. contrast start time not recorded) counts for the clock once a QA lead
accepts it with a reason. reference: later studies of the same purpose are compared with this one (e.g.
after a scanner change) instead of the most recent compliant study.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import select
from sqlalchemy.orm import Session

from msfollowup.cli import common as cli


def _reschedule(s: Session, args: argparse.Namespace, patient_ids: set[str]) -> None:
    from msfollowup.cli.common import today
    from msfollowup.app.pipeline import schedule_patient

    for pid in sorted(patient_ids):
        schedule_patient(s, cli._config(args), pid, today(args))


def _run(args: argparse.Namespace) -> int:
    from msfollowup.db.checks import StudyCheck
    from msfollowup.app.reviews import accept_study
    from msfollowup.app.study_review import ReviewError, designate_reference

    cfg = cli._config(args)
    db = cli._database(cfg)
    try:
        with db.session() as s:
            if args.study_command == "accept":
                done = accept_study(s, args.study_uid, args.reason, args.author)
            else:
                done = designate_reference(s, args.study_uid, args.author, args.reason or "")
            pids = {p for p in s.scalars(select(StudyCheck.patient_id).where(StudyCheck.study_uid == args.study_uid)) if p}
            _reschedule(s, args, pids)
    except ReviewError as exc:
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    cli._print_json([{"study_uid": d.study_uid, "purpose": d.purpose, "decision": d.kind, "reason": d.reason,
                      "author": d.author, "decided_at": d.decided_at.isoformat()} for d in done])
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from msfollowup.app.plans import default_author

    study = sub.add_parser("study", help="QA decisions on a received study").add_subparsers(
        dest="study_command", required=True)
    a = study.add_parser("accept", help="accept an unverifiable study so it counts (audited)")
    a.add_argument("study_uid", metavar="UID")
    a.add_argument("--reason", required=True, help="why the study is acceptable")
    r = study.add_parser("reference", help="make this study the reference of its purpose(s)")
    r.add_argument("study_uid", metavar="UID")
    r.add_argument("--reason", default="", help="why (e.g. scanner change)")
    for x in (a, r):
        x.add_argument("--author", default=default_author(), help="who decided (default: OS user)")
        x.add_argument("--today", help="the clinic's day (YYYY-MM-DD; default: MSFOLLOWUP_TODAY, else today)")
        cli._add_config_arg(x)
        x.set_defaults(func=cli._plan_errors(_run))
