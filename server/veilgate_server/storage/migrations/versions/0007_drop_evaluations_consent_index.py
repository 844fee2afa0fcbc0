"""Evaluations: no index by consent.

Nothing reads evaluations by consent id, yet every evaluation inserted an entry into that index,
on a leaf of its own (consent ids are random), written to the log writer's commit with the rest.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_evaluations_consent_id", table_name="evaluations")


def downgrade() -> None:
    op.create_index("ix_evaluations_consent_id", "evaluations", ["consent_id"])
