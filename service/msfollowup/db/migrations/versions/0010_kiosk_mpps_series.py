"""Kiosk tokens bound to a station, kiosk sessions tied to their token, MPPS-listed instances with their series.

- web_api_tokens.station: the station (calling AE title or station name) a kiosk token shows.
- web_sessions.token_id: the kiosk token a browser session came from (revoking the token ends it).
- worklist_mpps_instances.series_uid: the series each listed instance belongs to, so a series an MPPS
  reports as done settles at once for the live check. Rows linked before this revision keep NULL
  (they only mattered for study completion, which does not need the series).

Revision ID: 0010_kiosk_mpps_series
Revises: 0009_plan_demographics
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_kiosk_mpps_series"
down_revision = "0009_plan_demographics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("web_api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("station", sa.String(length=64), nullable=True))

    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_web_sessions_token_id", "web_api_tokens", ["token_id"], ["id"])

    with op.batch_alter_table("worklist_mpps_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("series_uid", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worklist_mpps_instances", schema=None) as batch_op:
        batch_op.drop_column("series_uid")

    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_constraint("fk_web_sessions_token_id", type_="foreignkey")
        batch_op.drop_column("token_id")

    with op.batch_alter_table("web_api_tokens", schema=None) as batch_op:
        batch_op.drop_column("station")
