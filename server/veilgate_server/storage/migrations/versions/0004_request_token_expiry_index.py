"""Used request tokens: an index on (citizen_id, expires_at) for the purge of expired tokens.

Each consume purges the citizen's expired tokens. Without this index the purge read every live
token row of the citizen to test its expiry, so a citizen's calls slowed down with the number of
tokens they had spent in the last few minutes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_used_request_tokens_citizen_id_expires_at", "used_request_tokens", ["citizen_id", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_used_request_tokens_citizen_id_expires_at", table_name="used_request_tokens")
