"""Command line: `msfollowup <command>`. Each command is a small function returning an exit code.

Exit codes: 0 success, 1 a negative answer (e.g. non-compliant), 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from msfollowup.config import Config, ConfigError, load_config

Command = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file (default: $MSFOLLOWUP_CONFIG, else built-in defaults)")


# --- serve / studies (node, store, completion) ------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from msfollowup.service import run_service

    return run_service(_config(args))


def _cmd_studies(args: argparse.Namespace) -> int:
    from msfollowup.db import Database
    from msfollowup.store import study_summaries

    cfg = _config(args)
    rows = study_summaries(Database(cfg.storage.database_url))
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'STUDY INSTANCE UID':<64}  {'STATE':<9}  VER  SERIES  INSTANCES  LAST RECEIVED")
    for r in rows:
        print(f"{r['study_instance_uid']:<64}  {r['state']:<9}  {r['version']:>3}  {r['series']:>6}  {r['instances']:>9}  {r['last_received']}")
    return 0


def _add_node_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the DICOM node")
    _add_config_arg(p)
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("studies", help="list the studies in the index")
    _add_config_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_studies)


# Each concern registers its commands here; keep the list in data-flow order.
REGISTRARS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_node_commands,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msfollowup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except ConfigError as exc:
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
