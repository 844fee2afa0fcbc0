"""What one server process counts, for Prometheus to scrape (``veilgate serve --metrics-listen``).

* ``veilgate_calls_total{method, code, reason}``: calls by method and outcome: the gRPC status name
  and the Veilgate reason (``OK`` and an empty reason for a call that succeeded);
* ``veilgate_call_duration_seconds{method}``: how long the handler took, as a histogram;
* ``veilgate_log_entries_total`` and ``veilgate_log_batches_total``: what the log writer committed
  (their ratio is the group commit's mean batch);
* ``veilgate_store_up``: 1 while the store answers, 0 during an outage (as the health service says);
* ``veilgate_client_certificate_expiry_timestamp_seconds{kind}``: of the enabled institutions (or
  departments), the soonest time at which one's latest accepted client certificate expires (absent
  while none has a known expiry): alert well before it, then ``veilgate institution list`` names it;
* ``veilgate_callers_without_certificate{kind}``: enabled institutions (or departments) with no
  accepted certificate, which every call of theirs is refused for;
* ``veilgate_server_certificate_expiry_timestamp_seconds``: when the TLS certificate the gateway
  shows new connections expires (a certificate renewed in its files is taken up without a restart).

No label holds a caller's identity, a citizen, a request or a value: only method names the gateway
serves (any other path is counted as ``unrecognised``, so that callers cannot make up labels),
status names, reasons and the two kinds of mutual-TLS caller. Each process of ``serve --processes``
serves its own figures, on a port of its own; sum the counts in the query (the certificate figures
are the store's, the same in every process).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from veilgate.errors import VeilgateError
from veilgate_server.storage import LogWriter
from veilgate_server.storage.repositories import CertificateRenewal

__all__ = ["Metrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _WriterCollector(Collector):
    """The log writer's own counts, read when scraped rather than counted again on its path."""

    def __init__(self, writer: LogWriter) -> None:
        self._writer = writer

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self._writer.stats
        yield CounterMetricFamily(
            "veilgate_log_entries", "Audit log entries this process committed", value=stats.entries
        )
        yield CounterMetricFamily(
            "veilgate_log_batches", "Group commits (transactions) of this process's log writer", value=stats.batches
        )


class _CertificateCollector(Collector):
    """When the callers' certificates next need renewing, read from the store when scraped. A store
    that fails then leaves the figures out of that scrape (``veilgate_store_up`` says why)."""

    _KINDS = ("institution", "department")

    def __init__(self, renewal_due: Callable[[str], CertificateRenewal]) -> None:
        self._renewal_due = renewal_due

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            due = {kind: self._renewal_due(kind) for kind in self._KINDS}
        except VeilgateError:
            return
        expiry = GaugeMetricFamily(
            "veilgate_client_certificate_expiry_timestamp_seconds",
            "Soonest expiry (Unix time) of an enabled caller's latest accepted client certificate",
            labels=["kind"],
        )
        without = GaugeMetricFamily(
            "veilgate_callers_without_certificate",
            "Enabled callers with no accepted client certificate (their calls are refused)",
            labels=["kind"],
        )
        for kind, renewal in due.items():
            if renewal.soonest is not None:
                expiry.add_metric([kind], renewal.soonest.timestamp())
            without.add_metric([kind], renewal.without_certificate)
        yield expiry
        yield without


class _ServerCertificateCollector(Collector):
    """When the TLS certificate that this process shows new connections expires, as its files hold
    it when scraped (a renewed certificate is taken up by then)."""

    def __init__(self, not_after: Callable[[], dt.datetime]) -> None:
        self._not_after = not_after

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "veilgate_server_certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of the TLS certificate the gateway shows new connections",
            value=self._not_after().timestamp(),
        )


class Metrics:
    """One process's registry (see the module docstring)."""

    def __init__(
        self,
        methods: Collection[str],
        writer: LogWriter,
        renewal_due: Callable[[str], CertificateRenewal] | None = None,
        server_certificate_not_after: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._methods = frozenset(methods)
        self.registry = CollectorRegistry(auto_describe=True)
        self._calls = Counter(
            "veilgate_calls", "Calls by method and outcome", ["method", "code", "reason"], registry=self.registry
        )
        self._durations = Histogram(
            "veilgate_call_duration_seconds",
            "Time in the handler, audit log entry included",
            ["method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._store_up = Gauge(
            "veilgate_store_up", "1 while the store answers, 0 while it fails", registry=self.registry
        )
        self._store_up.set(1)
        self.registry.register(_WriterCollector(writer))
        if renewal_due is not None:
            self.registry.register(_CertificateCollector(renewal_due))
        if server_certificate_not_after is not None:
            self.registry.register(_ServerCertificateCollector(server_certificate_not_after))
        self._http: WSGIServer | None = None

    def observe(self, method: str, code: str, reason: str, seconds: float) -> None:
        shown = method if method in self._methods else "unrecognised"
        self._calls.labels(shown, code, reason).inc()
        self._durations.labels(shown).observe(seconds)

    def store_answers(self, answers: bool) -> None:
        self._store_up.set(1 if answers else 0)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` (0: a free port); the port it listens on."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
