"""Institutions, consents and the evaluations made under them.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "institutions",
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("certificate_serial", sa.String(64), nullable=True),
        sa.CheckConstraint("kind IN ('bank', 'insurer')", name="ck_institutions_kind_known"),
        sa.PrimaryKeyConstraint("institution_id", name="pk_institutions"),
    )
    op.create_table(
        "consents",
        sa.Column("consent_id", sa.String(128), nullable=False),
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("policies_json", sa.Text(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("max_uses >= 1", name="ck_consents_max_uses_positive"),
        sa.CheckConstraint("uses >= 0 AND uses <= max_uses", name="ck_consents_uses_within_max"),
        sa.PrimaryKeyConstraint("consent_id", name="pk_consents"),
    )
    op.create_index("ix_consents_citizen_id", "consents", ["citizen_id"])
    op.create_index("ix_consents_institution_id", "consents", ["institution_id"])
    op.create_table(
        "evaluations",
        sa.Column("institution_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("consent_id", sa.String(128), nullable=False),
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("policy_id", sa.String(128), nullable=False),
        sa.Column("policy_sha256", sa.String(64), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("result_jws", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("institution_id", "request_id", name="pk_evaluations"),
    )
    op.create_index("ix_evaluations_consent_id", "evaluations", ["consent_id"])
    # The daily budget counts a citizen's evaluations in a time window; the history lists them newest first.
    op.create_index("ix_evaluations_citizen_id_created_at", "evaluations", ["citizen_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_evaluations_citizen_id_created_at", table_name="evaluations")
    op.drop_index("ix_evaluations_consent_id", table_name="evaluations")
    op.drop_table("evaluations")
    op.drop_index("ix_consents_institution_id", table_name="consents")
    op.drop_index("ix_consents_citizen_id", table_name="consents")
    op.drop_table("consents")
    op.drop_table("institutions")
