"""POP3 STLS mediation end to end (RFC 1939, 2449, 2595), with real clients.

Two gateways for the module. Each has a `pop3` listener (tls = "starttls", auth_requires_tls
on by default) and a `pop3-nocapa` listener in front of a pre-RFC 2449 backend that answers
CAPA with -ERR. The second gateway's capable backend lists STLS itself (and refuses it), so
the CAPA tests run against a backend that knows nothing of STLS and one that claims it.
"""

from __future__ import annotations

import base64
import poplib
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from tests.conftest import CertFiles
from tests.helpers.gateway import (
    POP3_BACKEND,
    POP3_NO_CAPA_BACKEND,
    Gateway,
    ListenerSpec,
    running_gateway,
)
from tests.helpers.tools import (
    DEMO_PASSWORD,
    DEMO_USER,
    curl,
    requires_curl,
    requires_openssl,
    s_client,
)

CLIENT_TIMEOUT_SECONDS = 10.0

LISTENERS: list[ListenerSpec] = [
    {"name": "pop3", "protocol": "pop3", "tls": "starttls", "backend": POP3_BACKEND},
    {"name": "pop3-nocapa", "protocol": "pop3", "tls": "starttls", "backend": POP3_NO_CAPA_BACKEND},
    # Loopback clients come from an excluded network: no STLS for them.
    {
        "name": "pop3-lan",
        "protocol": "pop3",
        "tls": "starttls",
        "backend": POP3_BACKEND,
        "starttls_exclude": ["127.0.0.0/8"],
    },
]


def _start(
    cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory, *, backend_stls: bool
) -> Iterator[Gateway]:
    with running_gateway(
        LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("stls-pop3") / "tlsgate.toml",
        pop3_options={"advertise_stls": backend_stls},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from _start(cert_files, tmp_path_factory, backend_stls=False)


@pytest.fixture(scope="module")
def gateway_backend_stls(
    cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    yield from _start(cert_files, tmp_path_factory, backend_stls=True)


@pytest.fixture(params=["plain backend", "backend advertises STLS"])
def any_gateway(request: pytest.FixtureRequest) -> Gateway:
    name = "gateway" if request.param == "plain backend" else "gateway_backend_stls"
    gateway: Gateway = request.getfixturevalue(name)
    return gateway


def _connect(gateway: Gateway, listener: str = "pop3") -> poplib.POP3:
    return poplib.POP3("127.0.0.1", gateway.port(listener), timeout=CLIENT_TIMEOUT_SECONDS)


def _seed(gateway: Gateway, message: bytes) -> int:
    """Put `message` in the demo mailbox; return its message number for a new session."""
    gateway.store.add(DEMO_USER, message)
    return len(gateway.store.mailbox(DEMO_USER))


def _wait_for_unlock(gateway: Gateway) -> None:
    """After a session closed without QUIT, wait until the backend released the mailbox."""
    deadline = time.monotonic() + CLIENT_TIMEOUT_SECONDS
    while DEMO_USER in gateway.store.locked and time.monotonic() < deadline:
        time.sleep(0.01)


def _message(marker: str) -> bytes:
    return f"Subject: {marker}\r\n\r\nBody of {marker}.\r\n".encode()


# --- poplib ------------------------------------------------------------------------------------


def test_stls_login_and_retr_return_the_message(gateway: Gateway, cert_files: CertFiles) -> None:
    message = _message(f"poplib-{uuid.uuid4()}")
    number = _seed(gateway, message)
    pop3 = _connect(gateway)
    try:
        pop3.stls(context=cert_files.client_context())
        pop3.user(DEMO_USER)
        pop3.pass_(DEMO_PASSWORD)
        _, lines, _ = pop3.retr(number)
    finally:
        pop3.quit()
    assert b"".join(line + b"\r\n" for line in lines) == message
    assert gateway.pop3.logins[-1] == DEMO_USER


def test_stls_is_answered_ok_begin_tls_negotiation(gateway: Gateway, cert_files: CertFiles) -> None:
    pop3 = _connect(gateway)
    try:
        reply = pop3.stls(context=cert_files.client_context())
    finally:
        pop3.quit()
    assert reply == b"+OK Begin TLS negotiation"


def test_stls_never_reaches_the_backend(
    gateway_backend_stls: Gateway, cert_files: CertFiles
) -> None:
    pop3 = _connect(gateway_backend_stls)
    try:
        pop3.capa()
        pop3.stls(context=cert_files.client_context())
        pop3.capa()
    finally:
        pop3.quit()
    transcript = gateway_backend_stls.pop3.transcript[-1]
    assert transcript[-1] == b"QUIT"
    assert not [line for line in transcript if line.upper().startswith(b"STLS")]


def test_capa_before_tls_lists_stls(any_gateway: Gateway) -> None:
    pop3 = _connect(any_gateway)
    try:
        assert "STLS" in pop3.capa()
    finally:
        pop3.quit()


def test_capa_before_tls_hides_user_and_sasl(any_gateway: Gateway) -> None:
    pop3 = _connect(any_gateway)
    try:
        capabilities = pop3.capa()
    finally:
        pop3.quit()
    assert "USER" not in capabilities
    assert "SASL" not in capabilities


def test_capa_after_tls_lists_user_and_sasl(any_gateway: Gateway, cert_files: CertFiles) -> None:
    pop3 = _connect(any_gateway)
    try:
        pop3.stls(context=cert_files.client_context())
        capabilities = pop3.capa()
    finally:
        pop3.quit()
    assert "USER" in capabilities
    assert capabilities["SASL"] == ["PLAIN"]


def test_capa_after_tls_never_lists_stls(any_gateway: Gateway, cert_files: CertFiles) -> None:
    pop3 = _connect(any_gateway)
    try:
        pop3.stls(context=cert_files.client_context())
        capabilities = pop3.capa()
    finally:
        pop3.quit()
    assert "STLS" not in capabilities


def test_capa_passes_the_backends_other_capabilities(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    pop3 = _connect(gateway)
    try:
        before = pop3.capa()
        pop3.stls(context=cert_files.client_context())
        after = pop3.capa()
    finally:
        pop3.quit()
    for capability in ("TOP", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"):
        assert capability in before
        assert capability in after


def test_capa_is_synthesised_with_stls_for_a_backend_without_capa(gateway: Gateway) -> None:
    pop3 = _connect(gateway, "pop3-nocapa")
    try:
        capabilities = pop3.capa()  # poplib raises error_proto on -ERR
    finally:
        pop3.quit()
    assert "STLS" in capabilities
    assert "USER" not in capabilities


def test_capa_after_tls_with_a_backend_without_capa_never_lists_stls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    pop3 = _connect(gateway, "pop3-nocapa")
    try:
        pop3.stls(context=cert_files.client_context())
        try:
            capabilities = pop3.capa()
        except poplib.error_proto:
            capabilities = {}  # the backend's own -ERR passing through is fine too
    finally:
        pop3.quit()
    assert "STLS" not in capabilities


def test_stls_login_and_retr_work_with_a_backend_without_capa(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = _message(f"nocapa-{uuid.uuid4()}")
    number = _seed(gateway, message)
    pop3 = _connect(gateway, "pop3-nocapa")
    try:
        pop3.stls(context=cert_files.client_context())
        pop3.user(DEMO_USER)
        pop3.pass_(DEMO_PASSWORD)
        _, lines, _ = pop3.retr(number)
    finally:
        pop3.quit()
    assert b"".join(line + b"\r\n" for line in lines) == message


def test_retr_of_a_message_with_dot_stuffed_lines_is_byte_identical(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = (
        b"Subject: dots\r\n\r\n.\r\n..\r\n...three\r\n.leading\r\ntrailing.\r\n"
        b". space after dot\r\n\r\n.\r\nlast line\r\n"
    )
    number = _seed(gateway, message)
    pop3 = _connect(gateway)
    try:
        pop3.stls(context=cert_files.client_context())
        pop3.user(DEMO_USER)
        pop3.pass_(DEMO_PASSWORD)
        response, lines, _ = pop3.retr(number)
    finally:
        pop3.quit()
    assert response == f"+OK {len(message)} octets".encode()
    assert b"".join(line + b"\r\n" for line in lines) == message


def test_apop_after_stls_matches_the_backends_greeting_timestamp(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    pop3 = _connect(gateway)
    try:
        pop3.stls(context=cert_files.client_context())
        # RFC 1939 §7: the digest covers the greeting's timestamp, so it must arrive verbatim.
        reply = pop3.apop(DEMO_USER, DEMO_PASSWORD)
    finally:
        pop3.quit()
    assert reply.startswith(b"+OK")
    assert gateway.pop3.logins[-1] == DEMO_USER


def test_uidl_and_top_multiline_replies_pass_through_after_stls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = b"Subject: top\r\n\r\nfirst\r\n.second\r\nthird\r\n"
    number = _seed(gateway, message)
    pop3 = _connect(gateway)
    try:
        pop3.stls(context=cert_files.client_context())
        pop3.user(DEMO_USER)
        pop3.pass_(DEMO_PASSWORD)
        _, uid_lines, _ = pop3.uidl()
        _, top_lines, _ = pop3.top(number, 2)
    finally:
        pop3.quit()
    uid = gateway.store.mailbox(DEMO_USER)[number - 1].uid
    assert f"{number} {uid}".encode() in uid_lines
    assert top_lines == [b"Subject: top", b"", b"first", b".second"]


def test_retr_of_a_message_with_bare_lf_line_endings_keeps_the_session_in_step(
    gateway_backend_stls: Gateway, cert_files: CertFiles
) -> None:
    # Stored as received, e.g. sent with BDAT by a client that uses LF line endings.
    message = b"Subject: lf endings\n\nfirst line\n.dot line\nlast line\n"
    number = _seed(gateway_backend_stls, message)
    pop3 = poplib.POP3("127.0.0.1", gateway_backend_stls.port("pop3"), timeout=2.0)
    try:
        pop3.stls(context=cert_files.client_context())
        pop3.user(DEMO_USER)
        pop3.pass_(DEMO_PASSWORD)
        _, lines, _ = pop3.retr(number)
        assert lines == [b"Subject: lf endings", b"", b"first line", b".dot line", b"last line"]
        assert "STLS" not in pop3.capa()
        assert pop3.noop() == b"+OK"
    finally:
        pop3.close()  # not quit(): a session out of step would only time out
        _wait_for_unlock(gateway_backend_stls)


# --- clients from a starttls_exclude network ----------------------------------------------------


def test_excluded_client_network_is_not_offered_stls(any_gateway: Gateway) -> None:
    pop3 = _connect(any_gateway, "pop3-lan")
    try:
        capabilities = pop3.capa()
    finally:
        pop3.quit()
    assert "STLS" not in capabilities
    assert "USER" not in capabilities  # auth_requires_tls still applies


def test_excluded_client_networks_stls_goes_to_the_backend(gateway_backend_stls: Gateway) -> None:
    # poplib's stls() refuses when CAPA lacks STLS, so this client speaks for itself.
    with (
        socket.create_connection(
            ("127.0.0.1", gateway_backend_stls.port("pop3-lan")), timeout=10
        ) as sock,
        sock.makefile("rb") as reader,
    ):
        assert _read_line(reader).startswith(b"+OK")
        sock.sendall(b"STLS\r\nQUIT\r\n")
        stls = _read_line(reader)
        bye = _read_line(reader)
    assert stls == b"-ERR [SYS/PERM] TLS not available"  # the legacy backend's own answer
    assert bye.startswith(b"+OK")
    assert gateway_backend_stls.pop3.transcript[-1] == [b"STLS", b"QUIT"]


def test_excluded_client_network_is_refused_user_before_tls(gateway: Gateway) -> None:
    pop3 = _connect(gateway, "pop3-lan")
    try:
        with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
            pop3.user(DEMO_USER)
    finally:
        pop3.quit()


# --- raw socket after STLS: pipelining ---------------------------------------------------------


def _read_line(reader: BinaryIO) -> bytes:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(f"connection closed mid-line: {line!r}")
    return line[:-2]


def test_pipelined_commands_after_stls_get_their_replies_in_order(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    raw = socket.create_connection(("127.0.0.1", gateway.port("pop3")), timeout=10)
    with raw:
        with raw.makefile("rb") as reader:
            assert _read_line(reader).startswith(b"+OK")
            raw.sendall(b"STLS\r\n")
            assert _read_line(reader).startswith(b"+OK")
        tls: ssl.SSLSocket = cert_files.client_context().wrap_socket(
            raw, server_hostname="127.0.0.1"
        )
    with tls, tls.makefile("rb") as reader:
        # RFC 2449 §6.6: the client may send several commands at once.
        tls.sendall(
            f"USER {DEMO_USER}\r\nPASS {DEMO_PASSWORD}\r\nNOOP\r\nSTAT\r\nQUIT\r\n".encode()
        )
        replies = [_read_line(reader) for _ in range(5)]
    assert [reply.split()[0] for reply in replies] == [b"+OK"] * 5
    assert replies[3].startswith(b"+OK ")
    assert gateway.pop3.transcript[-1] == [
        f"USER {DEMO_USER}".encode(),
        f"PASS {DEMO_PASSWORD}".encode(),
        b"NOOP",
        b"STAT",
        b"QUIT",
    ]


def test_capa_and_stls_pipelined_in_one_write_both_get_replies_and_tls_starts(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    raw = socket.create_connection(("127.0.0.1", gateway.port("pop3")), timeout=10)
    with raw:
        with raw.makefile("rb") as reader:
            assert _read_line(reader).startswith(b"+OK")
            raw.sendall(b"CAPA\r\nSTLS\r\n")
            capa = [_read_line(reader)]
            while capa[-1] != b".":
                capa.append(_read_line(reader))
            stls = _read_line(reader)
        tls = cert_files.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
    with tls, tls.makefile("rb") as reader:
        tls.sendall(f"USER {DEMO_USER}\r\nPASS {DEMO_PASSWORD}\r\nQUIT\r\n".encode())
        replies = [_read_line(reader) for _ in range(3)]
    assert b"STLS" in capa
    assert stls == b"+OK Begin TLS negotiation"
    assert [reply[:3] for reply in replies] == [b"+OK"] * 3


def test_sasl_plain_after_stls_logs_in(gateway: Gateway, cert_files: CertFiles) -> None:
    raw = socket.create_connection(("127.0.0.1", gateway.port("pop3")), timeout=10)
    with raw:
        with raw.makefile("rb") as reader:
            assert _read_line(reader).startswith(b"+OK")
            raw.sendall(b"STLS\r\n")
            assert _read_line(reader).startswith(b"+OK")
        tls: ssl.SSLSocket = cert_files.client_context().wrap_socket(
            raw, server_hostname="127.0.0.1"
        )
    credentials = base64.b64encode(f"\0{DEMO_USER}\0{DEMO_PASSWORD}".encode())
    with tls, tls.makefile("rb") as reader:
        tls.sendall(b"AUTH PLAIN\r\n")
        challenge = _read_line(reader)
        # RFC 5034 §4: the response is a line of its own, not a command.
        tls.sendall(credentials + b"\r\n")
        outcome = _read_line(reader)
        tls.sendall(b"QUIT\r\n")
        _read_line(reader)
    assert challenge.startswith(b"+")
    assert outcome.startswith(b"+OK")
    assert gateway.pop3.logins[-1] == DEMO_USER


# --- openssl s_client, curl --------------------------------------------------------------------


@requires_openssl
def test_openssl_s_client_starttls_pop3_gets_capa_inside_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    result = s_client(gateway.port("pop3"), cert_files.ca_file, ["CAPA", "QUIT"], starttls="pop3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("+OK")
    capabilities = lines[1 : lines.index(".")]
    assert "USER" in capabilities
    assert "SASL PLAIN" in capabilities
    assert "STLS" not in capabilities
    assert lines[-1].startswith("+OK")


@requires_curl
def test_curl_ssl_reqd_pop3_retrieves_a_message_by_number(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    message = _message(f"curl-stls-{uuid.uuid4()}")
    number = _seed(gateway, message)
    result = curl(
        f"pop3://127.0.0.1:{gateway.port('pop3')}/{number}", cert_files.ca_file, "--ssl-reqd"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == message
