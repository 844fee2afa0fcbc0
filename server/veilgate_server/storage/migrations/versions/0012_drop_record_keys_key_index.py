"""Data keys: no index by the records key that wraps them.

Revision 0008 indexed ``record_keys.records_key_id`` for a start-up check that has since gone: a
gateway now follows the records key the database names (revision 0011) and meets a data key under
another one when it opens it. Nothing else reads data keys by records key (a rotation rewraps them
all), yet every new citizen's data key added an entry to the index, and a rotation moved every
entry in it, in the transaction that holds every push of the gateway waiting.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_record_keys_records_key_id", table_name="record_keys")


def downgrade() -> None:
    op.create_index("ix_record_keys_records_key_id", "record_keys", ["records_key_id"])
