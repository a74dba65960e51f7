"""What every web module shares: the service context handed to the app, the one-time setup address, the
package folder (templates, static files), and the system summary (pages and API both show it)."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msfollowup import __version__
from msfollowup.app.compliance import DashboardCache
from msfollowup.app.metrics import Metrics, run_checks
from msfollowup.db import Database
from msfollowup.site.config import Config

HERE = Path(__file__).parent
SETUP_MINUTES = 30


@dataclass
class SetupToken:
    """The one-time address that creates the first admin (printed at start, kept in memory only)."""

    secret: str
    expires: float  # time.monotonic()

    @classmethod
    def new(cls) -> SetupToken:
        return cls(secrets.token_urlsafe(24), time.monotonic() + SETUP_MINUTES * 60)

    def valid(self, secret: str) -> bool:
        return time.monotonic() < self.expires and secrets.compare_digest(self.secret, secret)


@dataclass
class WebContext:
    cfg: Config
    db: Database
    metrics: Metrics
    health_checks: Callable[[], Mapping[str, Callable[[], None]]]
    setup: SetupToken | None = None
    today: Callable[[], dt.date] = dt.date.today
    extra: dict[str, Any] = field(default_factory=dict)
    dashboards: DashboardCache = field(default_factory=DashboardCache)  # per process; the token is in the DB


def system_summary(ctx: WebContext) -> dict[str, Any]:
    """Health, version and the configuration without secrets (no keys, no database password)."""
    ok, checks = run_checks(ctx.health_checks())
    cfg = ctx.cfg
    url = cfg.storage.database_url
    return {
        "version": __version__, "health": {"status": "ok" if ok else "failing", "checks": checks},
        "uptime_seconds": round(ctx.metrics.uptime(), 1),
        "config": {
            "node": {"ae_title": cfg.node.ae_title, "host": cfg.node.host, "port": cfg.node.port,
                     "tls": cfg.node.tls is not None},
            "http": {"host": cfg.http.host, "port": cfg.http.port},
            "database": url.split("://", 1)[0] if "@" in url else url,
            "data_dir": str(cfg.storage.data_dir),
            "default_profile": cfg.validation.default_profile,
            "report_destinations": len(cfg.report.destinations),
            "scheduler": cfg.scheduler.enabled,
        },
        "today": ctx.today().isoformat(),
    }
