"""CitizenService over real TLS, on every storage backend: the happy path and every refusal."""

from __future__ import annotations

import json
import logging

import grpc
import nacl.signing
import pytest
from conftest import GatewayHarness
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import text

from veilgate import CitizenWallet, GatewayKey, verify_delivery
from veilgate._internal import jose
from veilgate.citizen import GET_MY_DATA
from veilgate.errors import (
    DeliveryInvalid,
    DepartmentUnknown,
    ItemUnknown,
    RequestTooLarge,
    StorageError,
    TokenExpired,
    TokenInvalid,
    TokenLifetimeTooLong,
    TokenReplayed,
    TokenWrongAudience,
)
from veilgate.v1 import citizen_pb2, citizen_pb2_grpc
from veilgate_server.crypto.keys import GatewaySigner, RetiredKey
from veilgate_server.storage import StoredRecord


def _call_raw(harness: GatewayHarness, token: str) -> grpc.RpcError:
    with harness.channel() as channel:
        stub = citizen_pb2_grpc.CitizenServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetMyData(citizen_pb2.GetMyDataRequest(request_token=token), timeout=10)
    return info.value


def _reason(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "every refusal carries a google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "veilgate"
    return error.code(), info.reason  # type: ignore[attr-defined]


def test_gateway_info_publishes_a_verifiable_key(gateway_harness: GatewayHarness) -> None:
    wallet = CitizenWallet.generate("x")
    with gateway_harness.client(wallet) as client:
        info = client.gateway_info()
    assert info.gateway_id == "veilgate.test"
    [key] = info.signing_keys
    assert key.key_id == jose.jwk_thumbprint(key.public_key) == gateway_harness.gateway.signer.key_id


def test_gateway_info_publishes_retired_keys_after_the_current_one(gateway_harness: GatewayHarness) -> None:
    """After a key rotation, clients that fetch the keys can still check what the old key signed,
    and sign-checking code that takes the first key takes the current one."""
    gw = gateway_harness
    old = gw.gateway.signer
    retired = RetiredKey(old.key_id, old.public_key, "2026-11-27T08:00:00Z")
    gw.gateway.signer = GatewaySigner(nacl.signing.SigningKey.generate(), [retired])
    wallet = gw.enroll(gw.citizen_ids[0])
    with gw.client(wallet) as client:
        keys = client.gateway_info().signing_keys
        delivery = client.get_my_data()
    assert [k.key_id for k in keys] == [gw.gateway.signer.key_id, old.key_id]
    assert delivery.key_id == gw.gateway.signer.key_id  # verified by the SDK with the key it names


def test_get_my_data_returns_every_record_sealed_and_signed(gateway_harness: GatewayHarness) -> None:
    citizen = gateway_harness.citizen_ids[0]
    wallet = gateway_harness.enroll(citizen)
    with gateway_harness.client(wallet) as client:
        delivery = client.get_my_data()
        info = client.gateway_info()
    stored = {r.item_id: r for r in gateway_harness.store.records.for_citizen(citizen)}
    assert {item.id for item in delivery.items} == set(stored) == set(gateway_harness.gateway.catalog.items)
    for item in delivery.items:
        record = stored[item.id]
        assert item.value == json.loads(record.value_json)
        assert item.as_of == record.as_of
        assert item.department == record.department
        catalog_item = gateway_harness.gateway.catalog.item(item.id)
        assert (item.sensitivity, item.type, item.unit) == (
            catalog_item.sensitivity,
            catalog_item.type,
            catalog_item.unit,
        )
        assert item.watermark == delivery.watermark
    assert delivery.citizen_id == citizen
    # Anyone holding the gateway key can verify what the citizen shows them.
    assert verify_delivery(delivery.signed_jws, gateway_keys=info.signing_keys).items == delivery.items
    assert gateway_harness.used_token_rows() == 1


def test_each_delivery_has_a_fresh_watermark(gateway_harness: GatewayHarness) -> None:
    wallet = gateway_harness.enroll(gateway_harness.citizen_ids[0])
    with gateway_harness.client(wallet) as client:
        first, second = client.get_my_data(items=[]), client.get_my_data(items=[])
    assert first.watermark != second.watermark
    assert first.delivery_id != second.delivery_id


def test_reply_opens_only_with_the_citizens_key(gateway_harness: GatewayHarness) -> None:
    citizen = gateway_harness.citizen_ids[0]
    wallet = gateway_harness.enroll(citizen)
    token = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA)
    with gateway_harness.channel() as channel:
        reply = citizen_pb2_grpc.CitizenServiceStub(channel).GetMyData(
            citizen_pb2.GetMyDataRequest(request_token=token), timeout=10
        )
    signer = gateway_harness.gateway.signer
    pinned = [GatewayKey(signer.key_id, signer.public_key)]
    assert wallet.open_delivery(reply.sealed_delivery, gateway_keys=pinned, request_token=token).citizen_id == citizen
    eavesdropper = CitizenWallet.generate(citizen)
    with pytest.raises(DeliveryInvalid):
        eavesdropper.open_delivery(reply.sealed_delivery, gateway_keys=pinned)
    assert citizen.encode() not in reply.sealed_delivery


def test_items_and_departments_narrow_the_delivery(gateway_harness: GatewayHarness) -> None:
    catalog = gateway_harness.gateway.catalog
    department = next(iter(catalog.departments))
    one_item = next(iter(catalog.items))
    wallet = gateway_harness.enroll(gateway_harness.citizen_ids[1])
    with gateway_harness.client(wallet) as client:
        by_department = client.get_my_data(departments=[department])
        by_item = client.get_my_data(items=[one_item])
        both = client.get_my_data(items=[one_item], departments=[department])
    assert {i.id for i in by_department.items} == {i.id for i in catalog.items_of(department)}
    assert [i.id for i in by_item.items] == [one_item]
    assert {i.id for i in both.items} == {one_item} | {i.id for i in catalog.items_of(department)}


@pytest.mark.parametrize(
    ("claims", "error", "code", "reason"),
    [
        ({"items": ["no_such.item"]}, ItemUnknown, grpc.StatusCode.INVALID_ARGUMENT, "ITEM_UNKNOWN"),
        (
            {"departments": ["no_such_department"]},
            DepartmentUnknown,
            grpc.StatusCode.INVALID_ARGUMENT,
            "DEPARTMENT_UNKNOWN",
        ),
        (
            {"items": [f"i{n}" for n in range(300)]},
            RequestTooLarge,
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_TOO_LARGE",
        ),
    ],
)
def test_bad_requests_are_refused_and_store_nothing(
    gateway_harness: GatewayHarness,
    claims: dict[str, list[str]],
    error: type[Exception],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    wallet = gateway_harness.enroll(gateway_harness.citizen_ids[0])
    token = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA, claims=claims)
    assert _reason(_call_raw(gateway_harness, token)) == (code, reason)
    with gateway_harness.client(wallet) as client, pytest.raises(error):
        client.send_get_my_data(token)
    assert gateway_harness.used_token_rows() == 0


def test_an_unknown_citizen_is_answered_as_a_forged_token(gateway_harness: GatewayHarness) -> None:
    """Who is enrolled is not for anyone to learn by signing for an id with any key: a seeded but
    unenrolled citizen's token gets the very status a forgery for an enrolled one gets."""
    enrolled, unenrolled = gateway_harness.citizen_ids[0], gateway_harness.citizen_ids[1]
    gateway_harness.enroll(enrolled)
    answers = []
    for citizen in (enrolled, unenrolled):
        forger = CitizenWallet.generate(citizen)
        with gateway_harness.client(forger) as client, pytest.raises(TokenInvalid):
            client.get_my_data()
        error = _call_raw(gateway_harness, forger.request_token(audience="veilgate.test", operation=GET_MY_DATA))
        answers.append((_reason(error), error.details()))  # type: ignore[attr-defined]
    assert (
        answers[0]
        == answers[1]
        == (
            (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"),
            "token is not a valid Veilgate JWS",
        )
    )


def test_garbage_and_forged_tokens(gateway_harness: GatewayHarness) -> None:
    citizen = gateway_harness.citizen_ids[0]
    gateway_harness.enroll(citizen)
    forger = CitizenWallet.generate(citizen)
    for token in ("", "not.a.token", forger.request_token(audience="veilgate.test", operation=GET_MY_DATA)):
        assert _reason(_call_raw(gateway_harness, token)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_INVALID",
        )
    with gateway_harness.client(forger) as client, pytest.raises(TokenInvalid):
        client.get_my_data()
    assert gateway_harness.used_token_rows() == 0


def test_expired_wrong_audience_and_too_long_tokens(gateway_harness: GatewayHarness) -> None:
    wallet = gateway_harness.enroll(gateway_harness.citizen_ids[0])
    with gateway_harness.client(wallet) as client:
        expired = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA, lifetime=60)
        gateway_harness.clock.advance(91)
        with pytest.raises(TokenExpired):
            client.send_get_my_data(expired)
        gateway_harness.clock.advance(-91)
        with pytest.raises(TokenWrongAudience):
            client.send_get_my_data(wallet.request_token(audience="another-gateway", operation=GET_MY_DATA))
        with pytest.raises(TokenLifetimeTooLong):
            client.send_get_my_data(
                wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA, lifetime=3600)
            )
        gateway_harness.clock.advance(91)
        assert _reason(_call_raw(gateway_harness, expired)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_EXPIRED",
        )
    assert gateway_harness.used_token_rows() == 0


def test_replay_is_refused(gateway_harness: GatewayHarness) -> None:
    wallet = gateway_harness.enroll(gateway_harness.citizen_ids[0])
    token = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA)
    with gateway_harness.client(wallet) as client:
        client.send_get_my_data(token)
        with pytest.raises(TokenReplayed):
            client.send_get_my_data(token)
    assert _reason(_call_raw(gateway_harness, token)) == (grpc.StatusCode.ALREADY_EXISTS, "TOKEN_REPLAYED")
    assert gateway_harness.used_token_rows() == 1


def test_oversized_requests(gateway_harness: GatewayHarness) -> None:
    wallet = gateway_harness.enroll(gateway_harness.citizen_ids[0])
    assert _reason(_call_raw(gateway_harness, "x" * 20_000)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
    )
    with gateway_harness.client(wallet) as client, pytest.raises(RequestTooLarge):
        client.send_get_my_data("x" * 200_000)  # beyond the gateway's request limit (64 KiB)
    with gateway_harness.client(wallet) as client, pytest.raises(RequestTooLarge):
        client.send_get_my_data("x" * 20_000)


def test_key_rotation_retires_old_keys(gateway_harness: GatewayHarness) -> None:
    citizen = gateway_harness.citizen_ids[2]
    old = gateway_harness.enroll(citizen)
    old_token = old.request_token(audience="veilgate.test", operation=GET_MY_DATA)
    new = old.with_new_keys()
    keys = gateway_harness.store.citizens.rotate_keys(
        citizen,
        signing_key=new.signing_public_key,
        encryption_key=new.encryption_public_key,
        at=gateway_harness.store.citizens.keys_of(citizen).keys_updated_at,
    )
    assert keys.key_version == 2
    with gateway_harness.client(old) as client, pytest.raises(TokenInvalid):
        client.send_get_my_data(old_token)
    with gateway_harness.client(new) as client:
        assert client.get_my_data().citizen_id == citizen


def test_storage_failure_is_a_clean_unavailable(
    gateway_harness: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller learns that the store failed, never how; the operator's log says how, when the
    database's words for it are operational (SQLite's "no such table"; PostgreSQL's undefined table
    is a statement error, whose text could hold values, so only its kind is logged)."""
    wallet = gateway_harness.enroll(gateway_harness.citizen_ids[0])
    with gateway_harness.store.engine.begin() as conn:
        conn.execute(text("DROP TABLE records"))
    token = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA)
    with caplog.at_level(logging.INFO):
        error = _call_raw(gateway_harness, token)
    assert _reason(error) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
    details = error.details() or ""  # type: ignore[attr-defined]
    assert "Traceback" not in details
    assert "SELECT" not in details
    assert "no such table" not in details
    assert "does not exist" not in details
    if gateway_harness.store.engine.dialect.name == "sqlite":
        [line] = [r for r in caplog.records if r.levelno == logging.WARNING and "STORAGE_UNAVAILABLE" in r.getMessage()]
        assert line.getMessage().endswith(": no such table: records"), line.getMessage()
    with gateway_harness.client(wallet) as client, pytest.raises(StorageError):
        client.get_my_data()


def test_records_sealed_under_another_records_key_are_an_internal_error_the_operator_can_read(
    gateway_harness: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway given the wrong keys/records.key (or a data key changed in the database) fails the
    call as INTERNAL, saying nothing else to the citizen; the operator's log names the keys."""
    citizen = gateway_harness.citizen_ids[0]
    wallet = gateway_harness.enroll(citizen)
    with gateway_harness.store.engine.begin() as conn:
        conn.execute(text("UPDATE record_keys SET records_key_id = 'ffffffffffffffff'"))
    token = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA)
    with caplog.at_level(logging.INFO):
        error = _call_raw(gateway_harness, token)
    assert _reason(error) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "records key" not in (error.details() or "")  # type: ignore[attr-defined]
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR and "GetMyData -> INTERNAL" in r.getMessage()]
    assert line.getMessage().endswith(
        "could not read records: sealed under records key ffffffffffffffff, and this gateway holds "
        f"{gateway_harness.store.records.key_id}"
    )


def test_health_is_serving_and_reflection_is_off_by_default(gateway_harness: GatewayHarness) -> None:
    with gateway_harness.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "veilgate.v1.CitizenService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            list(reflection(iter([b""]), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_canary_value_reaches_only_the_sealed_reply(
    gateway_harness: GatewayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A unique value planted in a record is readable by the citizen and appears in no log line and
    in no byte that crosses the wire in the clear."""
    caplog.set_level(logging.DEBUG)
    citizen = gateway_harness.citizen_ids[0]
    canary = "CANARY-7f3e9b1c2d4a"
    [employer] = [r for r in gateway_harness.store.records.for_citizen(citizen, ["social_insurance.current_employer"])]
    gateway_harness.store.records.put_many(
        [StoredRecord(citizen, employer.item_id, employer.department, employer.as_of, json.dumps(canary))]
    )
    wallet = gateway_harness.enroll(citizen)
    token = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA)
    with gateway_harness.channel() as channel:
        reply = citizen_pb2_grpc.CitizenServiceStub(channel).GetMyData(
            citizen_pb2.GetMyDataRequest(request_token=token), timeout=10
        )
    with gateway_harness.client(wallet) as client:
        delivery = client.get_my_data(items=["social_insurance.current_employer"])
        with pytest.raises(ItemUnknown):
            client.get_my_data(items=["no_such.item"])
    assert [i.value for i in delivery.items] == [canary]
    assert canary.encode() not in reply.SerializeToString()
    assert canary not in caplog.text
    assert citizen not in caplog.text
    assert "GetMyData" in caplog.text  # the access log did run
