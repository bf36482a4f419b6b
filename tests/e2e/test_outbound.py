"""Outbound: a plaintext client behind tlsgate reaches a relay over verified TLS (issue 4).

The relays are tlsgate's own inbound listeners (a module-wide gateway in front of the legacy
backends), and TLS servers nobody here wrote: stunnel4 and `openssl s_server`. The clients on
the plaintext side are Python's smtplib and poplib. Misbehaving relays (response injection,
STARTTLS refused) are scripted on a raw socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme
from structlog.testing import capture_logs

from tests.conftest import CertFiles
from tests.helpers.certs import issue
from tests.helpers.gateway import (
    DEAD_BACKEND,
    POP3_BACKEND,
    SMTP_BACKEND,
    Gateway,
    ListenerSpec,
    _dead_port,
    running_gateway,
)
from tests.helpers.tools import DEMO_PASSWORD, DEMO_USER, deliveries_containing, requires_openssl

CLIENT_TIMEOUT_SECONDS = 10.0
LOG_WAIT_SECONDS = 5.0
LogEntries = list[MutableMapping[str, Any]]

RELAY_LISTENERS: list[ListenerSpec] = [
    {"name": "relay-smtps", "protocol": "smtp", "tls": "implicit", "backend": SMTP_BACKEND},
    {"name": "relay-submission", "protocol": "smtp", "tls": "starttls", "backend": SMTP_BACKEND},
    {"name": "relay-pop3s", "protocol": "pop3", "tls": "implicit", "backend": POP3_BACKEND},
    {"name": "relay-pop3", "protocol": "pop3", "tls": "starttls", "backend": POP3_BACKEND},
    # Relays that offer no STARTTLS/STLS: what a stripping man in the middle makes of one.
    {"name": "relay-plain-smtp", "protocol": "smtp", "tls": "none", "backend": SMTP_BACKEND},
    {"name": "relay-plain-pop3", "protocol": "pop3", "tls": "none", "backend": POP3_BACKEND},
]

requires_stunnel = pytest.mark.skipif(
    shutil.which("stunnel4") is None and shutil.which("stunnel") is None,
    reason="`stunnel4` is not installed (Debian: apt-get install stunnel4); .ci/run installs it",
)


@pytest.fixture(scope="module")
def relay(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(
        RELAY_LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("relay") / "tlsgate.toml",
    ) as running:
        yield running


@pytest.fixture
def logs() -> Iterator[LogEntries]:
    with capture_logs() as entries:
        yield entries


@contextlib.contextmanager
def outbound(
    cert_files: CertFiles, tmp_path: Path, backend: object, **keys: object
) -> Iterator[int]:
    """A gateway with one outbound listener "out" (client side in the clear by default);
    yields its port."""
    spec: dict[str, object] = {
        "name": "out",
        "protocol": "smtp",
        "tls": "none",
        "backend": backend,
        "backend_tls": "implicit",
        "backend_ca": str(cert_files.ca_file),
        "connect_timeout": 5.0,
        **keys,
    }
    with running_gateway(
        [spec], **cert_files.gateway_files(), source=tmp_path / "outbound.toml"
    ) as gateway:
        yield gateway.port("out")


def at(gateway: Gateway, listener: str) -> str:
    return f"127.0.0.1:{gateway.port(listener)}"


def first_line(port: int, context: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT_SECONDS) as raw:
        if context is None:
            return _read_line(raw)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return _read_line(tls)


def send_marked_mail(port: int, *, login: bool = False, body_size: int = 0) -> str:
    marker = uuid.uuid4().hex
    body = f"Subject: {marker}\r\n\r\nhello {marker}\r\n" + "x" * body_size
    with smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        client.ehlo()
        if login:
            client.login(DEMO_USER, DEMO_PASSWORD)
        client.sendmail("sender@example.test", ["demo@example.test"], body)
    return marker


def out_events(logs: LogEntries, name: str, *, sessions: int = 1) -> LogEntries:
    """The `name` events of the outbound listener, once `sessions` sessions have closed."""
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        mine = [e for e in list(logs) if e.get("listener") == "out"]
        closed = sum(e["event"] == "closed" for e in mine)
        if closed >= sessions or time.monotonic() > deadline:
            return [e for e in mine if e["event"] == name]
        time.sleep(0.02)


def assert_tempfail_421_4_7_0(port: int) -> None:
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT_SECONDS)
    assert refused.value.smtp_code == 421
    error: object = refused.value.smtp_error  # typeshed says str; smtplib gives bytes
    assert isinstance(error, bytes)
    assert error.startswith(b"4.7.0 "), error


# ---- implicit TLS and STARTTLS to tlsgate's own inbound listeners ---------------------------


def test_smtp_over_implicit_tls_delivers_and_the_greeting_passes_unchanged(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    with outbound(cert_files, tmp_path, at(relay, "relay-smtps")) as port:
        greeting = first_line(port)
        marker = send_marked_mail(port, login=True)
    assert greeting == first_line(relay.port("relay-smtps"), cert_files.client_context())
    assert greeting.startswith(b"220 legacy.localdomain ESMTP Sendmail"), greeting
    assert len(deliveries_containing(relay.store, marker)) == 1
    connected = out_events(logs, "backend_connected")
    assert connected, logs
    assert connected[0]["tls_version"] in {"TLSv1.2", "TLSv1.3"}, connected


def test_smtp_over_starttls_hands_over_the_relay_greeting_after_the_handshake(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    backend = at(relay, "relay-submission")
    with (
        outbound(cert_files, tmp_path, backend, backend_tls="starttls") as port,
        smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT_SECONDS) as client,
    ):
        code, _ = client.ehlo()
        assert code == 250
        # Inside TLS the relay (auth_requires_tls) offers AUTH, and STARTTLS no more.
        assert client.has_extn("auth")
        assert not client.has_extn("starttls")
        client.login(DEMO_USER, DEMO_PASSWORD)
        marker = uuid.uuid4().hex
        client.sendmail("a@example.test", ["demo@example.test"], f"Subject: {marker}\r\n\r\n")
    assert len(deliveries_containing(relay.store, marker)) == 1
    relay_tls = [e for e in logs if e.get("listener") == "relay-submission"]
    assert any(e["event"] == "starttls" for e in relay_tls), relay_tls
    assert any(e["event"] == "tls_established" for e in relay_tls), relay_tls


@pytest.mark.parametrize(
    ("relay_listener", "backend_tls"),
    [("relay-pop3s", "implicit"), ("relay-pop3", "starttls")],
)
def test_pop3_over_tls_retrieves_a_message(
    relay: Gateway,
    cert_files: CertFiles,
    tmp_path: Path,
    relay_listener: str,
    backend_tls: str,
) -> None:
    marker = uuid.uuid4().hex.encode()
    relay.store.add(DEMO_USER, b"Subject: pop\r\n\r\n" + marker + b"\r\n")
    backend = at(relay, relay_listener)
    with outbound(cert_files, tmp_path, backend, protocol="pop3", backend_tls=backend_tls) as port:
        client = poplib.POP3("127.0.0.1", port, timeout=CLIENT_TIMEOUT_SECONDS)
        try:
            assert client.getwelcome().startswith(b"+OK")
            client.user(DEMO_USER)
            client.pass_(DEMO_PASSWORD)
            count, _ = client.stat()
            lines = [b"\n".join(client.retr(i + 1)[1]) for i in range(count)]
        finally:
            client.quit()
    assert any(marker in message for message in lines)


def test_tls_on_both_sides(relay: Gateway, cert_files: CertFiles, tmp_path: Path) -> None:
    # TLS 1.2 (say, an old client) in, TLS 1.3 out: each side negotiates on its own.
    with (
        outbound(
            cert_files, tmp_path, at(relay, "relay-smtps"), tls="implicit", max_version="TLSv1.2"
        ) as port,
        smtplib.SMTP_SSL(
            "127.0.0.1", port, context=cert_files.client_context(), timeout=CLIENT_TIMEOUT_SECONDS
        ) as client,
    ):
        assert client.sock.version() == "TLSv1.2"  # type: ignore[union-attr]
        marker = uuid.uuid4().hex
        client.sendmail("a@example.test", ["demo@example.test"], f"Subject: {marker}\r\n\r\n")
    assert len(deliveries_containing(relay.store, marker)) == 1


def test_protocol_tcp_is_a_plain_tls_client_tunnel(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path
) -> None:
    # stunnel's client mode: bytes in, bytes out, no mail protocol in between.
    with (
        outbound(cert_files, tmp_path, at(relay, "relay-smtps"), protocol="tcp") as port,
        socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT_SECONDS) as raw,
    ):
        assert _read_line(raw).startswith(b"220 legacy.localdomain ")
        raw.sendall(b"NOOP\r\nQUIT\r\n")
        assert _read_line(raw).startswith(b"250 ")
        assert _read_line(raw).startswith(b"221 ")
        assert raw.recv(10) == b""


def test_a_20_mib_message_arrives_byte_identical(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    line = (hashlib.sha256(marker.encode()).hexdigest() * 2)[:76]
    body = f"Subject: {marker}\r\n\r\n" + "".join(
        f"{line}{index:010d}\r\n" for index in range(20 * 1024 * 1024 // 88 + 1)
    )
    backend = at(relay, "relay-submission")
    with (
        outbound(cert_files, tmp_path, backend, backend_tls="starttls") as port,
        smtplib.SMTP("127.0.0.1", port, timeout=60) as client,
    ):
        client.sendmail("a@example.test", ["demo@example.test"], body)
    [delivery] = deliveries_containing(relay.store, marker)
    assert len(delivery.body) >= 20 * 1024 * 1024
    assert hashlib.sha256(delivery.body).digest() == hashlib.sha256(body.encode()).digest()


# ---- refusals ------------------------------------------------------------------------------


def test_a_relay_that_does_not_offer_starttls_is_refused(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    backend = at(relay, "relay-plain-smtp")
    with outbound(cert_files, tmp_path, backend, backend_tls="starttls") as port:
        assert_tempfail_421_4_7_0(port)
    [failed] = out_events(logs, "backend_failed")
    assert failed["reason"] == "starttls_not_offered", failed
    assert not out_events(logs, "backend_connected")


def test_a_pop3_server_without_stls_is_refused_with_err(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    backend = at(relay, "relay-plain-pop3")
    with outbound(cert_files, tmp_path, backend, protocol="pop3", backend_tls="starttls") as port:
        greeting = first_line(port)
    assert greeting.startswith(b"-ERR [SYS/TEMP] "), greeting
    [failed] = out_events(logs, "backend_failed")
    assert failed["reason"] == "starttls_not_offered", failed


def test_a_wrong_host_name_is_refused(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    with outbound(
        cert_files,
        tmp_path,
        at(relay, "relay-smtps"),
        backend_server_name="smtp.other.example",
    ) as port:
        assert_tempfail_421_4_7_0(port)
    [failed] = out_events(logs, "backend_failed")
    assert failed["reason"] == "tls_verify", failed
    assert "mismatch" in failed["detail"].lower(), failed


def test_an_unknown_ca_is_refused(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    backend = at(relay, "relay-smtps")
    with outbound(cert_files, tmp_path, backend, backend_ca=str(other_ca)) as port:
        assert_tempfail_421_4_7_0(port)
    [failed] = out_events(logs, "backend_failed")
    assert failed["reason"] == "tls_verify", failed
    assert "issuer" in failed["detail"], failed


# ---- servers nobody here wrote -------------------------------------------------------------


@contextlib.contextmanager
def openssl_s_server(cert: Path, key: Path) -> Iterator[int]:
    """`openssl s_server` on a free port with `cert`: a TLS peer that is not tlsgate."""
    port = _dead_port()
    process = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
         "-key", str(key), "-quiet"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_port(port, process)
        yield port
    finally:
        process.kill()
        process.wait()
        assert process.stdin is not None
        process.stdin.close()


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def expired_relay_cert(cert_files: CertFiles, tmp_path: Path) -> tuple[Path, Path]:
    leaf = issue(cert_files.ca, "localhost", "127.0.0.1", days_ago=90, days_left=-1)
    cert, key = tmp_path / "expired.pem", tmp_path / "expired.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@requires_openssl
def test_an_expired_certificate_is_refused(
    cert_files: CertFiles,
    tmp_path: Path,
    logs: LogEntries,
    expired_relay_cert: tuple[Path, Path],
) -> None:
    with (
        openssl_s_server(*expired_relay_cert) as server_port,
        outbound(cert_files, tmp_path, f"127.0.0.1:{server_port}") as port,
    ):
        assert_tempfail_421_4_7_0(port)
    [failed] = out_events(logs, "backend_failed")
    assert failed["reason"] == "tls_verify", failed
    assert "expired" in failed["detail"], failed


@requires_openssl
def test_failover_past_a_dead_relay_and_an_expired_certificate(
    relay: Gateway,
    cert_files: CertFiles,
    tmp_path: Path,
    logs: LogEntries,
    expired_relay_cert: tuple[Path, Path],
) -> None:
    with openssl_s_server(*expired_relay_cert) as expired_port:
        backends = [
            f"127.0.0.1:{_dead_port()}",
            f"127.0.0.1:{expired_port}",
            at(relay, "relay-smtps"),
        ]
        with outbound(cert_files, tmp_path, backends) as port:
            marker = send_marked_mail(port)
    assert len(deliveries_containing(relay.store, marker)) == 1
    reasons = [e["reason"] for e in out_events(logs, "backend_failed")]
    assert reasons == ["refused", "tls_verify"]
    [connected] = out_events(logs, "backend_connected")
    assert connected["backend"] == backends[2]


@requires_stunnel
def test_smtp_through_stunnel4_as_the_implicit_tls_relay(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path
) -> None:
    port = _dead_port()
    config = tmp_path / "stunnel.conf"
    config.write_text(
        "foreground = yes\npid =\n[smtps]\n"
        f"accept = 127.0.0.1:{port}\nconnect = {at(relay, 'relay-plain-smtp')}\n"
        f"cert = {cert_files.cert_file}\nkey = {cert_files.key_file}\n"
    )
    binary = shutil.which("stunnel4") or shutil.which("stunnel")
    assert binary is not None
    process = subprocess.Popen(
        [binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_port(port, process)
        with outbound(cert_files, tmp_path, f"127.0.0.1:{port}") as out_port:
            marker = send_marked_mail(out_port, login=True)
    finally:
        process.kill()
        process.wait()
    assert len(deliveries_containing(relay.store, marker)) == 1


# ---- scripted relays: injection and refusal ------------------------------------------------


@contextlib.contextmanager
def scripted_relay(script: Callable[[socket.socket], None]) -> Iterator[int]:
    """A relay on a raw socket that runs `script` for every connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(CLIENT_TIMEOUT_SECONDS)
                with contextlib.suppress(OSError):
                    script(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _read_line(connection: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = connection.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def smtp_relay_answering_starttls(answer: bytes) -> Callable[[socket.socket], None]:
    def script(connection: socket.socket) -> None:
        connection.sendall(b"220 relay.example ESMTP\r\n")
        assert _read_line(connection).startswith(b"EHLO ")
        connection.sendall(b"250-relay.example\r\n250 STARTTLS\r\n")
        assert _read_line(connection) == b"STARTTLS\r\n"
        connection.sendall(answer)
        connection.recv(4096)  # the ClientHello, if one comes

    return script


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"220 go ahead\r\n250-relay.example\r\n250 AUTH PLAIN\r\n", "response_injection"),
        (b"454 4.7.0 TLS not available\r\n", "starttls_refused"),
    ],
)
def test_smtp_response_injection_and_starttls_refusal_are_refused(
    cert_files: CertFiles, tmp_path: Path, logs: LogEntries, answer: bytes, reason: str
) -> None:
    with (
        scripted_relay(smtp_relay_answering_starttls(answer)) as relay_port,
        outbound(cert_files, tmp_path, f"127.0.0.1:{relay_port}", backend_tls="starttls") as port,
    ):
        assert_tempfail_421_4_7_0(port)
    [failed] = out_events(logs, "backend_failed")
    assert failed["reason"] == reason, failed


def test_pop3_response_injection_is_refused(
    cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    def script(connection: socket.socket) -> None:
        connection.sendall(b"+OK ready\r\n")
        assert _read_line(connection) == b"STLS\r\n"
        connection.sendall(b"+OK begin TLS\r\n+OK injected\r\n")
        connection.recv(4096)

    with (
        scripted_relay(script) as relay_port,
        outbound(
            cert_files,
            tmp_path,
            f"127.0.0.1:{relay_port}",
            protocol="pop3",
            backend_tls="starttls",
        ) as port,
    ):
        greeting = first_line(port)
    assert greeting.startswith(b"-ERR [SYS/TEMP] "), greeting
    [failed] = out_events(logs, "backend_failed")
    assert failed["reason"] == "response_injection", failed


# ---- fallback policies ---------------------------------------------------------------------


def test_fallback_plaintext_continues_in_the_clear_with_a_warning(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    with outbound(
        cert_files,
        tmp_path,
        at(relay, "relay-plain-smtp"),
        backend_tls="starttls",
        backend_tls_fallback="plaintext",
    ) as port:
        marker = send_marked_mail(port, login=False)
    assert len(deliveries_containing(relay.store, marker)) == 1
    [fallback] = out_events(logs, "plaintext_fallback")
    assert fallback["log_level"] == "warning"


def test_fallback_plaintext_prefers_tls_on_a_later_relay(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    backends = [at(relay, "relay-plain-smtp"), at(relay, "relay-submission")]
    with outbound(
        cert_files, tmp_path, backends, backend_tls="starttls", backend_tls_fallback="plaintext"
    ) as port:
        send_marked_mail(port)
    assert not out_events(logs, "plaintext_fallback")
    [connected] = out_events(logs, "backend_connected")
    assert connected["backend"] == backends[1]
    assert connected["tls_version"]


def test_fallback_alternate_lets_every_second_attempt_through_in_the_clear(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    with outbound(
        cert_files,
        tmp_path,
        at(relay, "relay-plain-smtp"),
        backend_tls="starttls",
        backend_tls_fallback="alternate",
    ) as port:
        assert_tempfail_421_4_7_0(port)  # TLS failed: the MTA queues and retries
        marker = send_marked_mail(port)  # the retry goes through in the clear
        assert_tempfail_421_4_7_0(port)  # and the next attempt tries TLS again
    assert len(deliveries_containing(relay.store, marker)) == 1
    assert len(out_events(logs, "plaintext_fallback", sessions=3)) == 1


def test_no_fallback_never_sends_in_the_clear(
    relay: Gateway, cert_files: CertFiles, tmp_path: Path, logs: LogEntries
) -> None:
    backends: Sequence[str] = [at(relay, "relay-plain-smtp")]
    with outbound(cert_files, tmp_path, list(backends), backend_tls="starttls") as port:
        for _ in range(3):
            assert_tempfail_421_4_7_0(port)
    assert not out_events(logs, "plaintext_fallback", sessions=3)
    assert len(out_events(logs, "backend_failed")) == 3


def test_dead_relays_get_421_4_7_0(cert_files: CertFiles, tmp_path: Path, logs: LogEntries) -> None:
    with outbound(cert_files, tmp_path, DEAD_BACKEND) as port:
        assert_tempfail_421_4_7_0(port)
    [failed] = out_events(logs, "backend_failed")
    assert failed["reason"] == "refused"
