"""Assemble the gateway's gRPC server: servicers, interceptor chain, health, TLS.

The server is the synchronous ``grpc.server`` with a small thread pool: on two cores it served
CPU-bound handlers faster than ``grpc.aio`` or large pools (measured; see the benchmark issue).
TLS is the default and the only configuration a production caller can reach; plaintext exists only as
``insecure_plaintext=True`` and logs a warning.
"""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from veilgate.errors import ConfigurationError
from veilgate.v1 import citizen_pb2, citizen_pb2_grpc
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.citizen import CitizenServicer
from veilgate_server.rpc.interceptors import ErrorBoundary

__all__ = ["MAX_MESSAGE_BYTES", "RunningServer", "ServerTls", "build_server"]

_log = logging.getLogger("veilgate.server")

# Requests are small (a token of at most 16 KiB); anything far larger is refused by gRPC itself.
MAX_MESSAGE_BYTES = 64 * 1024
_SERVICES = (citizen_pb2.DESCRIPTOR.services_by_name["CitizenService"].full_name,)


@dataclass(frozen=True, slots=True)
class ServerTls:
    certificate_chain: bytes
    private_key: bytes


@dataclass(slots=True)
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def build_server(
    gateway: Gateway,
    *,
    address: str,
    tls: ServerTls | None,
    insecure_plaintext: bool = False,
    reflection_enabled: bool = False,
    workers: int = 8,
) -> RunningServer:
    """Bind and start the server. ``address`` may end in ``:0`` for a free port (see ``.port``)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="veilgate-rpc"),
        interceptors=[ErrorBoundary()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    citizen_pb2_grpc.add_CitizenServiceServicer_to_server(CitizenServicer(gateway), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_enabled:
        reflection.enable_server_reflection((*_SERVICES, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    try:
        if tls is not None:
            credentials = grpc.ssl_server_credentials([(tls.private_key, tls.certificate_chain)])
            port = server.add_secure_port(address, credentials)
        elif insecure_plaintext:
            _log.warning("serving PLAINTEXT on %s: insecure, for local development only", address)
            port = server.add_insecure_port(address)
        else:
            raise ConfigurationError("no TLS credentials given; plaintext needs insecure_plaintext=True")
    except RuntimeError as e:
        raise ConfigurationError(f"could not listen on {address}: {e}") from e
    if port == 0:
        raise ConfigurationError(f"could not listen on {address}")
    server.start()
    for service in ("", *_SERVICES):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health_servicer)
