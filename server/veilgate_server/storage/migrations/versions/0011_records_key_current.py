"""The current records key, named in the database, so that a rotation cannot strand a data key.

A records key rotation rewraps every citizen's data key under the new key in one transaction and
then destroys the old key. Until now, a gateway started before the rotation still held the old key
and, pushing the first record of a new citizen after the rewrap, wrapped that citizen's data key
under it: once the old key file was gone, nothing of theirs opened again. The database now names
the key new data keys are wrapped by, and a gateway reads it in the transaction that stores one.

The row is filled from the data keys stored so far (the key most of them are under; all of them,
unless an earlier rotation raced a push as above). A database with no data key yet gets its row
from the first one stored.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "records_key_current",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_records_key_current"),
        sa.CheckConstraint("id = 1", name="ck_records_key_current_one_row"),
    )
    op.execute(
        "INSERT INTO records_key_current (id, key_id, changed_at)"
        " SELECT 1, records_key_id, max(created_at) FROM record_keys"
        " GROUP BY records_key_id ORDER BY count(*) DESC, records_key_id LIMIT 1"
    )


def downgrade() -> None:
    op.drop_table("records_key_current")
