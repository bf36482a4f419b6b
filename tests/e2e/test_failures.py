"""Failures are answered, not dropped: backend down, TLS handshakes that fail or stall,
garbage, over-long lines, idle clients, resets, and the structured log of each.

Real sockets on loopback and real TLS against a gateway running in a background thread. The
log is captured in-process with `structlog.testing.capture_logs()` for the whole module, and a
test finds its own session in it by the client's local port (the `peer` of `accepted`).
"""

from __future__ import annotations

import base64
import random
import socket
import ssl
import struct
import time
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from types import TracebackType
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import CertFiles
from tests.helpers.gateway import (
    DEAD_BACKEND,
    POP3_BACKEND,
    SMTP_BACKEND,
    Gateway,
    running_gateway,
)
from tests.helpers.hello import client_hello

IO_TIMEOUT_SECONDS = 10.0
# handshake_timeout and idle_timeout below are 1 s; CONTRACT.md: test bounds are generous.
SHORT_TIMEOUT_SECONDS = 1.0
CLOSE_BOUND_SECONDS = 5.0
LOG_WAIT_SECONDS = 5.0
MAX_LINE_BEFORE_TLS = 4096

LISTENERS: list[dict[str, object]] = [
    {
        "name": "submission",
        "protocol": "smtp",
        "tls": "starttls",
        "backend": SMTP_BACKEND,
        "handshake_timeout": SHORT_TIMEOUT_SECONDS,
    },
    {"name": "smtp-plain", "protocol": "smtp", "tls": "none", "backend": SMTP_BACKEND},
    {
        "name": "smtps",
        "protocol": "smtp",
        "tls": "implicit",
        "backend": SMTP_BACKEND,
        "handshake_timeout": SHORT_TIMEOUT_SECONDS,
    },
    {"name": "smtp-auto", "protocol": "smtp", "tls": "auto", "backend": SMTP_BACKEND},
    {"name": "pop3", "protocol": "pop3", "tls": "starttls", "backend": POP3_BACKEND},
    {"name": "smtp-dead", "protocol": "smtp", "tls": "starttls", "backend": DEAD_BACKEND},
    {"name": "smtps-dead", "protocol": "smtp", "tls": "implicit", "backend": DEAD_BACKEND},
    {"name": "pop3-dead", "protocol": "pop3", "tls": "starttls", "backend": DEAD_BACKEND},
    {
        "name": "smtp-idle",
        "protocol": "smtp",
        "tls": "starttls",
        "backend": SMTP_BACKEND,
        "idle_timeout": SHORT_TIMEOUT_SECONDS,
    },
    {
        "name": "pop3-idle",
        "protocol": "pop3",
        "tls": "starttls",
        "backend": POP3_BACKEND,
        "idle_timeout": SHORT_TIMEOUT_SECONDS,
    },
    {
        "name": "tcp-idle",
        "protocol": "tcp",
        "tls": "implicit",
        "backend": SMTP_BACKEND,
        "idle_timeout": SHORT_TIMEOUT_SECONDS,
    },
]

LogEntries = list[MutableMapping[str, Any]]


@pytest.fixture(scope="module")
def logs() -> Iterator[LogEntries]:
    """Every structlog event of this module's gateway (started inside the capture)."""
    with capture_logs() as entries:
        yield entries


@pytest.fixture(scope="module")
def gateway(
    logs: LogEntries, cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with running_gateway(
        LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("failures") / "tlsgate.toml",
    ) as running:
        yield running


class Wire:
    """A blocking line client on a plain or TLS socket; reads only what it needs."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=IO_TIMEOUT_SECONDS
        )
        self.local_port: int = self.sock.getsockname()[1]
        self.buffer = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unterminated: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def reply(self) -> bytes:
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"".join(lines)

    def smtp(self, command: bytes) -> bytes:
        self.send(command + b"\r\n")
        return self.reply()

    def start_tls(self, context: ssl.SSLContext) -> None:
        assert self.buffer == b"", f"unread bytes before the handshake: {self.buffer!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def read_to_end(self) -> bytes:
        """Everything until the server closes (EOF or, over TLS, close_notify)."""
        data, self.buffer = self.buffer, b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def assert_closed_within(self, seconds: float) -> tuple[bytes, float]:
        """Wait for the server to close; returns what arrived first and how long it took."""
        started = time.monotonic()
        try:
            data = self.read_to_end()
        except ConnectionResetError:
            data = b"<reset>"
        return data, time.monotonic() - started


def session_log(logs: LogEntries, wire: Wire, *, until: str = "closed") -> LogEntries:
    """The events of `wire`'s session, once its `until` event has been logged."""
    peer = f"127.0.0.1:{wire.local_port}"
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        entries = list(logs)
        conn_ids = [e["conn_id"] for e in entries if e["event"] == "accepted" and e["peer"] == peer]
        if conn_ids:
            mine = [e for e in entries if e.get("conn_id") == conn_ids[-1]]
            if any(e["event"] == until for e in mine):
                return mine
        assert time.monotonic() < deadline, f"no {until!r} for {peer}: {entries[-10:]}"
        time.sleep(0.01)


def only(events: LogEntries, name: str) -> MutableMapping[str, Any]:
    found = [e for e in events if e["event"] == name]
    assert len(found) == 1, f"{name}: {events}"
    return found[0]


def smtp_session_works(gateway: Gateway, cert_files: CertFiles) -> None:
    """One complete implicit-TLS session: the daemon is still serving."""
    with Wire(gateway.port("smtps")) as wire:
        wire.start_tls(cert_files.client_context())
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"EHLO still-alive.test").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")


# ---- backend down -------------------------------------------------------------------------


def test_smtp_backend_down_gets_421_4_3_2_then_close(gateway: Gateway, logs: LogEntries) -> None:
    with Wire(gateway.port("smtp-dead")) as wire:
        reply = wire.reply()
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
    assert reply.startswith(b"421 4.3.2 "), reply
    assert rest == b""
    assert only(session_log(logs, wire), "closed")["reason"] == "backend_unavailable"


def test_log_backend_failed_says_the_connection_was_refused(
    gateway: Gateway, logs: LogEntries
) -> None:
    with Wire(gateway.port("smtp-dead")) as wire:
        assert wire.reply().startswith(b"421 ")
    failed = only(session_log(logs, wire), "backend_failed")
    assert failed["reason"] == "refused", failed
    assert failed["backend"].startswith("127.0.0.1:"), failed


def test_pop3_backend_down_gets_err_sys_temp_then_close(gateway: Gateway) -> None:
    with Wire(gateway.port("pop3-dead")) as wire:
        reply = wire.line()
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
    assert reply.startswith(b"-ERR [SYS/TEMP] "), reply
    assert rest == b""


def test_implicit_tls_backend_down_gets_421_inside_tls(
    gateway: Gateway, cert_files: CertFiles, logs: LogEntries
) -> None:
    with Wire(gateway.port("smtps-dead")) as wire:
        wire.start_tls(cert_files.client_context())
        assert isinstance(wire.sock, ssl.SSLSocket)
        version = wire.sock.version()
        reply = wire.reply()
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
    assert version in ("TLSv1.2", "TLSv1.3")
    assert reply.startswith(b"421 4.3.2 "), reply
    assert rest == b""
    events = session_log(logs, wire)
    assert [e["event"] for e in events][:2] == ["accepted", "tls_established"]


# ---- TLS handshake failures ---------------------------------------------------------------


def test_handshake_timeout_closes_a_silent_client(gateway: Gateway, logs: LogEntries) -> None:
    with Wire(gateway.port("smtps")) as wire:
        received, elapsed = wire.assert_closed_within(CLOSE_BOUND_SECONDS + IO_TIMEOUT_SECONDS)
    assert received == b""
    assert SHORT_TIMEOUT_SECONDS * 0.5 <= elapsed < CLOSE_BOUND_SECONDS
    events = session_log(logs, wire)
    assert only(events, "handshake_failed")["reason"] == "timeout"
    assert only(events, "closed")["reason"] == "handshake_failed"
    assert "backend_connected" not in [e["event"] for e in events]


def test_handshake_timeout_closes_a_client_that_stops_mid_hello(
    gateway: Gateway, logs: LogEntries
) -> None:
    with Wire(gateway.port("smtps")) as wire:
        wire.send(client_hello()[:40])
        received, elapsed = wire.assert_closed_within(CLOSE_BOUND_SECONDS + IO_TIMEOUT_SECONDS)
    assert received == b""
    assert SHORT_TIMEOUT_SECONDS * 0.5 <= elapsed < CLOSE_BOUND_SECONDS
    assert only(session_log(logs, wire), "handshake_failed")["reason"] == "timeout"


def test_handshake_timeout_closes_a_client_that_says_starttls_and_no_hello(
    gateway: Gateway, logs: LogEntries
) -> None:
    with Wire(gateway.port("submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"STARTTLS").startswith(b"220 ")
        received, elapsed = wire.assert_closed_within(CLOSE_BOUND_SECONDS + IO_TIMEOUT_SECONDS)
    assert received == b""
    assert SHORT_TIMEOUT_SECONDS * 0.5 <= elapsed < CLOSE_BOUND_SECONDS
    assert only(session_log(logs, wire), "handshake_failed")["reason"] == "timeout"


@pytest.mark.parametrize(
    "garbage",
    [b"EHLO x\r\n", b"\x00" + random.Random(2).randbytes(300)],
    ids=["plaintext-ehlo", "random-bytes"],
)
def test_garbage_instead_of_a_client_hello_is_closed_and_the_daemon_keeps_serving(
    gateway: Gateway, cert_files: CertFiles, logs: LogEntries, garbage: bytes
) -> None:
    with Wire(gateway.port("smtps")) as wire:
        wire.send(garbage)
        received, elapsed = wire.assert_closed_within(CLOSE_BOUND_SECONDS + IO_TIMEOUT_SECONDS)
    assert not received.startswith(b"220"), received  # never a plaintext greeting
    assert received != b"<reset>"
    assert elapsed < CLOSE_BOUND_SECONDS
    events = session_log(logs, wire)
    assert only(events, "handshake_failed")["reason"] == "not_tls"
    smtp_session_works(gateway, cert_files)


def _unverified_client() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def old_versions_only() -> ssl.SSLContext:
    """Offers TLS 1.0 and 1.1 only: below the default floor of TLS 1.2."""
    context = _unverified_client()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated versions: the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def rsa_suites_only() -> ssl.SSLContext:
    """TLS 1.2 with RSA-authenticated suites only; trustme's server key is ECDSA."""
    context = _unverified_client()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    return context


def trusting_nobody() -> ssl.SSLContext:
    """Verifies the server against an empty trust store, so it sends unknown_ca."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        (old_versions_only, "protocol_version"),
        (rsa_suites_only, "no_shared_cipher"),
        (trusting_nobody, "unknown_ca"),
    ],
)
def test_failed_handshake_is_logged_with_its_reason(
    gateway: Gateway, logs: LogEntries, client: Callable[[], ssl.SSLContext], reason: str
) -> None:
    with Wire(gateway.port("smtps")) as wire, pytest.raises(ssl.SSLError):
        wire.start_tls(client())
    events = session_log(logs, wire)
    assert only(events, "handshake_failed")["reason"] == reason
    assert only(events, "closed")["reason"] == "handshake_failed"


# ---- over-long lines ----------------------------------------------------------------------


def test_smtp_line_over_4_kib_before_tls_gets_500_5_5_2_and_close(
    gateway: Gateway, logs: LogEntries
) -> None:
    with Wire(gateway.port("submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        wire.send(b"EHLO " + b"x" * MAX_LINE_BEFORE_TLS)  # no line ending, ever
        reply = wire.reply()
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
    assert reply.startswith(b"500 5.5.2 "), reply
    assert rest == b""
    assert only(session_log(logs, wire), "closed")["reason"] == "protocol_error"


def test_pop3_line_over_4_kib_before_tls_gets_err_and_close(gateway: Gateway) -> None:
    with Wire(gateway.port("pop3")) as wire:
        assert wire.line().startswith(b"+OK")
        wire.send(b"USER " + b"x" * MAX_LINE_BEFORE_TLS)
        reply = wire.line()
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
    assert reply.startswith(b"-ERR "), reply
    assert rest == b""


def test_smtp_line_of_4_kib_with_its_ending_is_not_too_long(gateway: Gateway) -> None:
    # The limit is on what is buffered without a line ending: a 4 KiB line is refused by the
    # backend as a command, not by tlsgate as an attack.
    with Wire(gateway.port("submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        reply = wire.smtp(b"NOOP " + b"x" * (MAX_LINE_BEFORE_TLS - 7))
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply.startswith(b"250"), reply


def test_smtp_line_over_64_kib_inside_tls_gets_500_5_5_2_and_close(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with Wire(gateway.port("submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"STARTTLS").startswith(b"220 ")
        wire.start_tls(cert_files.client_context())
        wire.send(b"NOOP " + b"x" * 70_000)  # bounded memory after TLS too
        reply = wire.reply()
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
    assert reply.startswith(b"500 5.5.2 "), reply
    assert rest == b""


# ---- idle timeout -------------------------------------------------------------------------


def test_idle_smtp_session_gets_421_4_4_2_then_close(gateway: Gateway, logs: LogEntries) -> None:
    with Wire(gateway.port("smtp-idle")) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"EHLO idle.test").startswith(b"250")
        started = time.monotonic()
        reply = wire.reply()
        elapsed = time.monotonic() - started
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
    assert reply.startswith(b"421 4.4.2 "), reply
    assert SHORT_TIMEOUT_SECONDS * 0.5 <= elapsed < CLOSE_BOUND_SECONDS
    assert rest == b""
    assert only(session_log(logs, wire), "closed")["reason"] == "idle_timeout"


def test_idle_pop3_session_gets_err_then_close(gateway: Gateway) -> None:
    with Wire(gateway.port("pop3-idle")) as wire:
        assert wire.line().startswith(b"+OK")
        started = time.monotonic()
        reply = wire.line()
        elapsed = time.monotonic() - started
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
    assert reply.startswith(b"-ERR "), reply
    assert elapsed < CLOSE_BOUND_SECONDS
    assert rest == b""


def test_idle_timeout_also_ends_a_session_inside_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with Wire(gateway.port("smtp-idle")) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"STARTTLS").startswith(b"220 ")
        wire.start_tls(cert_files.client_context())
        reply = wire.reply()
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
    assert reply.startswith(b"421 4.4.2 "), reply
    assert rest == b""


def test_idle_timeout_ends_a_plain_relay_and_counts_what_it_relayed(
    gateway: Gateway, cert_files: CertFiles, logs: LogEntries
) -> None:
    with Wire(gateway.port("tcp-idle")) as wire:
        wire.start_tls(cert_files.client_context())
        greeting = wire.line()  # relayed as opaque bytes (protocol = "tcp")
        started = time.monotonic()
        rest, _ = wire.assert_closed_within(CLOSE_BOUND_SECONDS)
        elapsed = time.monotonic() - started
    assert greeting.startswith(b"220 ")
    assert rest == b""  # no protocol goodbye on an opaque relay
    assert SHORT_TIMEOUT_SECONDS * 0.5 <= elapsed < CLOSE_BOUND_SECONDS
    closed = only(session_log(logs, wire), "closed")
    assert closed["reason"] == "idle_timeout"
    assert closed["bytes_backend_to_client"] == len(greeting)


# ---- resets -------------------------------------------------------------------------------


def test_client_reset_mid_session_does_not_disturb_a_concurrent_session(
    gateway: Gateway, cert_files: CertFiles, logs: LogEntries
) -> None:
    messages = len(gateway.store.messages)
    with Wire(gateway.port("submission")) as steady, Wire(gateway.port("submission")) as doomed:
        for wire in (steady, doomed):
            assert wire.reply().startswith(b"220 ")
            assert wire.smtp(b"EHLO reset.test").startswith(b"250")
            assert wire.smtp(b"STARTTLS").startswith(b"220 ")
            wire.start_tls(cert_files.client_context())
            assert wire.smtp(b"EHLO reset.test").startswith(b"250")
        assert doomed.smtp(b"MAIL FROM:<doomed@x>").startswith(b"250")
        assert steady.smtp(b"MAIL FROM:<steady@x>").startswith(b"250")
        doomed.send(b"RCPT TO:<demo@localhost>\r\nDATA\r\n")
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        doomed.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        doomed.sock.close()
        assert steady.smtp(b"RCPT TO:<demo@localhost>").startswith(b"250")
        assert steady.smtp(b"DATA").startswith(b"354")
        assert steady.smtp(b"Subject: steady\r\n\r\nstill here\r\n.").startswith(b"250")
        assert steady.smtp(b"QUIT").startswith(b"221")
    assert [m.mail_from for m in gateway.store.messages[messages:]] == ["steady@x"]
    assert only(session_log(logs, doomed), "closed")["reason"] == "client_reset"
    smtp_session_works(gateway, cert_files)


# ---- the structured log -------------------------------------------------------------------


def test_log_accepted_names_the_peer_and_the_listener(gateway: Gateway, logs: LogEntries) -> None:
    with Wire(gateway.port("submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"QUIT").startswith(b"221")
    accepted = only(session_log(logs, wire), "accepted")
    assert accepted["peer"] == f"127.0.0.1:{wire.local_port}"
    assert accepted["listener"] == "submission"
    assert accepted["conn_id"]


@pytest.mark.parametrize("kind", ["tls", "plaintext"])
def test_log_detected_says_what_the_auto_listener_saw(
    gateway: Gateway, cert_files: CertFiles, logs: LogEntries, kind: str
) -> None:
    with Wire(gateway.port("smtp-auto")) as wire:
        if kind == "tls":
            wire.start_tls(cert_files.client_context())
        assert wire.reply().startswith(b"220 ")  # plaintext: after detect_timeout of silence
        assert wire.smtp(b"QUIT").startswith(b"221")
    events = session_log(logs, wire)
    assert only(events, "detected")["kind"] == kind
    assert ("tls_established" in [e["event"] for e in events]) is (kind == "tls")


def test_log_detected_early_talker_on_the_auto_listener(gateway: Gateway, logs: LogEntries) -> None:
    with Wire(gateway.port("smtp-auto")) as wire:
        wire.send(b"EHLO early.test\r\n")
        assert wire.reply().startswith(b"220 ")
        assert wire.reply().startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert only(session_log(logs, wire), "detected")["kind"] == "early_talker"


def test_log_tls_established_has_version_cipher_and_handshake_ms(
    gateway: Gateway, cert_files: CertFiles, logs: LogEntries
) -> None:
    with Wire(gateway.port("smtps")) as wire:
        wire.start_tls(cert_files.client_context())
        assert isinstance(wire.sock, ssl.SSLSocket)
        cipher, version = wire.sock.cipher(), wire.sock.version()
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"QUIT").startswith(b"221")
    established = only(session_log(logs, wire), "tls_established")
    assert cipher is not None
    assert established["version"] == version
    assert established["cipher"] == cipher[0]
    assert established["sni"] == "localhost"
    assert isinstance(established["handshake_ms"], float | int)
    assert 0 <= established["handshake_ms"] < CLOSE_BOUND_SECONDS * 1000


def test_log_starttls_and_backend_connected_in_session_order(
    gateway: Gateway, cert_files: CertFiles, logs: LogEntries
) -> None:
    with Wire(gateway.port("submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"EHLO order.test").startswith(b"250")
        assert wire.smtp(b"STARTTLS").startswith(b"220 ")
        wire.start_tls(cert_files.client_context())
        assert wire.smtp(b"EHLO order.test").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")
    events = session_log(logs, wire)
    stages = ["accepted", "backend_connected", "tls_established", "starttls", "closed"]
    assert [e["event"] for e in events if e["event"] in stages] == stages
    backend = gateway.config.listeners[0].backend[0]
    assert only(events, "backend_connected")["backend"] == str(backend)


def test_log_closed_has_bytes_each_way_duration_and_reason(
    gateway: Gateway, logs: LogEntries
) -> None:
    # tls = "none" and a backend without STARTTLS: EHLO passes unchanged, so the bytes counted
    # each way are exactly what this client sent and received.
    sent = b"EHLO bytes.test\r\nNOOP\r\nQUIT\r\n"
    with Wire(gateway.port("smtp-plain")) as wire:
        wire.send(sent)
        received = wire.read_to_end()
    closed = only(session_log(logs, wire), "closed")
    assert closed["reason"] == "completed"
    assert closed["bytes_client_to_backend"] == len(sent)
    assert closed["bytes_backend_to_client"] == len(received)
    assert received.endswith(b"221 2.0.0 legacy.localdomain closing connection\r\n")
    assert isinstance(closed["duration_ms"], int)
    assert 0 <= closed["duration_ms"] < CLOSE_BOUND_SECONDS * 1000


def test_log_starttls_injection_counts_the_discarded_bytes(
    gateway: Gateway, cert_files: CertFiles, logs: LogEntries
) -> None:
    injected = b"RSET\r\nMAIL FROM:<evil@x>\r\n"
    with Wire(gateway.port("submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        wire.send(b"STARTTLS\r\n" + injected)
        assert wire.reply().startswith(b"220 ")
        wire.start_tls(cert_files.client_context())
        assert wire.smtp(b"QUIT").startswith(b"221")
    events = session_log(logs, wire)
    injection = only(events, "starttls_injection")
    assert injection["bytes"] == len(injected)
    assert injection["log_level"] == "warning"
    assert "evil" not in repr(events)  # the discarded bytes themselves are not logged


def test_log_never_holds_an_auth_password(
    gateway: Gateway, cert_files: CertFiles, logs: LogEntries
) -> None:
    plain = base64.b64encode(b"\0demo\0demo-password")
    with Wire(gateway.port("submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"EHLO secret.test").startswith(b"250")
        assert wire.smtp(b"AUTH PLAIN " + plain).startswith(b"538")  # refused in the clear
        assert wire.smtp(b"STARTTLS").startswith(b"220 ")
        wire.start_tls(cert_files.client_context())
        assert wire.smtp(b"EHLO secret.test").startswith(b"250")
        assert wire.smtp(b"AUTH PLAIN " + plain).startswith(b"235")
    events = session_log(logs, wire)
    text = repr(events)
    for secret in (b"demo-password", plain):
        assert secret.decode() not in text
