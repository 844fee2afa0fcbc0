"""Server assembly: TLS unless plaintext is asked for by name, reflection only behind its flag."""

from __future__ import annotations

import dataclasses
import logging

import grpc
import pytest
from conftest import GatewayHarness
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from veilgate import CitizenClient, CitizenWallet
from veilgate.errors import ConfigurationError, GatewayUnavailable
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.server import build_server


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


def test_a_tls_client_that_does_not_trust_the_ca_cannot_connect(gateway_harness: GatewayHarness) -> None:
    wallet = CitizenWallet.generate("x")
    with CitizenClient(gateway_harness.target, wallet, timeout=3) as client, pytest.raises(GatewayUnavailable):
        client.gateway_info()


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
