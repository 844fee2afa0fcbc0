"""Alembic environment for the gateway's store.

Used programmatically only (there is no ``alembic.ini``): :func:`veilgate_server.storage.db.upgrade_schema`
builds the Alembic ``Config`` in code and hands over an open connection, already inside the
transaction it wants the migration to run in, as ``config.attributes["connection"]``.

To write a new revision, create ``versions/NNNN_<what>.py`` from ``script.py.mako`` by hand, or run
Alembic's ``revision --autogenerate`` from a small script that builds the same ``Config`` and
connection; ``target_metadata`` below lets autogenerate compare against the models.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from veilgate_server.storage.models import Base


def _run_online(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rewrites the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    # Inside the caller's transaction this opens none of its own; upgrade_schema commits.
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("Veilgate migrations run online only, on a connection from upgrade_schema()")
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "Veilgate migrations need an open connection in config.attributes['connection']; "
            "use veilgate_server.storage.db.upgrade_schema()"
        )
    _run_online(connection)


_main()
