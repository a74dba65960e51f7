"""`msfollowup worklist`: list the items (incomplete ones with the reason), export them as .wl files,
move overdue ones to today, cancel one with a reason (audited)."""

from __future__ import annotations

import argparse
import sys

from msfollowup.cli.common import _add_config_arg, _config, _database, _print_json


def _cmd_worklist(args: argparse.Namespace) -> int:
    from msfollowup.app import worklist
    from msfollowup.db import utcnow
    from msfollowup.app.plans import default_author

    cfg = _config(args)
    if args.action == "export" and cfg.worklist.export_dir is None:
        print("msfollowup: [worklist] export_dir is not set in the configuration", file=sys.stderr)
        return 2
    if args.action == "cancel" and (not args.accession or not (args.reason or "").strip()):
        print("msfollowup: worklist cancel needs an accession number and --reason", file=sys.stderr)
        return 2
    with _database(cfg).session() as s:
        if args.action == "export":
            written, removed = worklist.sync_export(s, cfg)
            print(f"{cfg.worklist.export_dir}: {written} file(s) written, {removed} removed")
            return 0
        if args.action == "expire":
            moved = worklist.expire(s, utcnow(), cfg)
            print(f"{len(moved)} overdue item(s) now start today; items leave the worklist only when performed,"
                  " replaced by a plan change or cancelled")
            return 0
        if args.action == "cancel":
            try:
                step = worklist.cancel(s, args.accession, args.reason, user=args.by or default_author())
            except worklist.WorklistError as exc:
                print(f"msfollowup: {exc}", file=sys.stderr)
                return 2
            print(f"worklist item {step.accession_number} cancelled")
            return 0
        rows = [step.to_json() for step in worklist.open_items(s)]
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'ACCESSION':<16}  {'PATIENT ID':<16}  {'PURPOSE':<7}  {'PROFILE':<24}  {'START':<8}  {'STATION':<16}  STATUS")
    for r in rows:
        status = r["sps_status"] if r["complete"] else f"INCOMPLETE, not served: {r['incomplete_reason']}"
        print(f"{r['accession_number']:<16}  {r['patient_id']:<16}  {r['purpose']:<7}  {r['profile_id']:<24}  "
              f"{r['start_date']:<8}  {r['station_ae']:<16}  {status}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worklist", help="worklist items: list, export as .wl files, move overdue ones, cancel one")
    p.add_argument("action", nargs="?", choices=("list", "export", "expire", "cancel"), default="list",
                   help="list (default), export (make [worklist] export_dir match), expire (overdue items start "
                        "today), cancel ACCESSION --reason TEXT (take an item off the worklist)")
    p.add_argument("accession", nargs="?", help="cancel: the item's accession number")
    p.add_argument("--reason", help="cancel: why (recorded in the audit trail)")
    p.add_argument("--by", help="cancel: who (default: the login name)")
    p.add_argument("--json", action="store_true")
    _add_config_arg(p)
    p.set_defaults(func=_cmd_worklist)
