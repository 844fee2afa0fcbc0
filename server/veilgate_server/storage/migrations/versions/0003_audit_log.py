"""The audit log: entries, subtree hashes, checkpoints, its head, and the private subject index.

Revision ID: 0003
Revises: 0002
Create Date: 2025-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT on PostgreSQL; INTEGER PRIMARY KEY on SQLite, i.e. an alias of the rowid.
_LOG_INDEX = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    log_head = op.create_table(
        "log_head",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_log_head_single_row"),
        sa.CheckConstraint("tree_size >= 0", name="ck_log_head_tree_size_not_negative"),
        sa.PrimaryKeyConstraint("id", name="pk_log_head"),
    )
    # The one head row every appender locks; the log starts empty.
    op.bulk_insert(log_head, [{"id": 1, "tree_size": 0}])
    op.create_table(
        "log_entries",
        sa.Column("idx", _LOG_INDEX, autoincrement=False, nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("idx >= 0", name="ck_log_entries_idx_not_negative"),
        sa.CheckConstraint("length(leaf_hash) = 32", name="ck_log_entries_leaf_hash_length"),
        sa.PrimaryKeyConstraint("idx", name="pk_log_entries"),
    )
    op.create_table(
        "log_subtrees",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.CheckConstraint("level >= 1 AND level <= 63", name="ck_log_subtrees_level_range"),
        sa.CheckConstraint("idx >= 0", name="ck_log_subtrees_idx_not_negative"),
        sa.CheckConstraint("length(hash) = 32", name="ck_log_subtrees_hash_length"),
        sa.PrimaryKeyConstraint("level", "idx", name="pk_log_subtrees"),
    )
    op.create_table(
        "log_checkpoints",
        sa.Column("tree_size", _LOG_INDEX, autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("tree_size >= 0", name="ck_log_checkpoints_tree_size_not_negative"),
        sa.CheckConstraint("length(root_hash) = 32", name="ck_log_checkpoints_root_hash_length"),
        sa.PrimaryKeyConstraint("tree_size", name="pk_log_checkpoints"),
    )
    op.create_table(
        "log_subjects",
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("citizen_id", "idx", name="pk_log_subjects"),
    )
    op.create_table(
        "citizen_log_keys",
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("key", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("length(key) = 32", name="ck_citizen_log_keys_key_length"),
        sa.PrimaryKeyConstraint("citizen_id", name="pk_citizen_log_keys"),
    )


def downgrade() -> None:
    op.drop_table("citizen_log_keys")
    op.drop_table("log_subjects")
    op.drop_table("log_checkpoints")
    op.drop_table("log_subtrees")
    op.drop_table("log_entries")
    op.drop_table("log_head")
