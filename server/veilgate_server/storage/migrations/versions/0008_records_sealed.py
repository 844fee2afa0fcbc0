"""Records: values sealed at rest under a data key per citizen, wrapped by the records key.

``records.value_json`` (the value in the clear) becomes ``records.value_sealed``, and each citizen's
wrapped data key goes in the new ``record_keys`` table (see :mod:`veilgate_server.crypto.records`).
Existing records are sealed in place, which needs the gateway's records key: ``upgrade_schema``
passes it as ``config.attributes["records_key"]``; without it, a database that holds records is
refused and left as it was. The downgrade opens them again with the same key.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op

from veilgate.errors import ConfigurationError
from veilgate_server.crypto.records import WRAPPED_DATA_KEY_LENGTH, CitizenDataKey, RecordsKey
from veilgate_server.storage.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 5000


def _records_key(action: str) -> RecordsKey:
    key = op.get_context().config.attributes.get("records_key")  # type: ignore[union-attr]
    if callable(key):  # made on first use: only now that it is needed
        key = key()
    if not isinstance(key, RecordsKey):
        raise ConfigurationError(
            f"the records must be {action} with the gateway's records key (keys/records.key): "
            "run `veilgate migrate` with the gateway's --data-dir"
        )
    return key


def _batches(connection: sa.Connection, value_column: str) -> Iterator[Sequence[Any]]:
    """Every record, in key order, ``_BATCH`` at a time (a keyset walk: bounded memory)."""
    last = ("", "")
    while True:
        rows = connection.execute(
            sa.text(
                f"SELECT citizen_id, item_id, department, as_of, {value_column} FROM records "  # noqa: S608
                "WHERE citizen_id > :c OR (citizen_id = :c AND item_id > :i) "
                "ORDER BY citizen_id, item_id LIMIT :n"
            ),
            {"c": last[0], "i": last[1], "n": _BATCH},
        ).all()
        if not rows:
            return
        yield rows
        last = (rows[-1][0], rows[-1][1])


def _iso(value: dt.date | str) -> str:
    return value if isinstance(value, str) else value.isoformat()


def upgrade() -> None:
    connection = op.get_bind()
    with _overwriting_what_is_deleted(connection):
        _upgrade(connection)


@contextmanager
def _overwriting_what_is_deleted(connection: sa.Connection) -> Iterator[None]:
    """On SQLite, the values in the clear are overwritten where they lay, not only unlinked:
    ``secure_delete`` for this migration whatever the build's default (Debian's is on; SQLite's own
    is off), then back to what it was. The file keeps its size (``VACUUM`` returns the pages)."""
    if connection.dialect.name != "sqlite":
        yield
        return
    previous = int(connection.exec_driver_sql("PRAGMA secure_delete").scalar_one())
    connection.exec_driver_sql("PRAGMA secure_delete = ON")
    try:
        yield
    finally:
        connection.exec_driver_sql(f"PRAGMA secure_delete = {previous}")


def _upgrade(connection: sa.Connection) -> None:
    op.create_table(
        "record_keys",
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("records_key_id", sa.String(16), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(WRAPPED_DATA_KEY_LENGTH), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            f"length(wrapped_key) = {WRAPPED_DATA_KEY_LENGTH}", name=op.f("ck_record_keys_wrapped_key_length")
        ),
        sa.PrimaryKeyConstraint("citizen_id", name=op.f("pk_record_keys")),
    )
    op.create_index(op.f("ix_record_keys_records_key_id"), "record_keys", ["records_key_id"])
    op.add_column("records", sa.Column("value_sealed", sa.LargeBinary(), nullable=True))
    if connection.execute(sa.text("SELECT 1 FROM records LIMIT 1")).first() is not None:
        _seal_all(connection, _records_key("sealed"))
    _keep_only("value_sealed", sa.LargeBinary(), dropping="value_json")


def _seal_all(connection: sa.Connection, records_key: RecordsKey) -> None:
    now = dt.datetime.now(dt.UTC)
    citizen, data_key = "", None
    for rows in _batches(connection, "value_json"):
        keys, sealed = [], []
        for citizen_id, item_id, department, as_of, value_json in rows:
            if data_key is None or citizen_id != citizen:
                citizen = citizen_id
                data_key, wrapped = records_key.new_data_key(citizen_id)
                keys.append({"c": citizen_id, "k": records_key.key_id, "w": wrapped, "t": now})
            value = data_key.seal(item_id, department, _iso(as_of), value_json)
            sealed.append({"c": citizen_id, "i": item_id, "v": value})
        if keys:
            connection.execute(
                sa.text(
                    "INSERT INTO record_keys (citizen_id, records_key_id, wrapped_key, created_at)"
                    " VALUES (:c, :k, :w, :t)"
                ).bindparams(sa.bindparam("t", type_=UTCDateTime())),
                keys,
            )
        connection.execute(
            sa.text("UPDATE records SET value_sealed = :v WHERE citizen_id = :c AND item_id = :i"), sealed
        )


def downgrade() -> None:
    connection = op.get_bind()
    op.add_column("records", sa.Column("value_json", sa.Text(), nullable=True))
    if connection.execute(sa.text("SELECT 1 FROM records LIMIT 1")).first() is not None:
        records_key = _records_key("opened")
        citizen, data_key = "", None
        for rows in _batches(connection, "value_sealed"):
            opened = []
            for citizen_id, item_id, department, as_of, value_sealed in rows:
                if data_key is None or citizen_id != citizen:
                    citizen, data_key = citizen_id, _data_key(connection, records_key, citizen_id)
                value = data_key.open(item_id, department, _iso(as_of), bytes(value_sealed))
                opened.append({"c": citizen_id, "i": item_id, "v": value})
            connection.execute(
                sa.text("UPDATE records SET value_json = :v WHERE citizen_id = :c AND item_id = :i"), opened
            )
    _keep_only("value_json", sa.Text(), dropping="value_sealed")
    op.drop_table("record_keys")


def _keep_only(kept: str, kept_type: sa.types.TypeEngine[Any], *, dropping: str) -> None:
    """Make ``records.<kept>`` NOT NULL and drop ``records.<dropping>``. SQLite can do neither in
    place, so there the table is rebuilt, clustered on its key as revision 0006 made it."""
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("records", kept, nullable=False)
        op.drop_column("records", dropping)
        return
    op.create_table(
        "records_rebuilt",
        sa.Column("citizen_id", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(96), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column(kept, kept_type, nullable=False),
        sa.PrimaryKeyConstraint("citizen_id", "item_id", name="pk_records"),
        sqlite_with_rowid=False,
    )
    columns = f"citizen_id, item_id, department, as_of, {kept}"
    op.execute(f"INSERT INTO records_rebuilt ({columns}) SELECT {columns} FROM records")  # noqa: S608
    op.drop_table("records")
    op.rename_table("records_rebuilt", "records")


def _data_key(connection: sa.Connection, records_key: RecordsKey, citizen_id: str) -> CitizenDataKey:
    wrapped = connection.execute(
        sa.text("SELECT wrapped_key FROM record_keys WHERE citizen_id = :c"), {"c": citizen_id}
    ).scalar_one()
    return records_key.unwrap(citizen_id, bytes(wrapped))
