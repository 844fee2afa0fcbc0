"""The departments' side of the SDK: pushing records to the gateway over mutual TLS.

    with DepartmentClient("gateway.example:7444",   # the mutual-TLS port
                          certificate_chain=cert_pem, private_key=key_pem, root_certificates=ca_pem) as gw:
        receipt = gw.push([Record("citizen-42", "social_insurance.pension_status", "2026-11-01", "receiving")])
        for receipt in gw.push_many(all_records):   # batches of up to 1000, one receipt each
            ...

The department is identified by its client certificate (issued by the gateway operator); it may
push only the items the gateway's catalog says it owns. Values travel as JSON in the catalog's wire
contract: an ``int`` item a Python ``int``, a ``decimal`` a string such as ``"1234.50"`` (or a
:class:`~decimal.Decimal`), a ``date`` a string ``"YYYY-MM-DD"`` (or a :class:`~datetime.date`), a
``records`` item a list of dicts.

A push is one transaction on the gateway: all of its records are stored, or none. Pushing the same
records again is harmless (the gateway keeps, per citizen and item, the record with the latest
``as_of``), so a push that failed as unavailable is retried, and :meth:`DepartmentClient.push_many`
can be run again from the start after any failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from types import TracebackType
from typing import Final

import grpc

from veilgate._internal.pem import require_certificate, require_private_key
from veilgate._internal.status import call_retrying
from veilgate.audit import sha256_b64
from veilgate.errors import RecordValueInvalid, RequestTooLarge
from veilgate.v1 import ingest_pb2, ingest_pb2_grpc

__all__ = ["MAX_PUSH_BYTES", "MAX_PUSH_RECORDS", "DepartmentClient", "PushReceipt", "Record"]

MAX_PUSH_RECORDS: Final = 1000
"""Records in one push at most (the gateway's limit)."""
MAX_PUSH_BYTES: Final = 1024 * 1024
"""A push request's size at most (the gateway's limit)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One value a department holds about a citizen, as of a date."""

    citizen_id: str
    item_id: str
    as_of: date | str
    value: object


@dataclass(frozen=True, slots=True)
class PushReceipt:
    """What one push did. ``stale`` holds the indexes (into the records of this push) that the
    gateway did not apply because it holds a newer ``as_of`` for their citizen and item.
    ``log_index`` is the push's entry in the audit log, whose ``request`` member equals
    ``request_hash`` (salted, so that the public entry tells nobody else anything about the
    values); ``first`` is the index of this push's first record among all that were passed to
    :meth:`DepartmentClient.push_many` (0 for :meth:`DepartmentClient.push`)."""

    stored: int
    stale: tuple[int, ...]
    log_index: int
    request_hash: str
    first: int = 0


def _json_default(value: object) -> object:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


# Canonical, as the gateway stores it (checked fastest there); one encoder for every record.
_VALUE_JSON = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), default=_json_default
)


def _pushed(record: Record, index: int) -> ingest_pb2.PushedRecord:
    try:
        value_json = _VALUE_JSON.encode(record.value)
    except (TypeError, ValueError) as e:  # the message names the type, never the value
        raise RecordValueInvalid(f"record {index} ({record.item_id}): the value is not JSON ({e})") from None
    as_of = record.as_of.isoformat() if isinstance(record.as_of, date) else record.as_of
    return ingest_pb2.PushedRecord(
        citizen_id=record.citizen_id, item_id=record.item_id, as_of=as_of, value_json=value_json
    )


class DepartmentClient:
    """A department's mutual-TLS connection to one gateway."""

    def __init__(
        self,
        target: str,
        *,
        certificate_chain: bytes,
        private_key: bytes,
        root_certificates: bytes,
        timeout: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        require_certificate(root_certificates, "root_certificates (the gateway's CA)")
        require_certificate(certificate_chain, "certificate_chain (the department's certificate)")
        require_private_key(private_key, "private_key (the department's key)")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
        )
        self._channel = grpc.secure_channel(
            target, credentials, options=[("grpc.max_send_message_length", MAX_PUSH_BYTES)]
        )
        self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
        self._timeout = timeout
        self._attempts = max(1, max_attempts)

    def __enter__(self) -> DepartmentClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; a call after it raises :class:`~veilgate.errors.ConfigurationError`."""
        self._channel.close()

    def push(self, records: Sequence[Record]) -> PushReceipt:
        """Push up to :data:`MAX_PUSH_RECORDS` records (at most :data:`MAX_PUSH_BYTES` in all) as
        one transaction: all stored, or none and an error that names the first record refused, by
        its index in ``records``. An unavailable gateway is retried with backoff."""
        request = ingest_pb2.PushRecordsRequest(records=[_pushed(r, i) for i, r in enumerate(records)])
        if len(request.records) > MAX_PUSH_RECORDS:
            raise RequestTooLarge(f"a push holds at most {MAX_PUSH_RECORDS} records; use push_many for more")
        if request.ByteSize() > MAX_PUSH_BYTES:
            raise RequestTooLarge(f"a push is at most {MAX_PUSH_BYTES} bytes; use push_many to split it")
        return self._send(request, first=0)

    def push_many(self, records: Iterable[Record], *, batch_size: int = MAX_PUSH_RECORDS) -> Iterator[PushReceipt]:
        """Push any number of records in batches of at most ``batch_size`` records and
        :data:`MAX_PUSH_BYTES`, one receipt per batch as it is stored. On an error, the batches
        before it are stored (their receipts were yielded) and none after it was sent; the error's
        message names the record by its index within its batch, which starts at the ``first`` of
        the receipt that would have come next."""
        if not 1 <= batch_size <= MAX_PUSH_RECORDS:
            raise ValueError(f"batch_size must be 1 to {MAX_PUSH_RECORDS}")
        batch: list[ingest_pb2.PushedRecord] = []
        size = first = 0
        for index, record in enumerate(records):
            pushed = _pushed(record, index)
            grows = pushed.ByteSize() + 8  # the record's field tag and length prefix, generously
            if batch and (len(batch) == batch_size or size + grows > MAX_PUSH_BYTES):
                yield self._send(ingest_pb2.PushRecordsRequest(records=batch), first=first)
                first, batch, size = index, [], 0
            batch.append(pushed)
            size += grows
        if batch:
            yield self._send(ingest_pb2.PushRecordsRequest(records=batch), first=first)

    def _send(self, request: ingest_pb2.PushRecordsRequest, *, first: int) -> PushReceipt:
        # Pushing again is harmless: the newest date wins.
        reply = call_retrying(self._stub.PushRecords, request, timeout=self._timeout, attempts=self._attempts)
        return PushReceipt(
            stored=reply.stored,
            stale=tuple(reply.stale),
            log_index=reply.log_index,
            request_hash=sha256_b64(reply.request_salt + request.SerializeToString(deterministic=True)),
            first=first,
        )
