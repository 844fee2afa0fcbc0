"""The gateway's store: SQLite (embedded default) or PostgreSQL, behind a few repositories.

Open it with :meth:`Store.open`; reach the data only through ``store.citizens``,
``store.records``, ``store.requests``, ``store.institutions`` and ``store.consents``. The schema is
managed by Alembic revisions shipped in ``migrations/`` (:func:`upgrade_schema`, :func:`check_schema`).
"""

from .db import check_schema, create_engine_for, sqlite_url, upgrade_schema
from .repositories import (
    CitizenKeys,
    CitizenRegistry,
    ConsentLedger,
    ConsentRow,
    EvaluationRow,
    Institution,
    InstitutionRegistry,
    RecordStore,
    RequestLedger,
    Store,
    StoredRecord,
)

__all__ = [
    "CitizenKeys",
    "CitizenRegistry",
    "ConsentLedger",
    "ConsentRow",
    "EvaluationRow",
    "Institution",
    "InstitutionRegistry",
    "RecordStore",
    "RequestLedger",
    "Store",
    "StoredRecord",
    "check_schema",
    "create_engine_for",
    "sqlite_url",
    "upgrade_schema",
]
