"""The audit trail over real TLS and mTLS, on every storage backend: every call is logged before its
reply leaves, receipts verify, citizens see their trail, and nothing personal reaches the log."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import GatewayHarness
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import text

from veilgate import AuditClient, CitizenWallet
from veilgate.audit import parse_entry, sha256_b64, subject_tag
from veilgate.citizen import GET_MY_DATA
from veilgate.errors import ProofInvalid, RequestTooLarge, StorageError
from veilgate.v1 import audit_pb2, audit_pb2_grpc, citizen_pb2, citizen_pb2_grpc, eligibility_pb2, eligibility_pb2_grpc
from veilgate_server.admin import erase_records
from veilgate_server.rpc.errors import status_name
from veilgate_server.rpc.server import MAX_MESSAGE_BYTES, TRANSPORT_LIMIT_BYTES
from veilgate_server.storage import StoredRecord

LOAN = "credit.consumer_loan"
LIST_MY_ACCESS_HISTORY = GET_MY_DATA.replace("GetMyData", "ListMyAccessHistory")


def _all_entries(gw: GatewayHarness, audit: AuditClient) -> list[tuple[int, bytes]]:
    """Every entry appended so far, under a signed checkpoint that covers them all."""
    size = audit.checkpoint(min_tree_size=gw.store.log.tree_size()).tree_size
    out: list[tuple[int, bytes]] = []
    while len(out) < size:
        out += audit.entries(len(out), min(256, size - len(out)))
    return out


def test_every_call_allowed_or_denied_is_logged_with_its_outcome(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    wallet = gw.enroll(gw.citizen_ids[0])
    with gw.client(wallet) as citizen:
        citizen.get_my_data(items=[])
    with gw.channel() as channel:
        stub = citizen_pb2_grpc.CitizenServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.GetMyData(citizen_pb2.GetMyDataRequest(request_token="forged"), timeout=5)
        # An institution service reached without a client certificate: refused, and logged.
        with pytest.raises(grpc.RpcError):
            eligibility_pb2_grpc.EligibilityServiceStub(channel).ListPolicies(
                eligibility_pb2.ListPoliciesRequest(), timeout=5
            )
        # Audit reads are not logged (see the proto): the log does not grow by being read.
        audit_stub = audit_pb2_grpc.AuditServiceStub(channel)
        audit_stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=5)
    with gw.audit() as audit:
        entries = [parse_entry(raw) for _, raw in _all_entries(gw, audit)]
    summary = [(e.method.rsplit("/", 1)[-1], e.code, e.reason, e.caller_kind) for e in entries]
    assert summary == [
        ("GetGatewayInfo", "OK", "", "public"),
        ("GetMyData", "OK", "", "citizen"),
        ("GetMyData", "UNAUTHENTICATED", "TOKEN_INVALID", "public"),
        ("ListPolicies", "UNAUTHENTICATED", "CLIENT_CERTIFICATE_REQUIRED", "public"),
    ]
    delivery_entry = entries[1]
    assert delivery_entry.watermark is not None
    assert delivery_entry.watermark.startswith("wm_")
    assert delivery_entry.subject_tag is not None
    assert entries[2].subject_tag is None  # an unverified claim names nobody


def test_receipts_prove_a_reply_was_logged(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    citizen_id = gw.citizen_ids[0]
    wallet = gw.enroll(citizen_id)
    bank = gw.register_institution("bank-a", "bank")
    with gw.client(wallet) as citizen:
        delivery = citizen.get_my_data()
        token, _ = citizen.grant_consent(
            institution_id="bank-a", purpose="credit.consumer_loan", policies=[gw.pin(LOAN)], max_uses=2
        )
    with gw.institution_client(bank) as institution:
        result = institution.evaluate(LOAN, token, {"requested_amount_band": "up_to_50k"})
    assert delivery.log_index is not None
    assert delivery.sealed is not None
    assert result.log_index is not None
    with gw.audit() as audit:
        entry, checkpoint = audit.verify_receipt(delivery.log_index, delivery.sealed)
        assert entry.watermark == delivery.watermark
        evaluated, _ = audit.verify_receipt(result.log_index, result.signed_result.encode())
        assert (evaluated.caller_kind, evaluated.caller_id) == ("institution", "bank-a")
        assert (evaluated.policy_id, evaluated.consent, evaluated.decision) == (
            LOAN,
            result.consent_id,
            result.decision,
        )
        # A receipt for another reply does not verify.
        with pytest.raises(ProofInvalid):
            audit.verify_receipt(delivery.log_index, result.signed_result.encode())
        # Later checkpoints extend earlier ones.
        with gw.client(wallet) as citizen:
            citizen.list_consents()
        newer = audit.checkpoint(min_tree_size=checkpoint.tree_size + 1)
        audit.prove_consistency(checkpoint, newer)
        assert newer.origin == "veilgate.test/log"


def test_citizens_see_their_trail_and_nobody_elses(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    alice, bob = gw.enroll(gw.citizen_ids[0]), gw.enroll(gw.citizen_ids[1])
    bank = gw.register_institution("bank-a", "bank")
    with gw.client(alice) as a:
        a.get_my_data(items=[])
        token, _ = a.grant_consent(institution_id="bank-a", purpose="credit.consumer_loan", policies=[gw.pin(LOAN)])
    with gw.client(bob) as b:
        b.get_my_data(items=[])
    with gw.institution_client(bank) as institution:
        institution.evaluate(LOAN, token, {"requested_amount_band": "up_to_50k"})
    with gw.client(alice) as a:
        history = a.access_history()
    methods = [entry.method.rsplit("/", 1)[-1] for _, entry in history]
    assert methods == ["Evaluate", "RegisterConsent", "GetMyData"]
    evaluate = history[0][1]
    assert (evaluate.caller_kind, evaluate.caller_id) == ("institution", "bank-a")
    with gw.client(bob) as b:
        assert [e.method.rsplit("/", 1)[-1] for _, e in b.access_history()] == ["GetMyData"]
        # The history call itself is logged too, and shows up the next time.
        assert [e.method.rsplit("/", 1)[-1] for _, e in b.access_history()] == ["ListMyAccessHistory", "GetMyData"]


def test_a_citizens_whole_trail_comes_page_by_page(gateway_harness: GatewayHarness) -> None:
    """However long the trail, every entry is reachable: each page holds the entries below the
    previous one's last, and the SDK's access_history walks them all."""
    gw = gateway_harness
    gw.gateway.history_page = 3
    alice = gw.enroll(gw.citizen_ids[0])
    with gw.client(alice) as a:
        for _ in range(7):
            a.get_my_data(items=[])
        first, before = a.access_history_page()
        assert len(first) == 3
        assert before == first[-1][0]
        second, after_second = a.access_history_page(before)
        assert [index for index, _ in second] == sorted((index for index, _ in second), reverse=True)
        assert max(index for index, _ in second) < before
        everything = a.access_history()
    methods = [entry.method.rsplit("/", 1)[-1] for _, entry in everything]
    # Newest first: the two page calls above, then the seven data returns, and nothing more.
    assert methods == ["ListMyAccessHistory"] * 2 + ["GetMyData"] * 7
    assert (everything[2:5], everything[5:8]) == (first, second)
    assert after_second == second[-1][0]
    with gw.client(alice) as a:
        last, end = a.access_history_page(everything[-1][0] + 1)
        assert ([index for index, _ in last], end) == ([everything[-1][0]], 0)  # the oldest: no next page
        assert a.access_history_page(everything[-1][0]) == ([], 0)
    with gw.channel() as channel:
        stub = citizen_pb2_grpc.CitizenServiceStub(channel)
        for wrong in (0, -1, "12", 2**63, True):
            token = alice.request_token(
                audience="veilgate.test", operation=LIST_MY_ACCESS_HISTORY, claims={"before": wrong}
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListMyAccessHistory(citizen_pb2.ListMyAccessHistoryRequest(request_token=token), timeout=5)
            assert _refusal(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID"), wrong


def test_an_operators_erasure_is_in_the_citizens_trail_while_the_gateway_serves(
    gateway_harness: GatewayHarness,
) -> None:
    """`veilgate erase` appends to the log the gateway serves (another writer, as a second process
    would be): the citizen sees who erased, proven like every other entry, and then no records."""
    gw = gateway_harness
    alice = gw.enroll(gw.citizen_ids[0])
    with gw.client(alice) as a:
        assert len(a.get_my_data().items) == 61
    erased, index = erase_records(gw.store, gw.citizen_ids[0])
    assert erased == 61
    with gw.client(alice) as a:
        assert a.get_my_data().items == ()
        history = a.access_history()
    assert [(e.method.rsplit("/", 1)[-1], e.caller_kind) for _, e in history] == [
        ("GetMyData", "citizen"),
        ("veilgate erase", "operator"),
        ("GetMyData", "citizen"),
    ]
    assert history[1][0] == index


def test_subject_tags_are_unlinkable_without_the_key(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    citizen_id = gw.citizen_ids[0]
    wallet = gw.enroll(citizen_id)
    with gw.client(wallet) as citizen:
        citizen.get_my_data(items=[])
        citizen.get_my_data(items=[])
    with gw.audit() as audit:
        entries = [parse_entry(raw) for _, raw in _all_entries(gw, audit)]
    tags = [e.subject_tag for e in entries if e.subject_tag]
    assert len(tags) == len(set(tags)) == 2  # two calls by one citizen: two unrelated tags
    key = gw.store.log.pseudonym_key(citizen_id, create=False)
    assert key is not None
    assert all(e.is_about(key) for e in entries if e.subject_tag)
    assert not any(e.is_about(b"\0" * 32) for e in entries)
    gw.store.log.erase_citizen(citizen_id)
    assert gw.store.log.pseudonym_key(citizen_id, create=False) is None
    assert gw.store.log.indices_for_citizen(citizen_id) == []
    assert subject_tag(key, entries[1].subject_nonce or b"") == entries[1].subject_tag  # the log still verifies


def test_no_citizen_id_or_record_value_reaches_the_log(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    citizen_id = gw.citizen_ids[0]
    canary = "CANARY-log-4f1e2d"
    [employer] = gw.store.records.for_citizen(citizen_id, ["social_insurance.current_employer"])
    gw.store.records.put_many(
        [StoredRecord(citizen_id, employer.item_id, employer.department, employer.as_of, json.dumps(canary))]
    )
    wallet = gw.enroll(citizen_id)
    bank = gw.register_institution("bank-a", "bank")
    with gw.client(wallet) as citizen:
        assert any(i.value == canary for i in citizen.get_my_data().items)
        token, _ = citizen.grant_consent(
            institution_id="bank-a", purpose="credit.consumer_loan", policies=[gw.pin(LOAN)]
        )
    with gw.institution_client(bank) as institution:
        institution.evaluate(LOAN, token, {"requested_amount_band": "up_to_50k"})
    with gw.audit() as audit:
        log_bytes = b"".join(raw for _, raw in _all_entries(gw, audit))
    assert canary.encode() not in log_bytes
    assert citizen_id.encode() not in log_bytes
    assert token.encode() not in log_bytes


def test_a_call_whose_entry_cannot_be_made_durable_fails_unavailable(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    wallet = gw.enroll(gw.citizen_ids[0])
    tokens_spent = gw.used_token_rows()
    with gw.store.engine.begin() as conn:
        conn.execute(text("DROP TABLE log_entries"))
    token = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA)
    with gw.channel() as channel:
        stub = citizen_pb2_grpc.CitizenServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetMyData(citizen_pb2.GetMyDataRequest(request_token=token), timeout=10)
        # A denied call whose denial cannot be logged fails the same way.
        with pytest.raises(grpc.RpcError) as denied:
            stub.GetMyData(citizen_pb2.GetMyDataRequest(request_token="forged"), timeout=10)
    for error in (info.value, denied.value):
        assert error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        detail = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(detail)
        assert detail.reason == "STORAGE_UNAVAILABLE"
    with gw.client(wallet) as citizen, pytest.raises(StorageError):
        citizen.get_my_data()
    assert gw.used_token_rows() == tokens_spent  # a token is spent only together with its log entry


def test_a_store_outage_is_logged_once_each_way_and_the_health_service_follows_it(
    gateway_harness: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """While the store fails every call fails closed: the health check says so (a load balancer
    stops sending them), and the log says it once, not once a call. The checkpointer's round finds
    the store back even when no call comes, as none will to a gateway marked not serving."""
    gw = gateway_harness
    with gw.channel() as channel, caplog.at_level(logging.INFO):
        health = health_pb2_grpc.HealthStub(channel)
        citizen = citizen_pb2_grpc.CitizenServiceStub(channel)

        def status() -> int:
            reply = health.Check(health_pb2.HealthCheckRequest(service="veilgate.v1.CitizenService"), timeout=5)
            return int(reply.status)

        assert status() == health_pb2.HealthCheckResponse.SERVING
        with gw.store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE log_head RENAME TO log_head_away"))
        try:
            for _ in range(5):
                with pytest.raises(grpc.RpcError) as refused:
                    citizen.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            with gw.store.engine.begin() as conn:
                conn.execute(text("ALTER TABLE log_head_away RENAME TO log_head"))
        deadline = time.monotonic() + 10
        while status() != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status() == health_pb2.HealthCheckResponse.SERVING
        citizen.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10)
    failing = [r for r in caplog.records if r.getMessage().startswith("the store is failing")]
    assert len(failing) == 1, [r.getMessage() for r in caplog.records]
    assert failing[0].levelno == logging.ERROR
    assert failing[0].getMessage().startswith("the store is failing: could not append to the audit log: ")
    assert [r for r in caplog.records if r.getMessage().startswith("the store answers again, after ")]
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("veilgate"))


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # a file the gateway holds open
def test_a_database_file_removed_while_serving_fails_every_call_closed_until_it_is_back(
    gateway_harness: GatewayHarness, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """SQLite keeps writing to a file removed under it (a data directory deleted by mistake), so
    calls would be acknowledged as durable into a file that is gone. They fail closed instead, the
    log names the file, and the checkpointer's rounds, which read only, keep the gateway marked not
    serving until the file is back."""
    gw = gateway_harness
    database = Path(gw.store.engine.url.database or "")
    with gw.channel() as channel, caplog.at_level(logging.INFO):
        health = health_pb2_grpc.HealthStub(channel)
        citizen = citizen_pb2_grpc.CitizenServiceStub(channel)

        def status() -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)

        citizen.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10)
        database.rename(tmp_path / "aside.db")
        try:
            with pytest.raises(grpc.RpcError) as refused:
                citizen.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            time.sleep(2.5)  # two checkpointer rounds (1 s apart), each of which reads the store fine
            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            (tmp_path / "aside.db").rename(database)
        deadline = time.monotonic() + 10
        while status() != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status() == health_pb2.HealthCheckResponse.SERVING
        citizen.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10)
    [failing] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the store is failing")]
    assert f"{database} was removed while in use" in failing


def test_a_replayed_token_is_logged_once_as_refused(gateway_harness: GatewayHarness) -> None:
    """The jti is spent in the log's transaction: racing replays of one token get one delivery, and
    every call leaves exactly one entry with its outcome."""
    gw = gateway_harness
    wallet = gw.enroll(gw.citizen_ids[0])
    token = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA)
    codes: list[str] = []
    lock = threading.Lock()

    def fetch() -> None:
        with gw.channel() as channel:
            stub = citizen_pb2_grpc.CitizenServiceStub(channel)
            try:
                stub.GetMyData(citizen_pb2.GetMyDataRequest(request_token=token), timeout=10)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name  # type: ignore[attr-defined]
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with gw.audit() as audit:
        entries = [parse_entry(raw) for _, raw in _all_entries(gw, audit)]
    logged = sorted((e.code, e.reason) for e in entries if e.method.endswith("/GetMyData"))
    assert sorted(codes) == sorted(code for code, _ in logged)
    assert logged == sorted([("OK", "")] + [(status_name("TOKEN_REPLAYED"), "TOKEN_REPLAYED")] * 5)


def test_parallel_callers_get_dense_unique_receipts(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    wallets = [gw.enroll(cid) for cid in gw.citizen_ids]
    receipts: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def fetch(wallet: CitizenWallet) -> None:
        with gw.client(wallet) as citizen:
            citizen.gateway_info()
            for _ in range(10):
                delivery = citizen.get_my_data(items=[])
                assert delivery.log_index is not None
                assert delivery.sealed is not None
                with lock:
                    receipts.append((delivery.log_index, delivery.sealed))

    threads = [threading.Thread(target=fetch, args=(w,)) for w in wallets * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(receipts) == 10 * len(threads)
    indices = [i for i, _ in receipts]
    assert len(set(indices)) == len(indices)
    with gw.audit() as audit:
        entries = dict(_all_entries(gw, audit))
    assert sorted(entries) == list(range(len(entries)))  # dense: no gap, no duplicate
    for index, sealed in receipts:  # every acknowledged call is present with its reply's hash
        assert parse_entry(entries[index]).result == sha256_b64(sealed)


def test_audit_service_refuses_out_of_range_requests(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    with gw.channel() as channel:
        citizen_pb2_grpc.CitizenServiceStub(channel).GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=5)
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        bad: list[tuple[Any, Any]] = [
            (stub.GetInclusionProof, audit_pb2.GetInclusionProofRequest(index=5, tree_size=1)),
            (stub.GetConsistencyProof, audit_pb2.GetConsistencyProofRequest(first=0, second=1)),
            (stub.GetEntries, audit_pb2.GetEntriesRequest(start=0, count=1000)),
            (stub.GetEntries, audit_pb2.GetEntriesRequest(start=99, count=1)),
            (stub.GetCheckpoint, audit_pb2.GetCheckpointRequest(min_tree_size=99)),
        ]
        for method, request in bad:
            with pytest.raises(grpc.RpcError) as info:
                method(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_calls_that_never_reach_a_handler_are_refused_clearly_and_logged(
    gateway_harness: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway_harness
    garbage = b"\xff\xff\xff\xff"
    forged = "/x\n2026-11-27 00:00:00,000 INFO veilgate.rpc: forged"
    with gw.channel() as channel, caplog.at_level(logging.INFO):

        def refusal(name: str, request: bytes) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(name, request_serializer=None, response_deserializer=None)(request, timeout=5)
            return _refusal(info.value)

        malformed = (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
        unknown = (grpc.StatusCode.UNIMPLEMENTED, "METHOD_UNKNOWN")
        assert refusal("/veilgate.v1.CitizenService/GetMyData", garbage) == malformed
        assert refusal("/veilgate.v1.CitizenService/NoSuchMethod", b"") == unknown
        assert refusal(forged, b"") == unknown
        # The unlogged services refuse the same way (not INTERNAL "Exception deserializing request!").
        assert refusal("/veilgate.v1.AuditService/GetEntries", garbage) == malformed
        assert refusal("/grpc.health.v1.Health/Check", b"\x0a\x02\xc3\x28") == malformed  # not UTF-8
        assert refusal("/veilgate.v1.AuditService/NoSuchMethod", b"") == unknown
    with gw.audit() as audit:
        entries = [parse_entry(e) for _, e in _all_entries(gw, audit)]
    logged = [(e.method.rsplit("/", 1)[-1], e.code, e.reason, e.request) for e in entries]
    assert ("GetMyData", "INVALID_ARGUMENT", "REQUEST_MALFORMED", sha256_b64(garbage)) in logged
    assert ("NoSuchMethod", "UNIMPLEMENTED", "METHOD_UNKNOWN", sha256_b64(b"")) in logged
    # A path that is no method name is the caller's free text: neither the server's log nor the
    # public log holds it, only its hash.
    assert ("unrecognised:" + sha256_b64(forged.encode()), "UNIMPLEMENTED") in [(e.method, e.code) for e in entries]
    assert not any("forged" in e.method for e in entries)
    assert not any("forged" in r.getMessage() or "\n" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)


def _refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "a refusal by the gateway carries a google.rpc.Status"
    detail = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(detail)
    return error.code(), detail.reason  # type: ignore[attr-defined]


def test_an_oversized_request_is_refused_and_logged(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    oversized = citizen_pb2.GetMyDataRequest(request_token="x" * (MAX_MESSAGE_BYTES + 1)).SerializeToString()
    at_limit = citizen_pb2.GetMyDataRequest(request_token="y" * (MAX_MESSAGE_BYTES - 8)).SerializeToString()
    assert len(at_limit) <= MAX_MESSAGE_BYTES < len(oversized)
    with gw.channel() as channel:
        get_my_data = channel.unary_unary(
            "/veilgate.v1.CitizenService/GetMyData", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as refused:
            get_my_data(oversized, timeout=5)
        with pytest.raises(grpc.RpcError) as parsed:  # at the limit: parsed, and refused for its token
            get_my_data(at_limit, timeout=5)
    assert _refusal(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    assert f"at most {MAX_MESSAGE_BYTES}" in refused.value.details()  # type: ignore[attr-defined]
    assert "request token" in parsed.value.details()  # type: ignore[attr-defined]
    with gw.audit() as audit:
        entries = [parse_entry(e) for _, e in _all_entries(gw, audit)]
    logged = [(e.method.rsplit("/", 1)[-1], e.code, e.reason, e.request) for e in entries]
    assert ("GetMyData", "INVALID_ARGUMENT", "REQUEST_TOO_LARGE", sha256_b64(oversized)) in logged


def test_unlogged_methods_refuse_an_oversized_request_cleanly(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    size_before = gw.store.log.tree_size()
    padded = audit_pb2.GetCheckpointRequest(min_tree_size=0).SerializeToString() + b"\x9a\x3e" + b"\x80\x80\x04"
    oversized = padded + bytes(MAX_MESSAGE_BYTES)  # an unknown length-delimited field, 64 KiB and more
    with gw.channel() as channel:
        get_checkpoint = channel.unary_unary(
            "/veilgate.v1.AuditService/GetCheckpoint", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as refused:
            get_checkpoint(oversized, timeout=5)
    assert _refusal(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    assert gw.store.log.tree_size() == size_before  # reads of the log are not logged, refused or not


def test_a_request_past_the_transport_limit_is_refused_by_grpc(gateway_harness: GatewayHarness) -> None:
    gw = gateway_harness
    size_before = gw.store.log.tree_size()
    past = citizen_pb2.GetMyDataRequest(request_token="x" * TRANSPORT_LIMIT_BYTES).SerializeToString()
    with gw.channel() as channel:
        get_my_data = channel.unary_unary(
            "/veilgate.v1.CitizenService/GetMyData", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as refused:
            get_my_data(past, timeout=5)
    # gRPC's own bound: refused before any interceptor runs, so nothing is held or logged.
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert gw.store.log.tree_size() == size_before
    wallet = gw.enroll(gw.citizen_ids[0])
    with gw.client(wallet) as client, pytest.raises(RequestTooLarge):  # which the SDK names all the same
        client.send_get_my_data("x" * (TRANSPORT_LIMIT_BYTES + 1))
