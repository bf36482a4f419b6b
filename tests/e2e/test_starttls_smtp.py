"""SMTP STARTTLS mediation end to end (RFC 3207, 5321, 2920, 3030), with real clients.

Two gateways for the module, each with a `submission` listener (tls = "starttls",
auth_requires_tls on by default): one in front of a backend that knows nothing of STARTTLS,
one in front of a backend that claims STARTTLS itself (a sendmail whose certificate is
missing). The EHLO tests run against both.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import uuid
from collections.abc import Iterator
from typing import BinaryIO

import pytest
import trio

from tests.conftest import CertFiles
from tests.helpers.gateway import SMTP_BACKEND, Gateway, ListenerSpec, running_gateway
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

# Loopback clients of `submission-lan` come from an excluded network: no STARTTLS for them.
LAN = "127.0.0.0/8"
LISTENERS: list[ListenerSpec] = [
    {"name": "submission", "protocol": "smtp", "tls": "starttls", "backend": SMTP_BACKEND},
    {
        "name": "submission-lan",
        "protocol": "smtp",
        "tls": "starttls",
        "backend": SMTP_BACKEND,
        "starttls_exclude": [LAN],
    },
]


def _start(
    cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory, *, backend_starttls: bool
) -> Iterator[Gateway]:
    with running_gateway(
        LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("starttls-smtp") / "tlsgate.toml",
        smtp_options={"advertise_starttls": backend_starttls},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from _start(cert_files, tmp_path_factory, backend_starttls=False)


@pytest.fixture(scope="module")
def gateway_backend_starttls(
    cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    yield from _start(cert_files, tmp_path_factory, backend_starttls=True)


@pytest.fixture(params=["plain backend", "backend advertises STARTTLS"])
def any_gateway(request: pytest.FixtureRequest) -> Gateway:
    name = "gateway" if request.param == "plain backend" else "gateway_backend_starttls"
    gateway: Gateway = request.getfixturevalue(name)
    return gateway


def _message(marker: str) -> bytes:
    return (
        f"From: sender@example.test\r\nTo: submit@example.test\r\nSubject: {marker}\r\n\r\n"
        f"Body of {marker}.\r\n.a line that starts with a dot\r\n..and one with two\r\n"
        ".\r\nthe line above was a lone dot\r\n"
    ).encode()


def _connect(gateway: Gateway, listener: str = "submission") -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", gateway.port(listener), timeout=CLIENT_TIMEOUT_SECONDS)


# --- smtplib -----------------------------------------------------------------------------------


def test_starttls_login_and_sendmail_deliver_the_message_byte_identical(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = _message(f"smtplib-{uuid.uuid4()}")
    with _connect(gateway) as smtp:
        smtp.starttls(context=cert_files.client_context())
        smtp.login(DEMO_USER, DEMO_PASSWORD)
        refused = smtp.sendmail("sender@example.test", ["submit@example.test"], message)
    assert refused == {}
    delivered = gateway.store.messages[-1]
    assert delivered.body == message
    assert delivered.mail_from == "sender@example.test"
    assert delivered.rcpts == ("submit@example.test",)
    assert gateway.smtp.logins[-1] == DEMO_USER


def test_starttls_is_answered_220_ready_to_start_tls(gateway: Gateway) -> None:
    with _connect(gateway) as smtp:
        smtp.ehlo()
        reply = smtp.docmd("STARTTLS")
        smtp.close()  # the socket now expects a handshake; do not send QUIT in plaintext
    assert reply == (220, b"2.0.0 Ready to start TLS")


def test_ehlo_before_tls_advertises_starttls(any_gateway: Gateway) -> None:
    with _connect(any_gateway) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")


def test_ehlo_before_tls_hides_auth(any_gateway: Gateway) -> None:
    with _connect(any_gateway) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")


def test_ehlo_after_tls_advertises_auth(any_gateway: Gateway, cert_files: CertFiles) -> None:
    with _connect(any_gateway) as smtp:
        smtp.starttls(context=cert_files.client_context())
        smtp.ehlo()
        assert smtp.esmtp_features.get("auth") == " PLAIN LOGIN"


def test_ehlo_after_tls_never_advertises_starttls(
    any_gateway: Gateway, cert_files: CertFiles
) -> None:
    with _connect(any_gateway) as smtp:
        smtp.starttls(context=cert_files.client_context())
        code, text = smtp.ehlo()
    assert code == 250
    assert b"STARTTLS" not in text.upper()


def test_backend_sees_rset_right_after_the_pre_tls_commands(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with _connect(gateway) as smtp:
        smtp.ehlo("before.example.test")
        smtp.noop()
        smtp.starttls(context=cert_files.client_context())
        smtp.ehlo("after.example.test")
    assert gateway.smtp.transcript[-1] == [
        b"ehlo before.example.test",
        b"noop",
        b"RSET",
        b"ehlo after.example.test",
        b"QUIT",
    ]


def test_pipelining_is_still_advertised_after_tls(gateway: Gateway, cert_files: CertFiles) -> None:
    with _connect(gateway) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("pipelining")
        smtp.starttls(context=cert_files.client_context())
        smtp.ehlo()
        assert smtp.has_extn("pipelining")


def test_chunking_is_still_advertised_after_tls(gateway: Gateway, cert_files: CertFiles) -> None:
    with _connect(gateway) as smtp:
        smtp.starttls(context=cert_files.client_context())
        smtp.ehlo()
        assert smtp.has_extn("chunking")


def test_starttls_with_a_tls12_only_client_delivers_the_message(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    context = cert_files.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    message = _message(f"tls12-{uuid.uuid4()}")
    with _connect(gateway) as smtp:
        smtp.starttls(context=context)
        assert isinstance(smtp.sock, ssl.SSLSocket)
        assert smtp.sock.version() == "TLSv1.2"
        smtp.login(DEMO_USER, DEMO_PASSWORD)
        smtp.sendmail("sender@example.test", ["submit@example.test"], message)
    assert gateway.store.messages[-1].body == message


def test_auth_login_challenges_pass_through_after_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with _connect(gateway) as smtp:
        smtp.starttls(context=cert_files.client_context())
        smtp.ehlo()
        smtp.user, smtp.password = DEMO_USER, DEMO_PASSWORD
        # Two 334 challenges; the base64 answers are SASL lines, not commands.
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
    assert code == 235
    assert gateway.smtp.logins[-1] == DEMO_USER


def test_auth_plain_without_initial_response_passes_through_after_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with _connect(gateway) as smtp:
        smtp.starttls(context=cert_files.client_context())
        smtp.ehlo()
        smtp.user, smtp.password = DEMO_USER, DEMO_PASSWORD
        code, _ = smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=False)
    assert code == 235
    assert gateway.smtp.transcript[-1][-3] == b"AUTH PLAIN"


async def test_client_half_close_after_starttls_still_receives_the_last_replies(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    received = b""
    with trio.fail_after(CLIENT_TIMEOUT_SECONDS):
        transport = await trio.open_tcp_stream("127.0.0.1", gateway.port("submission"))
        tls = TlsStream(
            transport,
            cert_files.client_context(),
            server_side=False,
            server_hostname="127.0.0.1",
        )
        async with tls:  # closes the transport too, whatever happens in the plaintext phase
            assert (await _receive_reply(transport)).startswith(b"220 ")
            await transport.send_all(b"EHLO half.example.test\r\n")
            assert (await _receive_reply(transport)).startswith(b"250-")
            await transport.send_all(b"STARTTLS\r\n")
            assert (await _receive_reply(transport)).startswith(b"220 ")
            await tls.send_all(b"EHLO half.example.test\r\nNOOP\r\nQUIT\r\n")
            await tls.send_eof()
            while chunk := await tls.receive_some():
                received += chunk
    finals = [line[:3] for line in received.split(b"\r\n")[:-1] if line[3:4] == b" "]
    assert finals == [b"250", b"250", b"221"]


async def _receive_reply(stream: trio.abc.ReceiveStream) -> bytes:
    """Bytes up to and including the end of one SMTP reply (the server sends nothing more)."""
    data = b""
    while not any(line[3:4] == b" " for line in data.split(b"\r\n")[:-1]):
        chunk = await stream.receive_some()
        if not chunk:
            raise ConnectionError(f"connection closed mid-reply after {data!r}")
        data += chunk
    return data


def test_auth_smuggled_after_a_bare_lf_dot_line_never_reaches_the_backend_before_tls(
    gateway: Gateway,
) -> None:
    logins_before = len(gateway.smtp.logins)
    with (
        socket.create_connection(
            ("127.0.0.1", gateway.port("submission")), timeout=CLIENT_TIMEOUT_SECONDS
        ) as sock,
        sock.makefile("rb") as reader,
    ):
        assert _codes(reader, 1) == [b"220"]
        sock.sendall(b"EHLO plain.example.test\r\n")
        assert _codes(reader, 1) == [b"250"]
        sock.sendall(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        assert _codes(reader, 3) == [b"250", b"250", b"354"]
        sock.sendall(b"body\n.\nAUTH PLAIN AGRlbW8AZGVtby1wYXNzd29yZA==\r\n\r\n.\r\nQUIT\r\n")
        sock.settimeout(1.0)
        answers = []
        try:
            while line := reader.readline():
                answers.append(line)
        except TimeoutError:
            pass
    # Postfix's answer to SMTP smuggling: refuse with 521 and close.
    assert [line[:3] for line in answers] == [b"521"]
    transcript = gateway.smtp.transcript[-1]
    assert not [line for line in transcript if line.upper().startswith(b"AUTH")]
    assert len(gateway.smtp.logins) == logins_before


# --- clients from a starttls_exclude network ----------------------------------------------------


def test_excluded_client_network_is_not_offered_starttls(any_gateway: Gateway) -> None:
    with _connect(any_gateway, "submission-lan") as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert smtp.has_extn("pipelining")


def test_excluded_client_networks_starttls_goes_to_the_backend(
    gateway_backend_starttls: Gateway,
) -> None:
    with _connect(gateway_backend_starttls, "submission-lan") as smtp:
        smtp.ehlo()
        reply = smtp.docmd("STARTTLS")
    assert reply == (454, b"4.7.0 TLS not available")  # the legacy backend's own answer
    assert gateway_backend_starttls.smtp.transcript[-1][-2:] == [b"STARTTLS", b"QUIT"]


def test_excluded_client_network_still_has_auth_hidden_and_refused(any_gateway: Gateway) -> None:
    with _connect(any_gateway, "submission-lan") as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        code, _ = smtp.docmd("AUTH", "PLAIN AGRlbW8AZGVtby1wYXNzd29yZA==")
    assert code == 538


# --- raw socket after STARTTLS: pipelining and BDAT --------------------------------------------


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


def _codes(reader: BinaryIO, replies: int) -> list[bytes]:
    return [_read_reply(reader)[-1][:3] for _ in range(replies)]


def _starttls_socket(gateway: Gateway, cert_files: CertFiles) -> ssl.SSLSocket:
    """A socket that has done EHLO + STARTTLS in plaintext and the handshake; nothing else."""
    raw = socket.create_connection(
        ("127.0.0.1", gateway.port("submission")), timeout=CLIENT_TIMEOUT_SECONDS
    )
    try:
        with raw.makefile("rb") as reader:
            assert _codes(reader, 1) == [b"220"]
            raw.sendall(b"EHLO plain.example.test\r\n")
            assert _codes(reader, 1) == [b"250"]
            raw.sendall(b"STARTTLS\r\n")
            assert _codes(reader, 1) == [b"220"]
        return cert_files.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def test_ehlo_and_starttls_pipelined_in_one_write_both_get_replies_and_tls_starts(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    raw = socket.create_connection(
        ("127.0.0.1", gateway.port("submission")), timeout=CLIENT_TIMEOUT_SECONDS
    )
    with raw:
        with raw.makefile("rb") as reader:
            assert _codes(reader, 1) == [b"220"]
            # RFC 2920 §3.1: STARTTLS may end a pipelined group.
            raw.sendall(b"EHLO pipe.example.test\r\nSTARTTLS\r\n")
            assert _codes(reader, 2) == [b"250", b"220"]
        tls = cert_files.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
    with tls, tls.makefile("rb") as reader:
        tls.sendall(b"EHLO tls.example.test\r\n")
        ehlo = _read_reply(reader)
        tls.sendall(b"QUIT\r\n")
        assert _codes(reader, 1) == [b"221"]
    assert b"250-AUTH PLAIN LOGIN" in ehlo


def test_pipelined_mail_rcpt_data_after_starttls_delivers_the_message(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = _message(f"pipelined-{uuid.uuid4()}")
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    with _starttls_socket(gateway, cert_files) as tls, tls.makefile("rb") as reader:
        tls.sendall(b"EHLO tls.example.test\r\n")
        assert _codes(reader, 1) == [b"250"]
        # RFC 2920: the whole transaction in one write; the replies come back in order.
        tls.sendall(
            b"MAIL FROM:<pipe@example.test>\r\n"
            b"RCPT TO:<one@example.test>\r\n"
            b"RCPT TO:<two@example.test>\r\n"
            b"DATA\r\n"
        )
        assert _codes(reader, 4) == [b"250", b"250", b"250", b"354"]
        tls.sendall(stuffed + b".\r\nQUIT\r\n")
        assert _codes(reader, 2) == [b"250", b"221"]
    delivered = gateway.store.messages[-1]
    assert delivered.body == message
    assert delivered.rcpts == ("one@example.test", "two@example.test")


def test_bdat_chunks_pass_through_starttls_untouched(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    # Chunks that would mean something in a DATA body or as commands must arrive as bytes.
    chunks = [
        b"Subject: bdat\r\n\r\n.leading dot, not stuffed\r\n",
        b".\r\nQUIT\r\nRSET\r\n",
        b"no final CRLF in this chunk, bare LF here\n and a lone CR \r",
        b"\r\n",
    ]
    with _starttls_socket(gateway, cert_files) as tls, tls.makefile("rb") as reader:
        tls.sendall(b"EHLO tls.example.test\r\n")
        assert _codes(reader, 1) == [b"250"]
        tls.sendall(b"MAIL FROM:<bdat@example.test>\r\nRCPT TO:<submit@example.test>\r\n")
        assert _codes(reader, 2) == [b"250", b"250"]
        for index, chunk in enumerate(chunks):
            last = " LAST" if index == len(chunks) - 1 else ""
            tls.sendall(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
            assert _codes(reader, 1) == [b"250"]
        tls.sendall(b"QUIT\r\n")
        assert _codes(reader, 1) == [b"221"]
    assert gateway.store.messages[-1].body == b"".join(chunks)


# --- openssl s_client, swaks, curl -------------------------------------------------------------


@requires_openssl
def test_openssl_s_client_starttls_smtp_gets_the_ehlo_reply_inside_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    result = s_client(
        gateway.port("submission"),
        cert_files.ca_file,
        ["EHLO client.example.test", "QUIT"],
        starttls="smtp",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("250-legacy.localdomain Hello client.example.test")
    assert "250-AUTH PLAIN LOGIN" in lines
    assert "250-PIPELINING" in lines
    assert not any("STARTTLS" in line for line in lines)
    assert lines[-1].startswith("221 ")


@requires_swaks
def test_swaks_tls_authenticates_and_delivers_the_message(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    marker = f"swaks-starttls-{uuid.uuid4()}"
    result = swaks(
        gateway.port("submission"),
        cert_files.ca_file,
        "--tls",
        to="submit@example.test",
        subject=marker,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(deliveries_containing(gateway.store, marker)) == 1
    assert "235 " in result.stdout  # AUTH went through, inside TLS


@requires_curl
def test_curl_ssl_reqd_smtp_delivers_the_message(gateway: Gateway, cert_files: CertFiles) -> None:
    marker = f"curl-starttls-{uuid.uuid4()}"
    message = _message(marker)
    result = curl(
        f"smtp://127.0.0.1:{gateway.port('submission')}",
        cert_files.ca_file,
        "--ssl-reqd",
        "--mail-from",
        "sender@example.test",
        "--mail-rcpt",
        "submit@example.test",
        "--upload-file",
        "-",
        stdin=message.decode(),
    )
    assert result.returncode == 0, result.stderr
    assert [d.body for d in deliveries_containing(gateway.store, marker)] == [message]
