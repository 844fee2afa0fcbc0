"""Departments: the data sources the operator lets push records through IngestService.

A department authenticates with a client certificate naming ``spiffe://<domain>/department/<id>``;
this table says whether the operator registered it and has not disabled it, as ``institutions``
does for banks and insurers. What it may push is the catalog's business, not this table's.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "departments",
        sa.Column("department_id", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("certificate_serial", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("department_id", name="pk_departments"),
    )


def downgrade() -> None:
    op.drop_table("departments")
