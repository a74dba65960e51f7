"""The compliance dashboard's rollup, filled from the result rows already there.

- compliance_cells: studies (latest checked version) per scanner, profile, purpose, week, month, verdict
  and QA-reviewed verdict ('' for no study date / no review).
- requirement_failure_cells: failed non-informational requirement results of latest versions per
  requirement, label, scanner, profile, purpose, week and month ('' for no label / no study date).

Both are kept by the code that records a check or an acceptance (app/rollup.py); this revision fills
them once with INSERT ... SELECT ... GROUP BY (the same statements as rollup.REBUILD_SQL, copied here so
that this revision stays as it is when the application's code moves on).

Revision ID: 0011_compliance_rollup
Revises: 0010_kiosk_mpps_series
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_compliance_rollup"
down_revision = "0010_kiosk_mpps_series"
branch_labels = None
depends_on = None

# The same statements as app/rollup.REBUILD_SQL, copied on purpose: a migration is a frozen record of
# what this revision did and must not change when the application's rollup code changes later.
BACKFILL = (
    "INSERT INTO compliance_cells (scanner, profile_id, purpose, week, month, verdict, reviewed, studies) "
    "SELECT scanner, profile_id, purpose, COALESCE(week, ''), COALESCE(month, ''), verdict, "
    "COALESCE(reviewed_verdict, ''), COUNT(*) FROM study_results WHERE latest = true "
    "GROUP BY scanner, profile_id, purpose, COALESCE(week, ''), COALESCE(month, ''), verdict, "
    "COALESCE(reviewed_verdict, '')",
    "INSERT INTO requirement_failure_cells (requirement_id, label, scanner, profile_id, purpose, week, month, failures) "
    "SELECT r.requirement_id, COALESCE(r.label, ''), s.scanner, s.profile_id, s.purpose, COALESCE(s.week, ''), "
    "COALESCE(s.month, ''), COUNT(*) FROM requirement_results r JOIN study_results s ON s.check_id = r.check_id "
    "WHERE r.latest = true AND r.status = 'fail' AND r.informational = false "
    "GROUP BY r.requirement_id, COALESCE(r.label, ''), s.scanner, s.profile_id, s.purpose, COALESCE(s.week, ''), "
    "COALESCE(s.month, '')",
)


def upgrade() -> None:
    op.create_table(
        "compliance_cells",
        sa.Column("scanner", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("week", sa.String(length=10), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("reviewed", sa.String(length=16), nullable=False),
        sa.Column("studies", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("scanner", "profile_id", "purpose", "week", "month", "verdict", "reviewed"),
    )
    op.create_table(
        "requirement_failure_cells",
        sa.Column("requirement_id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("scanner", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("week", sa.String(length=10), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("requirement_id", "label", "scanner", "profile_id", "purpose", "week", "month"),
    )
    for statement in BACKFILL:
        op.execute(sa.text(statement))
    # Covering indexes for the dashboard's GROUP BYs (built after the backfill: one sort each).
    for name, columns in (
        ("scanner_week", ["scanner", "week", "profile_id", "purpose", "month", "verdict", "reviewed", "studies"]),
        ("scanner_month", ["scanner", "month", "profile_id", "purpose", "week", "verdict", "reviewed", "studies"]),
        ("profile_week", ["profile_id", "week", "scanner", "purpose", "month", "verdict", "reviewed", "studies"]),
        ("profile_month", ["profile_id", "month", "scanner", "purpose", "week", "verdict", "reviewed", "studies"]),
        ("verdict", ["verdict", "reviewed", "scanner", "profile_id", "purpose", "week", "month", "studies"]),
    ):
        op.create_index(f"ix_compliance_cells_{name}", "compliance_cells", columns, unique=False)
    op.create_index("ix_requirement_failure_cells_sum", "requirement_failure_cells",
                    ["requirement_id", "label", "scanner", "profile_id", "purpose", "week", "month", "failures"],
                    unique=False)


def downgrade() -> None:  # the indexes go with their tables
    op.drop_table("requirement_failure_cells")
    op.drop_table("compliance_cells")
