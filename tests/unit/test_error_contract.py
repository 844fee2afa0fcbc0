"""The error contract: proto enum, exception classes and the status table stay in step."""

from __future__ import annotations

import grpc

import veilgate.errors as errors
import veilgate_server.core.catalog  # noqa: F401  (defines the RECORD_VALUE_INVALID error)
from veilgate.v1 import errors_pb2
from veilgate_server.rpc.errors import STATUS_OF_REASON, to_grpc_status

CLIENT_ONLY = {"WALLET_INVALID", "DELIVERY_INVALID", "RESULT_INVALID", "PROOF_INVALID"}
WIRE = set(errors_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}


def _classes() -> list[type[errors.VeilgateError]]:
    seen: list[type[errors.VeilgateError]] = [errors.VeilgateError]
    for cls in seen:
        seen.extend(c for c in cls.__subclasses__() if c not in seen)
    return seen


def test_exception_classes_and_proto_enum_name_the_same_reasons() -> None:
    assert {cls.reason for cls in _classes()} == WIRE


def test_every_server_reason_has_exactly_one_status() -> None:
    assert set(STATUS_OF_REASON) == WIRE - CLIENT_ONLY


def test_reasons_round_trip_through_a_status() -> None:
    for cls in _classes():
        if cls.reason not in STATUS_OF_REASON:
            continue
        status = to_grpc_status(cls("m"))
        assert status.code == STATUS_OF_REASON[cls.reason]
        assert isinstance(errors.error_for_reason(cls.reason, "m"), cls)


def test_unknown_reason_is_internal_and_stays_visible() -> None:
    assert to_grpc_status(errors.VeilgateError("x")).code == grpc.StatusCode.INTERNAL
    assert errors.error_for_reason("FROM_A_NEWER_GATEWAY", "m").reason == "FROM_A_NEWER_GATEWAY"
