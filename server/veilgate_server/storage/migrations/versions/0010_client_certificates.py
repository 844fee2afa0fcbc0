"""Client certificates on record: which certificates the gateway accepts from each institution and
department, so that a certificate can be renewed before it expires and revoked when its key leaks.

Until now each caller's row kept the serial of its latest certificate for the operator's records
only, and any certificate the client CA had signed for the caller's SPIFFE ID was let in. Now a
mutual-TLS call is accepted only with a certificate on record for its caller and not revoked.
The serials recorded so far become the callers' accepted certificates, so nothing that worked
before the upgrade stops working; their expiry was not kept, so theirs is unknown (``not_after``
null) until they are renewed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CALLERS = (("institutions", "institution_id", "institution"), ("departments", "department_id", "department"))


def upgrade() -> None:
    op.create_table(
        "client_certificates",
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("caller_kind", sa.String(16), nullable=False),
        sa.Column("caller_id", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("serial", name="pk_client_certificates"),
        sa.CheckConstraint(
            "caller_kind IN ('institution', 'department')", name="ck_client_certificates_caller_kind_known"
        ),
    )
    op.create_index("ix_client_certificates_caller", "client_certificates", ["caller_kind", "caller_id"])
    for table, id_column, kind in _CALLERS:
        op.execute(
            "INSERT INTO client_certificates (serial, caller_kind, caller_id, issued_at)"  # noqa: S608
            f" SELECT certificate_serial, '{kind}', {id_column}, registered_at FROM {table}"
            " WHERE certificate_serial IS NOT NULL"
        )
        with op.batch_alter_table(table) as batch:  # SQLite drops a column by rebuilding the table
            batch.drop_column("certificate_serial")


def downgrade() -> None:
    for table, id_column, kind in _CALLERS:
        op.add_column(table, sa.Column("certificate_serial", sa.String(64), nullable=True))
        op.execute(
            f"UPDATE {table} SET certificate_serial = (SELECT c.serial FROM client_certificates c"  # noqa: S608
            f" WHERE c.caller_kind = '{kind}' AND c.caller_id = {table}.{id_column}"
            " ORDER BY c.issued_at DESC, c.serial LIMIT 1)"
        )
    op.drop_index("ix_client_certificates_caller", table_name="client_certificates")
    op.drop_table("client_certificates")
