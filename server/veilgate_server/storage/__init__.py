"""The gateway's store: SQLite (embedded default) or PostgreSQL, behind a few repositories.

Open it with :meth:`Store.open`; reach the data only through ``store.citizens``,
``store.records``, ``store.requests``, ``store.institutions``, ``store.departments``,
``store.consents`` and ``store.log`` (the audit log; :class:`LogWriter` puts group commit in front of it). The schema is
managed by Alembic revisions shipped in ``migrations/`` (:func:`upgrade_schema`, :func:`check_schema`).
"""

from ._session import StateChange
from .db import check_schema, create_engine_for, sqlite_url, upgrade_schema
from .log import (
    AppendRequest,
    AuditLog,
    CheckpointConflict,
    CheckpointSuperseded,
    LogEntry,
    LogWriter,
    StoredCheckpoint,
    StoreHealth,
    WriterStats,
)
from .repositories import (
    CitizenKeys,
    CitizenRegistry,
    ConsentLedger,
    ConsentPosition,
    ConsentRow,
    Department,
    DepartmentRegistry,
    EvaluationPosition,
    EvaluationRow,
    Institution,
    InstitutionRegistry,
    RecordStore,
    RegisteredConsent,
    RequestLedger,
    SealedPush,
    Store,
    StoredRecord,
)

__all__ = [
    "AppendRequest",
    "AuditLog",
    "CheckpointConflict",
    "CheckpointSuperseded",
    "CitizenKeys",
    "CitizenRegistry",
    "ConsentLedger",
    "ConsentPosition",
    "ConsentRow",
    "Department",
    "DepartmentRegistry",
    "EvaluationPosition",
    "EvaluationRow",
    "Institution",
    "InstitutionRegistry",
    "LogEntry",
    "LogWriter",
    "RecordStore",
    "RegisteredConsent",
    "RequestLedger",
    "SealedPush",
    "StateChange",
    "Store",
    "StoreHealth",
    "StoredCheckpoint",
    "StoredRecord",
    "WriterStats",
    "check_schema",
    "create_engine_for",
    "sqlite_url",
    "upgrade_schema",
]
