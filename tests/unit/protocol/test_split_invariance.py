"""Split invariance: how TCP cuts the bytes never changes what a mediator does (h11's `tr()`).

Each session below is a realistic conversation, written as the inputs the net layer would
feed, in protocol order: a backend reply only after the commands that cause it, client bytes
only while the mediator reads the client, `ClientTlsEstablished` only right after
`StartClientTls`. Hypothesis then cuts every client and backend payload at random offsets,
down to one byte at a time, and the outputs must match feeding each payload whole: the same
bytes to each side before and after every notice, StartClientTls, SwitchToRelay, EOF and Close
(`tests.helpers.script.segments`).

Injection is deliberately absent: how many bytes follow a STARTTLS in one read *is* the
chunking, and a real client's later bytes would go to the TLS handshake, not the mediator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.script import (
    Script,
    Segment,
    backend_bytes,
    client_bytes,
    notice_kinds,
    segments,
)
from tlsgate.observe.events import CloseReason, NoticeKind
from tlsgate.protocol.io_types import (
    BackendData,
    BackendEof,
    ClientData,
    ClientEof,
    ClientTlsEstablished,
    Close,
    Input,
    Mediator,
    Output,
    SessionPolicy,
    StartClientTls,
    SwitchToRelay,
)
from tlsgate.protocol.pop3_server import Pop3ServerMediator
from tlsgate.protocol.smtp_server import SmtpServerMediator

STARTTLS_POLICY = SessionPolicy(
    client_tls=False, offer_starttls=True, auth_requires_tls=True, require_tls=False
)


@dataclass(frozen=True)
class Session:
    """One conversation and what feeding it whole must produce."""

    make: Callable[[], Mediator]
    inputs: Sequence[Input]
    to_backend: bytes  # everything the backend must receive
    notices: Sequence[NoticeKind]
    to_client_contains: Sequence[bytes] = ()  # replies that must reach the client, in order


# ---- SMTP ------------------------------------------------------------------------------------

SMTP_GREETING = b"220 legacy.example ESMTP Sendmail 8.12.11\r\n"
SMTP_EHLO = b"EHLO client.example\r\n"
SMTP_EHLO_REPLY = (
    b"250-legacy.example Hello client.example\r\n"
    b"250-PIPELINING\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH LOGIN PLAIN\r\n"
    b"250-CHUNKING\r\n"
    b"250 8BITMIME\r\n"
)
# A body with everything that could be mistaken for its end or for a command.
SMTP_BODY = (
    b"From: alice@example.org\r\nSubject: split me\r\n\r\n"
    b"..a stuffed line\r\n.x\r\n.\rnot the end\r\n\n..\nnor this\r\n"
    b"STARTTLS\r\nQUIT\r\n" + b"z" * 300 + b"\r\n"
)

smtp_submission = Session(
    make=lambda: SmtpServerMediator(STARTTLS_POLICY),
    inputs=[
        BackendData(SMTP_GREETING),
        ClientData(SMTP_EHLO),
        BackendData(SMTP_EHLO_REPLY),
        ClientData(b"STARTTLS\r\n"),
        ClientTlsEstablished(),
        ClientData(SMTP_EHLO),
        BackendData(b"250 2.0.0 Reset state\r\n" + SMTP_EHLO_REPLY),
        ClientData(b"AUTH LOGIN\r\n"),
        BackendData(b"334 VXNlcm5hbWU6\r\n"),
        ClientData(b"STARTTLS\r\n"),  # a SASL response, not a command
        BackendData(b"334 UGFzc3dvcmQ6\r\n"),
        ClientData(b"c2VjcmV0\r\n"),
        BackendData(b"235 2.7.0 Authentication successful\r\n"),
        ClientData(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"),
        BackendData(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"),
        # The STARTTLS after the body is answered locally only if the body's end was found.
        ClientData(SMTP_BODY + b".\r\nNOOP\r\nSTARTTLS\r\nQUIT\r\n"),
        BackendData(b"250 2.0.0 Ok: queued as 1234\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"),
        ClientEof(),
        BackendEof(),
    ],
    to_backend=(
        SMTP_EHLO
        + b"RSET\r\n"
        + SMTP_EHLO
        + b"AUTH LOGIN\r\nSTARTTLS\r\nc2VjcmV0\r\n"
        + b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
        + SMTP_BODY
        + b".\r\nNOOP\r\nQUIT\r\n"
    ),
    notices=[NoticeKind.STARTTLS, NoticeKind.STARTTLS_REFUSED],
    to_client_contains=[
        SMTP_GREETING,
        b"250 STARTTLS\r\n",
        b"220 2.0.0 Ready to start TLS\r\n",
        b"235 2.7.0",
        b"354 End data",
        b"250 2.0.0 Ok: queued as 1234\r\n250 2.0.0 Ok\r\n503 5.5.1 TLS already active\r\n"
        b"221 2.0.0 Bye\r\n",
    ],
)

BDAT_CHUNK = b"Subject: chunked\r\n\r\n.\r\nSTARTTLS\r\n"
smtp_pipelined_require_tls = Session(
    make=lambda: SmtpServerMediator(
        SessionPolicy(
            client_tls=False, offer_starttls=True, auth_requires_tls=True, require_tls=True
        )
    ),
    inputs=[
        BackendData(SMTP_GREETING),
        # RFC 2920: a pipelined group, STARTTLS last; MAIL and AUTH are answered locally.
        ClientData(SMTP_EHLO + b"MAIL FROM:<a@x>\r\nAUTH PLAIN AGEAYg==\r\nNOOP\r\nSTARTTLS\r\n"),
        BackendData(SMTP_EHLO_REPLY + b"250 2.0.0 Ok\r\n"),
        ClientTlsEstablished(),
        ClientData(SMTP_EHLO),
        BackendData(b"250 2.0.0 Ok\r\n" + SMTP_EHLO_REPLY),
        ClientData(
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n"
            + f"BDAT {len(BDAT_CHUNK)}\r\n".encode()
            + BDAT_CHUNK
            + b"BDAT 6 LAST\r\nQUIT\r\n"  # six octets of message, not a command
            + b"QUIT\r\n"
        ),
        BackendData(b"250 Ok\r\n250 Ok\r\n250 chunk\r\n250 queued\r\n221 Bye\r\n"),
        BackendEof(),
        ClientEof(),
    ],
    to_backend=(
        SMTP_EHLO
        + b"NOOP\r\n"
        + b"RSET\r\n"
        + SMTP_EHLO
        + b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n"
        + f"BDAT {len(BDAT_CHUNK)}\r\n".encode()
        + BDAT_CHUNK
        + b"BDAT 6 LAST\r\nQUIT\r\nQUIT\r\n"
    ),
    notices=[
        NoticeKind.COMMAND_BEFORE_TLS_REFUSED,
        NoticeKind.AUTH_BEFORE_TLS_REFUSED,
        NoticeKind.STARTTLS,
    ],
    to_client_contains=[
        b"250 STARTTLS\r\n",
        b"530 5.7.0 Must issue a STARTTLS command first\r\n"
        b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
        b"250 2.0.0 Ok\r\n"
        b"220 2.0.0 Ready to start TLS\r\n",
        b"250 chunk\r\n250 queued\r\n221 Bye\r\n",
    ],
)

FAKE_CLIENT_HELLO = b"\x16\x03\x01\x00\x10STARTTLS\r\n.\r\n\x00\n\n\r"
FAKE_SERVER_HELLO = b"\x16\x03\x03\x00\x10250-STARTTLS\r\n.\r\n\xff\r"
smtp_excluded_client_relay = Session(
    make=lambda: SmtpServerMediator(
        SessionPolicy(
            client_tls=False, offer_starttls=False, auth_requires_tls=True, require_tls=False
        )
    ),
    inputs=[
        BackendData(SMTP_GREETING),
        ClientData(SMTP_EHLO),
        BackendData(SMTP_EHLO_REPLY),
        ClientData(b"STARTTLS\r\n"),
        BackendData(b"220 2.0.0 Ready to start TLS\r\n"),
        ClientData(FAKE_CLIENT_HELLO),
        BackendData(FAKE_SERVER_HELLO),
        ClientData(FAKE_CLIENT_HELLO[::-1]),
        ClientEof(),
        BackendEof(),
    ],
    to_backend=SMTP_EHLO + b"STARTTLS\r\n" + FAKE_CLIENT_HELLO + FAKE_CLIENT_HELLO[::-1],
    notices=[],
    to_client_contains=[
        b"250 8BITMIME\r\n220 2.0.0 Ready to start TLS\r\n" + FAKE_SERVER_HELLO,
    ],
)

# ---- POP3 ------------------------------------------------------------------------------------

POP3_GREETING = b"+OK POP3 server ready <1896.697170952@legacy.example>\r\n"
POP3_CAPA_REPLY = (
    b"+OK Capability list follows\r\n"
    b"TOP\r\nUSER\r\nSASL PLAIN LOGIN\r\nSTLS\r\nRESP-CODES\r\nPIPELINING\r\nUIDL\r\n.\r\n"
)
POP3_MESSAGE = (
    b"From: alice@example.org\r\nSubject: split me\r\n\r\n"
    b"..stuffed\r\n...\r\n.x\r\n\n..\n+OK not a status\r\n-ERR nor this\r\n" + b"m" * 300 + b"\r\n"
)

POP3_TLS_ACTIVE = b"-ERR Command not permitted when TLS active\r\n"

pop3_stls = Session(
    make=lambda: Pop3ServerMediator(STARTTLS_POLICY),
    inputs=[
        BackendData(POP3_GREETING),
        ClientData(b"CAPA\r\n"),
        BackendData(POP3_CAPA_REPLY),
        ClientData(b"STLS\r\n"),
        ClientTlsEstablished(),
        ClientData(b"CAPA\r\n"),
        BackendData(POP3_CAPA_REPLY),
        # RFC 2449 PIPELINING: the whole login and listing in one go.
        ClientData(b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\n"),
        BackendData(
            b"+OK alice\r\n+OK maildrop has 2 messages\r\n+OK 2 620\r\n"
            b"+OK 2 messages\r\n1 420\r\n2 200\r\n.\r\n"
        ),
        # The -ERR to STLS and the filtered CAPA show where each response was taken to end.
        ClientData(b"RETR 1\r\nSTLS\r\nTOP 2 0\r\nCAPA\r\nUIDL 1\r\nQUIT\r\n"),
        BackendData(
            b"+OK 420 octets\r\n"
            + POP3_MESSAGE
            + b".\r\n+OK\r\nSubject: two\r\n\r\n.\r\n"
            + POP3_CAPA_REPLY
            + b"+OK 1 whqtswO00WBw418f9t5JxYwZ\r\n+OK bye\r\n"
        ),
        ClientEof(),
        BackendEof(),
    ],
    to_backend=(
        b"CAPA\r\nCAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\n"
        b"RETR 1\r\nTOP 2 0\r\nCAPA\r\nUIDL 1\r\nQUIT\r\n"
    ),
    notices=[NoticeKind.STARTTLS, NoticeKind.STARTTLS_REFUSED],
    to_client_contains=[
        b"STLS\r\n.\r\n+OK Begin TLS negotiation\r\n",
        b"+OK 420 octets\r\n"
        + POP3_MESSAGE
        + b".\r\n"
        + POP3_TLS_ACTIVE
        + b"+OK\r\nSubject: two\r\n\r\n.\r\n"
        + b"+OK Capability list follows\r\n"
        + b"TOP\r\nUSER\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\nPIPELINING\r\nUIDL\r\n.\r\n"
        + b"+OK 1 whqtswO00WBw418f9t5JxYwZ\r\n+OK bye\r\n",
    ],
)

pop3_pipelined_sasl = Session(
    make=lambda: Pop3ServerMediator(STARTTLS_POLICY),
    inputs=[
        BackendData(POP3_GREETING),
        ClientData(b"CAPA\r\nUSER alice\r\nSTLS\r\n"),
        BackendData(POP3_CAPA_REPLY),
        ClientTlsEstablished(),
        ClientData(b"AUTH LOGIN\r\n"),
        BackendData(b"+ VXNlcm5hbWU6\r\n"),
        ClientData(b"STLS\r\n"),  # a SASL response, not a command
        BackendData(b"+ UGFzc3dvcmQ6\r\n"),
        ClientData(b"c2VjcmV0\r\n"),
        BackendData(b"+OK maildrop locked and ready\r\n"),
        ClientData(b"RETR 1\r\nSTLS\r\nQUIT\r\n"),
        BackendData(b"+OK\r\n" + POP3_MESSAGE + b".\r\n+OK bye\r\n"),
        BackendEof(),
        ClientEof(),
    ],
    to_backend=b"CAPA\r\nAUTH LOGIN\r\nSTLS\r\nc2VjcmV0\r\nRETR 1\r\nQUIT\r\n",
    notices=[
        NoticeKind.AUTH_BEFORE_TLS_REFUSED,
        NoticeKind.STARTTLS,
        NoticeKind.STARTTLS_REFUSED,
    ],
    to_client_contains=[
        b"STLS\r\n.\r\n-ERR [AUTH] Authentication requires TLS, issue STLS first\r\n"
        b"+OK Begin TLS negotiation\r\n",
        b"+OK maildrop locked and ready\r\n+OK\r\n",
        POP3_MESSAGE + b".\r\n" + POP3_TLS_ACTIVE + b"+OK bye\r\n",
    ],
)

SESSIONS = {
    "smtp_submission": smtp_submission,
    "smtp_pipelined_require_tls": smtp_pipelined_require_tls,
    "smtp_excluded_client_relay": smtp_excluded_client_relay,
    "pop3_stls": pop3_stls,
    "pop3_pipelined_sasl": pop3_pipelined_sasl,
}

# ---- the driver ------------------------------------------------------------------------------

Splitter = Callable[[bytes], list[bytes]]


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [bytes([byte]) for byte in data]


def cut(data: bytes, offsets: Sequence[int]) -> list[bytes]:
    """`data` cut at `offsets`; no empty pieces (a zero-byte read is EOF, never data)."""
    points = sorted({offset for offset in offsets if 0 < offset < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def replay(session: Session, split: Splitter) -> list[Output]:
    """Feed the session as the net layer would, payloads cut by `split`."""
    script = Script(session.make())
    handshakes = 0
    for event in session.inputs:
        match event:
            case ClientData(data):
                for piece in split(data):
                    script.client(piece)  # Script refuses it while client reading is paused
            case BackendData(data):
                for piece in split(data):
                    script.backend(piece)
            case ClientTlsEstablished():
                handshakes += 1
                requested = sum(isinstance(out, StartClientTls) for out in script.outputs)
                assert requested == handshakes, "the model fed a handshake nobody asked for"
                script.feed(event)
            case _:
                script.feed(event)
    return script.outputs


@functools.cache
def reference_segments(name: str) -> list[Segment]:
    return segments(replay(SESSIONS[name], whole))


# ---- the properties --------------------------------------------------------------------------


@pytest.mark.parametrize("name", SESSIONS)
def test_session_fed_whole_does_what_the_protocol_says(name: str) -> None:
    """The reference run is itself right, so invariance is not invariance of a wrong answer."""
    session = SESSIONS[name]
    outputs = replay(session, whole)
    assert backend_bytes(outputs) == session.to_backend
    assert notice_kinds(outputs) == list(session.notices)
    to_client = client_bytes(outputs)
    position = 0
    for expected in session.to_client_contains:
        found = to_client.find(expected, position)
        assert found >= 0, f"{expected!r} missing (or out of order) in what the client got"
        position = found + len(expected)
    assert outputs[-1] == Close(CloseReason.COMPLETED)
    relayed = any(isinstance(out, SwitchToRelay) for out in outputs)
    assert relayed == (name == "smtp_excluded_client_relay")


@pytest.mark.parametrize("name", SESSIONS)
def test_session_fed_one_byte_at_a_time_matches_whole(name: str) -> None:
    session = SESSIONS[name]
    assert segments(replay(session, bytewise)) == segments(replay(session, whole))


# Five sessions of about 20 payloads each: 100 cuttings per session run in a few seconds; the
# "deep" Hypothesis profile (tests/conftest.py) raises it.
@settings(max_examples=max(100, settings().max_examples))
@given(data=st.data())
@pytest.mark.parametrize("name", SESSIONS)
def test_session_split_at_random_offsets_matches_whole(name: str, data: st.DataObject) -> None:
    session = SESSIONS[name]

    def random_split(payload: bytes) -> list[bytes]:
        if data.draw(st.integers(0, 9)) == 0:  # now and then, the worst case
            return bytewise(payload)
        offsets = data.draw(st.lists(st.integers(0, len(payload)), max_size=8))
        return cut(payload, offsets)

    assert segments(replay(session, random_split)) == reference_segments(name)
