"""Start a gateway the way ``veilgate serve`` does: in this process, or as one of several processes.

Everything a serving gateway needs comes from :class:`~veilgate_server.config.Settings` and a
:class:`ServeOptions`, both plain data, so a server process started with ``spawn`` builds exactly what
the single-process server builds (see :mod:`veilgate_server.rpc.processes`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from veilgate.errors import ConfigurationError
from veilgate_server.config import Settings
from veilgate_server.crypto import TlsFiles
from veilgate_server.crypto.institutions import TRUST_DOMAIN as DEFAULT_TRUST_DOMAIN
from veilgate_server.crypto.institutions import InstitutionCA
from veilgate_server.crypto.keys import file_stamp
from veilgate_server.gateway import DEFAULT_DAILY_BUDGET, Gateway
from veilgate_server.rpc.processes import Started
from veilgate_server.rpc.server import RunningServer, ServerTls, build_server

__all__ = ["GatewayProcess", "ServeOptions", "SigningKeyFollower", "open_gateway", "serve", "server_tls"]

_log = logging.getLogger("veilgate.keys")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How to listen and what to allow: the ``veilgate serve`` flags, as data."""

    address: str
    tls: ServerTls | None
    mtls_address: str | None = None
    insecure_plaintext: bool = False
    reflection: bool = False
    workers: int = 8
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    daily_budget: int = DEFAULT_DAILY_BUDGET
    reuse_port: bool = False  # several processes share the ports (``--processes``)
    metrics_address: str | None = None  # host:port; process n of several serves on port + n


def server_tls(settings: Settings, files: TlsFiles, *, now: datetime) -> ServerTls:
    """The server's certificate and key from ``files``; the institutions' CA of the settings' TLS
    directory (created if absent) verifies client certificates on the mutual-TLS port."""
    chain, key, _ = files.load_checked()
    institution_ca = InstitutionCA.load_or_create(settings.tls_dir, now=now)
    return ServerTls(certificate_chain=chain, private_key=key, client_ca=institution_ca.certificate_pem, files=files)


def open_gateway(settings: Settings, *, daily_budget: int = DEFAULT_DAILY_BUDGET) -> Gateway:
    """The gateway the settings describe. Refuses to start on a bad or missing policy manifest."""
    catalog = settings.load_catalog()
    policies = settings.load_reviewed_policies(catalog)
    signer, log_signer = settings.load_signer(), settings.load_log_signer()
    return Gateway(
        gateway_id=settings.gateway_id,
        catalog=catalog,
        store=settings.open_store(),
        signer=signer,
        log_signer=log_signer,
        policies=policies,
        daily_budget=daily_budget,
    )


class SigningKeyFollower:
    """Takes up the gateway signing key that ``veilgate keys --rotate`` made while this process
    serves, without a restart: every ``interval`` seconds it looks at the key file, and once the
    rotation has replaced it, the gateway signs with the new key from its next call and publishes it
    first in GetGatewayInfo. The old private key, which the rotation destroyed on disk, is let go
    here too; its public key stays published with the retired ones."""

    def __init__(self, gateway: Gateway, settings: Settings, *, interval: float = 1.0) -> None:
        self._gateway = gateway
        self._settings = settings
        self._seen = file_stamp(settings.signing_key_path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), name="veilgate-signing-key", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Look at the key file once; take up the key in it if it was replaced."""
        stamp = file_stamp(self._settings.signing_key_path)  # a rotation replaces the file (a rename)
        if stamp is None or stamp == self._seen:
            return
        self._seen = stamp
        current = self._gateway.signer
        try:
            signer = self._settings.reload_signer()
        except ConfigurationError as e:  # said once per change of the file, not every second
            _log.error("%s; still signing with gateway key %s", e, current.key_id)
            return
        if signer.key_id != current.key_id:
            self._gateway.signer = signer  # one reference swapped: a call signs with the old key or the new
            _log.warning(
                "gateway signing key %s taken up in place of %s: it was rotated", signer.key_id, current.key_id
            )

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def serve(settings: Settings, options: ServeOptions, *, index: int = 0) -> tuple[Gateway, RunningServer]:
    """Open the gateway and start its server; the store is closed again if the server cannot start.
    ``index``: which of several server processes this is (its metrics port is the given one + index)."""
    gateway = open_gateway(settings, daily_budget=options.daily_budget)
    try:
        running = build_server(
            gateway,
            address=options.address,
            tls=options.tls,
            insecure_plaintext=options.insecure_plaintext,
            reflection_enabled=options.reflection,
            workers=options.workers,
            trust_domain=options.trust_domain,
            mtls_address=options.mtls_address if options.tls else None,
            reuse_port=options.reuse_port,
            metrics_address=_nth_port(options.metrics_address, index),
        )
    except BaseException:
        gateway.store.close()
        raise
    running.on_stop.append(SigningKeyFollower(gateway, settings).close)
    return gateway, running


@dataclass(frozen=True, slots=True)
class GatewayProcess:
    """One gateway server process (a :class:`~veilgate_server.rpc.processes.ServerFactory`)."""

    settings: Settings
    options: ServeOptions
    stop_grace: float | None = 5.0

    def start(self, index: int) -> Started:
        gateway, running = serve(self.settings, self.options, index=index)

        def stop() -> None:
            running.stop(grace=self.stop_grace)
            gateway.store.close()

        return Started(
            tls_port=running.port, mtls_port=running.mtls_port or 0, stop=stop, metrics_port=running.metrics_port or 0
        )


def _nth_port(address: str | None, index: int) -> str | None:
    """``host:port`` moved ``index`` ports on (a free port, 0, stays 0)."""
    if address is None or index == 0:
        return address
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + index}" if int(port) else address
