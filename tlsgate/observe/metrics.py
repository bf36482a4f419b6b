"""Prometheus metrics: every collector tlsgate exports, in a registry of its own.

Theory of operation. `Metrics` owns a `CollectorRegistry`, not prometheus_client's global one:
each test gets a fresh registry, and a later multi-worker mode can merge per-worker registries
without counting anything twice (ghostunnel passes its metrics in the same way). Label values
come only from the enums of `tlsgate.observe.events`, from listener names and from certificate
names, never from a peer or from free text, so the number of series is bounded by the config
(CONTRACT.md: no addresses in labels).

The hot path (PERFORMANCE.md §3) never looks up a label child. `Metrics.listener()` resolves
every child that the sessions of one listener can touch once per listener config, into a
`ListenerMetrics`. A session then calls `inc()` a few times at accept, at TLS setup and at
close, and nothing per chunk: byte counts are published when the session closes.

Children that can be known in advance are created up front, so a counter reads 0 before its
first event: `rate()` and `increase()` then see the first event, and an alert on a counter
that has never moved still has a series to evaluate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tlsgate import __version__
from tlsgate.config.model import ListenerConfig, TlsMode, TlsVersion
from tlsgate.observe.events import (
    BackendFailureReason,
    CloseReason,
    DetectedKind,
    Direction,
    HandshakeFailure,
    NoticeKind,
    ReloadResult,
)
from tlsgate.tls.certstore import CertificateInfo

__all__ = ["ListenerMetrics", "Metrics"]

# Handshakes: about 1 ms of CPU on loopback, tens of ms across the internet, and anything up to
# handshake_timeout (10 s by default) for a client that stalls; the buckets span all three.
HANDSHAKE_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Backend connects: well under a millisecond to a backend on the same host, up to
# connect_timeout (10 s by default) for one that does not answer.
BACKEND_CONNECT_BUCKETS_SECONDS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# ssl's `SSLObject.version()` strings; anything else (an OpenSSL that negotiated something
# tlsgate never enables) is counted as "other" rather than becoming a new label value.
_TLS_VERSIONS = frozenset(version.value for version in TlsVersion)
OTHER_TLS_VERSION = "other"
# The versions every TLS listener is likely to see; others get their series on first use.
_PRECREATED_TLS_VERSIONS = (TlsVersion.TLSV1_2, TlsVersion.TLSV1_3)
# Mediator notices that are counted, each in its own per-listener counter.
COUNTED_NOTICES = (
    NoticeKind.STARTTLS,
    NoticeKind.STARTTLS_INJECTION,
    NoticeKind.AUTH_BEFORE_TLS_REFUSED,
)

E = TypeVar("E", bound=StrEnum)


class Metrics:
    """Every tlsgate metric, registered in `self.registry`."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process_wide: bool = True
    ) -> None:
        """`process_wide=False`: a worker of `workers = N` (see `observe.multiprocess`); the
        reload counter, build info and certificate expiry are then the supervisor's."""
        # A `_created` gauge beside every counter child doubles the series for a timestamp
        # Prometheus's text format does not use. The switch is process-wide; tlsgate is the
        # only user of prometheus_client in its process.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections = Counter(
            "tlsgate_connections",
            "Client connections closed, by how they ended",
            ["listener", "outcome"],
            registry=r,
        )
        self.connections_active = Gauge(
            "tlsgate_connections_active",
            "Client connections open now",
            ["listener"],
            registry=r,
            # Across workers: the sum over the processes alive now (ignored with one process).
            multiprocess_mode="livesum",
        )
        self.detected = Counter(
            "tlsgate_detected",
            'What auto-detection found on tls = "auto" listeners',
            ["listener", "kind"],
            registry=r,
        )
        self.tls_handshakes = Counter(
            "tlsgate_tls_handshakes",
            "Client TLS handshakes completed, by negotiated version",
            ["listener", "version"],
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "tlsgate_tls_handshake_failures",
            "Client TLS handshakes that failed, by classified reason",
            ["listener", "reason"],
            registry=r,
        )
        self.tls_handshake_duration = Histogram(
            "tlsgate_tls_handshake_duration_seconds",
            "Time from the start of a client TLS handshake to its completion",
            ["listener"],
            buckets=HANDSHAKE_BUCKETS_SECONDS,
            registry=r,
        )
        self.starttls = Counter(
            "tlsgate_starttls",
            "STARTTLS (SMTP) and STLS (POP3) commands accepted",
            ["listener", "protocol"],
            registry=r,
        )
        self.starttls_injection = Counter(
            "tlsgate_starttls_injection",
            "Plaintext sent after STARTTLS/STLS and discarded (CVE-2011-0411 style injection)",
            ["listener"],
            registry=r,
        )
        self.auth_before_tls_refused = Counter(
            "tlsgate_auth_before_tls_refused",
            "Login attempts refused because TLS was not active yet",
            ["listener"],
            registry=r,
        )
        self.bytes = Counter(
            "tlsgate_bytes",
            "Bytes relayed, counted when each connection closes",
            ["listener", "direction"],
            registry=r,
        )
        self.backend_connect_duration = Histogram(
            "tlsgate_backend_connect_duration_seconds",
            "Time to connect to a backend (outbound: until TLS is up)",
            ["listener"],
            buckets=BACKEND_CONNECT_BUCKETS_SECONDS,
            registry=r,
        )
        self.backend_errors = Counter(
            "tlsgate_backend_errors",
            "Failed attempts to reach a backend, by reason",
            ["listener", "reason"],
            registry=r,
        )
        self.plaintext_fallbacks = Counter(
            "tlsgate_plaintext_fallbacks",
            "Outbound sessions that continued in the clear (backend_tls_fallback)",
            ["listener"],
            registry=r,
        )
        self.process = ProcessMetrics(r) if process_wide else None
        self._listeners: dict[str, ListenerMetrics] = {}

    def listener(self, config: ListenerConfig) -> ListenerMetrics:
        """The metrics of one listener, children resolved; cheap to call once per accept.

        A reload that changes the listener's settings gets a new `ListenerMetrics` (it may
        need children the old settings did not); the counters themselves carry on.
        """
        cached = self._listeners.get(config.name)
        if cached is None or cached.config is not config:
            cached = self._listeners[config.name] = ListenerMetrics(self, config)
        return cached

    def config_reload(self, result: ReloadResult) -> None:
        if self.process is not None:
            self.process.config_reload(result)

    def certificates_loaded(self, certificates: Sequence[CertificateInfo]) -> None:
        if self.process is not None:
            self.process.certificates_loaded(certificates)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (what `/metrics` serves)."""
        return generate_latest(self.registry)


class ProcessMetrics:
    """What one process reports for the whole daemon: reloads, build info, certificates."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.config_reloads = Counter(
            "tlsgate_config_reloads",
            "Reloads of the config or the certificates, by result",
            ["result"],
            registry=registry,
        )
        for result in ReloadResult:
            self.config_reloads.labels(result.value)
        self.build_info = Gauge(
            "tlsgate_build_info", "Always 1; the version is a label", ["version"], registry=registry
        )
        self.build_info.labels(__version__).set(1)
        self._certificates = _CertificateExpiry()
        registry.register(self._certificates)

    def config_reload(self, result: ReloadResult) -> None:
        self.config_reloads.labels(result.value).inc()

    def certificates_loaded(self, certificates: Sequence[CertificateInfo]) -> None:
        """The certificates now serving: the expiry gauge shows these from the next scrape."""
        self._certificates.certificates = tuple(certificates)


class ListenerMetrics:
    """The label children of one listener's series, looked up once (see the module doc)."""

    __slots__ = (
        "_backend_connect",
        "_backend_errors",
        "_bytes_b2c",
        "_bytes_c2b",
        "_detected",
        "_failures",
        "_handshake_seconds",
        "_handshakes",
        "_metrics",
        "_notices",
        "_outcomes",
        "_plaintext_fallbacks",
        "active",
        "config",
    )

    def __init__(self, metrics: Metrics, config: ListenerConfig) -> None:
        name = config.name
        self.config = config
        self._metrics = metrics
        self.active: Gauge = metrics.connections_active.labels(name)
        self._outcomes = _children(metrics.connections, name, CloseReason)
        self._bytes_c2b = metrics.bytes.labels(name, Direction.CLIENT_TO_BACKEND.value)
        self._bytes_b2c = metrics.bytes.labels(name, Direction.BACKEND_TO_CLIENT.value)
        self._backend_connect: Histogram = metrics.backend_connect_duration.labels(name)
        self._backend_errors = _children(metrics.backend_errors, name, BackendFailureReason)
        self._plaintext_fallbacks: Counter = metrics.plaintext_fallbacks.labels(name)
        self._detected = (
            _children(metrics.detected, name, DetectedKind) if config.tls is TlsMode.AUTO else {}
        )
        self._handshakes: dict[str, Counter] = {}
        self._failures: Mapping[HandshakeFailure, Counter] = {}
        self._handshake_seconds: Histogram | None = None
        if config.tls is not TlsMode.NONE:
            self._failures = _children(metrics.tls_handshake_failures, name, HandshakeFailure)
            self._handshake_seconds = metrics.tls_handshake_duration.labels(name)
            for version in _PRECREATED_TLS_VERSIONS:
                self._handshake_child(version.value)
        self._notices: dict[NoticeKind, Counter] = {}
        if config.mediates and config.tls in (TlsMode.STARTTLS, TlsMode.AUTO):
            self._notices = {
                NoticeKind.STARTTLS: metrics.starttls.labels(name, config.protocol.value),
                NoticeKind.STARTTLS_INJECTION: metrics.starttls_injection.labels(name),
                NoticeKind.AUTH_BEFORE_TLS_REFUSED: metrics.auth_before_tls_refused.labels(name),
            }

    def connection_opened(self) -> None:
        self.active.inc()

    def connection_closed(self, outcome: CloseReason, bytes_c2b: int, bytes_b2c: int) -> None:
        """`bytes_*`: those not yet passed to `bytes_relayed`."""
        self.active.dec()
        self._outcomes[outcome].inc()
        self.bytes_relayed(bytes_c2b, bytes_b2c)

    def bytes_relayed(self, bytes_c2b: int, bytes_b2c: int) -> None:
        if bytes_c2b:
            self._bytes_c2b.inc(bytes_c2b)
        if bytes_b2c:
            self._bytes_b2c.inc(bytes_b2c)

    def connection_refused(self, outcome: CloseReason) -> None:
        """A connection refused at accept (it was never active)."""
        self._outcomes[outcome].inc()

    def detected(self, kind: DetectedKind) -> None:
        self._detected[kind].inc()

    def tls_established(self, version: str, seconds: float) -> None:
        """Count a completed handshake; `version` as `SSLObject.version()` returns it."""
        child = self._handshakes.get(version) or self._handshake_child(version)
        child.inc()
        if self._handshake_seconds is not None:
            self._handshake_seconds.observe(seconds)

    def handshake_failed(self, reason: HandshakeFailure) -> None:
        self._failures[reason].inc()

    def notice(self, kind: NoticeKind) -> None:
        """Count a mediator notice if it is one of `COUNTED_NOTICES`; others are logged only."""
        child = self._notices.get(kind)
        if child is not None:
            child.inc()

    def backend_connected(self, seconds: float) -> None:
        self._backend_connect.observe(seconds)

    def backend_failed(self, reason: BackendFailureReason) -> None:
        self._backend_errors[reason].inc()

    def plaintext_fallback(self) -> None:
        self._plaintext_fallbacks.inc()

    def _handshake_child(self, version: str) -> Counter:
        label = version if version in _TLS_VERSIONS else OTHER_TLS_VERSION
        child: Counter = self._metrics.tls_handshakes.labels(self.config.name, label)
        self._handshakes[version] = child
        return child


def _children(family: Counter, listener: str, values: type[E]) -> dict[E, Counter]:
    """One child per enum member, created now so that each series exists from the start."""
    return {value: family.labels(listener, value.value) for value in values}


class _CertificateExpiry(Collector):
    """`tlsgate_certificate_expiry_timestamp_seconds`, read from the certificates loaded last.

    A collector rather than a Gauge: a reload replaces the whole set in one assignment, so a
    scrape never sees it half cleared, and a certificate dropped from the config disappears.

    Two entries can share both labels: an RSA and an ECDSA certificate for the same names, or
    a renewal installed beside the certificate it replaces. Per key type the one that expires
    last is what clients of that type will be served, and of those the earliest is when some
    client stops getting a valid certificate, so that is the value exported: a renewal beside
    its predecessor raises no alarm, an RSA certificate running out beside a fresh ECDSA one
    does.
    """

    NAME = "tlsgate_certificate_expiry_timestamp_seconds"
    HELP = "When the certificate expires (Unix time), per name and subject"

    def __init__(self) -> None:
        self.certificates: tuple[CertificateInfo, ...] = ()

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["certificate", "subject"])]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["certificate", "subject"])
        for (label, subject), timestamp in sorted(expiry_by_label(self.certificates).items()):
            family.add_metric([label, subject], timestamp)
        return [family]


def expiry_by_label(certificates: Iterable[CertificateInfo]) -> dict[tuple[str, str], float]:
    """(certificate label, subject) -> the expiry to export (see `_CertificateExpiry`)."""
    latest: dict[tuple[str, str, str], float] = {}
    for info in certificates:
        key = (info.label, info.subject, info.key_type.value)
        latest[key] = max(latest.get(key, 0.0), info.not_after.timestamp())
    exported: dict[tuple[str, str], float] = {}
    for (label, subject, _key_type), timestamp in latest.items():
        pair = (label, subject)
        exported[pair] = min(exported.get(pair, timestamp), timestamp)
    return exported
