"""IngestService over real mutual TLS, on every storage backend: departments push records that
citizens then fetch, every push is logged before its reply, and no pushed value reaches a log, an
entry or an institution."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta

import grpc
import pytest
from conftest import DepartmentCredentials, GatewayHarness, InstitutionCredentials
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from veilgate import CitizenWallet, Record
from veilgate.audit import parse_entry, sha256_b64
from veilgate.errors import (
    CertificateNotAccepted,
    ClientCertificateRequired,
    DepartmentDisabled,
    DepartmentNotRegistered,
    ItemNotOwned,
    PeerIdentityInvalid,
    ProofInvalid,
    RecordValueInvalid,
    RequestTooLarge,
)
from veilgate.v1 import ingest_pb2, ingest_pb2_grpc
from veilgate_server.gateway import PUSH_RECORDS
from veilgate_server.rpc.server import MAX_PUSH_BYTES

SI = "social_insurance"
EMPLOYER = "social_insurance.current_employer"
MONTHS = "social_insurance.cumulative_contribution_months"
INCOME = "taxation.annual_income_last_year"
LOAN = "credit.consumer_loan"
HISTORY = "social_insurance.pension_contribution_history"


def _history(months: int) -> list[dict[str, object]]:
    """A pension history of ``months`` paid months: about 110 bytes of JSON a month."""
    row = {"contribution_base": "8000.00", "personal_amount": "640.00", "employer_amount": "1280.00", "paid": True}
    return [{"month": f"{2000 + m // 12}-{m % 12 + 1:02d}-01", **row} for m in range(months)]


def _today(gw: GatewayHarness) -> date:
    return datetime.fromtimestamp(gw.clock.now, UTC).date()


def _entries(gw: GatewayHarness) -> list[bytes]:
    with gw.audit() as audit:
        size = audit.checkpoint(min_tree_size=gw.store.log.tree_size()).tree_size
        return [raw for _, raw in audit.entries(0, size)]


def _stored(gw: GatewayHarness, citizen: str, item: str) -> tuple[date, object] | None:
    found = gw.store.records.for_citizen(citizen, [item])
    return (found[0].as_of, json.loads(found[0].value_json)) if found else None


def test_a_pushed_record_reaches_the_citizen_sealed_and_the_push_is_proven_in_the_log(
    gateway_harness: GatewayHarness,
) -> None:
    gw = gateway_harness
    citizen = gw.citizen_ids[0]
    department = gw.register_department(SI)
    today = _today(gw)
    with gw.department_client(department) as client:
        receipt = client.push(
            [Record(citizen, EMPLOYER, today, "Jinan Steel Works"), Record("not-yet-enrolled", MONTHS, today, 7)]
        )
    assert (receipt.stored, receipt.stale) == (2, ())
    wallet = gw.enroll(citizen)
    with gw.client(wallet) as citizen_client:
        [item] = citizen_client.get_my_data(items=[EMPLOYER]).items
    assert (item.value, item.as_of, item.department) == ("Jinan Steel Works", today, SI)
    assert _stored(gw, "not-yet-enrolled", MONTHS) == (today, 7)
    with gw.audit() as audit:
        entry, _ = audit.verify_push(receipt)
        assert (entry.method, entry.caller_kind, entry.caller_id, entry.code) == (PUSH_RECORDS, "department", SI, "OK")
        assert entry.subject_tag is None  # a push is about many citizens: no subject
        forged = type(receipt)(receipt.stored, receipt.stale, receipt.log_index, sha256_b64(b"another push"))
        with pytest.raises(ProofInvalid):
            audit.verify_push(forged)


def test_the_request_hash_is_salted_so_the_public_entry_cannot_confirm_a_guess(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    department = gw.register_department(SI)
    request = ingest_pb2.PushRecordsRequest(
        records=[ingest_pb2.PushedRecord(citizen_id="c-9", item_id=MONTHS, as_of="2026-11-01", value_json="12")]
    )
    with gw.department_client(department) as client:
        first, second = client._stub.PushRecords(request), client._stub.PushRecords(request)
    assert first.request_salt != second.request_salt
    assert len(first.request_salt) == 32
    raw = request.SerializeToString(deterministic=True)
    entries = [parse_entry(e) for e in _entries(gw)]
    logged = {entries[first.log_index].request, entries[second.log_index].request}
    assert logged == {sha256_b64(first.request_salt + raw), sha256_b64(second.request_salt + raw)}
    assert sha256_b64(raw) not in {e.request for e in entries}


def test_an_older_push_does_not_undo_a_newer_one(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    department = gw.register_department(SI)
    today = _today(gw)
    with gw.department_client(department) as client:
        client.push([Record("c-1", MONTHS, today, 12)])
        late = client.push([Record("c-2", MONTHS, today, 3), Record("c-1", MONTHS, today - timedelta(days=30), 11)])
    assert (late.stored, late.stale) == (1, (1,))
    assert _stored(gw, "c-1", MONTHS) == (today, 12)


def test_a_refused_push_stores_nothing_and_says_which_record_and_why(
    gateway_harness: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway_harness
    department = gw.register_department(SI)
    today = _today(gw)
    size = gw.store.log.tree_size()
    with gw.department_client(department) as client:
        with pytest.raises(ItemNotOwned, match=r"record 1 \(taxation.annual_income_last_year\)"):
            client.push([Record("c-1", MONTHS, today, 12), Record("c-1", INCOME, today, "1.00")])
        with pytest.raises(
            RecordValueInvalid,
            match=r"^record 0 \(social_insurance.cumulative_contribution_months\): expected an integer$",
        ) as bad:
            client.push([Record("c-1", MONTHS, today, "twelve-CANARY-5e1f")])
    assert "CANARY" not in str(bad.value)
    assert _stored(gw, "c-1", MONTHS) is None
    entries = [parse_entry(e) for e in _entries(gw)[size:]]
    assert [(e.caller_id, e.code, e.reason) for e in entries] == [
        (SI, "PERMISSION_DENIED", "ITEM_NOT_OWNED"),
        (SI, "INVALID_ARGUMENT", "RECORD_VALUE_INVALID"),
    ]


def test_only_registered_enabled_departments_push(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    record = [Record("c-1", MONTHS, _today(gw), 1)]
    cert, key, _ = gw.institution_ca.issue_client_certificate(SI, kind="department", now=datetime.now(UTC))
    with gw.department_client(DepartmentCredentials(SI, cert, key)) as client, pytest.raises(DepartmentNotRegistered):
        client.push(record)
    department = gw.register_department(SI)
    gw.store.departments.set_enabled(SI, False)
    with gw.department_client(department) as client:
        with pytest.raises(DepartmentDisabled):
            client.push(record)
        gw.store.departments.set_enabled(SI, True)
        assert client.push(record).stored == 1
        # A certificate the operator revoked (its key leaked, say) is refused at the next push.
        [certificate] = gw.store.certificates.list("department", SI)
        gw.store.certificates.revoke("department", SI, certificate.serial, at=datetime.now(UTC))
        with pytest.raises(CertificateNotAccepted):
            client.push(record)
    # So is one the client CA signed that the operator never put on record.
    cert, key, _ = gw.institution_ca.issue_client_certificate(SI, kind="department", now=datetime.now(UTC))
    with gw.department_client(DepartmentCredentials(SI, cert, key)) as client, pytest.raises(CertificateNotAccepted):
        client.push(record)


def test_an_institution_cannot_push_and_a_department_cannot_evaluate(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    bank = gw.register_institution("bank-a", "bank")
    department = gw.register_department(SI)
    as_department = DepartmentCredentials("bank-a", bank.certificate_pem, bank.private_key_pem)
    with gw.department_client(as_department) as client, pytest.raises(PeerIdentityInvalid, match="for departments"):
        client.push([Record("c-1", MONTHS, _today(gw), 1)])
    as_institution = InstitutionCredentials(SI, department.certificate_pem, department.private_key_pem)
    with gw.institution_client(as_institution) as client, pytest.raises(PeerIdentityInvalid, match="institutions"):
        client.list_policies()
    no_certificate = grpc.ssl_channel_credentials(gw.ca_pem)
    with grpc.secure_channel(gw.target, no_certificate) as channel, pytest.raises(grpc.RpcError) as info:
        ingest_pb2_grpc.IngestServiceStub(channel).PushRecords(ingest_pb2.PushRecordsRequest(), timeout=10)
    assert _reason(info.value) == ClientCertificateRequired.reason


def test_a_push_over_the_size_limit_is_refused_and_logged(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    department = gw.register_department(SI)
    records = [Record(f"c-{i}", HISTORY, _today(gw), _history(10)) for i in range(1000)]  # over 1 MiB
    value = json.dumps(_history(10))
    with gw.department_client(department) as client:
        with pytest.raises(RequestTooLarge):  # the SDK's own check, before sending
            client.push(records)
        request = ingest_pb2.PushRecordsRequest(
            records=[ingest_pb2.PushedRecord(citizen_id="c", item_id=HISTORY, as_of="2026-11-01", value_json=value)]
            * 1000
        )
        assert request.ByteSize() > MAX_PUSH_BYTES
    credentials = grpc.ssl_channel_credentials(gw.ca_pem, department.private_key_pem, department.certificate_pem)
    with grpc.secure_channel(gw.mtls_target, credentials) as channel, pytest.raises(grpc.RpcError) as info:
        ingest_pb2_grpc.IngestServiceStub(channel).PushRecords(request, timeout=10)  # without the SDK's own check
    assert _reason(info.value) == "REQUEST_TOO_LARGE"
    last = parse_entry(_entries(gw)[-1])
    assert (last.method, last.reason) == (PUSH_RECORDS, "REQUEST_TOO_LARGE")


def test_push_many_splits_into_batches_under_both_limits(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    department = gw.register_department(SI)
    today = _today(gw)
    records = [Record(f"c-{i}", MONTHS, today, i) for i in range(2500)]
    records += [Record(f"big-{i}", HISTORY, today, _history(10)) for i in range(1500)]
    with gw.department_client(department) as client:
        receipts = list(client.push_many(records))
    firsts = [r.first for r in receipts]
    assert firsts[:4] == [0, 1000, 2000, 3000]  # at most 1000 records a push
    assert firsts[4] < 4000  # ... and at most 1 MiB: 1000 large records (1.3 MiB) would be more
    assert sum(r.stored for r in receipts) == len(records)
    assert _stored(gw, "c-2499", MONTHS) == (today, 2499)
    assert _stored(gw, "big-1499", HISTORY) == (today, _history(10))


def test_a_pushed_canary_reaches_the_citizen_only(
    gateway_harness: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A unique value pushed by a department appears in no log line, no audit entry, no byte of the
    push's reply and no byte an institution receives; the citizen reads it."""
    caplog.set_level(logging.DEBUG)
    gw = gateway_harness
    citizen = gw.citizen_ids[0]
    canary_income = "97531.8642"  # far above every income threshold, and found nowhere else
    canary_employer = "CANARY-employer-3c9d"
    taxation, social = gw.register_department("taxation"), gw.register_department(SI)
    today = _today(gw)
    request_bytes: list[bytes] = []
    reply_bytes: list[bytes] = []
    for credentials, record in (
        (taxation, Record(citizen, INCOME, today, canary_income)),
        (social, Record(citizen, EMPLOYER, today, canary_employer)),
    ):
        request = ingest_pb2.PushRecordsRequest(
            records=[
                ingest_pb2.PushedRecord(
                    citizen_id=citizen,
                    item_id=record.item_id,
                    as_of=today.isoformat(),
                    value_json=json.dumps(record.value),
                )
            ]
        )
        with gw.department_client(credentials) as client:
            reply = client._stub.PushRecords(request, timeout=10)
        request_bytes.append(request.SerializeToString())
        reply_bytes.append(reply.SerializeToString())
    wallet: CitizenWallet = gw.enroll(citizen)
    bank = gw.register_institution("bank-a", "bank")
    with gw.client(wallet) as citizen_client:
        values = {i.id: i.value for i in citizen_client.get_my_data(items=[INCOME, EMPLOYER]).items}
        token, _ = citizen_client.grant_consent(institution_id="bank-a", purpose=LOAN, policies=[gw.pin(LOAN)])
    assert values == {INCOME: canary_income, EMPLOYER: canary_employer}
    with gw.institution_client(bank) as institution:
        result = institution.evaluate(LOAN, token, {"requested_amount_band": "up_to_50k"})
    seen_by_institution = result.signed_result.encode()
    log_bytes = b"".join(_entries(gw))
    for secret in (canary_income, canary_employer):
        assert any(secret.encode() in raw for raw in request_bytes)  # it was sent in the clear, inside TLS
        assert secret.encode() not in log_bytes
        assert secret.encode() not in b"".join(reply_bytes)
        assert secret.encode() not in seen_by_institution
        assert secret not in caplog.text
    assert citizen not in caplog.text
    assert "PushRecords -> OK" in caplog.text  # the access log did run
    with gw.store.engine.connect() as connection:  # sealed at rest
        rows = connection.exec_driver_sql("SELECT value_sealed FROM records").fetchall()
    assert not any(canary_employer.encode() in bytes(row[0]) for row in rows)


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.reason
