"""`[live]`: provisional checks while a study is acquired and the scanner-room page (issue 15)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # A series is judged once no instance arrived for this long (or an MPPS COMPLETED lists the study).
    settle_seconds: float = Field(default=3.0, ge=0)
    poll_seconds: float = Field(default=0.5, gt=0)
    # Studies received within this window stay on the page (and are watched for changes).
    window_minutes: float = Field(default=240.0, gt=0)
    # Secure by default: the page shows initials and accession; names only where the site allows it.
    show_patient_names: bool = False
    # Per-subscriber buffer (studies with an unsent change); a slow client loses older states, never ingest time.
    subscriber_queue: int = Field(default=64, ge=1, le=10000)
