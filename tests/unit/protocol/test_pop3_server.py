"""Pop3ServerMediator, one test per rule (RFC 1939, 2449, 2595, 5034 and the issue)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.helpers.script import (
    Script,
    assert_outputs,
    backend_bytes,
    client_bytes,
    controls,
    normalise,
    notice_kinds,
)
from tlsgate.observe.events import CloseReason, NoticeKind
from tlsgate.protocol.io_types import (
    ClientData,
    Close,
    EofToBackend,
    EofToClient,
    Notice,
    SendToBackend,
    SendToClient,
    SessionPolicy,
    StartClientTls,
    SwitchToRelay,
)
from tlsgate.protocol.pop3_server import Pop3ServerMediator

# A POP3 listener with tls = "starttls" and the contract's defaults.
POP3_STLS = SessionPolicy(
    client_tls=False, offer_starttls=True, auth_requires_tls=True, require_tls=False
)
GREETING = b"+OK POP3 legacy server ready <1896.697170952@legacy.example>\r\n"
CAPA_STATUS = b"+OK Capability list follows\r\n"
# A backend without STLS, with USER and SASL.
CAPA_REPLY = (
    CAPA_STATUS + b"TOP\r\nUSER\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\nPIPELINING\r\nUIDL\r\n.\r\n"
)
BEGIN_TLS = b"+OK Begin TLS negotiation\r\n"
AUTH_NEEDS_TLS = b"-ERR [AUTH] Authentication requires TLS, issue STLS first\r\n"
MUST_STLS = b"-ERR Must issue a STLS command first\r\n"


def session(**policy: bool) -> Script:
    """A mediator that has relayed the greeting, before any command."""
    script = Script(Pop3ServerMediator(replace(POP3_STLS, **policy)))
    assert_outputs(script.backend(GREETING), SendToClient(GREETING))
    return script


def tls_session(**policy: bool) -> Script:
    """A mediator after STLS and the handshake."""
    script = session(**policy)
    script.starttls(b"STLS\r\n")
    return script


def logged_in(script: Script) -> Script:
    script.client(b"USER alice\r\nPASS secret\r\n")
    script.backend(b"+OK alice\r\n+OK maildrop has 2 messages\r\n")
    return script


def capa(script: Script, reply: bytes = CAPA_REPLY) -> bytes:
    """Ask for CAPA, answer with `reply`, return what the client got."""
    assert_outputs(script.client(b"CAPA\r\n"), SendToBackend(b"CAPA\r\n"))
    return client_bytes(script.backend(reply))


# ---- greeting and CAPA (RFC 2449 §5, RFC 2595 §4) --------------------------------------------


def test_greeting_is_relayed() -> None:
    script = Script(Pop3ServerMediator(POP3_STLS))
    assert script.backend(GREETING[:10]) == []
    assert_outputs(script.backend(GREETING[10:]), SendToClient(GREETING))


def test_capa_before_tls_lists_stls_and_hides_user_and_sasl() -> None:
    assert capa(session()) == (
        CAPA_STATUS + b"TOP\r\nRESP-CODES\r\nPIPELINING\r\nUIDL\r\nSTLS\r\n.\r\n"
    )


def test_capa_before_tls_shows_user_and_sasl_when_auth_is_allowed() -> None:
    assert capa(session(auth_requires_tls=False)) == CAPA_REPLY[:-3] + b"STLS\r\n.\r\n"


def test_capa_after_tls_shows_user_and_sasl_and_no_stls() -> None:
    assert capa(tls_session()) == CAPA_REPLY


def test_backends_own_stls_is_listed_once_before_tls() -> None:
    reply = CAPA_STATUS + b"STLS\r\nTOP\r\n.\r\n"
    assert capa(session(), reply) == CAPA_STATUS + b"TOP\r\nSTLS\r\n.\r\n"


def test_backends_own_stls_is_never_listed_after_tls() -> None:
    reply = CAPA_STATUS + b"TOP\r\nstls\r\nUSER\r\n.\r\n"
    assert capa(tls_session(), reply) == CAPA_STATUS + b"TOP\r\nUSER\r\n.\r\n"


def test_backends_own_stls_is_hidden_when_stls_is_not_offered() -> None:
    reply = CAPA_STATUS + b"TOP\r\nSTLS\r\n.\r\n"
    assert capa(session(offer_starttls=False), reply) == CAPA_STATUS + b"TOP\r\n.\r\n"


def test_capa_split_into_single_bytes_is_filtered_the_same() -> None:
    script = session()
    script.client(b"CAPA\r\n")
    outs = [out for byte in CAPA_REPLY for out in script.backend(bytes([byte]))]
    assert client_bytes(outs) == (
        CAPA_STATUS + b"TOP\r\nRESP-CODES\r\nPIPELINING\r\nUIDL\r\nSTLS\r\n.\r\n"
    )


def test_capa_is_synthesised_when_the_backend_has_none() -> None:
    # RFC 2595 §4 needs STLS in CAPA for a client to use it; a legacy RFC 1939 server says -ERR.
    script = session()
    outs = capa(script, b"-ERR unknown command\r\n")
    assert outs == b"+OK Capability list follows\r\nSTLS\r\n.\r\n"


def test_synthesised_capa_after_tls_lists_user() -> None:
    outs = capa(tls_session(), b"-ERR unknown command\r\n")
    assert outs == b"+OK Capability list follows\r\nUSER\r\n.\r\n"


def test_over_long_capa_response_is_a_backend_error() -> None:
    script = session()
    script.client(b"CAPA\r\n")
    outs = script.backend(CAPA_STATUS + b"X-FILLER\r\n" * 300)
    assert client_bytes(outs).startswith(b"-ERR [SYS/TEMP]")
    assert outs[-1] == Close(CloseReason.PROTOCOL_ERROR)


# ---- authentication before TLS (RFC 2595 §4, RFC 3206) ---------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        b"USER alice\r\n",
        b"PASS secret\r\n",
        b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        b"AUTH\r\n",
        b"user alice\n",
    ],
)
def test_authentication_before_tls_is_refused_with_auth_code(command: bytes) -> None:
    script = session()
    assert_outputs(
        script.client(command),
        Notice(NoticeKind.AUTH_BEFORE_TLS_REFUSED),
        SendToClient(AUTH_NEEDS_TLS),
    )
    assert backend_bytes(script.outputs) == b""
    assert not script.paused()


def test_authentication_before_tls_is_forwarded_when_allowed() -> None:
    script = session(auth_requires_tls=False)
    assert_outputs(script.client(b"USER alice\r\n"), SendToBackend(b"USER alice\r\n"))


def test_authentication_after_tls_is_forwarded() -> None:
    script = tls_session()
    command = b"USER alice\r\nPASS secret\r\n"
    assert_outputs(script.client(command), SendToBackend(command))
    outs = script.backend(b"+OK alice\r\n+OK logged in\r\n")
    assert client_bytes(outs) == b"+OK alice\r\n+OK logged in\r\n"


def test_authentication_is_refused_before_tls_even_when_stls_is_not_offered() -> None:
    script = session(offer_starttls=False)
    assert client_bytes(script.client(b"USER alice\r\n")) == AUTH_NEEDS_TLS


# ---- STLS (RFC 2595 §4) ----------------------------------------------------------------------


def test_stls_is_answered_locally_and_starts_tls() -> None:
    script = session()
    script.expect(ClientData(b"STLS\r\n"), SendToClient(BEGIN_TLS), StartClientTls())
    assert backend_bytes(script.outputs) == b""


def test_client_reading_is_paused_from_stls_until_the_handshake() -> None:
    script = session()
    script.client(b"STLS\r\n")
    assert script.paused()
    assert_outputs(script.tls_established(), Notice(NoticeKind.STARTTLS))
    assert not script.paused()


def test_stls_pipelined_after_capa_answers_after_the_capa_response() -> None:
    script = session()
    outs = script.client(b"CAPA\r\nSTLS\r\n")
    assert_outputs(outs, SendToBackend(b"CAPA\r\n"))
    outs = script.backend(CAPA_REPLY)
    assert client_bytes(outs).endswith(b"STLS\r\n.\r\n" + BEGIN_TLS)
    assert isinstance(outs[-1], StartClientTls)


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_injection_after_stls_is_discarded_and_reported(eol: bytes) -> None:
    script = session()
    injected = b"USER evil" + eol + b"PASS evil" + eol
    outs = script.client(b"STLS" + eol + injected)
    assert Notice(NoticeKind.STARTTLS_INJECTION, {"bytes": len(injected)}) in outs
    assert normalise(outs)[-2:] == [SendToClient(BEGIN_TLS), StartClientTls()]
    script.tls_established()
    script.client(b"CAPA\r\n")
    assert backend_bytes(script.outputs) == b"CAPA\r\n"


def test_stls_inside_tls_gets_err() -> None:
    outs = tls_session().client(b"STLS\r\n")
    assert_outputs(
        outs,
        Notice(NoticeKind.STARTTLS_REFUSED, {"reason": "tls_already_active"}),
        SendToClient(b"-ERR Command not permitted when TLS active\r\n"),
    )


def test_stls_with_argument_gets_err() -> None:
    script = session()
    outs = script.client(b"STLS now\r\n")
    assert client_bytes(outs) == b"-ERR STLS takes no arguments\r\n"
    assert not script.paused()


def test_stls_after_login_gets_err() -> None:
    # RFC 2595 §4: STLS is only permitted in the AUTHORIZATION state.
    script = logged_in(session(auth_requires_tls=False))
    outs = script.client(b"STLS\r\n")
    assert client_bytes(outs) == b"-ERR STLS only permitted in AUTHORIZATION state\r\n"
    assert not any(isinstance(out, StartClientTls) for out in outs)


def test_implicit_tls_refuses_stls_and_lists_user_without_stls() -> None:
    script = session(client_tls=True)
    assert client_bytes(script.client(b"STLS\r\n")).startswith(b"-ERR")
    reply = CAPA_STATUS + b"USER\r\nSTLS\r\nSASL PLAIN\r\n.\r\n"
    assert capa(script, reply) == CAPA_STATUS + b"USER\r\nSASL PLAIN\r\n.\r\n"


# ---- require_tls -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [b"CAPA\r\n", b"QUIT\r\n", b"capa\n"])
def test_require_tls_lets_capa_and_quit_through(command: bytes) -> None:
    script = session(require_tls=True)
    assert_outputs(script.client(command), SendToBackend(command))


@pytest.mark.parametrize(
    "command", [b"STAT\r\n", b"LIST\r\n", b"RETR 1\r\n", b"NOOP\r\n", b"UIDL\r\n", b"TOP 1 0\r\n"]
)
def test_require_tls_refuses_everything_else_before_tls(command: bytes) -> None:
    script = session(require_tls=True)
    outs = script.client(command)
    assert client_bytes(outs) == MUST_STLS
    assert NoticeKind.COMMAND_BEFORE_TLS_REFUSED in notice_kinds(outs)
    assert backend_bytes(outs) == b""


def test_require_tls_still_accepts_stls() -> None:
    script = session(require_tls=True)
    assert_outputs(script.client(b"STLS\r\n"), SendToClient(BEGIN_TLS), StartClientTls())


def test_require_tls_allows_everything_after_tls() -> None:
    script = tls_session(require_tls=True)
    assert_outputs(script.client(b"STAT\r\n"), SendToBackend(b"STAT\r\n"))


# ---- multi-line responses (RFC 1939 §3) ------------------------------------------------------


def test_retr_body_streams_in_chunks_untouched() -> None:
    script = logged_in(tls_session())
    script.client(b"RETR 1\r\n")
    chunks = [
        b"+OK 120 octets\r\nSubject: hi\r\n",
        b"\r\n..a line starting with a dot\r\n",
        b"...\r\n.x\r\n",  # the response stays byte-stuffed: the client unstuffs it
        b"-ERR not a status line\r\n+OK nor this\r\n" + b"y" * 100_000 + b"\r\n",
    ]
    for chunk in chunks:
        assert_outputs(script.backend(chunk), SendToClient(chunk))
    assert_outputs(script.backend(b".\r\n"), SendToClient(b".\r\n"))
    # The next status line is a status line again.
    script.client(b"DELE 1\r\n")
    assert_outputs(script.backend(b"+OK deleted\r\n"), SendToClient(b"+OK deleted\r\n"))


BODY = b"+OK message follows\r\nSubject: x\r\n\r\n..stuffed\r\nbody\r\n.\r\n"


# Where a response ends is only visible from outside through what follows it: backend bytes
# stream to the client either way, but a reply tlsgate gives itself (here the -ERR to an STLS
# inside TLS) is released exactly when the response before it is complete.
TLS_ACTIVE = b"-ERR Command not permitted when TLS active\r\n"


@pytest.mark.parametrize("split", range(1, len(BODY)))
def test_retr_terminator_is_found_across_any_chunk_boundary(split: int) -> None:
    script = logged_in(tls_session())
    script.client(b"RETR 1\r\nSTLS\r\nSTAT\r\n")
    outs = script.backend(BODY[:split]) + script.backend(BODY[split:] + b"+OK 1 120\r\n")
    assert client_bytes(outs) == BODY + TLS_ACTIVE + b"+OK 1 120\r\n"


def test_retr_empty_body() -> None:
    script = logged_in(tls_session())
    script.client(b"RETR 1\r\nSTLS\r\nNOOP\r\n")
    outs = script.backend(b"+OK 0 octets\r\n")
    assert client_bytes(outs) == b"+OK 0 octets\r\n"
    outs = script.backend(b".\r\n+OK\r\n")
    assert client_bytes(outs) == b".\r\n" + TLS_ACTIVE + b"+OK\r\n"


def test_retr_error_is_a_single_line() -> None:
    script = logged_in(tls_session())
    script.client(b"RETR 9\r\nSTLS\r\nSTAT\r\n")
    outs = script.backend(b"-ERR no such message\r\n+OK 2 320\r\n")
    assert client_bytes(outs) == b"-ERR no such message\r\n" + TLS_ACTIVE + b"+OK 2 320\r\n"


@pytest.mark.parametrize(
    ("command", "response"),
    [
        (b"LIST\r\n", b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n"),
        (b"LIST 1\r\n", b"+OK 1 120\r\n"),
        (b"UIDL\r\n", b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n.\r\n"),
        (b"UIDL 1\r\n", b"+OK 1 whqtswO00WBw418f9t5JxYwZ\r\n"),
        (b"TOP 1 0\r\n", b"+OK\r\nSubject: x\r\n\r\n.\r\n"),
        (b"STAT\r\n", b"+OK 2 320\r\n"),
    ],
)
def test_multiline_only_where_rfc_1939_says_so(command: bytes, response: bytes) -> None:
    # A single-line response taken for multi-line would hold the -ERR back; a multi-line one
    # taken for single-line would release it after the status line, inside the listing.
    script = logged_in(tls_session())
    script.client(command + b"STLS\r\nNOOP\r\n")
    outs = script.backend(response + b"+OK noop\r\n")
    assert client_bytes(outs) == response + TLS_ACTIVE + b"+OK noop\r\n"


# ---- pipelining (RFC 2449 §6.6) --------------------------------------------------------------


def test_pipelined_commands_keep_order_around_a_local_refusal() -> None:
    script = session()
    outs = script.client(b"CAPA\r\nUSER alice\r\nSTAT\r\nQUIT\r\n")
    assert backend_bytes(outs) == b"CAPA\r\nSTAT\r\nQUIT\r\n"
    assert client_bytes(outs) == b""  # the refusal waits for the CAPA response
    outs = script.backend(CAPA_REPLY[:40])
    assert client_bytes(outs) == b""
    outs = script.backend(CAPA_REPLY[40:] + b"-ERR not yet\r\n+OK bye\r\n")
    assert client_bytes(outs) == (
        CAPA_STATUS
        + b"TOP\r\nRESP-CODES\r\nPIPELINING\r\nUIDL\r\nSTLS\r\n.\r\n"
        + AUTH_NEEDS_TLS
        + b"-ERR not yet\r\n+OK bye\r\n"
    )


def test_pipelined_multiline_responses_in_one_chunk() -> None:
    script = logged_in(tls_session())
    script.client(b"LIST\r\nRETR 1\r\nSTLS\r\nQUIT\r\n")
    responses = b"+OK\r\n1 5\r\n.\r\n+OK\r\nline\r\n.\r\n+OK bye\r\n"
    outs = script.backend(responses)
    assert client_bytes(outs) == (
        b"+OK\r\n1 5\r\n.\r\n+OK\r\nline\r\n.\r\n"
        b"-ERR Command not permitted when TLS active\r\n+OK bye\r\n"
    )


# ---- SASL (RFC 5034) -------------------------------------------------------------------------


def test_sasl_exchange_after_tls_forwards_continuations_opaquely() -> None:
    script = tls_session()
    assert_outputs(script.client(b"AUTH LOGIN\r\n"), SendToBackend(b"AUTH LOGIN\r\n"))
    assert script.paused()
    assert_outputs(script.backend(b"+ VXNlcm5hbWU6\r\n"), SendToClient(b"+ VXNlcm5hbWU6\r\n"))
    assert not script.paused()
    # A SASL response is data, even when it reads like a command.
    assert_outputs(script.client(b"STLS\r\n"), SendToBackend(b"STLS\r\n"))
    assert script.paused()
    script.backend(b"+ UGFzc3dvcmQ6\r\n")
    assert_outputs(script.client(b"QUIT\r\n"), SendToBackend(b"QUIT\r\n"))
    outs = script.backend(b"+OK maildrop locked and ready\r\n")
    assert_outputs(outs, SendToClient(b"+OK maildrop locked and ready\r\n"))
    assert not script.paused()
    assert client_bytes(script.client(b"STLS\r\n")).startswith(b"-ERR")


def test_sasl_response_read_with_auth_waits_for_the_continuation() -> None:
    script = tls_session()
    outs = script.client(b"AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n")
    assert_outputs(outs, SendToBackend(b"AUTH PLAIN\r\n"))
    outs = script.backend(b"+ \r\n")
    assert_outputs(outs, SendToClient(b"+ \r\n"), SendToBackend(b"AGFsaWNlAHNlY3JldA==\r\n"))


def test_failed_sasl_returns_to_commands() -> None:
    script = tls_session()
    script.client(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n")
    outs = script.backend(b"-ERR [AUTH] invalid credentials\r\n")
    assert client_bytes(outs) == b"-ERR [AUTH] invalid credentials\r\n"
    assert not script.paused()
    assert_outputs(script.client(b"CAPA\r\n"), SendToBackend(b"CAPA\r\n"))


# ---- a client not offered STLS (starttls_exclude) --------------------------------------------


def test_stls_not_offered_is_forwarded_and_backend_ok_switches_to_relay() -> None:
    script = session(offer_starttls=False)
    assert_outputs(script.client(b"STLS\r\n"), SendToBackend(b"STLS\r\n"))
    assert script.paused()
    outs = script.backend(b"+OK Begin TLS\r\n")
    assert client_bytes(outs) == b"+OK Begin TLS\r\n"
    assert controls(outs) == [SwitchToRelay()]
    assert not script.paused()
    hello = b"\x16\x03\x01\x02\x00STLS\r\n.\r\n" + b"\xff" * 70_000
    assert_outputs(script.client(hello), SendToBackend(hello))
    assert_outputs(script.backend(b"\x16\x03\x03-ERR\r\n"), SendToClient(b"\x16\x03\x03-ERR\r\n"))


def test_backend_refusing_forwarded_stls_returns_to_commands() -> None:
    script = session(offer_starttls=False)
    script.client(b"STLS\r\n")
    assert_outputs(script.backend(b"-ERR no TLS\r\n"), SendToClient(b"-ERR no TLS\r\n"))
    assert not script.paused()
    assert_outputs(script.client(b"CAPA\r\n"), SendToBackend(b"CAPA\r\n"))


# ---- failures and the end of a session -------------------------------------------------------


def test_idle_timeout_gets_err_then_close() -> None:
    assert_outputs(
        session().idle_timeout(),
        Notice(NoticeKind.IDLE_TIMEOUT),
        SendToClient(b"-ERR Idle timeout, closing connection\r\n"),
        Close(CloseReason.IDLE_TIMEOUT),
    )


def test_shutdown_gets_err_sys_temp_between_responses() -> None:
    assert_outputs(
        logged_in(tls_session()).shutdown(),
        SendToClient(b"-ERR [SYS/TEMP] Service shutting down, closing connection\r\n"),
        Close(CloseReason.SHUTDOWN),
    )


def test_shutdown_inside_a_multi_line_response_adds_no_line_to_it() -> None:
    script = logged_in(tls_session())
    script.client(b"RETR 1\r\n")
    script.backend(b"+OK 120 octets\r\nSubject: hi\r\n")
    assert_outputs(script.shutdown(), Close(CloseReason.SHUTDOWN))


def test_line_over_4k_before_tls_is_a_protocol_error() -> None:
    outs = session().client(b"USER " + b"a" * 5000)
    assert client_bytes(outs) == b"-ERR Line too long, closing connection\r\n"
    assert outs[-1] == Close(CloseReason.PROTOCOL_ERROR)
    assert backend_bytes(outs) == b""


def test_long_line_after_tls_is_accepted() -> None:
    line = b"AUTH GSSAPI " + b"A" * 10_000 + b"\r\n"
    assert_outputs(tls_session().client(line), SendToBackend(line))


@pytest.mark.parametrize("client_first", [True, False])
def test_eofs_half_close_and_both_close_completed(client_first: bool) -> None:
    script = session()
    script.client(b"QUIT\r\n")
    script.backend(b"+OK bye\r\n")
    if client_first:
        assert_outputs(script.client_eof(), EofToBackend())
        assert_outputs(script.backend_eof(), EofToClient(), Close(CloseReason.COMPLETED))
    else:
        assert_outputs(script.backend_eof(), EofToClient())
        assert_outputs(script.client_eof(), EofToBackend(), Close(CloseReason.COMPLETED))


# ---- bounded cost (the issue: "memory per connection stays bounded whatever the client sends")


def test_refusals_owed_behind_an_unanswered_command_are_bounded() -> None:
    script = session()
    script.client(b"CAPA\r\n")  # the backend takes its time to answer
    flood = b"USER x\r\n" * 8192  # 64 KiB, 8192 refusals owed
    stopped = False
    for _ in range(16):  # 1 MiB in all
        outs = script.client(flood)
        if script.paused() or any(isinstance(out, Close) for out in outs):
            stopped = True
            break
    assert stopped, "1 MiB of refused commands queued: neither paused nor closed"
