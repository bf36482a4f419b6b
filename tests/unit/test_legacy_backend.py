"""The legacy plaintext backend on its own (no tlsgate), driven by stdlib clients and raw bytes.

The end-to-end tests trust this backend's transcript and mail store, so its RFC behaviour is
pinned down here first.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import poplib
import re
import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsgate.demo.legacy import (
    LegacyPop3Server,
    LegacySmtpServer,
    MailStore,
    byte_stuff,
    serve_pop3,
    serve_smtp,
)

T = TypeVar("T")
CLIENT_TIMEOUT_SECONDS = 5.0
DOTTY_MESSAGE = (
    b"From: someone@example.com\r\n"
    b"To: demo@localhost\r\n"
    b"Subject: dots\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..two leading dots\r\n"
    b".\r\n"
    b"a line with 8-bit \xc3\xa9 and a final one\r\n"
)


@dataclass
class Backend:
    store: MailStore
    smtp: LegacySmtpServer
    pop3: LegacyPop3Server
    smtp_port: int
    pop3_port: int


async def start_backend(
    nursery: trio.Nursery,
    *,
    smtp: LegacySmtpServer | None = None,
    pop3: LegacyPop3Server | None = None,
) -> Backend:
    store = smtp.store if smtp is not None else MailStore()
    smtp = smtp or LegacySmtpServer(store)
    pop3 = pop3 or LegacyPop3Server(store)
    smtp_port: int = await nursery.start(serve_smtp, smtp)
    pop3_port: int = await nursery.start(serve_pop3, pop3)
    return Backend(store, smtp, pop3, smtp_port, pop3_port)


@pytest.fixture
async def backend(nursery: trio.Nursery) -> Backend:
    return await start_backend(nursery)


async def in_thread(fn: Callable[[], T]) -> T:
    """Blocking stdlib clients run in a thread so the servers keep serving."""
    return await trio.to_thread.run_sync(fn)


class RawClient:
    """A byte-level client: send anything, read replies line by line."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes:
        with trio.fail_after(CLIENT_TIMEOUT_SECONDS):
            while b"\r\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(self.buffer)
                self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    async def smtp_replies(self, count: int) -> list[bytes]:
        """`count` complete SMTP replies, each as its final line (RFC 5321 §4.2.1)."""
        finals: list[bytes] = []
        while len(finals) < count:
            if re.match(rb"\d{3} |\d{3}$", line := await self.line()):
                finals.append(line)
        return finals

    async def at_eof(self) -> bool:
        with trio.fail_after(CLIENT_TIMEOUT_SECONDS):
            return self.buffer == b"" and await self.stream.receive_some(1) == b""

    async def drain(self) -> bytes:
        """Everything until the server closes."""
        with trio.fail_after(CLIENT_TIMEOUT_SECONDS):
            while data := await self.stream.receive_some(65536):
                self.buffer += data
        return self.buffer

    async def aclose(self) -> None:
        await self.stream.aclose()


# --- SMTP -------------------------------------------------------------------------------------


async def test_dotted_message_comes_back_byte_identical_via_pop3_retr(backend: Backend) -> None:
    def send() -> None:
        with smtplib.SMTP("127.0.0.1", backend.smtp_port, timeout=CLIENT_TIMEOUT_SECONDS) as s:
            s.sendmail("someone@example.com", ["demo@localhost"], DOTTY_MESSAGE)

    def retrieve() -> list[bytes]:
        pop = poplib.POP3("127.0.0.1", backend.pop3_port, timeout=CLIENT_TIMEOUT_SECONDS)
        try:
            pop.user("demo")
            pop.pass_("demo-password")
            return pop.retr(1)[1]
        finally:
            pop.quit()

    await in_thread(send)
    assert backend.store.messages[0].body == DOTTY_MESSAGE
    assert backend.store.mailboxes == {"demo": [DOTTY_MESSAGE]}
    lines = await in_thread(retrieve)
    assert b"\r\n".join(lines) + b"\r\n" == DOTTY_MESSAGE


async def test_retr_is_byte_stuffed_on_the_wire(backend: Backend) -> None:
    backend.store.add("demo", DOTTY_MESSAGE)
    client = await RawClient.connect(backend.pop3_port)
    await client.line()
    await client.send(b"USER demo\r\nPASS demo-password\r\nRETR 1\r\n")
    assert (await client.line()).startswith(b"+OK")
    assert (await client.line()).startswith(b"+OK demo has 1 messages")
    assert await client.line() == f"+OK {len(DOTTY_MESSAGE)} octets".encode()
    received = b""
    while (line := await client.line()) != b".":
        received += line + b"\r\n"
    assert received + b".\r\n" == byte_stuff(DOTTY_MESSAGE)
    assert b"\r\n...two leading dots\r\n..\r\n" in received
    await client.aclose()


async def test_data_accepts_bare_lf_and_stores_line_endings_as_sent(backend: Backend) -> None:
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    await client.send(b"HELO x\nMAIL FROM:<a@b>\nRCPT TO:<demo@localhost>\nDATA\n")
    assert await client.smtp_replies(4) == [
        b"250 legacy.localdomain Hello x, pleased to meet you",
        b"250 2.1.0 <a@b>... Sender ok",
        b"250 2.1.5 <demo@localhost>... Recipient ok",
        b'354 Enter mail, end with "." on a line by itself',
    ]
    await client.send(b"Subject: lf\n\nbare\n..dot\r\nmixed\n.\n")
    assert (await client.smtp_replies(1))[0].startswith(b"250 2.0.0 ")
    assert backend.store.messages[0].body == b"Subject: lf\n\nbare\n.dot\r\nmixed\n"
    await client.aclose()


async def test_bdat_chunks_are_stored_byte_for_byte(backend: Backend) -> None:
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    # RFC 3030: chunk bytes are not lines; ".", CRLF and command-like text are all data.
    chunk = b"QUIT\r\n.\r\nab\r\n"
    await client.send(
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<demo@localhost>\r\n"
        b"BDAT 13\r\n" + chunk + b"BDAT 3 LAST\r\nxyz"
    )
    replies = await client.smtp_replies(5)
    assert replies[3] == b"250 2.0.0 13 octets received"
    assert re.fullmatch(rb"250 2\.0\.0 [0-9A-F]{8} Message accepted for delivery", replies[4])
    assert backend.store.messages[0].body == chunk + b"xyz"
    assert backend.smtp.transcript[0][-2:] == [b"BDAT 13", b"BDAT 3 LAST"]
    await client.aclose()


async def test_refused_bdat_chunk_is_consumed_not_executed(backend: Backend) -> None:
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    await client.send(b"EHLO x\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    replies = await client.smtp_replies(3)
    assert replies[1:] == [b"503 5.0.0 Need MAIL command", b"250 2.0.0 OK"]
    assert backend.store.messages == []
    await client.aclose()


async def test_data_after_bdat_is_refused(backend: Backend) -> None:
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    await client.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\nzDATA\r\n")
    assert (await client.smtp_replies(5))[-1] == b"503 5.5.1 DATA not allowed after BDAT"
    await client.aclose()


async def test_ehlo_advertises_the_legacy_extensions(backend: Backend) -> None:
    def ehlo() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", backend.smtp_port, timeout=CLIENT_TIMEOUT_SECONDS) as s:
            return s.ehlo("client.example")

    code, text = await in_thread(ehlo)
    assert code == 250
    assert text.split(b"\n")[1:] == [
        b"ENHANCEDSTATUSCODES",
        b"PIPELINING",
        b"8BITMIME",
        b"SIZE 52428800",
        b"AUTH PLAIN LOGIN",
        b"DSN",
        b"CHUNKING",
        b"HELP",
    ]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_accepts_the_demo_user(backend: Backend, mechanism: str) -> None:
    def login() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", backend.smtp_port, timeout=CLIENT_TIMEOUT_SECONDS) as s:
            s.ehlo()
            s.user, s.password = "demo", "demo-password"
            authobject = s.auth_plain if mechanism == "PLAIN" else s.auth_login
            return s.auth(mechanism, authobject, initial_response_ok=False)

    assert await in_thread(login) == (235, b"2.0.0 OK Authenticated")
    assert backend.smtp.logins == ["demo"]


async def test_auth_plain_with_initial_response_and_wrong_password_gets_535(
    backend: Backend,
) -> None:
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    bad = base64.b64encode(b"\0demo\0wrong")
    good = base64.b64encode(b"\0demo\0demo-password")
    await client.send(b"EHLO x\r\nAUTH PLAIN " + bad + b"\r\nAUTH PLAIN " + good + b"\r\n")
    replies = await client.smtp_replies(3)
    assert replies[1:] == [b"535 5.7.0 authentication failed", b"235 2.0.0 OK Authenticated"]
    await client.send(b"AUTH PLAIN " + good + b"\r\n")
    assert await client.smtp_replies(1) == [b"503 5.5.0 Already Authenticated"]
    await client.aclose()


async def test_auth_off_hides_auth_and_treats_it_as_unknown(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery, smtp=LegacySmtpServer(auth=False))
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    await client.send(b"EHLO x\r\nAUTH PLAIN AGRlbW8AZGVtby1wYXNzd29yZA==\r\n")
    replies = await client.smtp_replies(2)
    assert replies[1] == b'500 5.5.1 Command unrecognized: "AUTH"'
    assert "AUTH PLAIN LOGIN" not in backend.smtp.ehlo_keywords()
    await client.aclose()


async def test_advertised_starttls_is_answered_454(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery, smtp=LegacySmtpServer(advertise_starttls=True))

    def starttls() -> tuple[bool, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", backend.smtp_port, timeout=CLIENT_TIMEOUT_SECONDS) as s:
            s.ehlo()
            return s.has_extn("starttls"), s.docmd("STARTTLS")

    assert await in_thread(starttls) == (True, (454, b"4.7.0 TLS not available"))


async def test_starttls_is_unknown_when_not_advertised(backend: Backend) -> None:
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    await client.send(b"STARTTLS\r\nFOO bar\r\n")
    assert await client.smtp_replies(2) == [
        b'500 5.5.1 Command unrecognized: "STARTTLS"',
        b'500 5.5.1 Command unrecognized: "FOO"',
    ]
    await client.aclose()


async def test_pipelined_transaction_is_answered_in_order(backend: Backend) -> None:
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    await client.send(
        b"EHLO x\r\nMAIL FROM:<a@b> SIZE=10 BODY=8BITMIME\r\n"
        b"RCPT TO:<demo@localhost> NOTIFY=NEVER\r\nRCPT TO:<Other@Localhost>\r\nDATA\r\n"
    )
    replies = await client.smtp_replies(5)
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"250", b"354"]
    await client.send(b"hello\r\n.\r\nRSET\r\nNOOP\r\nVRFY demo\r\nQUIT\r\n")
    replies = await client.smtp_replies(5)
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"252", b"221"]
    assert await client.at_eof()
    assert backend.store.messages[0].rcpts == ("demo@localhost", "Other@Localhost")
    assert backend.store.mailboxes == {"demo": [b"hello\r\n"], "other": [b"hello\r\n"]}
    await client.aclose()


async def test_mail_command_errors(backend: Backend) -> None:
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    await client.send(
        b"MAIL FROM:<a@b>\r\nEHLO x\r\nRCPT TO:<c@d>\r\nMAIL FROM:a@b\r\n"
        b"MAIL FROM:<a@b> SIZE=52428801\r\nMAIL FROM:<a@b> XYZ=1\r\nDATA\r\n"
    )
    assert await client.smtp_replies(7) == [
        b"503 5.0.0 Polite people say HELO first",
        b"250 HELP",
        b"503 5.0.0 Need MAIL before RCPT",
        b'501 5.5.2 Syntax error in parameters scanning "from"',
        b"552 5.2.3 Message size exceeds fixed maximum message size",
        b'555 5.5.4 "XYZ" parameter unrecognized',
        b"503 5.0.0 Need MAIL command",
    ]
    await client.aclose()


async def test_transcript_keeps_every_command_line_per_connection(backend: Backend) -> None:
    for commands in (b"EHLO one\r\nQUIT\r\n", b"HELO two\nNOOP\r\nQUIT\r\n"):
        client = await RawClient.connect(backend.smtp_port)
        await client.send(commands)
        assert (await client.drain()).endswith(
            b"221 2.0.0 legacy.localdomain closing connection\r\n"
        )
        await client.aclose()
    assert backend.smtp.transcript == [[b"EHLO one", b"QUIT"], [b"HELO two", b"NOOP", b"QUIT"]]


async def test_overlong_line_gets_500_and_close(backend: Backend) -> None:
    client = await RawClient.connect(backend.smtp_port)
    await client.smtp_replies(1)
    await client.send(b"NOOP " + b"x" * (64 * 1024) + b"\r\n")
    assert await client.smtp_replies(1) == [b"500 5.5.2 Line too long; closing connection"]
    assert await client.at_eof()
    await client.aclose()


async def test_idle_smtp_session_gets_421(autojump_clock: trio.testing.MockClock) -> None:
    server = LegacySmtpServer(idle_timeout=300.0)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    with trio.fail_after(400):
        await server.handle(server_stream)  # returns after the timeout reply
    received = await client_stream.receive_some()
    assert received.startswith(b"220 ")
    assert received.endswith(b"421 4.4.2 legacy.localdomain Timeout waiting for command\r\n")
    assert trio.current_time() == pytest.approx(300.0)


SPLIT_SESSION = (
    b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<demo@x>\r\nDATA\r\n"
    b"..dot\r\nbare lf\n.\r\n"
    b"MAIL FROM:<a@b>\r\nRCPT TO:<demo@x>\r\nBDAT 9 LAST\r\nab\r\n.QUIT"
    b"AUTH PLAIN\r\n=\r\nNOOP\nQUIT\r\n"
)


async def _run_split(cuts: list[int]) -> tuple[bytes, list[list[bytes]], list[bytes]]:
    server = LegacySmtpServer()
    client, server_end = trio.testing.memory_stream_pair()
    bounds = [0, *sorted(cuts), len(SPLIT_SESSION)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, server_end)
        for start, end in itertools.pairwise(bounds):
            await client.send_all(SPLIT_SESSION[start:end])
            await trio.testing.wait_all_tasks_blocked()
    replies = bytes(await client.receive_some())
    return replies, server.transcript, [m.body for m in server.store.messages]


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(0, len(SPLIT_SESSION)), max_size=len(SPLIT_SESSION)))
async def test_session_outcome_does_not_depend_on_how_bytes_are_split(cuts: list[int]) -> None:
    # h11's rule: the same byte stream, whole or cut anywhere (down to single bytes), must give
    # the same replies, the same transcript and the same stored mail.
    whole = await _run_split([])
    assert await _run_split(cuts) == whole
    assert whole[2] == [b".dot\r\nbare lf\n", b"ab\r\n.QUIT"]
    assert whole[0].endswith(
        b"501 5.5.2 Cannot decode AUTH parameter\r\n250 2.0.0 OK\r\n"
        b"221 2.0.0 legacy.localdomain closing connection\r\n"
    )


async def test_single_byte_writes_give_the_same_outcome() -> None:
    assert await _run_split(list(range(len(SPLIT_SESSION)))) == await _run_split([])


async def test_pop3_overlong_line_gets_err_and_close(backend: Backend) -> None:
    client = await RawClient.connect(backend.pop3_port)
    await client.line()
    await client.send(b"USER " + b"x" * (64 * 1024) + b"\r\n")
    assert await client.line() == b"-ERR line too long; closing connection"
    assert await client.at_eof()
    await client.aclose()


# --- POP3 -------------------------------------------------------------------------------------


def pop3_client(backend: Backend) -> poplib.POP3:
    return poplib.POP3("127.0.0.1", backend.pop3_port, timeout=CLIENT_TIMEOUT_SECONDS)


async def test_capa_lists_the_rfc_2449_capabilities(backend: Backend) -> None:
    def capa() -> dict[str, list[str]]:
        pop = pop3_client(backend)
        try:
            return pop.capa()
        finally:
            pop.quit()

    assert await in_thread(capa) == {
        "TOP": [],
        "USER": [],
        "UIDL": [],
        "PIPELINING": [],
        "RESP-CODES": [],
        "AUTH-RESP-CODE": [],
        "SASL": ["PLAIN"],
    }


async def test_capa_off_is_an_unknown_command(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery, pop3=LegacyPop3Server(capa=False))
    client = await RawClient.connect(backend.pop3_port)
    await client.line()
    await client.send(b"CAPA\r\nUSER demo\r\n")
    assert [await client.line(), await client.line()] == [
        b"-ERR unknown command",
        b"+OK Password required for demo",
    ]
    await client.aclose()


async def test_advertised_stls_is_listed_and_refused(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery, pop3=LegacyPop3Server(advertise_stls=True))
    client = await RawClient.connect(backend.pop3_port)
    await client.line()
    await client.send(b"CAPA\r\n")
    capabilities = [await client.line() for _ in range(10)]
    assert capabilities[-2:] == [b"STLS", b"."]
    await client.send(b"STLS\r\nUSER demo\r\n")
    assert await client.line() == b"-ERR [SYS/PERM] TLS not available"
    assert await client.line() == b"+OK Password required for demo"
    await client.aclose()


async def test_maildrop_commands_and_update_on_quit(backend: Backend) -> None:
    one, two = b"Subject: one\r\n\r\nfirst\r\nsecond\r\n", b"Subject: two\r\n\r\nbody\r\n"
    backend.store.add("demo", one)
    backend.store.add("demo", two)

    def session() -> list[object]:
        pop = pop3_client(backend)
        pop.user("demo")
        pop.pass_("demo-password")
        seen: list[object] = [
            pop.stat(),
            pop.list()[1],
            pop.uidl(2),
            pop.top(1, 1)[1],
            pop.dele(1),
        ]
        seen.append(pop.stat())
        pop.quit()
        return seen

    seen = await in_thread(session)
    assert seen == [
        (2, len(one) + len(two)),
        [f"1 {len(one)}".encode(), f"2 {len(two)}".encode()],
        b"+OK 2 legacy-2",
        [b"Subject: one", b"", b"first"],
        b"+OK message 1 deleted",
        (1, len(two)),
    ]
    assert backend.store.mailboxes == {"demo": [two]}


async def test_rset_undeletes_and_lost_connection_deletes_nothing(backend: Backend) -> None:
    backend.store.add("demo", b"x\r\n")
    client = await RawClient.connect(backend.pop3_port)
    await client.line()
    await client.send(b"USER demo\r\nPASS demo-password\r\nDELE 1\r\nRETR 1\r\nRSET\r\nDELE 1\r\n")
    replies = [await client.line() for _ in range(6)]
    assert replies[2:] == [
        b"+OK message 1 deleted",
        b"-ERR message 1 already deleted",
        b"+OK maildrop has 1 messages (3 octets)",
        b"+OK message 1 deleted",
    ]
    await client.aclose()  # no QUIT: RFC 1939 §6, no UPDATE state
    await trio.testing.wait_all_tasks_blocked()
    assert backend.store.mailboxes == {"demo": [b"x\r\n"]}
    assert backend.store.locked == set()


async def test_wrong_password_and_commands_out_of_state(backend: Backend) -> None:
    client = await RawClient.connect(backend.pop3_port)
    await client.line()
    await client.send(b"STAT\r\nPASS x\r\nUSER demo\r\nPASS wrong\r\nNOOP\r\nXYZZY\r\n")
    assert [await client.line() for _ in range(6)] == [
        b"-ERR command not valid in this state",
        b"-ERR USER first",
        b"+OK Password required for demo",
        b"-ERR [AUTH] Authentication failed",
        b"-ERR command not valid in this state",
        b"-ERR unknown command",
    ]
    await client.aclose()


async def test_apop_uses_the_greeting_timestamp(backend: Backend) -> None:
    def apop() -> bytes:
        pop = pop3_client(backend)
        try:
            return pop.apop("demo", "demo-password")
        finally:
            pop.quit()

    assert await in_thread(apop) == b"+OK demo has 0 messages (0 octets)"


async def test_auth_plain_with_and_without_initial_response(backend: Backend) -> None:
    token = base64.b64encode(b"\0demo\0demo-password")
    client = await RawClient.connect(backend.pop3_port)
    await client.line()
    await client.send(b"AUTH PLAIN\r\n")
    assert await client.line() == b"+ "
    await client.send(b"*\r\nAUTH PLAIN " + token + b"\r\nQUIT\r\n")
    assert [await client.line() for _ in range(3)] == [
        b"-ERR AUTH cancelled",
        b"+OK demo has 0 messages (0 octets)",
        b"+OK legacy.localdomain signing off",
    ]
    assert backend.pop3.transcript[0] == [b"AUTH PLAIN", b"*", b"AUTH PLAIN " + token, b"QUIT"]
    assert backend.pop3.logins == ["demo"]
    await client.aclose()


async def test_second_session_finds_the_maildrop_locked(backend: Backend) -> None:
    first = await RawClient.connect(backend.pop3_port)
    second = await RawClient.connect(backend.pop3_port)
    for client in (first, second):
        await client.line()
        await client.send(b"USER demo\r\nPASS demo-password\r\n")
        await client.line()
    assert (await first.line()).startswith(b"+OK demo has")
    assert await second.line() == b"-ERR [IN-USE] Maildrop already locked"
    await first.aclose()
    await second.aclose()


async def test_apop_digest_matches_rfc_1939_example() -> None:
    # RFC 1939 §7's worked example, checked against the formula the server uses.
    stamp = "<1896.697170952@dbc.mtview.ca.us>"
    digest = hashlib.md5(f"{stamp}tanstaaf".encode(), usedforsecurity=False).hexdigest()
    assert digest == "c4c9334bac560ecc979e58001b3e22fb"
