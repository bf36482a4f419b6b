"""TLS auto-detection end to end: one port serves implicit-TLS and plaintext clients alike.

CONTRACT.md: `detect_timeout` bounds the wait for the first byte only; a first byte of 0x16
commits to TLS however slowly the rest of the ClientHello arrives; silence takes the plaintext
path with STARTTLS offered; any other first byte is an early talker on the plaintext path.
"""

from __future__ import annotations

import poplib
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from tests.conftest import CertFiles
from tests.helpers.gateway import POP3_BACKEND, SMTP_BACKEND, Gateway, ListenerSpec, running_gateway
from tests.helpers.tools import DEMO_PASSWORD, DEMO_USER, requires_openssl, s_client

CLIENT_TIMEOUT_SECONDS = 10.0
# Short, so the silence test is quick and a 1-byte-at-a-time ClientHello outlasts it.
DETECT_TIMEOUT_SECONDS = 0.2
# The pause between the 1-byte segments of a split ClientHello.
SEGMENT_PAUSE_SECONDS = 0.001

LISTENERS: list[ListenerSpec] = [
    {
        "name": "smtp-auto",
        "protocol": "smtp",
        "tls": "auto",
        "backend": SMTP_BACKEND,
        "detect_timeout": DETECT_TIMEOUT_SECONDS,
    },
    {
        "name": "pop3-auto",
        "protocol": "pop3",
        "tls": "auto",
        "backend": POP3_BACKEND,
        "detect_timeout": DETECT_TIMEOUT_SECONDS,
    },
    {
        "name": "tcp-auto",
        "protocol": "tcp",
        "tls": "auto",
        "backend": SMTP_BACKEND,
        "detect_timeout": DETECT_TIMEOUT_SECONDS,
    },
]


@pytest.fixture(scope="module")
def gateway(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(
        LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("auto") / "tlsgate.toml",
    ) as running:
        yield running


def _message(marker: str) -> bytes:
    return f"Subject: {marker}\r\n\r\nBody of {marker}.\r\n.dot line\r\n".encode()


def _read_reply(reader: BinaryIO) -> list[bytes]:
    """One SMTP reply, all its lines, CRLF stripped."""
    lines: list[bytes] = []
    while True:
        line = reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection closed mid-reply after {lines!r} + {line!r}")
        lines.append(line[:-2])
        if line[3:4] != b"-":
            return lines


# --- both kinds of client on the same port -----------------------------------------------------


def test_smtp_ssl_delivers_through_the_auto_port(gateway: Gateway, cert_files: CertFiles) -> None:
    message = _message(f"auto-implicit-{uuid.uuid4()}")
    with smtplib.SMTP_SSL(
        "127.0.0.1",
        gateway.port("smtp-auto"),
        context=cert_files.client_context(),
        timeout=CLIENT_TIMEOUT_SECONDS,
    ) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("auth")
        assert not smtp.has_extn("starttls")
        smtp.login(DEMO_USER, DEMO_PASSWORD)
        smtp.sendmail("sender@example.test", ["auto@example.test"], message)
    assert gateway.store.messages[-1].body == message


def test_plaintext_starttls_delivers_through_the_auto_port(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = _message(f"auto-starttls-{uuid.uuid4()}")
    with smtplib.SMTP(
        "127.0.0.1", gateway.port("smtp-auto"), timeout=CLIENT_TIMEOUT_SECONDS
    ) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        smtp.starttls(context=cert_files.client_context())
        smtp.login(DEMO_USER, DEMO_PASSWORD)
        smtp.sendmail("sender@example.test", ["auto@example.test"], message)
    assert gateway.store.messages[-1].body == message


def test_pop3_ssl_and_plaintext_stls_share_the_auto_port(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    implicit = poplib.POP3_SSL(
        "127.0.0.1",
        gateway.port("pop3-auto"),
        context=cert_files.client_context(),
        timeout=CLIENT_TIMEOUT_SECONDS,
    )
    try:
        implicit_capa = implicit.capa()
    finally:
        implicit.quit()
    plaintext = poplib.POP3("127.0.0.1", gateway.port("pop3-auto"), timeout=CLIENT_TIMEOUT_SECONDS)
    try:
        plaintext_capa = plaintext.capa()
        plaintext.stls(context=cert_files.client_context())
        plaintext.user(DEMO_USER)
        plaintext.pass_(DEMO_PASSWORD)
    finally:
        plaintext.quit()
    assert "STLS" not in implicit_capa
    assert "USER" in implicit_capa
    assert "STLS" in plaintext_capa
    assert "USER" not in plaintext_capa


@requires_openssl
def test_openssl_s_client_connect_and_starttls_both_work_on_the_auto_port(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    port = gateway.port("smtp-auto")
    implicit = s_client(port, cert_files.ca_file, ["EHLO implicit.example.test", "QUIT"])
    starttls = s_client(
        port, cert_files.ca_file, ["EHLO starttls.example.test", "QUIT"], starttls="smtp"
    )
    assert implicit.returncode == 0, implicit.stderr
    assert starttls.returncode == 0, starttls.stderr
    assert implicit.stdout.startswith("220 ")
    assert "250-AUTH PLAIN LOGIN" in implicit.stdout.splitlines()
    assert starttls.stdout.startswith("250-legacy.localdomain Hello starttls.example.test")
    assert "250-AUTH PLAIN LOGIN" in starttls.stdout.splitlines()


# --- the three ways a connection starts ---------------------------------------------------------


def test_early_talker_gets_the_greeting_and_its_ehlo_reply_in_plaintext(
    gateway: Gateway,
) -> None:
    with socket.create_connection(
        ("127.0.0.1", gateway.port("smtp-auto")), timeout=CLIENT_TIMEOUT_SECONDS
    ) as sock:
        sock.sendall(b"EHLO early.example.test\r\n")  # before the greeting
        with sock.makefile("rb") as reader:
            greeting = _read_reply(reader)
            ehlo = _read_reply(reader)
            sock.sendall(b"QUIT\r\n")
            bye = _read_reply(reader)
    assert greeting[0].startswith(b"220 legacy.localdomain ESMTP")
    assert ehlo[0] == b"250-legacy.localdomain Hello early.example.test, pleased to meet you"
    assert b"250-AUTH PLAIN LOGIN" not in ehlo  # still plaintext, so AUTH stays hidden
    assert bye[0].startswith(b"221 ")
    assert gateway.smtp.transcript[-1][0] == b"EHLO early.example.test"


def test_pop3_early_talker_gets_the_greeting_and_its_capa_reply_in_plaintext(
    gateway: Gateway,
) -> None:
    with socket.create_connection(
        ("127.0.0.1", gateway.port("pop3-auto")), timeout=CLIENT_TIMEOUT_SECONDS
    ) as sock:
        sock.sendall(b"CAPA\r\n")  # before the greeting
        with sock.makefile("rb") as reader:
            greeting = reader.readline()
            capa = [reader.readline()]
            while capa[-1] not in (b".\r\n", b""):
                capa.append(reader.readline())
            sock.sendall(b"QUIT\r\n")
            bye = reader.readline()
    assert greeting.startswith(b"+OK qpopper")
    assert capa[0].startswith(b"+OK")
    assert b"USER\r\n" not in capa  # still plaintext, so USER stays hidden
    assert bye.startswith(b"+OK")


def test_silent_client_gets_the_greeting_after_detect_timeout(gateway: Gateway) -> None:
    with socket.create_connection(
        ("127.0.0.1", gateway.port("smtp-auto")), timeout=CLIENT_TIMEOUT_SECONDS
    ) as sock:
        started = time.monotonic()
        with sock.makefile("rb") as reader:
            greeting = _read_reply(reader)
            waited = time.monotonic() - started
            sock.sendall(b"EHLO silent.example.test\r\n")
            ehlo = _read_reply(reader)
            sock.sendall(b"QUIT\r\n")
            _read_reply(reader)
    assert greeting[0].startswith(b"220 ")
    # The gateway waited for a ClientHello first; the upper bound only catches a hang.
    assert DETECT_TIMEOUT_SECONDS * 0.9 <= waited < DETECT_TIMEOUT_SECONDS + 5.0
    assert b"250-STARTTLS" in ehlo or b"250 STARTTLS" in ehlo


def _tls_read(tls: ssl.SSLObject, incoming: ssl.MemoryBIO, sock: socket.socket) -> bytes:
    """Decrypted bytes, reading the socket as often as needed."""
    while True:
        try:
            return tls.read(65536)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection") from None
            incoming.write(data)


def _tls_read_replies(
    tls: ssl.SSLObject, incoming: ssl.MemoryBIO, sock: socket.socket, replies: int
) -> list[bytes]:
    data = b""
    while sum(1 for line in data.split(b"\r\n")[:-1] if line[3:4] == b" ") < replies:
        data += _tls_read(tls, incoming, sock)
    return data.split(b"\r\n")[:-1]


def test_clienthello_split_into_one_byte_segments_still_completes_the_handshake(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = cert_files.client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(
        ("127.0.0.1", gateway.port("smtp-auto")), timeout=CLIENT_TIMEOUT_SECONDS
    ) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        started = time.monotonic()
        for index in range(len(hello)):
            sock.sendall(hello[index : index + 1])
            time.sleep(SEGMENT_PAUSE_SECONDS)
        sending = time.monotonic() - started
        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            if outgoing.pending:
                sock.sendall(outgoing.read())
            if done:
                break
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection during the handshake")
            incoming.write(data)
        greeting = _tls_read_replies(tls, incoming, sock, 1)
        tls.write(b"EHLO split.example.test\r\nQUIT\r\n")
        sock.sendall(outgoing.read())
        replies = _tls_read_replies(tls, incoming, sock, 2)
    assert sending > DETECT_TIMEOUT_SECONDS  # slower than detection, yet still TLS
    assert greeting[0].startswith(b"220 ")
    assert b"250-AUTH PLAIN LOGIN" in replies  # inside TLS, so AUTH is offered
    assert replies[-1].startswith(b"221 ")


# --- a TCP relay on an auto port ----------------------------------------------------------------


def test_tcp_auto_relays_a_silent_plaintext_client(gateway: Gateway) -> None:
    with (
        socket.create_connection(
            ("127.0.0.1", gateway.port("tcp-auto")), timeout=CLIENT_TIMEOUT_SECONDS
        ) as sock,
        sock.makefile("rb") as reader,
    ):
        greeting = _read_reply(reader)
        sock.sendall(b"EHLO plain.example.test\r\n")
        ehlo = _read_reply(reader)
        sock.sendall(b"QUIT\r\n")
        bye = _read_reply(reader)
    assert greeting[0].startswith(b"220 legacy.localdomain ESMTP")
    assert b"250-AUTH PLAIN LOGIN" in ehlo  # a byte relay: nothing hidden, nothing added
    assert b"STARTTLS" not in b"".join(ehlo)
    assert bye[0].startswith(b"221 ")


def test_tcp_auto_relays_an_implicit_tls_client(gateway: Gateway, cert_files: CertFiles) -> None:
    with (
        socket.create_connection(
            ("127.0.0.1", gateway.port("tcp-auto")), timeout=CLIENT_TIMEOUT_SECONDS
        ) as raw,
        cert_files.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        tls.makefile("rb") as reader,
    ):
        greeting = _read_reply(reader)
        tls.sendall(b"EHLO tls.example.test\r\nQUIT\r\n")
        ehlo = _read_reply(reader)
        bye = _read_reply(reader)
    assert greeting[0].startswith(b"220 legacy.localdomain ESMTP")
    assert ehlo[0].startswith(b"250-legacy.localdomain Hello tls.example.test")
    assert bye[0].startswith(b"221 ")
