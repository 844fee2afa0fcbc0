"""Consents: the citizen's key that verified the token at registration.

An Evaluate presents the consent token exactly as the citizen registered it. When the citizen's
enrolled key is still the one that verified those very bytes at registration, verifying them again
gives the same answer, so the gateway skips it (an Ed25519 verification on every evaluation). A
rotated key does not match, so rotating still retires the consents signed before. Consents
registered before this revision have no key recorded and are verified on every use, as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("consents", sa.Column("signing_key", sa.LargeBinary(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("consents") as batch:  # SQLite drops a column by rebuilding the table
        batch.drop_column("signing_key")
