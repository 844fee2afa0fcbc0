"""Consents: a citizen's indexed in the order ListConsents lists them.

ListConsents now returns a citizen's consents a page at a time, newest registration first, from a
(registration time, consent id) position. With consents indexed by citizen alone, every page read
and sorted all of the citizen's consents; indexed by (citizen, registration time, id), a page reads
only its own rows. The new index serves every read by citizen the old one did, so the old one goes.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_consents_citizen_id_registered_at", "consents", ["citizen_id", "registered_at", "consent_id"])
    op.drop_index("ix_consents_citizen_id", table_name="consents")


def downgrade() -> None:
    op.create_index("ix_consents_citizen_id", "consents", ["citizen_id"])
    op.drop_index("ix_consents_citizen_id_registered_at", table_name="consents")
