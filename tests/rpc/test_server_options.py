"""Server assembly: TLS unless plaintext is asked for by name, reflection only behind its flag."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import ssl
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from conftest import GatewayHarness, InstitutionCredentials
from cryptography import x509
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from veilgate import CitizenClient, CitizenWallet, InstitutionClient
from veilgate._internal.status import error_from_rpc
from veilgate.citizen import GET_MY_DATA
from veilgate.errors import ConfigurationError, GatewayUnavailable, TokenReplayed
from veilgate.v1 import citizen_pb2, citizen_pb2_grpc
from veilgate_server.config import Settings
from veilgate_server.crypto import CertificateAuthority, TlsFiles
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.server import ServerTls, build_server
from veilgate_server.serving import SigningKeyFollower
from veilgate_server.storage._session import write_session


def test_no_tls_and_no_explicit_plaintext_is_refused(gateway_harness: GatewayHarness) -> None:
    with pytest.raises(ConfigurationError, match="insecure_plaintext"):
        build_server(gateway_harness.gateway, address="127.0.0.1:0", tls=None)


def test_plaintext_is_named_and_warned_about(gateway_harness: GatewayHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    running = build_server(gateway_harness.gateway, address="127.0.0.1:0", tls=None, insecure_plaintext=True)
    try:
        assert "PLAINTEXT" in caplog.text
        with CitizenClient(f"127.0.0.1:{running.port}", CitizenWallet.generate("x"), insecure_plaintext=True) as c:
            assert c.gateway_info().gateway_id == "veilgate.test"
    finally:
        running.stop(grace=None)


def test_a_tls_client_that_does_not_trust_the_ca_cannot_connect_and_is_told_why(
    gateway_harness: GatewayHarness,
) -> None:
    """Not an outage to retry: the client's own TLS material does not fit the gateway."""
    wallet = CitizenWallet.generate("x")
    with (
        CitizenClient(gateway_harness.target, wallet, timeout=3) as client,
        pytest.raises(ConfigurationError, match="the TLS handshake with the gateway failed") as refused,
    ):
        client.gateway_info()
    assert "CERTIFICATE_VERIFY_FAILED" in refused.value.message


def test_reflection_behind_its_flag(gateway_harness: GatewayHarness, test_tls: tuple[bytes, object]) -> None:
    gateway: Gateway = gateway_harness.gateway
    ca_pem, tls = test_tls
    running = build_server(gateway, address="127.0.0.1:0", tls=tls, reflection_enabled=True)  # type: ignore[arg-type]
    try:
        with grpc.secure_channel(f"localhost:{running.port}", grpc.ssl_channel_credentials(ca_pem)) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert "veilgate.v1.CitizenService" in names
    finally:
        running.stop(grace=None)


def test_a_negative_daily_budget_is_refused_when_the_gateway_is_made(gateway_harness: GatewayHarness) -> None:
    """Not by every evaluation's spend, as an internal error each time."""
    with pytest.raises(ValueError, match="daily_budget must not be negative"):
        dataclasses.replace(gateway_harness.gateway, daily_budget=-1)
    assert dataclasses.replace(gateway_harness.gateway, daily_budget=0).daily_budget == 0


def test_calls_past_the_limit_in_flight_are_refused_at_once_and_the_sdk_retries_them(
    gateway_harness: GatewayHarness, test_tls: tuple[bytes, object]
) -> None:
    """A server holding its limit of calls refuses more at once rather than queueing them without
    bound; the SDK reads that as a busy gateway (retried), not as a request that was too large."""
    ca_pem, tls = test_tls
    gw = gateway_harness
    running = build_server(gw.gateway, address="127.0.0.1:0", tls=tls, max_concurrent_calls=2)  # type: ignore[arg-type]
    try:
        with grpc.secure_channel(f"localhost:{running.port}", grpc.ssl_channel_credentials(ca_pem)) as channel:
            stub = citizen_pb2_grpc.CitizenServiceStub(channel)
            stub.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=5)  # connected
            with write_session(gw.store._sessions) as held:  # every call waits for its log entry
                if gw.store.engine.dialect.name == "postgresql":
                    held.execute(text("SELECT tree_size FROM log_head FOR UPDATE"))
                calls = [stub.GetGatewayInfo.future(citizen_pb2.GetGatewayInfoRequest(), timeout=10) for _ in range(4)]
                assert _settled(calls, 2)
                refused = [c for c in calls if c.done()]
            answered = [c for c in calls if c not in refused]
            assert len(refused) == 2
            assert all(c.result(timeout=10).gateway_id == "veilgate.test" for c in answered)
        for call in refused:
            assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            error = error_from_rpc(call)  # type: ignore[arg-type]
            assert isinstance(error, GatewayUnavailable)
            assert "limit of calls in flight" in error.message
    finally:
        running.stop(grace=None)


def _settled(calls: list[grpc.Future], count: int) -> bool:
    """Wait until ``count`` of the calls have finished (the refused ones: the others are held)."""
    deadline = time.monotonic() + 5
    while sum(c.done() for c in calls) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # and no more than that
    return sum(c.done() for c in calls) == count


def test_metrics_count_calls_by_method_and_outcome_and_name_no_one(
    gateway_harness: GatewayHarness, test_tls: tuple[bytes, object]
) -> None:
    """What an operator's Prometheus scrapes: calls by method and outcome, their duration, the log
    writer's commits, the store's state; never a citizen, and no label a caller can make up."""
    ca_pem, tls = test_tls
    gw = gateway_harness
    citizen = gw.citizen_ids[0]
    wallet = gw.enroll(citizen)
    running = build_server(gw.gateway, address="127.0.0.1:0", tls=tls, metrics_address="127.0.0.1:0")  # type: ignore[arg-type]
    try:
        assert running.metrics_port
        target = f"localhost:{running.port}"
        with CitizenClient(target, wallet, root_certificates=ca_pem) as client:
            client.get_my_data()
            token = wallet.request_token(audience="veilgate.test", operation=GET_MY_DATA)
            client.send_get_my_data(token)
            with pytest.raises(TokenReplayed):
                client.send_get_my_data(token)
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca_pem)) as channel:
            made_up = channel.unary_unary(f"/veilgate.v1.CitizenService/{citizen}")
            with pytest.raises(grpc.RpcError):
                made_up(b"", timeout=5)
        with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as reply:
            page = reply.read().decode()
    finally:
        running.stop(grace=None)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }
    get_my_data = "/veilgate.v1.CitizenService/GetMyData"
    assert samples[("veilgate_calls_total", (("code", "OK"), ("method", get_my_data), ("reason", "")))] == 2
    replayed = (("code", "ALREADY_EXISTS"), ("method", get_my_data), ("reason", "TOKEN_REPLAYED"))
    assert samples[("veilgate_calls_total", replayed)] == 1
    unknown = (("code", "UNIMPLEMENTED"), ("method", "unrecognised"), ("reason", "METHOD_UNKNOWN"))
    assert samples[("veilgate_calls_total", unknown)] == 1
    assert samples[("veilgate_call_duration_seconds_count", (("method", get_my_data),))] == 3
    assert samples[("veilgate_store_up", ())] == 1
    assert samples[("veilgate_log_entries_total", ())] >= 4  # GetGatewayInfo's too
    assert 1 <= samples[("veilgate_log_batches_total", ())] <= samples[("veilgate_log_entries_total", ())]
    assert citizen not in page


def test_the_store_gauge_follows_an_outage(gateway_harness: GatewayHarness, test_tls: tuple[bytes, object]) -> None:
    ca_pem, tls = test_tls
    gw = gateway_harness
    running = build_server(gw.gateway, address="127.0.0.1:0", tls=tls, metrics_address="127.0.0.1:0")  # type: ignore[arg-type]

    def store_up() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as reply:
            families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
        return float(families["veilgate_store_up"].samples[0].value)

    try:
        with grpc.secure_channel(f"localhost:{running.port}", grpc.ssl_channel_credentials(ca_pem)) as channel:
            stub = citizen_pb2_grpc.CitizenServiceStub(channel)
            assert store_up() == 1
            with gw.store.engine.begin() as conn:
                conn.execute(text("ALTER TABLE log_head RENAME TO log_head_away"))
            try:
                with pytest.raises(grpc.RpcError):
                    stub.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10)
                assert store_up() == 0
            finally:
                with gw.store.engine.begin() as conn:
                    conn.execute(text("ALTER TABLE log_head_away RENAME TO log_head"))
            stub.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10)
            assert store_up() == 1
    finally:
        running.stop(grace=None)


def test_the_certificate_gauges_tell_when_a_renewal_is_due_and_who_is_shut_out(
    gateway_harness: GatewayHarness, test_tls: tuple[bytes, object]
) -> None:
    """An operator alerts on the soonest expiry before a bank or a department is locked out, and on
    callers left with no accepted certificate; neither figure names anyone."""
    _, tls = test_tls
    gw = gateway_harness
    gw.register_institution("bank-a", "bank")
    [certificate] = gw.store.certificates.list("institution", "bank-a")
    expires = datetime(2027, 12, 1, tzinfo=UTC)
    gw.store.certificates.record("institution", "bank-a", "0abc", at=datetime.now(UTC), not_after=expires)
    gw.register_department("taxation")
    [department_certificate] = gw.store.certificates.list("department", "taxation")
    assert certificate.not_after is not None
    assert department_certificate.not_after is not None
    assert expires < certificate.not_after  # bank-a is shut out only when the later of its two expires
    running = build_server(gw.gateway, address="127.0.0.1:0", tls=tls, metrics_address="127.0.0.1:0")  # type: ignore[arg-type]

    def gauges() -> tuple[dict[tuple[str, str], float], str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as reply:
            page = reply.read().decode()
        samples = {
            (sample.name, sample.labels.get("kind", "")): sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
            if sample.name.startswith(("veilgate_client_certificate", "veilgate_callers_without"))
        }
        return samples, page

    try:
        samples, page = gauges()
        assert samples == {
            ("veilgate_client_certificate_expiry_timestamp_seconds", "institution"): certificate.not_after.timestamp(),
            ("veilgate_client_certificate_expiry_timestamp_seconds", "department"): (
                department_certificate.not_after.timestamp()
            ),
            ("veilgate_callers_without_certificate", "institution"): 0,
            ("veilgate_callers_without_certificate", "department"): 0,
        }
        assert "bank-a" not in page
        assert "taxation" not in page
        for serial in (certificate.serial, "0abc"):
            gw.store.certificates.revoke("institution", "bank-a", serial, at=datetime.now(UTC))
        samples, _ = gauges()
        assert samples[("veilgate_callers_without_certificate", "institution")] == 1
        assert ("veilgate_client_certificate_expiry_timestamp_seconds", "institution") not in samples
        with gw.store.engine.begin() as conn:  # a store that fails leaves them out of the scrape
            conn.execute(text("ALTER TABLE client_certificates RENAME TO away"))
        try:
            samples, page = gauges()
            assert samples == {}
            assert "veilgate_store_up" in page
        finally:
            with gw.store.engine.begin() as conn:
                conn.execute(text("ALTER TABLE away RENAME TO client_certificates"))
    finally:
        running.stop(grace=None)


def _served_serial(port: int, ca_pem: bytes, client: InstitutionCredentials | None = None) -> int:
    """The serial of the certificate the server shows a new connection (a plain TLS handshake)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    if client is not None:
        with tempfile.TemporaryDirectory() as held:
            chain, key = Path(held) / "client.pem", Path(held) / "client.key"
            chain.write_bytes(client.certificate_pem)
            key.write_bytes(client.private_key_pem)
            context.load_cert_chain(chain, key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_renewed_server_certificate_is_served_to_new_connections_without_a_restart(
    gateway_harness: GatewayHarness, test_tls: tuple[bytes, ServerTls], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As an ACME client or cert-manager renews it: the files are rewritten in place, the certificate
    first. Until the key matches again the certificate in use stays; then both ports show the new
    one, and connections already open keep working."""
    _, tls = test_tls
    ca = CertificateAuthority.create("Veilgate renewal CA", now=datetime.now(UTC))
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    files.ca_certificate.write_bytes(ca.certificate_pem)

    def issue(days: int) -> tuple[bytes, bytes, int]:
        chain, key = ca.issue("veilgate-test", hosts=["localhost", "127.0.0.1"], now=datetime.now(UTC), days=days)
        return chain, key, x509.load_pem_x509_certificate(chain).serial_number

    def expiry_told() -> datetime:
        with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as reply:
            page = reply.read().decode()
        [told] = [
            sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
            if sample.name == "veilgate_server_certificate_expiry_timestamp_seconds"
        ]
        return datetime.fromtimestamp(told, UTC)

    first_chain, first_key, first = issue(90)
    files.certificate.write_bytes(first_chain)
    files.private_key.write_bytes(first_key)
    files.private_key.chmod(0o600)
    served = dataclasses.replace(tls, certificate_chain=first_chain, private_key=first_key, files=files)
    running = build_server(
        gateway_harness.gateway,
        address="127.0.0.1:0",
        tls=served,
        mtls_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
    )
    bank = gateway_harness.register_institution("bank-a", "bank")
    ports = [(running.port, None), (running.mtls_port or 0, bank)]
    try:
        assert [_served_serial(port, ca.certificate_pem, who) for port, who in ports] == [first, first]
        assert expiry_told() == x509.load_pem_x509_certificate(first_chain).not_valid_after_utc
        wallet = CitizenWallet.generate("x")
        with CitizenClient(f"localhost:{running.port}", wallet, root_certificates=ca.certificate_pem) as held_open:
            held_open.gateway_info()
            second_chain, second_key, second = issue(180)
            files.certificate.write_bytes(second_chain)  # the key not yet
            assert [_served_serial(port, ca.certificate_pem, who) for port, who in ports] == [first, first]
            assert "is not for the key in" in caplog.text
            files.private_key.write_bytes(second_key)
            assert [_served_serial(port, ca.certificate_pem, who) for port, who in ports] == [second, second]
            assert held_open.gateway_info().gateway_id == "veilgate.test"
            assert expiry_told() == x509.load_pem_x509_certificate(second_chain).not_valid_after_utc
        with CitizenClient(f"localhost:{running.port}", wallet, root_certificates=ca.certificate_pem) as fresh:
            assert fresh.gateway_info().gateway_id == "veilgate.test"
        with InstitutionClient(
            f"localhost:{running.mtls_port}",
            certificate_chain=bank.certificate_pem,
            private_key=bank.private_key_pem,
            root_certificates=ca.certificate_pem,
            institution_id=bank.institution_id,
        ) as institution:
            assert institution.list_policies()
    finally:
        running.stop(grace=None)
    assert caplog.text.count("TLS certificate taken up from") == 1  # one look serves both ports
    assert caplog.text.count("is not for the key in") == 1


def test_a_serving_gateway_follows_its_signing_key_file(
    gateway_harness: GatewayHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each look at the file: nothing while it is unchanged; a file that does not read is said once
    and the key in use stays; a rotated key is taken up, and the old one is published as retired."""
    settings = Settings.from_env(data_dir=str(tmp_path / "d"))
    gateway = gateway_harness.gateway
    gateway.signer = first = settings.load_signer()
    follower = SigningKeyFollower(gateway, settings, interval=3600)  # looked at by hand below
    try:
        follower.check()
        assert gateway.signer is first
        kept = settings.signing_key_path.read_bytes()
        broken = settings.signing_key_path.with_name("broken")
        broken.write_bytes(b"not a key")
        os.replace(broken, settings.signing_key_path)
        follower.check()
        follower.check()
        assert gateway.signer is first
        assert caplog.text.count(f"still signing with gateway key {first.key_id}") == 1
        broken.write_bytes(kept)
        broken.chmod(0o600)
        os.replace(broken, settings.signing_key_path)  # mended: the same key, not taken up again
        follower.check()
        assert gateway.signer is first
        second, _ = settings.rotate_signer(now=datetime.now(UTC))
        follower.check()
        assert gateway.signer.key_id == second.key_id
        assert first.key_id in dict(gateway.signer.published)  # retired, still published
        with gateway_harness.client(CitizenWallet.generate("x")) as c:
            assert c.gateway_info().signing_keys[0].key_id == second.key_id
    finally:
        follower.close()
    assert f"gateway signing key {second.key_id} taken up in place of {first.key_id}" in caplog.text
