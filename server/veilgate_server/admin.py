"""Operator operations shared by the CLI and the demo: seeding, enrollment, erasure."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection

from veilgate._internal import jose
from veilgate.errors import ConfigurationError, TokenError
from veilgate_server.audit import operator_entry
from veilgate_server.core.catalog import Catalog
from veilgate_server.seed import DEFAULT_AS_OF, generate_population
from veilgate_server.storage import AppendRequest, CitizenKeys, RecordStore, Store, StoredRecord
from veilgate_server.storage.repositories import check_citizen_id

__all__ = ["ERASE_RECORDS", "CitizenIdentity", "SeedSummary", "enroll", "erase_records", "seed_population"]


@dataclass(frozen=True, slots=True)
class SeedSummary:
    citizens: int
    records: int
    sample_ids: tuple[str, ...]


def seed_population(
    store: Store, catalog: Catalog, *, citizens: int, seed: int, as_of: date = DEFAULT_AS_OF
) -> SeedSummary:
    """Write a deterministic synthetic population (every catalog item for every citizen)."""
    if citizens < 1:
        raise ConfigurationError("--citizens must be at least 1")
    samples: list[str] = []

    def rows() -> Iterator[StoredRecord]:
        for person in generate_population(catalog, citizens=citizens, seed=seed, as_of=as_of):
            if len(samples) < 5:
                samples.append(person.citizen_id)
            for record in person.records:
                yield StoredRecord(
                    citizen_id=record.citizen_id,
                    item_id=record.item_id,
                    department=record.department,
                    as_of=record.as_of,
                    value_json=jose.canonical_json(record.value).decode(),
                )

    written = store.records.put_many(rows())
    return SeedSummary(citizens=citizens, records=written, sample_ids=tuple(samples))


ERASE_RECORDS = "veilgate erase"
"""The method of an erasure's log entry: an operator's command, not a call."""


def erase_records(
    store: Store, citizen_id: str, *, unlink_trail: bool = False, clock: Callable[[], float] = time.time
) -> tuple[int, int]:
    """Crypto-shred a citizen's records (:meth:`~veilgate_server.storage.RecordStore.erase_in`) in the
    transaction of the log entry that records it: the erasure and its entry commit together or not
    at all. Returns how many records were erased and the entry's index. An erasure of nothing is
    logged too: it was asked for.

    ``unlink_trail``: then also forget the citizen's log pseudonym key and subject index
    (:meth:`~veilgate_server.storage.log.AuditLog.erase_citizen`), this entry's included: the entries
    stay and the log still verifies, but nobody, the gateway included, can tell any more which were
    theirs (a wallet that kept the key still can). Done after the entry's commit; if it fails,
    running it again finishes it."""
    check_citizen_id(citizen_id)
    entry = operator_entry(store, action=ERASE_RECORDS, citizen_id=citizen_id, at=clock())
    erased = 0

    def resolve(connection: Connection) -> bytes:
        nonlocal erased
        erased = RecordStore.erase_in(connection, citizen_id)
        return entry

    [index] = store.log.append_batch([AppendRequest(resolve=resolve, subject_citizen_id=citizen_id)])
    if unlink_trail:
        store.log.erase_citizen(citizen_id)
    return erased, index


@dataclass(frozen=True, slots=True)
class CitizenIdentity:
    """A wallet's public half, as ``CitizenWallet.public_identity()`` writes it."""

    citizen_id: str
    signing_key: bytes
    encryption_key: bytes

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> CitizenIdentity:
        try:
            citizen_id, sign, enc = doc["citizen_id"], doc["signing_key"], doc["encryption_key"]
            if not (isinstance(citizen_id, str) and isinstance(sign, str) and isinstance(enc, str)):
                raise TypeError
            identity = cls(citizen_id, jose.b64url_decode(sign), jose.b64url_decode(enc))
        except (KeyError, TypeError, TokenError) as e:
            raise ConfigurationError("an identity needs citizen_id, signing_key and encryption_key (base64url)") from e
        if len(identity.signing_key) != 32 or len(identity.encryption_key) != 32:
            raise ConfigurationError("signing_key and encryption_key must each be 32 bytes")
        try:
            check_citizen_id(identity.citizen_id)
        except ValueError as e:
            raise ConfigurationError(str(e)) from e
        return identity


def enroll(store: Store, identity: CitizenIdentity, *, rotate: bool, at: datetime) -> CitizenKeys:
    """Register a citizen's public keys, or with ``rotate`` replace them (old tokens stop working)."""
    if rotate:
        return store.citizens.rotate_keys(
            identity.citizen_id,
            signing_key=identity.signing_key,
            encryption_key=identity.encryption_key,
            at=at,
        )
    return store.citizens.enroll(
        identity.citizen_id, signing_key=identity.signing_key, encryption_key=identity.encryption_key, at=at
    )
