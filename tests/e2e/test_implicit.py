"""Implicit TLS end to end: SMTPS, POP3S and a TCP byte relay, driven by clients nobody here wrote.

One gateway serves the whole module. Its SMTP backend claims STARTTLS itself (a sendmail
whose certificate is missing), so every SMTPS test also shows that the keyword never reaches
a client that is already inside TLS, while the TCP listener, a pure byte relay, passes it on.
"""

from __future__ import annotations

import poplib
import smtplib
import socket
import ssl
import uuid
from collections.abc import Iterator
from typing import BinaryIO

import pytest
import trio

from tests.conftest import CertFiles
from tests.helpers.gateway import POP3_BACKEND, SMTP_BACKEND, Gateway, ListenerSpec, running_gateway
from tests.helpers.tools import (
    DEMO_PASSWORD,
    DEMO_USER,
    curl,
    deliveries_containing,
    requires_curl,
    requires_openssl,
    requires_swaks,
    s_client,
    swaks,
)
from tlsgate.net.tls_stream import TlsStream

CLIENT_TIMEOUT_SECONDS = 10.0

LISTENERS: list[ListenerSpec] = [
    {"name": "smtps", "protocol": "smtp", "tls": "implicit", "backend": SMTP_BACKEND},
    {"name": "pop3s", "protocol": "pop3", "tls": "implicit", "backend": POP3_BACKEND},
    {"name": "tcp-implicit", "protocol": "tcp", "tls": "implicit", "backend": SMTP_BACKEND},
]


@pytest.fixture(scope="module")
def gateway(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(
        LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("implicit") / "tlsgate.toml",
        smtp_options={"advertise_starttls": True},
    ) as running:
        yield running


def _message(marker: str) -> bytes:
    return (
        f"From: sender@example.test\r\nTo: implicit@example.test\r\nSubject: {marker}\r\n"
        f"\r\nBody of {marker}.\r\n.a line that starts with a dot\r\n"
    ).encode()


def _smtps(gateway: Gateway, cert_files: CertFiles) -> smtplib.SMTP_SSL:
    return smtplib.SMTP_SSL(
        "127.0.0.1",
        gateway.port("smtps"),
        context=cert_files.client_context(),
        timeout=CLIENT_TIMEOUT_SECONDS,
    )


def _pop3s(gateway: Gateway, cert_files: CertFiles) -> poplib.POP3_SSL:
    return poplib.POP3_SSL(
        "127.0.0.1",
        gateway.port("pop3s"),
        context=cert_files.client_context(),
        timeout=CLIENT_TIMEOUT_SECONDS,
    )


# --- SMTPS -------------------------------------------------------------------------------------


def test_smtp_ssl_login_and_sendmail_deliver_the_message_byte_identical(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = _message(f"smtp-ssl-{uuid.uuid4()}")
    with _smtps(gateway, cert_files) as smtp:
        smtp.login(DEMO_USER, DEMO_PASSWORD)
        refused = smtp.sendmail("sender@example.test", ["implicit@example.test"], message)
    assert refused == {}
    delivered = gateway.store.messages[-1]
    assert delivered.body == message
    assert delivered.rcpts == ("implicit@example.test",)


def test_smtp_ssl_ehlo_offers_auth(gateway: Gateway, cert_files: CertFiles) -> None:
    with _smtps(gateway, cert_files) as smtp:
        code, _ = smtp.ehlo("client.example.test")
        assert code == 250
        assert smtp.has_extn("auth")


def test_smtp_ssl_ehlo_never_offers_the_backends_starttls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with _smtps(gateway, cert_files) as smtp:
        code, _ = smtp.ehlo("client.example.test")
        assert code == 250
        assert not smtp.has_extn("starttls")
        assert smtp.has_extn("pipelining")  # the rest of the backend's list passes through


def test_smtp_ssl_with_a_tls12_only_client_delivers_the_message(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    context = cert_files.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    message = _message(f"smtp-ssl-tls12-{uuid.uuid4()}")
    with smtplib.SMTP_SSL(
        "127.0.0.1", gateway.port("smtps"), context=context, timeout=CLIENT_TIMEOUT_SECONDS
    ) as smtp:
        assert isinstance(smtp.sock, ssl.SSLSocket)
        assert smtp.sock.version() == "TLSv1.2"
        smtp.login(DEMO_USER, DEMO_PASSWORD)
        smtp.sendmail("sender@example.test", ["implicit@example.test"], message)
    assert gateway.store.messages[-1].body == message


@requires_openssl
def test_openssl_s_client_connect_gets_greeting_and_ehlo_reply_on_smtps(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    result = s_client(
        gateway.port("smtps"), cert_files.ca_file, ["EHLO client.example.test", "QUIT"]
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("220 ")
    assert "250-AUTH PLAIN LOGIN" in lines
    assert not any("STARTTLS" in line for line in lines)
    assert lines[-1].startswith("221 ")


@requires_swaks
def test_swaks_tls_on_connect_delivers_the_message(gateway: Gateway, cert_files: CertFiles) -> None:
    marker = f"swaks-tls-on-connect-{uuid.uuid4()}"
    result = swaks(
        gateway.port("smtps"),
        cert_files.ca_file,
        "--tls-on-connect",
        to="implicit@example.test",
        subject=marker,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(deliveries_containing(gateway.store, marker)) == 1


@requires_curl
def test_curl_smtps_delivers_the_message(gateway: Gateway, cert_files: CertFiles) -> None:
    marker = f"curl-smtps-{uuid.uuid4()}"
    message = _message(marker)
    result = curl(
        f"smtps://127.0.0.1:{gateway.port('smtps')}",
        cert_files.ca_file,
        "--mail-from",
        "sender@example.test",
        "--mail-rcpt",
        "implicit@example.test",
        "--upload-file",
        "-",
        stdin=message.decode(),
    )
    assert result.returncode == 0, result.stderr
    assert [d.body for d in deliveries_containing(gateway.store, marker)] == [message]


# --- POP3S -------------------------------------------------------------------------------------


def test_pop3_ssl_login_and_retr_return_the_message(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = _message(f"pop3-ssl-{uuid.uuid4()}")
    gateway.store.add(DEMO_USER, message)
    pop3 = _pop3s(gateway, cert_files)
    try:
        pop3.user(DEMO_USER)
        pop3.pass_(DEMO_PASSWORD)
        count, _ = pop3.stat()
        _, lines, octets = pop3.retr(count)
    finally:
        pop3.quit()
    assert b"".join(line + b"\r\n" for line in lines) == message
    assert octets >= len(message)


def test_pop3_ssl_capa_lists_user_and_sasl_but_never_stls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    pop3 = _pop3s(gateway, cert_files)
    try:
        capabilities = pop3.capa()
    finally:
        pop3.quit()
    assert "USER" in capabilities
    assert capabilities.get("SASL") == ["PLAIN"]
    assert "STLS" not in capabilities


@requires_openssl
def test_openssl_s_client_connect_gets_capa_on_pop3s(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    result = s_client(gateway.port("pop3s"), cert_files.ca_file, ["CAPA", "QUIT"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("+OK")
    assert "USER" in lines
    assert "STLS" not in lines
    assert lines[-1].startswith("+OK")


@requires_curl
def test_curl_pop3s_retrieves_a_message_by_number(gateway: Gateway, cert_files: CertFiles) -> None:
    marker = f"curl-pop3s-{uuid.uuid4()}"
    gateway.store.add(DEMO_USER, _message(marker))
    number = len(gateway.store.mailbox(DEMO_USER))
    result = curl(f"pop3s://127.0.0.1:{gateway.port('pop3s')}/{number}", cert_files.ca_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == _message(marker)


# --- TCP byte relay ----------------------------------------------------------------------------


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


def test_tcp_implicit_relays_bytes_both_ways_untouched(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    context = cert_files.client_context()
    with (
        socket.create_connection(
            ("127.0.0.1", gateway.port("tcp-implicit")), timeout=CLIENT_TIMEOUT_SECONDS
        ) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        tls.makefile("rb") as reader,
    ):
        greeting = _read_reply(reader)
        tls.sendall(b"EHLO relay.example.test\r\n")
        ehlo = _read_reply(reader)
        tls.sendall(b"QUIT\r\n")
        bye = _read_reply(reader)
    assert greeting[0].startswith(b"220 legacy.localdomain ESMTP")
    # A byte relay does not mediate: the backend's own STARTTLS and AUTH come through as sent.
    assert b"250-STARTTLS" in ehlo
    assert b"250-AUTH PLAIN LOGIN" in ehlo
    assert bye[0].startswith(b"221 ")
    assert gateway.smtp.transcript[-1] == [b"EHLO relay.example.test", b"QUIT"]


@pytest.mark.parametrize("listener", ["tcp-implicit", "smtps"])
async def test_client_half_close_still_receives_the_backends_last_replies(
    gateway: Gateway, cert_files: CertFiles, listener: str
) -> None:
    received = b""
    with trio.fail_after(CLIENT_TIMEOUT_SECONDS):
        transport = await trio.open_tcp_stream("127.0.0.1", gateway.port(listener))
        async with TlsStream(
            transport,
            cert_files.client_context(),
            server_side=False,
            server_hostname="127.0.0.1",
        ) as tls:
            # Both commands and then close_notify + FIN, before even the greeting arrives.
            await tls.send_all(b"NOOP\r\nQUIT\r\n")
            await tls.send_eof()
            while chunk := await tls.receive_some():
                received += chunk
    codes = [line[:3] for line in received.split(b"\r\n")[:-1]]
    assert codes == [b"220", b"250", b"221"]
