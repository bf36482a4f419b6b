"""Large messages and many sessions at once, through real clients.

A 20 MiB message goes in through a STARTTLS session and a 20 MiB message comes out through
POP3S, both byte-identical (issue 2 §5); 200 STARTTLS sessions are all open inside TLS at the
same moment and each delivers one message.
"""

from __future__ import annotations

import base64
import hashlib
import poplib
import random
import smtplib
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import pytest

from tests.conftest import CertFiles
from tests.helpers.gateway import POP3_BACKEND, SMTP_BACKEND, Gateway, ListenerSpec, running_gateway
from tests.helpers.tools import DEMO_PASSWORD, DEMO_USER

BULK_BYTES = 20 * 1024 * 1024
SESSIONS = 200
# Each bulk transfer takes a few seconds here; these bounds only catch a hang.
BULK_TIMEOUT_SECONDS = 60.0
SESSION_TIMEOUT_SECONDS = 30.0

LISTENERS: list[ListenerSpec] = [
    {"name": "submission", "protocol": "smtp", "tls": "starttls", "backend": SMTP_BACKEND},
    {"name": "pop3s", "protocol": "pop3", "tls": "implicit", "backend": POP3_BACKEND},
]


@pytest.fixture(scope="module")
def gateway(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(
        LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("bulk") / "tlsgate.toml",
    ) as running:
        yield running


def _bulk_message(size: int, seed: int) -> bytes:
    """Printable CRLF lines, just under `size` bytes; every 7th starts with a dot, a few are "."."""
    rng = random.Random(seed)
    text = base64.b64encode(rng.randbytes(size)).decode()
    lines = [text[i : i + 76] for i in range(0, size, 76)]
    for index in range(0, len(lines), 7):
        lines[index] = "." + lines[index]
    for index in range(3, len(lines), 1000):
        lines[index] = "."
    body = ("Subject: bulk\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()
    return body[: size - 2].rsplit(b"\r\n", 1)[0] + b"\r\n"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_20_mib_message_through_starttls_reaches_the_backend_byte_identical(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = _bulk_message(BULK_BYTES, seed=1)
    assert len(message) > BULK_BYTES - 100
    with smtplib.SMTP(
        "127.0.0.1", gateway.port("submission"), timeout=BULK_TIMEOUT_SECONDS
    ) as smtp:
        smtp.starttls(context=cert_files.client_context())
        smtp.login(DEMO_USER, DEMO_PASSWORD)
        refused = smtp.sendmail("bulk@example.test", ["bulk@example.test"], message)
    assert refused == {}
    delivered = gateway.store.messages[-1].body
    # The legacy server dot-unstuffs what smtplib stuffed: what arrives is what was meant.
    assert len(delivered) == len(message)
    assert _sha256(delivered) == _sha256(message)


def test_20_mib_pop3_retr_through_pop3s_is_byte_identical(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = _bulk_message(BULK_BYTES, seed=2)
    gateway.store.add(DEMO_USER, message)
    number = len(gateway.store.mailbox(DEMO_USER))
    pop3 = poplib.POP3_SSL(
        "127.0.0.1",
        gateway.port("pop3s"),
        context=cert_files.client_context(),
        timeout=BULK_TIMEOUT_SECONDS,
    )
    try:
        pop3.user(DEMO_USER)
        pop3.pass_(DEMO_PASSWORD)
        response, lines, _ = pop3.retr(number)
    finally:
        pop3.quit()
    received = b"".join(line + b"\r\n" for line in lines)
    assert response == f"+OK {len(message)} octets".encode()
    assert len(received) == len(message)
    assert _sha256(received) == _sha256(message)


def _read_reply_codes(reader: BinaryIO, replies: int) -> list[bytes]:
    codes: list[bytes] = []
    while len(codes) < replies:
        line = reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection closed mid-reply: {line!r}")
        if line[3:4] != b"-":
            codes.append(line[:3])
    return codes


def test_20_mib_of_pipelined_bdat_chunks_through_starttls_reach_the_backend_byte_identical(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    rng = random.Random(3)
    # Arbitrary bytes (NUL, bare CR and LF, and lines that look like commands or the end of a
    # DATA body): a BDAT chunk is counted, never parsed.
    first = b"\r\n.\r\nSTARTTLS\r\nQUIT\r\n" + rng.randbytes(7 * 1024 * 1024)
    second = _bulk_message(BULK_BYTES - len(first), seed=4) + b".\r\nRSET\r\n\0\r"
    raw = socket.create_connection(
        ("127.0.0.1", gateway.port("submission")), timeout=BULK_TIMEOUT_SECONDS
    )
    with raw:
        with raw.makefile("rb") as reader:
            raw.sendall(b"EHLO bulk.example.test\r\n")
            assert _read_reply_codes(reader, 2) == [b"220", b"250"]
            raw.sendall(b"STARTTLS\r\n")
            assert _read_reply_codes(reader, 1) == [b"220"]
        tls = cert_files.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
    with tls, tls.makefile("rb") as reader:
        tls.sendall(b"EHLO bulk.example.test\r\n")
        assert _read_reply_codes(reader, 1) == [b"250"]
        # RFC 3030 §4.2 + RFC 2920: the whole transaction in one go, replies read afterwards.
        tls.sendall(
            b"MAIL FROM:<bdat@example.test>\r\nRCPT TO:<bulk@example.test>\r\n"
            + f"BDAT {len(first)}\r\n".encode()
            + first
            + f"BDAT {len(second)} LAST\r\n".encode()
            + second
            + b"QUIT\r\n"
        )
        assert _read_reply_codes(reader, 5) == [b"250", b"250", b"250", b"250", b"221"]
    delivered = gateway.store.messages[-1].body
    assert len(delivered) == len(first) + len(second)
    assert _sha256(delivered) == _sha256(first + second)


def test_200_concurrent_starttls_sessions_each_deliver_one_message(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    context = cert_files.client_context()
    # Every session waits here once it is inside TLS, so all 200 are open at the same moment.
    all_in_tls = threading.Barrier(SESSIONS, timeout=SESSION_TIMEOUT_SECONDS)
    already = len(gateway.store.messages)

    def session(number: int) -> str:
        with smtplib.SMTP(
            "127.0.0.1", gateway.port("submission"), timeout=SESSION_TIMEOUT_SECONDS
        ) as smtp:
            smtp.starttls(context=context)
            smtp.ehlo(f"client-{number}.example.test")
            all_in_tls.wait()
            refused = smtp.sendmail(
                f"sender-{number}@example.test",
                [f"concurrent-{number}@example.test"],
                f"Subject: session {number}\r\n\r\nsession {number}\r\n".encode(),
            )
            assert refused == {}
            assert isinstance(smtp.sock, ssl.SSLSocket)
            return smtp.sock.version() or "no TLS version"

    with ThreadPoolExecutor(max_workers=SESSIONS) as pool:
        versions = list(pool.map(session, range(SESSIONS)))
    assert all(version.startswith("TLSv1.") for version in versions), set(versions)
    delivered = gateway.store.messages[already:]
    assert sorted(d.rcpts[0] for d in delivered) == sorted(
        f"concurrent-{number}@example.test" for number in range(SESSIONS)
    )
    for delivery in delivered:
        number = delivery.rcpts[0].removeprefix("concurrent-").split("@")[0]
        assert delivery.body == f"Subject: session {number}\r\n\r\nsession {number}\r\n".encode()
