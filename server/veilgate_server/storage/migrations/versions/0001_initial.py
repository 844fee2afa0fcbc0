"""Initial schema: citizens, records, used request tokens.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "citizens",
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("signing_key", sa.LargeBinary(32), nullable=False),
        sa.Column("encryption_key", sa.LargeBinary(32), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("keys_updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("length(signing_key) = 32", name="ck_citizens_signing_key_length"),
        sa.CheckConstraint("length(encryption_key) = 32", name="ck_citizens_encryption_key_length"),
        sa.CheckConstraint("key_version >= 1", name="ck_citizens_key_version_positive"),
        sa.PrimaryKeyConstraint("citizen_id", name="pk_citizens"),
    )
    op.create_table(
        "records",
        # BIGINT on PostgreSQL; INTEGER PRIMARY KEY on SQLite, i.e. an alias of the rowid.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(96), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("value_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_records"),
        # Also the index for lookups by citizen (leading column).
        sa.UniqueConstraint("citizen_id", "item_id", name="uq_records_citizen_id_item_id"),
    )
    op.create_table(
        "used_request_tokens",
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("jti", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("citizen_id", "jti", name="pk_used_request_tokens"),
    )


def downgrade() -> None:
    op.drop_table("used_request_tokens")
    op.drop_table("records")
    op.drop_table("citizens")
