"""`[notify]` and `[[notify.destinations]]`: where study and node events are sent (issue 15).

The contract (names fixed by the issue):

    [[notify.destinations]]
    kind = "webhook"                 # or "email" (smtp_host, smtp_port, from, to = [...], username, password)
    url = "http://127.0.0.1:9000/hook"
    secret = "..."                   # HMAC-SHA256 of the body, header X-Msfollowup-Signature: sha256=<hex>
    events = ["study.non_compliant", "study.unverifiable", "patient.overdue", "delivery.failed", "node.unhealthy"]
    scanners = []                    # station AE titles or station names; empty: all
    profiles = []                    # profile ids; empty: all
    include_patient_data = false
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EventName = Literal["study.non_compliant", "study.unverifiable", "patient.overdue", "delivery.failed",
                    "node.unhealthy"]
EVENTS: tuple[str, ...] = ("study.non_compliant", "study.unverifiable", "patient.overdue", "delivery.failed",
                           "node.unhealthy")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NotifyDestination(_Model):
    kind: Literal["webhook", "email"]
    name: str | None = None  # shown in `msfollowup notifications`; default: the URL or the recipients
    events: tuple[EventName, ...] = Field(min_length=1)
    scanners: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    include_patient_data: bool = False
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # webhook
    url: str | None = Field(default=None, pattern=r"^https?://")
    secret: str | None = Field(default=None, min_length=1)
    # email
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    from_: str | None = Field(default=None, alias="from")
    to: tuple[str, ...] = ()
    username: str | None = None
    password: str | None = None
    starttls: bool = True  # secure by default: plain SMTP only when a site turns this off explicitly
    ca_file: Path | None = None  # trust anchor for the SMTP server's certificate (default: system store)

    @model_validator(mode="after")
    def _complete(self) -> NotifyDestination:
        if self.kind == "webhook":
            if not self.url:
                raise ValueError("a webhook destination needs url")
            if not self.secret:
                raise ValueError("a webhook destination needs secret (the body is signed with HMAC-SHA256)")
        else:
            if not self.smtp_host or not self.from_ or not self.to:
                raise ValueError("an email destination needs smtp_host, from and to")
            if self.username and not self.password:
                raise ValueError("username given without password")
            if self.ca_file is not None and not self.ca_file.is_absolute():
                raise ValueError("ca_file must be an absolute path")
            if self.username and not self.starttls:
                raise ValueError("refusing SMTP authentication without STARTTLS (the password would travel in clear)")
        return self

    @property
    def key(self) -> str:
        """The destination's identity in the delivery table (no secret in it)."""
        if self.kind == "webhook":
            return f"webhook:{self.name or self.url}"
        return f"email:{self.name or ','.join(self.to)}"


class NotifyConfig(_Model):
    destinations: tuple[NotifyDestination, ...] = ()
    retry_initial_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    # A report delivery still failing after this many attempts emits delivery.failed (once).
    delivery_failed_attempts: int = Field(default=5, ge=1)
    # Base of the study link in payloads, e.g. "https://msfollowup.example.org"; none: no link.
    base_url: str | None = Field(default=None, pattern=r"^https?://")
