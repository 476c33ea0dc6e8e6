"""Region rules for the minors law: which viewer regions the law applies to (default: all).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "region_rules",
        sa.Column("region", sa.Text, primary_key=True),
        sa.Column("minors_restricted", sa.Boolean, nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("region = '*' OR region ~ '^[A-Z]{2,8}$'", name="ck_region_rules_region_code"),
    )
    # '*' is the default for every region without a row of its own: restricted, so the law is obeyed
    # wherever nobody decided otherwise.
    op.execute(
        "INSERT INTO region_rules (region, minors_restricted, note) VALUES ('*', true, 'default for unlisted regions')"
    )
    op.execute(
        """
        CREATE FUNCTION region_is_restricted(region text) RETURNS boolean
        LANGUAGE sql STABLE AS $$
            SELECT coalesce(
                (SELECT minors_restricted FROM region_rules WHERE region_rules.region = upper(btrim($1))),
                (SELECT minors_restricted FROM region_rules WHERE region_rules.region = '*'),
                true)
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS region_is_restricted(text)")
    op.drop_table("region_rules")
