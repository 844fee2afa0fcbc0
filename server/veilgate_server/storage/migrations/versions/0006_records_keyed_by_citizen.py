"""Records: keyed by (citizen_id, item_id), and on SQLite clustered on that key.

A record was reached through its unique (citizen_id, item_id) index and then looked up by its
surrogate id, which nothing else used. The pair is now the primary key. On SQLite the table is
rebuilt ``WITHOUT ROWID``, so a citizen's records lie together in key order and a read scans them
in place: a delivery's 188 records read in 114 instead of 159 µs (measured in a loop). On
PostgreSQL the primary key takes the unique index's place; the heap is unchanged.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = "citizen_id, item_id, department, as_of, value_json"


def _data_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(96), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("value_json", sa.Text(), nullable=False),
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.create_table(
            "records_keyed",
            *_data_columns(),
            sa.PrimaryKeyConstraint("citizen_id", "item_id", name="pk_records"),
            sqlite_with_rowid=False,
        )
        op.execute(f"INSERT INTO records_keyed ({_COLUMNS}) SELECT {_COLUMNS} FROM records")  # noqa: S608
        op.drop_table("records")
        op.rename_table("records_keyed", "records")
        return
    op.drop_constraint("pk_records", "records", type_="primary")
    op.drop_column("records", "id")
    op.drop_constraint("uq_records_citizen_id_item_id", "records", type_="unique")
    op.create_primary_key("pk_records", "records", ["citizen_id", "item_id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.create_table(
            "records_by_id",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            *_data_columns(),
            sa.PrimaryKeyConstraint("id", name="pk_records"),
            sa.UniqueConstraint("citizen_id", "item_id", name="uq_records_citizen_id_item_id"),
        )
        op.execute(f"INSERT INTO records_by_id ({_COLUMNS}) SELECT {_COLUMNS} FROM records")  # noqa: S608
        op.drop_table("records")
        op.rename_table("records_by_id", "records")
        return
    op.drop_constraint("pk_records", "records", type_="primary")
    op.create_unique_constraint("uq_records_citizen_id_item_id", "records", ["citizen_id", "item_id"])
    op.execute("ALTER TABLE records ADD COLUMN id BIGSERIAL")
    op.create_primary_key("pk_records", "records", ["id"])
