"""Configuration: one typed model, validated once at load, errors that name the file and the key.

The TOML file is the site's contract (see README "Configuration"). Every section has defaults so an
empty file (or none at all) gives a working node on loopback with SQLite under ./var.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from msfollowup.site.live_config import LiveConfig  # issue 15
from msfollowup.site.notify_config import NotifyConfig  # issue 15

CONFIG_ENV = "MSFOLLOWUP_CONFIG"
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash/control


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file, key and problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError("must be 1-16 printable characters without backslash")
    return value.strip()


class TLSConfig(_Section):
    certificate: Path
    key: Path
    ca: Path | None = None  # set -> client certificates are required (mutual TLS)


class NodeConfig(_Section):
    ae_title: str = "MSFOLLOWUP"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    max_associations: int = Field(default=16, ge=1, le=256)
    network_timeout: float = Field(default=60.0, gt=0)
    acse_timeout: float = Field(default=30.0, gt=0)
    dimse_timeout: float = Field(default=60.0, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    max_pdu: int = Field(default=262144, ge=0)
    # Storage-only associations: the data-transfer phase runs in net/compat/lean.py instead of
    # pynetdicom's state machine (same answers, ~3 ms less CPU per instance). false: pynetdicom throughout.
    lean_storage: bool = True
    # Processes receiving on the DICOM port (runtime/ingest_workers.py): one interpreter lock caps one
    # process near one core, so with several senders on a machine of several cores 2 or more spread
    # the associations (the main process hands each new connection to the least busy one).
    # max_associations applies per process.
    processes: int = Field(default=1, ge=1, le=16)
    tls: TLSConfig | None = None

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))


class StorageConfig(_Section):
    data_dir: Path = Path("./var")
    database: str | None = None  # SQLAlchemy URL; default sqlite:///<data_dir>/index.sqlite3
    duplicate_policy: Literal["keep_first", "replace", "reject"] = "keep_first"
    fsync: bool = True  # only benchmarks against non-durable references may turn this off
    # How long a write waits for a locked SQLite index before the C-STORE fails (Out of Resources).
    busy_timeout_seconds: float = Field(default=30.0, gt=0)
    # SQLite: "behind" = an association's instances after its first are answered once durable under
    # their final and spool names and indexed right after by one writer (files/behind.py); "before" =
    # every instance is indexed before its answer. PostgreSQL always indexes before the answer.
    index_commit: Literal["behind", "before"] = "behind"
    # An index database of an older schema revision: false -> `serve` refuses to start and names
    # `msfollowup db upgrade` (an operator backs up first); true -> the node upgrades it at start.
    auto_upgrade: bool = False

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def database_url(self) -> str:
        if self.database:
            return self.database
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"


class CompletionConfig(_Section):
    stable_seconds: float = Field(default=60.0, ge=0)
    poll_seconds: float = Field(default=1.0, gt=0)


class AllowEntry(_Section):
    ae_title: str
    host: str | None = None

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))


class AccessConfig(_Section):
    # Empty allow-list = nobody may associate: secure by default.
    allow: list[AllowEntry] = Field(default_factory=list)
    require_called_ae: bool = True


class LoggingConfig(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ValidationConfig(_Section):
    default_profile: str = "ms-brain-routine"
    protocols_dir: Path | None = None  # None -> the profiles shipped with the package


class Destination(_Section):
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None  # default: node.ae_title

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae(v)))


class ReportConfig(_Section):
    destinations: list[Destination] = Field(default_factory=list)
    retry_initial_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)


class WorklistConfig(_Section):
    station_ae_title: str = "MRSCANNER"
    export_dir: Path | None = None
    expire_days: int = Field(default=60, ge=1)


class SchedulerConfig(_Section):
    enabled: bool = True
    overdue_check_minutes: float = Field(default=60.0, gt=0)
    retention_days: int | None = Field(default=None, ge=1)  # None: keep received instances forever


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)  # None: no HTTP endpoint
    # HTTPS on the listener itself (certificate, key; `ca` set: client certificates required), for sites
    # without a TLS reverse proxy (docs/web.md has the nginx set-up for those with one).
    tls: TLSConfig | None = None


class ClusterConfig(_Section):
    """Several nodes on one PostgreSQL database and one shared storage root (docs/cluster.md)."""

    enabled: bool = False
    node_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # unique per node
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    # A stage lease not renewed for this long (its node died) is taken over by another node.
    lease_seconds: float = Field(default=60.0, gt=0)
    # A dead leader is replaced within this bound (periodic jobs, worklist export).
    leader_timeout_seconds: float = Field(default=30.0, ge=3)


class Config(_Section):
    node: NodeConfig = NodeConfig()
    storage: StorageConfig = StorageConfig()
    completion: CompletionConfig = CompletionConfig()
    access: AccessConfig = AccessConfig()
    logging: LoggingConfig = LoggingConfig()
    validation: ValidationConfig = ValidationConfig()
    report: ReportConfig = ReportConfig()
    worklist: WorklistConfig = WorklistConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    http: HttpConfig = HttpConfig()
    live: LiveConfig = LiveConfig()
    notify: NotifyConfig = NotifyConfig()
    cluster: ClusterConfig = ClusterConfig()  # cluster mode: see msfollowup.app.cluster

    @model_validator(mode="after")
    def _cluster_needs_postgresql(self) -> Config:
        if self.cluster.enabled:
            if not self.cluster.node_name:
                raise ValueError("cluster.node_name: required when cluster.enabled (a name unique per node)")
            if not self.storage.database_url.startswith("postgresql"):
                raise ValueError("cluster.enabled needs storage.database = a PostgreSQL URL: a SQLite index "
                                 "cannot be shared between nodes")
            if self.cluster.lease_seconds < 2 * self.cluster.heartbeat_seconds:
                raise ValueError("cluster.lease_seconds: must be at least twice cluster.heartbeat_seconds "
                                 "(a lease is renewed by the heartbeat)")
        return self


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _resolve_relative(data: dict[str, Any], base: Path) -> None:
    """Relative paths in a config file are relative to that file, not to the cwd of systemd."""
    storage = data.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("data_dir"), str):
        p = Path(storage["data_dir"])
        storage["data_dir"] = str(p if p.is_absolute() else base / p)
    for section, key in (("validation", "protocols_dir"), ("worklist", "export_dir")):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            p = Path(sec[key])
            sec[key] = str(p if p.is_absolute() else base / p)
    tls = data.get("node", {}).get("tls") if isinstance(data.get("node"), dict) else None
    if isinstance(tls, dict):
        for key in ("certificate", "key", "ca"):
            if isinstance(tls.get(key), str):
                p = Path(tls[key])
                tls[key] = str(p if p.is_absolute() else base / p)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load `path`, else $MSFOLLOWUP_CONFIG, else built-in defaults."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    _resolve_relative(data, p.resolve().parent)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(p, exc)) from None
