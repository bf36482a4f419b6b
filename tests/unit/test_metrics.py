"""`Metrics` on its own registry, the observer that feeds it, `[metrics]` config, the endpoint.

Everything is read back through `generate_latest` (`Metrics.exposition`) and the Prometheus
text parser, so the tests see what a scraper sees.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.helpers.metrics_text import label_values, parse_samples, sample, scrape, series
from tlsgate import __version__
from tlsgate.config import parse_config
from tlsgate.config.model import Config, Endpoint, ListenerConfig, MetricsConfig, Protocol, TlsMode
from tlsgate.observe.endpoint import MetricsEndpointError, start_metrics_endpoint
from tlsgate.observe.events import (
    BackendFailureReason,
    CloseReason,
    DetectedKind,
    HandshakeFailure,
    NoticeKind,
    ReloadResult,
)
from tlsgate.observe.logs import get_logger
from tlsgate.observe.metrics import Metrics, expiry_by_label
from tlsgate.observe.observer import SessionObserver
from tlsgate.protocol.io_types import Notice
from tlsgate.tls.certstore import CertificateInfo, KeyType

NOW = datetime(2030, 1, 1, tzinfo=UTC)

# Every metric the issue lists, as exposed (counters with their `_total`).
ISSUE_METRICS = {
    "tlsgate_connections_total": "counter",
    "tlsgate_connections_active": "gauge",
    "tlsgate_detected_total": "counter",
    "tlsgate_tls_handshakes_total": "counter",
    "tlsgate_tls_handshake_failures_total": "counter",
    "tlsgate_tls_handshake_duration_seconds": "histogram",
    "tlsgate_starttls_total": "counter",
    "tlsgate_starttls_injection_total": "counter",
    "tlsgate_auth_before_tls_refused_total": "counter",
    "tlsgate_bytes_total": "counter",
    "tlsgate_backend_connect_duration_seconds": "histogram",
    "tlsgate_backend_errors_total": "counter",
    "tlsgate_certificate_expiry_timestamp_seconds": "gauge",
    "tlsgate_config_reloads_total": "counter",
    "tlsgate_build_info": "gauge",
    "tlsgate_plaintext_fallbacks_total": "counter",
}


def listener(name: str, tls: TlsMode, protocol: Protocol = Protocol.SMTP) -> ListenerConfig:
    return ListenerConfig(
        name=name,
        listen=Endpoint("127.0.0.1", 0),
        protocol=protocol,
        tls=tls,
        backend=(Endpoint("127.0.0.1", 2525),),
    )


def certificate(
    label: str, subject: str, *, days_left: float, key_type: KeyType = KeyType.ECDSA
) -> CertificateInfo:
    return CertificateInfo(
        index=0,
        name=label,
        label=label,
        subject=subject,
        dns_names=(label,),
        key_type=key_type,
        not_before=NOW - timedelta(days=30),
        not_after=NOW + timedelta(days=days_left),
        fingerprint="",
        default=False,
    )


def exposed(metrics: Metrics) -> str:
    return metrics.exposition().decode("utf-8")


# ---- names, types, registry -----------------------------------------------------------------


def test_every_metric_of_the_issue_is_exposed_with_its_type() -> None:
    text = exposed(Metrics())
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    assert {name: types.get(name) for name in ISSUE_METRICS} == ISSUE_METRICS


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.listener(listener("a", TlsMode.IMPLICIT)).connection_opened()
    assert sample(parse_samples(exposed(first)), "tlsgate_connections_active", listener="a") == 1
    assert (
        sample(parse_samples(exposed(second)), "tlsgate_connections_active", listener="a") is None
    )


def test_build_info_carries_the_version() -> None:
    samples = parse_samples(exposed(Metrics()))
    assert sample(samples, "tlsgate_build_info", version=__version__) == 1


def test_no_created_timestamps_double_the_series() -> None:
    assert "_created" not in exposed(Metrics())


# ---- children that exist before their first event --------------------------------------------


def test_counters_of_a_listener_read_zero_before_any_event() -> None:
    metrics = Metrics()
    metrics.listener(listener("submission", TlsMode.STARTTLS))
    samples = parse_samples(exposed(metrics))
    outcomes = series(samples, "tlsgate_connections_total")
    assert {dict(labels)["outcome"] for labels in outcomes} == {r.value for r in CloseReason}
    assert set(outcomes.values()) == {0.0}
    failures = series(samples, "tlsgate_tls_handshake_failures_total")
    assert {dict(labels)["reason"] for labels in failures} == {r.value for r in HandshakeFailure}
    errors = series(samples, "tlsgate_backend_errors_total")
    assert {dict(labels)["reason"] for labels in errors} == {r.value for r in BackendFailureReason}
    for name, labels in [
        ("tlsgate_starttls_total", {"protocol": "smtp"}),
        ("tlsgate_starttls_injection_total", {}),
        ("tlsgate_auth_before_tls_refused_total", {}),
        ("tlsgate_plaintext_fallbacks_total", {}),
        ("tlsgate_tls_handshakes_total", {"version": "TLSv1.3"}),
        ("tlsgate_bytes_total", {"direction": "client_to_backend"}),
        ("tlsgate_bytes_total", {"direction": "backend_to_client"}),
    ]:
        assert sample(samples, name, listener="submission", **labels) == 0, name
    assert sample(samples, "tlsgate_config_reloads_total", result="failure") == 0


def test_series_a_listener_can_never_use_are_not_created() -> None:
    metrics = Metrics()
    metrics.listener(listener("plain", TlsMode.NONE))
    metrics.listener(listener("smtps", TlsMode.IMPLICIT))
    samples = parse_samples(exposed(metrics))
    assert series(samples, "tlsgate_detected_total") == {}
    assert sample(samples, "tlsgate_starttls_total", listener="smtps", protocol="smtp") is None
    failures = series(samples, "tlsgate_tls_handshake_failures_total")
    assert {dict(labels)["listener"] for labels in failures} == {"smtps"}


def test_auto_listener_has_every_detected_kind() -> None:
    metrics = Metrics()
    metrics.listener(listener("auto", TlsMode.AUTO, Protocol.POP3))
    samples = parse_samples(exposed(metrics))
    kinds = series(samples, "tlsgate_detected_total")
    assert {dict(labels)["kind"] for labels in kinds} == {k.value for k in DetectedKind}
    assert sample(samples, "tlsgate_starttls_total", listener="auto", protocol="pop3") == 0


# ---- counting ---------------------------------------------------------------------------------


def test_a_session_is_active_until_closed_then_counted_with_its_bytes() -> None:
    metrics = Metrics()
    one = metrics.listener(listener("smtps", TlsMode.IMPLICIT))
    one.connection_opened()
    assert sample(parse_samples(exposed(metrics)), "tlsgate_connections_active", listener="smtps")
    one.connection_closed(CloseReason.COMPLETED, 120, 3400)
    samples = parse_samples(exposed(metrics))
    assert sample(samples, "tlsgate_connections_active", listener="smtps") == 0
    assert sample(samples, "tlsgate_connections_total", listener="smtps", outcome="completed") == 1
    c2b = sample(samples, "tlsgate_bytes_total", listener="smtps", direction="client_to_backend")
    b2c = sample(samples, "tlsgate_bytes_total", listener="smtps", direction="backend_to_client")
    assert (c2b, b2c) == (120, 3400)


def test_tls_versions_are_labelled_as_ssl_names_them_and_unknown_ones_as_other() -> None:
    metrics = Metrics()
    one = metrics.listener(listener("smtps", TlsMode.IMPLICIT))
    one.tls_established("TLSv1.3", 0.002)
    one.tls_established("TLSv1.3", 0.003)
    one.tls_established("TLSv1.2", 0.004)
    one.tls_established("SSLv3", 0.004)
    samples = parse_samples(exposed(metrics))
    versions = {
        dict(labels)["version"]: value
        for labels, value in series(samples, "tlsgate_tls_handshakes_total").items()
    }
    assert versions == {"TLSv1.2": 1, "TLSv1.3": 2, "other": 1}
    count = "tlsgate_tls_handshake_duration_seconds_count"
    assert sample(samples, count, listener="smtps") == 4


def test_only_counted_notices_move_a_counter() -> None:
    metrics = Metrics()
    one = metrics.listener(listener("submission", TlsMode.STARTTLS))
    for kind in NoticeKind:
        one.notice(kind)
    samples = parse_samples(exposed(metrics))
    assert sample(samples, "tlsgate_starttls_total", listener="submission", protocol="smtp") == 1
    assert sample(samples, "tlsgate_starttls_injection_total", listener="submission") == 1
    assert sample(samples, "tlsgate_auth_before_tls_refused_total", listener="submission") == 1


def test_backend_errors_are_counted_by_reason() -> None:
    metrics = Metrics()
    one = metrics.listener(listener("relay", TlsMode.NONE))
    one.backend_failed(BackendFailureReason.REFUSED)
    one.backend_failed(BackendFailureReason.REFUSED)
    one.backend_failed(BackendFailureReason.TLS_VERIFY)
    one.backend_connected(0.001)
    one.plaintext_fallback()
    samples = parse_samples(exposed(metrics))
    errors = "tlsgate_backend_errors_total"
    assert sample(samples, errors, listener="relay", reason="refused") == 2
    assert sample(samples, errors, listener="relay", reason="tls_verify") == 1
    assert sample(samples, errors, listener="relay", reason="timeout") == 0
    count = "tlsgate_backend_connect_duration_seconds_count"
    assert sample(samples, count, listener="relay") == 1
    assert sample(samples, "tlsgate_plaintext_fallbacks_total", listener="relay") == 1


def test_config_reloads_are_counted_by_result() -> None:
    metrics = Metrics()
    metrics.config_reload(ReloadResult.SUCCESS)
    metrics.config_reload(ReloadResult.FAILURE)
    metrics.config_reload(ReloadResult.FAILURE)
    samples = parse_samples(exposed(metrics))
    assert sample(samples, "tlsgate_config_reloads_total", result="success") == 1
    assert sample(samples, "tlsgate_config_reloads_total", result="failure") == 2


def test_a_changed_listener_keeps_its_counts() -> None:
    metrics = Metrics()
    before = listener("mail", TlsMode.STARTTLS)
    metrics.listener(before).connection_closed(CloseReason.COMPLETED, 1, 1)
    after = listener("mail", TlsMode.AUTO)
    assert metrics.listener(after) is not metrics.listener(before)
    assert metrics.listener(after) is metrics.listener(after)  # looked up once per config
    metrics.listener(after).connection_closed(CloseReason.COMPLETED, 1, 1)
    samples = parse_samples(exposed(metrics))
    assert sample(samples, "tlsgate_connections_total", listener="mail", outcome="completed") == 2


# ---- certificates -----------------------------------------------------------------------------


def test_certificate_expiry_is_labelled_by_name_and_subject() -> None:
    metrics = Metrics()
    mail = certificate("mail.example.com", "CN=mail.example.com", days_left=60)
    metrics.certificates_loaded([mail])
    samples = parse_samples(exposed(metrics))
    name = "tlsgate_certificate_expiry_timestamp_seconds"
    assert series(samples, name) == {
        (("certificate", "mail.example.com"), ("subject", "CN=mail.example.com")): (
            mail.not_after.timestamp()
        )
    }


def test_a_reload_replaces_the_certificates_shown() -> None:
    metrics = Metrics()
    metrics.certificates_loaded([certificate("old.test", "CN=old.test", days_left=5)])
    metrics.certificates_loaded([certificate("new.test", "CN=new.test", days_left=90)])
    name = "tlsgate_certificate_expiry_timestamp_seconds"
    labels = [dict(pairs)["certificate"] for pairs in series(parse_samples(exposed(metrics)), name)]
    assert labels == ["new.test"]


def test_a_renewal_beside_its_predecessor_shows_the_renewal() -> None:
    old = certificate("mail.test", "CN=mail.test", days_left=3)
    new = certificate("mail.test", "CN=mail.test", days_left=90)
    assert expiry_by_label([old, new]) == {("mail.test", "CN=mail.test"): new.not_after.timestamp()}


def test_an_rsa_certificate_running_out_beside_a_fresh_ecdsa_one_shows_the_rsa_one() -> None:
    rsa = certificate("mail.test", "CN=mail.test", days_left=3, key_type=KeyType.RSA)
    ecdsa = certificate("mail.test", "CN=mail.test", days_left=90)
    assert expiry_by_label([rsa, ecdsa]) == {
        ("mail.test", "CN=mail.test"): rsa.not_after.timestamp()
    }


# ---- the observer: one call, one log line, its metrics ---------------------------------------


def test_each_observer_event_is_one_log_line_and_its_count() -> None:
    metrics = Metrics()
    one = metrics.listener(listener("auto", TlsMode.AUTO))
    with capture_logs() as logs:
        observer = SessionObserver(get_logger(conn_id="1", listener="auto", peer="p"), one)
        observer.accepted()
        observer.detected(DetectedKind.TLS)
        observer.handshake_failed(HandshakeFailure.PROTOCOL_VERSION, "UNSUPPORTED_PROTOCOL")
        observer.notice(Notice(NoticeKind.STARTTLS_INJECTION, {"bytes": 12}))
        observer.backend_failed(BackendFailureReason.TIMEOUT, "connect timed out", endpoint="b:25")
        observer.closed(CloseReason.HANDSHAKE_FAILED, 0, 0, 0.5)
    assert [event["event"] for event in logs] == [
        "accepted",
        "detected",
        "handshake_failed",
        "starttls_injection",
        "backend_failed",
        "closed",
    ]
    assert all(event["peer"] == "p" and event["conn_id"] == "1" for event in logs)
    assert logs[2]["detail"] == "UNSUPPORTED_PROTOCOL"
    samples = parse_samples(exposed(metrics))
    assert sample(samples, "tlsgate_detected_total", listener="auto", kind="tls") == 1
    failures = "tlsgate_tls_handshake_failures_total"
    assert sample(samples, failures, listener="auto", reason="protocol_version") == 1
    assert sample(samples, "tlsgate_starttls_injection_total", listener="auto") == 1
    assert sample(samples, "tlsgate_backend_errors_total", listener="auto", reason="timeout") == 1
    outcome = "handshake_failed"
    assert sample(samples, "tlsgate_connections_total", listener="auto", outcome=outcome) == 1
    assert sample(samples, "tlsgate_connections_active", listener="auto") == 0


# ---- label cardinality -------------------------------------------------------------------------


def _looks_like_an_address(value: str) -> bool:
    host = value.rsplit(":", 1)[0].strip("[]") if value.count(":") == 1 else value.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(re.search(r":\d+$", value))
    return True


def test_bytes_published_during_a_session_are_not_counted_again_at_its_close() -> None:
    metrics = Metrics()
    observer = SessionObserver(get_logger(), metrics.listener(listener("relay", TlsMode.IMPLICIT)))
    observer.accepted()
    observer.bytes_moved(1500, 0)
    observer.bytes_moved(0, 500)
    bytes_total = "tlsgate_bytes_total"
    during = parse_samples(exposed(metrics))
    assert sample(during, bytes_total, listener="relay", direction="client_to_backend") == 1500
    observer.closed(CloseReason.COMPLETED, 1550, 500, 12.0)  # the session's totals
    after = parse_samples(exposed(metrics))
    assert sample(after, bytes_total, listener="relay", direction="client_to_backend") == 1550
    assert sample(after, bytes_total, listener="relay", direction="backend_to_client") == 500


def test_no_label_holds_an_address_whatever_was_counted() -> None:
    metrics = Metrics()
    one = metrics.listener(listener("auto", TlsMode.AUTO))
    observer = SessionObserver(get_logger(peer="203.0.113.9:40000"), one)
    observer.accepted()
    observer.tls_established("TLSv1.3", "TLS_AES_256_GCM_SHA384", "mail.test", 0.01)
    observer.backend_connected(0.001, Endpoint("192.0.2.1", 25))
    observer.backend_failed(BackendFailureReason.REFUSED, "refused", endpoint="192.0.2.2:25")
    observer.closed(CloseReason.COMPLETED, 10, 10, 1.0)
    metrics.certificates_loaded([certificate("mail.test", "CN=mail.test", days_left=30)])
    values = label_values(parse_samples(exposed(metrics)))
    addresses = {v for vs in values.values() for v in vs if _looks_like_an_address(v)}
    assert addresses == set()
    assert values["listener"] == {"auto"}


# ---- [metrics] in the config -----------------------------------------------------------------

MINIMAL: dict[str, object] = {
    "listener": [
        {
            "name": "plain",
            "listen": "127.0.0.1:2500",
            "protocol": "smtp",
            "tls": "none",
            "backend": "127.0.0.1:2525",
        }
    ]
}


def test_no_metrics_table_means_no_endpoint(tmp_path: Path) -> None:
    config = parse_config(MINIMAL, tmp_path / "tlsgate.toml")
    assert config.metrics is None
    assert start_metrics_endpoint(config, Metrics()) is None


def test_an_empty_metrics_table_listens_on_the_default(tmp_path: Path) -> None:
    config = parse_config({**MINIMAL, "metrics": {}}, tmp_path / "tlsgate.toml")
    assert config.metrics == MetricsConfig(listen=Endpoint("127.0.0.1", 9464))


def test_metrics_listen_takes_an_ipv6_endpoint(tmp_path: Path) -> None:
    config = parse_config({**MINIMAL, "metrics": {"listen": "[::1]:9100"}}, tmp_path / "x.toml")
    assert config.metrics == MetricsConfig(listen=Endpoint("::1", 9100))


# ---- the endpoint -----------------------------------------------------------------------------


def _config_listening_on(tmp_path: Path, listen: str) -> Config:
    return parse_config({**MINIMAL, "metrics": {"listen": listen}}, tmp_path / "tlsgate.toml")


def test_endpoint_serves_the_registry_over_http_until_closed(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.config_reload(ReloadResult.SUCCESS)
    with capture_logs() as logs:
        endpoint = start_metrics_endpoint(_config_listening_on(tmp_path, "127.0.0.1:0"), metrics)
    assert endpoint is not None
    host, port = endpoint.address
    try:
        content_type, body = scrape(f"http://{host}:{port}/metrics")
        assert content_type.startswith("text/plain; version=0.0.4")
        samples = parse_samples(body)
        assert sample(samples, "tlsgate_config_reloads_total", result="success") == 1
    finally:
        endpoint.close()
    assert logs == [
        {
            "event": "metrics_listening",
            "address": f"127.0.0.1:{port}",
            "path": "/metrics",
            "log_level": "info",
        }
    ]
    with socket.socket() as probe:
        assert probe.connect_ex((host, port)) != 0  # closed: the port is free again


def test_a_metrics_port_in_use_is_a_runtime_error_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = _config_listening_on(tmp_path, f"127.0.0.1:{port}")
        with pytest.raises(MetricsEndpointError) as caught:
            start_metrics_endpoint(config, Metrics())
    assert isinstance(caught.value, OSError)  # the CLI's exit 1 path
    assert str(caught.value).startswith(f"[metrics] listen: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in str(caught.value)
