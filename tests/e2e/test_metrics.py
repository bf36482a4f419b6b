"""`/metrics` scraped over real HTTP after real sessions through a running gateway.

Each test gets a fresh gateway (and so fresh counters): implicit TLS, STARTTLS/STLS, failed
handshakes, a STARTTLS injection, AUTH before TLS, a backend that is down and auto-detection
are played by real clients, and the test checks the exact counts and labels a scraper sees.
A session is counted when it closes, a moment after the client hangs up, so every check
first waits until the listener's sessions have all closed (`settled`).

The last tests run the real `tlsgate run` with `[metrics]`: the endpoint it serves, reloads
counted by result, and a metrics port already in use (exit 1).
"""

from __future__ import annotations

import contextlib
import poplib
import signal
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from structlog.testing import capture_logs

from tests.conftest import CertFiles
from tests.e2e.test_attacks import Wire, greet, open_wire
from tests.e2e.test_daemon import Daemon, backend_address, tlsgate, write_config
from tests.helpers.gateway import (
    DEAD_BACKEND,
    POP3_BACKEND,
    SMTP_BACKEND,
    Gateway,
    running_gateway,
)
from tests.helpers.metrics_text import Samples, label_values, parse_samples, sample, scrape, series
from tlsgate.observe.endpoint import start_metrics_endpoint

REPO = Path(__file__).resolve().parents[2]
IO_TIMEOUT_SECONDS = 10.0
# Sessions are counted at close, just after the client hangs up; 10 s only catches a hang.
SETTLE_SECONDS = 10.0
SETTLE_POLL_SECONDS = 0.02

LISTENERS: list[dict[str, object]] = [
    {"name": "smtps", "protocol": "smtp", "tls": "implicit", "backend": SMTP_BACKEND},
    {
        "name": "smtps-tls13",
        "protocol": "smtp",
        "tls": "implicit",
        "backend": SMTP_BACKEND,
        "min_version": "TLSv1.3",
    },
    {"name": "submission", "protocol": "smtp", "tls": "starttls", "backend": SMTP_BACKEND},
    {"name": "pop3", "protocol": "pop3", "tls": "starttls", "backend": POP3_BACKEND},
    {
        "name": "auto",
        "protocol": "smtp",
        "tls": "auto",
        "backend": SMTP_BACKEND,
        "detect_timeout": 0.2,
        "handshake_timeout": 2.0,
    },
    {"name": "down", "protocol": "smtp", "tls": "starttls", "backend": DEAD_BACKEND},
]


@dataclass
class Metered:
    gateway: Gateway
    url: str
    cert_files: CertFiles

    def samples(self) -> Samples:
        return parse_samples(scrape(self.url)[1])

    def settled(self, listener: str, sessions: int) -> Samples:
        """The scrape once `sessions` sessions of `listener` have closed and none is open."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            samples = self.samples()
            closed = sum(
                value
                for labels, value in series(samples, "tlsgate_connections_total").items()
                if ("listener", listener) in labels
            )
            active = sample(samples, "tlsgate_connections_active", listener=listener)
            if closed >= sessions and active == 0:
                assert closed == sessions, f"{listener}: {closed} sessions closed, not {sessions}"
                return samples
            assert time.monotonic() < deadline, f"{listener}: {closed} closed, {active} open"
            time.sleep(SETTLE_POLL_SECONDS)

    def port(self, listener: str) -> int:
        return self.gateway.port(listener)

    def context(self) -> ssl.SSLContext:
        return self.cert_files.client_context()


@pytest.fixture
def metered(cert_files: CertFiles, tmp_path: Path) -> Iterator[Metered]:
    with running_gateway(
        LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path / "tlsgate.toml",
        extra={"metrics": {"listen": "127.0.0.1:0"}},
    ) as gateway:
        endpoint = start_metrics_endpoint(gateway.config, gateway.metrics)
        assert endpoint is not None
        host, port = endpoint.address
        try:
            yield Metered(gateway, f"http://{host}:{port}/metrics", cert_files)
        finally:
            endpoint.close()


def outcomes(samples: Samples, listener: str) -> dict[str, float]:
    """connections_total of one listener by outcome, the outcomes that happened only."""
    return {
        dict(labels)["outcome"]: value
        for labels, value in series(samples, "tlsgate_connections_total").items()
        if ("listener", listener) in labels and value
    }


def closed_event(logs: Sequence[Mapping[str, Any]], listener: str) -> Mapping[str, Any]:
    [event] = [e for e in logs if e["event"] == "closed" and e.get("listener") == listener]
    return event


# ---- sessions that succeed ------------------------------------------------------------------


def test_implicit_tls_session_is_counted_with_version_durations_and_bytes(
    metered: Metered,
) -> None:
    with capture_logs() as logs:
        with smtplib.SMTP_SSL(
            "127.0.0.1", metered.port("smtps"), context=metered.context(), timeout=10
        ) as client:
            assert client.ehlo()[0] == 250
            assert client.noop()[0] == 250
        samples = metered.settled("smtps", 1)
    assert outcomes(samples, "smtps") == {"completed": 1}
    assert sample(samples, "tlsgate_tls_handshakes_total", listener="smtps", version="TLSv1.3") == 1
    handshakes = "tlsgate_tls_handshake_duration_seconds_count"
    assert sample(samples, handshakes, listener="smtps") == 1
    # The metric and the `closed` line are one event (STYLE.md principle 4): they agree.
    closed = closed_event(logs, "smtps")
    c2b = sample(samples, "tlsgate_bytes_total", listener="smtps", direction="client_to_backend")
    b2c = sample(samples, "tlsgate_bytes_total", listener="smtps", direction="backend_to_client")
    assert (c2b, b2c) == (closed["bytes_client_to_backend"], closed["bytes_backend_to_client"])
    assert c2b
    assert b2c


def test_starttls_and_stls_are_counted_by_protocol(metered: Metered) -> None:
    with smtplib.SMTP("127.0.0.1", metered.port("submission"), timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.starttls(context=metered.context())[0] == 220
        assert smtp.ehlo()[0] == 250
    pop3 = poplib.POP3("127.0.0.1", metered.port("pop3"), timeout=10)
    pop3.stls(context=metered.context())
    pop3.quit()
    smtp_samples = metered.settled("submission", 1)
    samples = metered.settled("pop3", 1)
    starttls = "tlsgate_starttls_total"
    assert sample(smtp_samples, starttls, listener="submission", protocol="smtp") == 1
    assert sample(samples, starttls, listener="pop3", protocol="pop3") == 1
    assert outcomes(samples, "submission") == {"completed": 1}
    assert outcomes(samples, "pop3") == {"completed": 1}
    for listener in ("submission", "pop3"):
        versions = series(samples, "tlsgate_tls_handshakes_total")
        assert sum(v for labels, v in versions.items() if ("listener", listener) in labels) == 1
        assert sample(samples, "tlsgate_starttls_injection_total", listener=listener) == 0


# ---- sessions that fail -----------------------------------------------------------------------


def test_plaintext_on_an_implicit_port_counts_a_not_tls_handshake_failure(
    metered: Metered,
) -> None:
    with capture_logs() as logs:
        with socket.create_connection(("127.0.0.1", metered.port("smtps")), timeout=10) as sock:
            sock.sendall(b"EHLO plaintext.test\r\n")
            with contextlib.suppress(ConnectionError):
                while sock.recv(4096):
                    pass
        samples = metered.settled("smtps", 1)
    failures = "tlsgate_tls_handshake_failures_total"
    assert sample(samples, failures, listener="smtps", reason="not_tls") == 1
    assert outcomes(samples, "smtps") == {"handshake_failed": 1}
    assert sum(series(samples, "tlsgate_tls_handshakes_total").values()) == 0
    [failed] = [event for event in logs if event["event"] == "handshake_failed"]
    assert failed["detail"] == "WRONG_VERSION_NUMBER"  # OpenSSL's reason, for the operator


def test_a_version_mismatch_counts_a_protocol_version_failure(metered: Metered) -> None:
    context = metered.context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    port = metered.port("smtps-tls13")
    with capture_logs() as logs:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
            pytest.raises(ssl.SSLError),
        ):
            context.wrap_socket(sock, server_hostname="localhost")
        samples = metered.settled("smtps-tls13", 1)
    failures = "tlsgate_tls_handshake_failures_total"
    assert sample(samples, failures, listener="smtps-tls13", reason="protocol_version") == 1
    assert outcomes(samples, "smtps-tls13") == {"handshake_failed": 1}
    [failed] = [event for event in logs if event["event"] == "handshake_failed"]
    assert failed["detail"] == "UNSUPPORTED_PROTOCOL"
    assert failed["reason"] == "protocol_version"


def test_a_starttls_injection_attempt_is_counted(metered: Metered) -> None:
    with open_wire(metered.gateway, "submission", metered.cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO injector.test").startswith(b"250")
        wire.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x>\r\n")
        assert wire.reply() == b"220 2.0.0 Ready to start TLS\r\n"
        wire.start_tls()
        assert wire.smtp(b"QUIT").startswith(b"221")
    samples = metered.settled("submission", 1)
    assert sample(samples, "tlsgate_starttls_injection_total", listener="submission") == 1
    starttls = "tlsgate_starttls_total"
    assert sample(samples, starttls, listener="submission", protocol="smtp") == 1


def test_auth_before_tls_refused_is_counted(metered: Metered) -> None:
    with Wire(metered.port("submission"), metered.context()) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO early.test").startswith(b"250")
        assert wire.smtp(b"AUTH LOGIN").startswith(b"538")
        assert wire.smtp(b"QUIT").startswith(b"221")
    samples = metered.settled("submission", 1)
    assert sample(samples, "tlsgate_auth_before_tls_refused_total", listener="submission") == 1


def _connect_to_the_dead_backend(metered: Metered) -> Samples:
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", metered.port("down"), timeout=10)
    assert refused.value.smtp_code == 421
    return metered.settled("down", 1)


def test_a_backend_that_is_down_ends_the_session_as_backend_unavailable(
    metered: Metered,
) -> None:
    samples = _connect_to_the_dead_backend(metered)
    assert outcomes(samples, "down") == {"backend_unavailable": 1}
    connects = "tlsgate_backend_connect_duration_seconds_count"
    assert sample(samples, connects, listener="down") == 0


def test_backend_connects_are_timed_and_backend_errors_counted_by_reason(
    metered: Metered,
) -> None:
    with smtplib.SMTP_SSL(
        "127.0.0.1", metered.port("smtps"), context=metered.context(), timeout=10
    ) as client:
        client.ehlo()
    connects = "tlsgate_backend_connect_duration_seconds_count"
    assert sample(metered.settled("smtps", 1), connects, listener="smtps") == 1
    samples = _connect_to_the_dead_backend(metered)
    errors = "tlsgate_backend_errors_total"
    assert sample(samples, errors, listener="down", reason="refused") == 1


def test_auto_detection_counts_each_kind(metered: Metered) -> None:
    port = metered.port("auto")
    with smtplib.SMTP_SSL("127.0.0.1", port, context=metered.context(), timeout=10) as client:
        client.ehlo()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # waits: silence is plaintext
        client.ehlo()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as early:
        early.sendall(b"QUIT\r\n")  # before the greeting: an early talker
        with contextlib.suppress(ConnectionError):
            while early.recv(4096):
                pass
    samples = metered.settled("auto", 3)
    detected = {
        dict(labels)["kind"]: value
        for labels, value in series(samples, "tlsgate_detected_total").items()
        if ("listener", "auto") in labels
    }
    assert detected == {"tls": 1, "plaintext": 1, "early_talker": 1}


def test_a_client_stalling_inside_its_first_record_header_is_a_handshake_timeout(
    metered: Metered,
) -> None:
    # 0x80 may begin an SSLv2-format hello, so the sniffer waits for more; the contract puts
    # that wait under handshake_timeout (2 s on this listener).
    with socket.create_connection(("127.0.0.1", metered.port("auto")), timeout=20) as sock:
        sock.sendall(b"\x80")
        with contextlib.suppress(ConnectionError):
            while sock.recv(4096):
                pass
    samples = metered.settled("auto", 1)
    assert outcomes(samples, "auto") == {"handshake_failed": 1}
    failures = "tlsgate_tls_handshake_failures_total"
    assert sample(samples, failures, listener="auto", reason="timeout") == 1


# ---- labels and certificates ------------------------------------------------------------------


def test_no_label_holds_an_address_after_real_sessions(metered: Metered) -> None:
    with smtplib.SMTP_SSL(
        "127.0.0.1", metered.port("smtps"), context=metered.context(), timeout=10
    ) as client:
        client.ehlo()
    with contextlib.suppress(smtplib.SMTPConnectError):
        smtplib.SMTP("127.0.0.1", metered.port("down"), timeout=10)
    metered.settled("smtps", 1)
    values = label_values(metered.settled("down", 1))
    everything = {value for label in values.values() for value in label}
    assert not [value for value in everything if "127.0.0.1" in value or value.isdigit()]
    assert values["listener"] <= {str(spec["name"]) for spec in LISTENERS}


def test_certificate_expiry_shows_the_served_certificate(metered: Metered) -> None:
    leaf = x509.load_pem_x509_certificate(metered.cert_files.cert_file.read_bytes())
    samples = metered.samples()
    name = "tlsgate_certificate_expiry_timestamp_seconds"
    # conftest's certificate: DNS names localhost and mail.example.test (and two IP addresses,
    # which never become a label).
    assert series(samples, name) == {
        (("certificate", "localhost"), ("subject", leaf.subject.rfc4514_string())): (
            leaf.not_valid_after_utc.timestamp()
        )
    }
    assert datetime.fromtimestamp(next(iter(series(samples, name).values()))).year >= 2024


def test_the_endpoint_speaks_the_prometheus_text_format(metered: Metered) -> None:
    content_type, body = scrape(metered.url)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# TYPE tlsgate_connections_total counter" in body


# ---- the daemon --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The legacy SMTP backend the daemon tests put `tlsgate run` in front of."""
    with running_gateway(
        [{"name": "unused", "protocol": "smtp", "tls": "none", "backend": SMTP_BACKEND}],
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("metrics-daemon") / "unused.toml",
    ) as running:
        yield running


def _with_metrics(config: Path, listen: str) -> Path:
    config.write_text(config.read_text() + f'\n[metrics]\nlisten = "{listen}"\n')
    return config


def _wait_for_count(daemon: Daemon, url: str, result: str, count: int) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while sample(parse_samples(scrape(url)[1]), "tlsgate_config_reloads_total", result=result) != (
        count
    ):
        assert time.monotonic() < deadline, daemon.stderr()
        time.sleep(SETTLE_POLL_SECONDS)


def test_daemon_serves_metrics_and_counts_reloads_by_result(
    cert_files: CertFiles, backend: Gateway, tmp_path: Path
) -> None:
    config = _with_metrics(
        write_config(tmp_path, cert_files, backend_address(backend)), "127.0.0.1:0"
    )
    good = config.read_text()
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        address = daemon.wait_for_event("metrics_listening")["address"]
        url = f"http://{address}/metrics"
        samples = parse_samples(scrape(url)[1])
        assert sample(samples, "tlsgate_config_reloads_total", result="success") == 0
        assert (
            sample(samples, "tlsgate_starttls_total", listener="submission", protocol="smtp") == 0
        )
        config.write_text(good.replace('protocol = "smtp"', 'protocol = "smtp3"'))
        daemon.signal(signal.SIGHUP)
        _wait_for_count(daemon, url, "failure", 1)
        # A moved endpoint needs a restart: the reload says so, the old address keeps serving.
        config.write_text(good.replace("127.0.0.1:0", "127.0.0.1:1"))
        daemon.signal(signal.SIGHUP)
        _wait_for_count(daemon, url, "success", 1)
        reloaded = daemon.wait_for_event("config_reloaded")
        assert any("[metrics]" in warning for warning in reloaded["warnings"])
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr()
    finally:
        daemon.stop()


def test_a_metrics_port_in_use_exits_1_naming_it(
    cert_files: CertFiles, backend: Gateway, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = _with_metrics(
            write_config(tmp_path, cert_files, backend_address(backend)), f"127.0.0.1:{port}"
        )
        result = tlsgate("run", "-c", str(config), cwd=REPO)
    assert result.returncode == 1, result.stderr
    message = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert message == [
        f"tlsgate: [metrics] listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert "Traceback" not in result.stderr
