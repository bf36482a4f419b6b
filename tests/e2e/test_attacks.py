"""Attacks on the STARTTLS/STLS mediation, end to end: real sockets on loopback, real TLS.

Each test plays a client that misbehaves on purpose (command injection before the handshake,
AUTH in the clear, STARTTLS twice, MAIL before TLS) and checks two things: what the client
hears, and what the legacy backend received (`transcript`, every command line it saw), because
an attack that is answered politely but still reaches the backend is not stopped.

The backends here advertise STARTTLS and STLS themselves (and answer them with 454 / -ERR, like
a sendmail without a certificate), so a STARTTLS reply or keyword the client sees tells whether
it came from tlsgate or leaked through from the backend.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
from collections.abc import Iterator
from types import TracebackType

import pytest

from tests.conftest import CertFiles
from tests.helpers.gateway import POP3_BACKEND, SMTP_BACKEND, Gateway, running_gateway

IO_TIMEOUT_SECONDS = 10.0
PLAIN_CREDENTIALS = base64.b64encode(b"\0demo\0demo-password")
INJECTED_MAIL = b"MAIL FROM:<evil@x>"

LISTENERS: list[dict[str, object]] = [
    {"name": "submission", "protocol": "smtp", "tls": "starttls", "backend": SMTP_BACKEND},
    {"name": "smtps", "protocol": "smtp", "tls": "implicit", "backend": SMTP_BACKEND},
    {
        "name": "smtp-require-tls",
        "protocol": "smtp",
        "tls": "starttls",
        "backend": SMTP_BACKEND,
        "require_tls": True,
    },
    {
        "name": "smtp-lan",
        "protocol": "smtp",
        "tls": "starttls",
        "backend": SMTP_BACKEND,
        "starttls_exclude": ["127.0.0.0/8"],
    },
    {"name": "smtp-none", "protocol": "smtp", "tls": "none", "backend": SMTP_BACKEND},
    {"name": "pop3", "protocol": "pop3", "tls": "starttls", "backend": POP3_BACKEND},
    {
        "name": "pop3-require-tls",
        "protocol": "pop3",
        "tls": "starttls",
        "backend": POP3_BACKEND,
        "require_tls": True,
    },
    {"name": "pop3s", "protocol": "pop3", "tls": "implicit", "backend": POP3_BACKEND},
    {"name": "pop3-none", "protocol": "pop3", "tls": "none", "backend": POP3_BACKEND},
]


@pytest.fixture(scope="module")
def gateway(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(
        LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("attacks") / "tlsgate.toml",
        smtp_options={"advertise_starttls": True},
        pop3_options={"advertise_stls": True},
    ) as running:
        yield running


class Wire:
    """A blocking client that reads SMTP replies and POP3 lines off a plain or TLS socket.

    It reads exactly what it needs and keeps the rest, so `start_tls` can check that nothing
    the server sent before the handshake is left unread.
    """

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=IO_TIMEOUT_SECONDS
        )
        self.context = context
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
        """One SMTP reply, all its lines (RFC 5321 §4.2.1: "NNN-" continues, "NNN " ends)."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"".join(lines)

    def smtp(self, command: bytes) -> bytes:
        self.send(command + b"\r\n")
        return self.reply()

    def pop3(self, command: bytes) -> bytes:
        self.send(command + b"\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        """The body of a POP3 multi-line response, without the terminating dot."""
        lines: list[bytes] = []
        while (line := self.line()) != b".\r\n":
            lines.append(line.rstrip(b"\r\n"))
        return lines

    def start_tls(self) -> None:
        assert self.buffer == b"", f"unread bytes before the handshake: {self.buffer!r}"
        self.sock = self.context.wrap_socket(self.sock, server_hostname="localhost")


def open_wire(gateway: Gateway, listener: str, cert_files: CertFiles) -> Wire:
    """Connect to `listener`; implicit listeners get the handshake at once."""
    wire = Wire(gateway.port(listener), cert_files.client_context())
    if listener in ("smtps", "pop3s"):
        wire.start_tls()
    return wire


def smtp_lines_since(gateway: Gateway, before: int) -> list[bytes]:
    """Every command line the SMTP backend received on connections opened after `before`."""
    return [line for lines in gateway.smtp.transcript[before:] for line in lines]


def pop3_lines_since(gateway: Gateway, before: int) -> list[bytes]:
    return [line for lines in gateway.pop3.transcript[before:] for line in lines]


def ehlo_keywords(reply: bytes) -> list[bytes]:
    """The extension keywords of a 250 EHLO reply (the first line is the greeting)."""
    lines = reply.splitlines()
    assert all(line.startswith(b"250") for line in lines), reply
    return [line[4:].split()[0].upper() for line in lines[1:] if line[4:].strip()]


def capabilities(lines: list[bytes]) -> list[bytes]:
    return [line.split()[0].upper() for line in lines if line.strip()]


def greet(wire: Wire) -> None:
    greeting = wire.reply()
    assert greeting.startswith(b"220 "), greeting


def greet_pop3(wire: Wire) -> None:
    greeting = wire.line()
    assert greeting.startswith(b"+OK"), greeting


def upgrade_smtp(wire: Wire, name: bytes) -> None:
    """Greeting, EHLO, STARTTLS, handshake: a plaintext SMTP session moved into TLS."""
    greet(wire)
    assert wire.smtp(b"EHLO " + name).startswith(b"250")
    assert wire.smtp(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
    wire.start_tls()


def send_message(wire: Wire, sender: bytes) -> None:
    assert wire.smtp(b"MAIL FROM:<" + sender + b">").startswith(b"250")
    assert wire.smtp(b"RCPT TO:<demo@localhost>").startswith(b"250")
    assert wire.smtp(b"DATA").startswith(b"354")
    assert wire.smtp(b"Subject: after TLS\r\n\r\nhello\r\n.").startswith(b"250")


# ---- STARTTLS command injection (CVE-2011-0411) -------------------------------------------


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
def test_smtp_commands_pipelined_after_starttls_are_never_executed(
    gateway: Gateway, cert_files: CertFiles, eol: bytes
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO injector.test").startswith(b"250")
        wire.send(b"STARTTLS" + eol + b"RSET" + eol + INJECTED_MAIL + eol)
        assert wire.reply() == b"220 2.0.0 Ready to start TLS\r\n"
        wire.start_tls()
        assert b"STARTTLS" not in ehlo_keywords(wire.smtp(b"EHLO injector.test"))
        send_message(wire, b"good@x")
        assert wire.smtp(b"QUIT").startswith(b"221")
    received = smtp_lines_since(gateway, before)
    assert INJECTED_MAIL not in received
    assert b"MAIL FROM:<good@x>" in received
    # tlsgate's own RSET after the handshake is the only one; the injected RSET never arrived.
    assert received.count(b"RSET") == 1


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
def test_pop3_commands_pipelined_after_stls_are_never_executed(
    gateway: Gateway, cert_files: CertFiles, eol: bytes
) -> None:
    before = len(gateway.pop3.transcript)
    with open_wire(gateway, "pop3", cert_files) as wire:
        greet_pop3(wire)
        wire.send(b"STLS" + eol + b"USER evil" + eol)
        assert wire.line() == b"+OK Begin TLS negotiation\r\n"
        wire.start_tls()
        assert wire.pop3(b"USER demo").startswith(b"+OK")
        assert wire.pop3(b"PASS demo-password").startswith(b"+OK")
        assert wire.pop3(b"QUIT").startswith(b"+OK")
    received = pop3_lines_since(gateway, before)
    assert b"USER evil" not in received
    assert b"USER demo" in received


def test_commands_after_a_pipelined_ehlo_and_starttls_are_never_executed(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        wire.send(b"EHLO pipelined.test\r\nSTARTTLS\r\n" + INJECTED_MAIL + b"\r\n")
        assert b"STARTTLS" in ehlo_keywords(wire.reply())
        assert wire.reply() == b"220 2.0.0 Ready to start TLS\r\n"
        wire.start_tls()
        assert wire.smtp(b"EHLO pipelined.test").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert INJECTED_MAIL not in smtp_lines_since(gateway, before)


def test_pop3_commands_after_a_pipelined_capa_and_stls_are_never_executed(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.pop3.transcript)
    with open_wire(gateway, "pop3", cert_files) as wire:
        greet_pop3(wire)
        wire.send(b"CAPA\r\nSTLS\r\nUSER evil\r\n")
        assert wire.line().startswith(b"+OK")
        assert b"STLS" in capabilities(wire.multiline())
        assert wire.line() == b"+OK Begin TLS negotiation\r\n"
        wire.start_tls()
        assert wire.pop3(b"QUIT").startswith(b"+OK")
    assert b"USER evil" not in pop3_lines_since(gateway, before)


def test_transaction_started_before_starttls_does_not_carry_into_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO carry.test").startswith(b"250")
        assert wire.smtp(b"MAIL FROM:<plain@x>").startswith(b"250")
        assert wire.smtp(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
        wire.start_tls()
        assert wire.smtp(b"EHLO carry.test").startswith(b"250")
        reply = wire.smtp(b"RCPT TO:<demo@localhost>")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply.startswith(b"503"), reply  # RFC 3207 §4.2: the plaintext MAIL is forgotten


def test_plaintext_sent_instead_of_a_client_hello_is_never_executed(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO no-hello.test").startswith(b"250")
        assert wire.smtp(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
        wire.send(INJECTED_MAIL + b"\r\n")  # where the ClientHello belongs
        with contextlib.suppress(ConnectionResetError):
            while wire.sock.recv(65536):
                pass  # at most a TLS alert; the connection must end
    assert INJECTED_MAIL not in smtp_lines_since(gateway, before)


# ---- AUTH before TLS ----------------------------------------------------------------------


def test_smtp_auth_is_not_advertised_before_tls(gateway: Gateway, cert_files: CertFiles) -> None:
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        keywords = ehlo_keywords(wire.smtp(b"EHLO hidden-auth.test"))
    assert b"AUTH" not in keywords
    assert b"STARTTLS" in keywords


@pytest.mark.parametrize(
    "command",
    [b"AUTH PLAIN " + PLAIN_CREDENTIALS, b"AUTH LOGIN", b"AUTH PLAIN"],
    ids=["plain-initial-response", "login", "plain-no-initial-response"],
)
def test_smtp_auth_before_tls_is_refused_with_538(
    gateway: Gateway, cert_files: CertFiles, command: bytes
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO auth-early.test").startswith(b"250")
        reply = wire.smtp(command)
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply.startswith(b"538 5.7.11 "), reply
    received = smtp_lines_since(gateway, before)
    assert not [line for line in received if line.upper().startswith(b"AUTH")]
    assert not [line for line in received if PLAIN_CREDENTIALS in line]


def test_refused_auth_keeps_its_place_among_pipelined_replies(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        wire.send(b"EHLO pipeline.test\r\nAUTH PLAIN " + PLAIN_CREDENTIALS + b"\r\nNOOP\r\n")
        replies = [wire.reply() for _ in range(3)]
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert [reply[:4] for reply in replies] == [b"250-", b"538 ", b"250 "]


def test_smtp_auth_works_after_starttls(gateway: Gateway, cert_files: CertFiles) -> None:
    logins = len(gateway.smtp.logins)
    with open_wire(gateway, "submission", cert_files) as wire:
        upgrade_smtp(wire, b"auth-late.test")
        keywords = ehlo_keywords(wire.smtp(b"EHLO auth-late.test"))
        reply = wire.smtp(b"AUTH PLAIN " + PLAIN_CREDENTIALS)
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert b"AUTH" in keywords
    assert reply.startswith(b"235"), reply
    assert gateway.smtp.logins[logins:] == ["demo"]


def test_pop3_capa_hides_user_and_sasl_before_tls(gateway: Gateway, cert_files: CertFiles) -> None:
    with open_wire(gateway, "pop3", cert_files) as wire:
        greet_pop3(wire)
        assert wire.pop3(b"CAPA").startswith(b"+OK")
        listed = capabilities(wire.multiline())
        assert wire.pop3(b"QUIT").startswith(b"+OK")
    assert b"USER" not in listed
    assert b"SASL" not in listed
    assert listed.count(b"STLS") == 1


@pytest.mark.parametrize(
    "command",
    [
        b"USER demo",
        b"PASS demo-password",
        b"APOP demo 0123456789abcdef0123456789abcdef",
        b"AUTH PLAIN " + PLAIN_CREDENTIALS,
        b"AUTH",
    ],
    ids=["user", "pass", "apop", "auth-plain", "auth-list"],
)
def test_pop3_login_commands_before_tls_are_refused_with_err_auth(
    gateway: Gateway, cert_files: CertFiles, command: bytes
) -> None:
    before = len(gateway.pop3.transcript)
    with open_wire(gateway, "pop3", cert_files) as wire:
        greet_pop3(wire)
        reply = wire.pop3(command)
        assert wire.pop3(b"QUIT").startswith(b"+OK")
    assert reply.startswith(b"-ERR [AUTH] "), reply
    verb = command.split()[0]
    assert not [line for line in pop3_lines_since(gateway, before) if line.startswith(verb)]


# ---- STARTTLS / STLS misuse ---------------------------------------------------------------


@pytest.mark.parametrize("listener", ["submission", "smtps"])
def test_smtp_starttls_inside_tls_gets_503(
    gateway: Gateway, cert_files: CertFiles, listener: str
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, listener, cert_files) as wire:
        if listener == "submission":
            upgrade_smtp(wire, b"twice.test")
        else:
            greet(wire)
        assert wire.smtp(b"EHLO twice.test").startswith(b"250")
        reply = wire.smtp(b"STARTTLS")
        # The session goes on inside the TLS it already has.
        assert wire.smtp(b"NOOP").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply.startswith(b"503 5.5.1 "), reply
    assert b"STARTTLS" not in smtp_lines_since(gateway, before)


def test_smtp_starttls_with_an_argument_gets_501(gateway: Gateway, cert_files: CertFiles) -> None:
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO argument.test").startswith(b"250")
        reply = wire.smtp(b"STARTTLS now")
        # Still plaintext and still offered: a correct STARTTLS works afterwards.
        assert wire.smtp(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
        wire.start_tls()
        assert wire.smtp(b"EHLO argument.test").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply.startswith(b"501 5.5.4 "), reply


@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_pop3_stls_inside_tls_gets_err(
    gateway: Gateway, cert_files: CertFiles, listener: str
) -> None:
    before = len(gateway.pop3.transcript)
    with open_wire(gateway, listener, cert_files) as wire:
        greet_pop3(wire)
        if listener == "pop3":
            assert wire.pop3(b"STLS") == b"+OK Begin TLS negotiation\r\n"
            wire.start_tls()
        reply = wire.pop3(b"STLS")
        assert wire.pop3(b"USER demo").startswith(b"+OK")
        assert wire.pop3(b"QUIT").startswith(b"+OK")
    assert reply.startswith(b"-ERR"), reply
    assert b"STLS" not in pop3_lines_since(gateway, before)


# ---- the backend's own STARTTLS / STLS is stripped ----------------------------------------


def test_backend_starttls_is_advertised_once_before_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        keywords = ehlo_keywords(wire.smtp(b"EHLO once.test"))
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert keywords.count(b"STARTTLS") == 1


def test_backend_starttls_never_reaches_the_client_after_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with open_wire(gateway, "submission", cert_files) as wire:
        upgrade_smtp(wire, b"stripped.test")
        keywords = ehlo_keywords(wire.smtp(b"EHLO stripped.test"))
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert b"STARTTLS" not in keywords
    assert b"PIPELINING" in keywords  # the rest of the backend's list passes through


def test_backend_starttls_is_not_advertised_on_an_implicit_listener(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with open_wire(gateway, "smtps", cert_files) as wire:
        greet(wire)
        keywords = ehlo_keywords(wire.smtp(b"EHLO implicit.test"))
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert b"STARTTLS" not in keywords
    assert b"AUTH" in keywords


def test_starttls_is_answered_by_tlsgate_not_forwarded_to_the_backend(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "submission", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO answered.test").startswith(b"250")
        # The backend would say "454 4.7.0 TLS not available".
        assert wire.smtp(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
        wire.start_tls()
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert b"STARTTLS" not in smtp_lines_since(gateway, before)


def test_backend_stls_never_reaches_the_client_after_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.pop3.transcript)
    with open_wire(gateway, "pop3", cert_files) as wire:
        greet_pop3(wire)
        assert wire.pop3(b"STLS") == b"+OK Begin TLS negotiation\r\n"
        wire.start_tls()
        assert wire.pop3(b"CAPA").startswith(b"+OK")
        listed = capabilities(wire.multiline())
        assert wire.pop3(b"QUIT").startswith(b"+OK")
    assert b"STLS" not in listed
    assert b"USER" in listed
    assert b"STLS" not in pop3_lines_since(gateway, before)


# ---- require_tls --------------------------------------------------------------------------


def test_require_tls_refuses_mail_before_tls_with_530(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "smtp-require-tls", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO early-mail.test").startswith(b"250")
        reply = wire.smtp(b"MAIL FROM:<early@x>")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply == b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    assert b"MAIL FROM:<early@x>" not in smtp_lines_since(gateway, before)


def test_require_tls_lets_ehlo_noop_rset_and_quit_through(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "smtp-require-tls", cert_files) as wire:
        greet(wire)
        replies = [
            wire.smtp(command)
            for command in (b"EHLO allowed.test", b"HELO allowed.test", b"NOOP", b"RSET")
        ]
        quit_reply = wire.smtp(b"QUIT")
    assert [reply[:3] for reply in replies] == [b"250"] * 4
    assert quit_reply.startswith(b"221")
    assert smtp_lines_since(gateway, before) == [
        b"EHLO allowed.test",
        b"HELO allowed.test",
        b"NOOP",
        b"RSET",
        b"QUIT",
    ]


def test_require_tls_discards_a_refused_bdat_chunk_instead_of_executing_it(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    chunk = INJECTED_MAIL + b"\r\n"
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "smtp-require-tls", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO bdat.test").startswith(b"250")
        wire.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        reply = wire.reply()
        after = wire.smtp(b"NOOP")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply.startswith(b"530 5.7.0 "), reply
    assert after.startswith(b"250"), after  # no extra reply to a "command" hidden in the chunk
    assert INJECTED_MAIL not in smtp_lines_since(gateway, before)


def test_require_tls_accepts_mail_after_starttls(gateway: Gateway, cert_files: CertFiles) -> None:
    messages = len(gateway.store.messages)
    with open_wire(gateway, "smtp-require-tls", cert_files) as wire:
        upgrade_smtp(wire, b"late-mail.test")
        assert wire.smtp(b"EHLO late-mail.test").startswith(b"250")
        send_message(wire, b"late@x")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert [m.mail_from for m in gateway.store.messages[messages:]] == ["late@x"]


def test_pop3_require_tls_refuses_everything_but_capa_stls_and_quit_before_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.pop3.transcript)
    with open_wire(gateway, "pop3-require-tls", cert_files) as wire:
        greet_pop3(wire)
        refused = [wire.pop3(command) for command in (b"NOOP", b"STAT", b"LIST")]
        assert wire.pop3(b"CAPA").startswith(b"+OK")
        assert b"STLS" in capabilities(wire.multiline())
        assert wire.pop3(b"QUIT").startswith(b"+OK")
    assert refused == [b"-ERR Must issue a STLS command first\r\n"] * 3
    assert pop3_lines_since(gateway, before) == [b"CAPA", b"QUIT"]


# ---- starttls_exclude ---------------------------------------------------------------------


def test_excluded_client_is_not_offered_starttls(gateway: Gateway, cert_files: CertFiles) -> None:
    with open_wire(gateway, "smtp-lan", cert_files) as wire:
        greet(wire)
        keywords = ehlo_keywords(wire.smtp(b"EHLO lan.test"))
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert b"STARTTLS" not in keywords
    assert b"AUTH" not in keywords


def test_excluded_client_starttls_goes_to_the_backend(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "smtp-lan", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO lan.test").startswith(b"250")
        reply = wire.smtp(b"STARTTLS")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply == b"454 4.7.0 TLS not available\r\n"  # the backend's answer, not tlsgate's
    assert b"STARTTLS" in smtp_lines_since(gateway, before)


def test_excluded_client_auth_is_still_refused_before_tls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    before = len(gateway.smtp.transcript)
    with open_wire(gateway, "smtp-lan", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO lan.test").startswith(b"250")
        reply = wire.smtp(b"AUTH PLAIN " + PLAIN_CREDENTIALS)
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply.startswith(b"538 5.7.11 "), reply
    assert not [line for line in smtp_lines_since(gateway, before) if line.startswith(b"AUTH")]


# ---- tls = "none" -------------------------------------------------------------------------


def test_tls_none_smtp_listener_removes_the_backend_starttls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with open_wire(gateway, "smtp-none", cert_files) as wire:
        greet(wire)
        keywords = ehlo_keywords(wire.smtp(b"EHLO none.test"))
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert b"STARTTLS" not in keywords
    # CONTRACT.md: on tls = "none" EHLO passes unchanged apart from STARTTLS, so AUTH stays.
    backend_keywords = [keyword.split()[0].encode() for keyword in gateway.smtp.ehlo_keywords()]
    assert keywords == [k for k in backend_keywords if k != b"STARTTLS"] + [b"HELP"]


def test_tls_none_smtp_listener_forwards_starttls_to_the_backend(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with open_wire(gateway, "smtp-none", cert_files) as wire:
        greet(wire)
        assert wire.smtp(b"EHLO none.test").startswith(b"250")
        reply = wire.smtp(b"STARTTLS")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert reply == b"454 4.7.0 TLS not available\r\n"


def test_tls_none_pop3_listener_removes_the_backend_stls(
    gateway: Gateway, cert_files: CertFiles
) -> None:
    with open_wire(gateway, "pop3-none", cert_files) as wire:
        greet_pop3(wire)
        assert wire.pop3(b"CAPA").startswith(b"+OK")
        listed = capabilities(wire.multiline())
        assert wire.pop3(b"QUIT").startswith(b"+OK")
    assert b"STLS" not in listed
    assert b"USER" in listed
