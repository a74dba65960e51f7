"""`msfollowup db upgrade|status`: the schema version of the index database.

`upgrade` is what an operator runs after installing a new release (with the node stopped and a
backup taken): `serve` refuses an older database rather than changing it behind their back, unless
`storage.auto_upgrade = true`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from msfollowup.site.config import load_config

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _engine(args: argparse.Namespace) -> Engine:
    from msfollowup.db import make_engine

    cfg = load_config(args.config)
    if cfg.storage.database is None:
        cfg.storage.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(cfg.storage.database_url, cfg.storage.busy_timeout_seconds)


def _name(current: str | None, legacy: bool) -> str:
    if legacy:
        return "unversioned (release 0.1.0)"
    return current or "empty"


def _cmd_db(args: argparse.Namespace) -> int:
    from msfollowup.db import migrate as dbmigrate

    engine = _engine(args)
    try:
        if args.action == "status":
            st = dbmigrate.schema_state(engine)
            verdict = ("up to date" if st.up_to_date else "newer than this msfollowup" if st.newer
                       else f"needs `{dbmigrate.UPGRADE_COMMAND}`" if not st.fresh else "empty (created at first use)")
            print(f"database schema: {_name(st.current, st.legacy)}; this msfollowup: {st.head}; {verdict}")
            return 0 if st.up_to_date or st.fresh else 1
        before, after = dbmigrate.upgrade(engine)
    except dbmigrate.SchemaError as exc:
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if before.up_to_date:
        print(f"database schema already at {after.current}")
    else:
        print(f"database schema upgraded: {_name(before.current, before.legacy)} -> {after.current}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="schema version of the index database: upgrade after installing a release")
    p.add_argument("action", choices=("upgrade", "status"),
                   help="upgrade (migrate to this release's schema; back up first), status (show the revisions)")
    p.add_argument("--config", help="TOML configuration file (default: $MSFOLLOWUP_CONFIG, else built-in defaults)")
    p.set_defaults(func=_cmd_db)
