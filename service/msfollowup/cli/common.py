"""What every command module shares: the configuration and database of a command, JSON output, the one
clock (`--today`), and the plan-error wrapper. Kept apart from msfollowup.cli so command modules can use
it without importing the parser that imports them."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from msfollowup.site.config import Config, load_config

if TYPE_CHECKING:
    from msfollowup.app.plans import IntervalRules
    from msfollowup.db import Database


Command = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _database(cfg: Config) -> Database:
    """The index database; a fresh data folder is created so a first `studies` answers "none"."""
    from msfollowup.db import Database

    if cfg.storage.database is None:
        cfg.storage.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(cfg.storage.database_url)


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file (default: $MSFOLLOWUP_CONFIG, else built-in defaults)")


def _plan_context(args: argparse.Namespace) -> tuple[Database, IntervalRules]:
    from msfollowup.app.plans import load_interval_rules

    cfg = _config(args)
    return _database(cfg), load_interval_rules(cfg.validation.protocols_dir)


def _plan_errors(func: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        from msfollowup.app.plans import IntervalRulesError, PlanError

        try:
            return func(args)
        except (PlanError, IntervalRulesError) as exc:
            print(f"msfollowup: {exc}", file=sys.stderr)
            return 2

    return run


def today(args: argparse.Namespace) -> dt.date:
    from msfollowup.core import clock

    try:
        return clock.today(getattr(args, "today", None))
    except clock.ClockError as exc:
        from msfollowup.app.plans import PlanError

        raise PlanError(str(exc)) from None
