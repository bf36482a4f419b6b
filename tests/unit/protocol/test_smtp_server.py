"""SmtpServerMediator, one test per rule (RFC 3207, 5321, 2920, 3030, 4954 and the issue)."""

from __future__ import annotations

import time
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
from tlsgate.protocol.mediator_base import MAX_PENDING_REPLIES
from tlsgate.protocol.smtp_server import SmtpServerMediator

# A submission listener (tls = "starttls", the defaults of the contract).
SUBMISSION = SessionPolicy(
    client_tls=False, offer_starttls=True, auth_requires_tls=True, require_tls=False
)
GREETING = b"220 legacy.example ESMTP Sendmail 8.12\r\n"
EHLO = b"EHLO client.example\r\n"
# A legacy backend without STARTTLS but with AUTH and the usual extensions.
EHLO_REPLY = (
    b"250-legacy.example Hello client.example\r\n"
    b"250-PIPELINING\r\n"
    b"250-AUTH LOGIN PLAIN\r\n"
    b"250-SIZE 10240000\r\n"
    b"250 8BITMIME\r\n"
)
RSET_REPLY = b"250 2.0.0 Reset state\r\n"
READY = b"220 2.0.0 Ready to start TLS\r\n"


def session(**policy: bool) -> Script:
    """A mediator that has relayed the greeting, before any command."""
    script = Script(SmtpServerMediator(replace(SUBMISSION, **policy)))
    assert_outputs(script.backend(GREETING), SendToClient(GREETING))
    return script


def tls_session(**policy: bool) -> Script:
    """A mediator after EHLO, STARTTLS, the handshake and the swallowed RSET reply."""
    script = session(**policy)
    script.client(EHLO)
    script.backend(EHLO_REPLY)
    script.starttls()
    assert_outputs(script.backend(RSET_REPLY))
    return script


def implicit_session(**policy: bool) -> Script:
    return session(client_tls=True, **policy)


# ---- greeting and EHLO (RFC 5321 §4.1.1.1, RFC 3207 §4) -------------------------------------


def test_greeting_is_relayed() -> None:
    script = Script(SmtpServerMediator(SUBMISSION))
    assert script.backend(b"220-legacy.example ESMTP\r\n220-second line\r\n") == []
    assert_outputs(
        script.backend(b"220 ready\r\n"),
        SendToClient(b"220-legacy.example ESMTP\r\n220-second line\r\n220 ready\r\n"),
    )


def test_greeting_split_into_bytes_is_relayed_once_complete() -> None:
    script = Script(SmtpServerMediator(SUBMISSION))
    outs = [out for byte in GREETING for out in script.backend(bytes([byte]))]
    assert_outputs(outs, SendToClient(GREETING))


def test_ehlo_is_forwarded() -> None:
    assert_outputs(session().client(EHLO), SendToBackend(EHLO))


def test_ehlo_before_tls_advertises_starttls_when_backend_lacks_it() -> None:
    script = session(auth_requires_tls=False)
    script.client(EHLO)
    expected = (
        b"250-legacy.example Hello client.example\r\n"
        b"250-PIPELINING\r\n"
        b"250-AUTH LOGIN PLAIN\r\n"
        b"250-SIZE 10240000\r\n"
        b"250-8BITMIME\r\n"
        b"250 STARTTLS\r\n"
    )
    assert_outputs(script.backend(EHLO_REPLY), SendToClient(expected))


def test_ehlo_before_tls_does_not_duplicate_backends_starttls() -> None:
    script = session(auth_requires_tls=False)
    script.client(EHLO)
    outs = script.backend(b"250-legacy.example\r\n250-STARTTLS\r\n250 SIZE 100\r\n")
    assert client_bytes(outs) == b"250-legacy.example\r\n250-SIZE 100\r\n250 STARTTLS\r\n"


def test_ehlo_before_tls_hides_auth_when_auth_requires_tls() -> None:
    script = session()
    script.client(EHLO)
    outs = script.backend(
        b"250-legacy.example\r\n250-AUTH LOGIN PLAIN\r\n250-AUTH=LOGIN PLAIN\r\n250 SIZE 100\r\n"
    )
    assert client_bytes(outs) == b"250-legacy.example\r\n250-SIZE 100\r\n250 STARTTLS\r\n"


def test_ehlo_after_tls_shows_auth_and_never_starttls() -> None:
    script = tls_session()
    assert_outputs(script.client(EHLO), SendToBackend(EHLO))
    reply = b"250-legacy.example\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 SIZE 100\r\n"
    outs = script.backend(reply)
    assert client_bytes(outs) == b"250-legacy.example\r\n250-AUTH PLAIN\r\n250 SIZE 100\r\n"


def test_ehlo_reply_renumbered_when_its_last_line_is_removed() -> None:
    # RFC 5321 §4.2.1: every line but the last is "250-", the last "250 ".
    script = tls_session()
    script.client(EHLO)
    outs = script.backend(b"250-legacy.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
    assert client_bytes(outs) == b"250-legacy.example\r\n250 PIPELINING\r\n"


def test_single_line_ehlo_reply_gains_starttls_as_its_last_line() -> None:
    script = session()
    script.client(EHLO)
    outs = script.backend(b"250 legacy.example\r\n")
    assert client_bytes(outs) == b"250-legacy.example\r\n250 STARTTLS\r\n"


def test_ehlo_reply_reduced_to_its_first_line_ends_with_a_space() -> None:
    script = tls_session()
    script.client(EHLO)
    outs = script.backend(b"250-legacy.example\r\n250 STARTTLS\r\n")
    assert client_bytes(outs) == b"250 legacy.example\r\n"


def test_other_capabilities_pass_through_unchanged() -> None:
    extensions = [
        b"PIPELINING",
        b"CHUNKING",
        b"8BITMIME",
        b"DSN",
        b"SIZE 52428800",
        b"ETRN",
        b"VRFY",
        b"ENHANCEDSTATUSCODES",
        b"SMTPUTF8",
        b"X-LEGACY-THING arg",
    ]
    reply = b"250-legacy.example\r\n" + b"".join(
        b"250" + (b" " if i == len(extensions) - 1 else b"-") + ext + b"\r\n"
        for i, ext in enumerate(extensions)
    )
    script = session()
    script.client(EHLO)
    outs = script.backend(reply)
    expected = b"250-legacy.example\r\n" + b"".join(b"250-" + e + b"\r\n" for e in extensions)
    assert client_bytes(outs) == expected + b"250 STARTTLS\r\n"


def test_ehlo_error_reply_is_relayed_unchanged() -> None:
    script = session()
    script.client(EHLO)
    assert_outputs(
        script.backend(b"502 5.5.1 EHLO not supported\r\n"),
        SendToClient(b"502 5.5.1 EHLO not supported\r\n"),
    )


def test_helo_reply_is_relayed_without_extensions() -> None:
    script = session()
    assert_outputs(
        script.client(b"HELO client.example\r\n"), SendToBackend(b"HELO client.example\r\n")
    )
    outs = script.backend(b"250 legacy.example Hello\r\n")
    assert client_bytes(outs) == b"250 legacy.example Hello\r\n"


# ---- STARTTLS (RFC 3207 §4) ------------------------------------------------------------------


def test_starttls_is_answered_220_locally_and_never_forwarded() -> None:
    script = session()
    outs = script.client(b"STARTTLS\r\n")
    assert_outputs(outs, SendToClient(READY), StartClientTls())
    assert backend_bytes(script.outputs) == b""


def test_lowercase_starttls_is_starttls() -> None:
    assert_outputs(session().client(b"starttls\r\n"), SendToClient(READY), StartClientTls())


def test_client_reading_is_paused_from_starttls_until_the_handshake() -> None:
    script = session()
    assert not script.paused()
    script.client(b"STARTTLS\r\n")
    assert script.paused()
    script.tls_established()
    assert not script.paused()


def test_starttls_pipelined_after_ehlo_answers_after_the_ehlo_reply() -> None:
    # RFC 2920 §3.1: replies come in command order, so the 220 waits for the EHLO reply, and the
    # handshake only starts once the client has everything sent before it.
    script = session()
    outs = script.client(EHLO + b"STARTTLS\r\n")
    assert_outputs(outs, SendToBackend(EHLO))
    assert script.paused()
    outs = script.backend(EHLO_REPLY)
    assert isinstance(outs[-1], StartClientTls)
    assert client_bytes(outs).endswith(b"250 STARTTLS\r\n" + READY)


def test_injection_after_starttls_is_discarded_and_reported() -> None:
    # CVE-2011-0411: a MAIL command injected in the same packet must never run inside TLS.
    script = session()
    injected = b"MAIL FROM:<x>\r\n"
    outs = script.client(b"STARTTLS\r\n" + injected)
    assert Notice(NoticeKind.STARTTLS_INJECTION, {"bytes": len(injected)}) in outs
    assert client_bytes(outs) == READY
    assert isinstance(outs[-1], StartClientTls)
    script.tls_established()
    script.client(EHLO)
    assert b"MAIL" not in backend_bytes(script.outputs)


def test_injection_with_bare_lf_line_endings_is_discarded() -> None:
    # CONTRACT.md: the injection rule applies whatever the line ending.
    script = session()
    injected = b"MAIL FROM:<x>\nRCPT TO:<y>\n"
    outs = script.client(b"STARTTLS\n" + injected)
    assert Notice(NoticeKind.STARTTLS_INJECTION, {"bytes": len(injected)}) in outs
    assert normalise(outs)[-2:] == [SendToClient(READY), StartClientTls()]
    assert backend_bytes(script.outputs) == b""


def test_injected_partial_line_is_discarded_too() -> None:
    script = session()
    outs = script.client(b"STARTTLS\r\nMAIL FR")
    assert Notice(NoticeKind.STARTTLS_INJECTION, {"bytes": 7}) in outs
    script.tls_established()
    script.client(b"OM:<x>\r\n")
    assert b"MAIL" not in backend_bytes(script.outputs)


def test_injection_behind_a_pipelined_ehlo_is_discarded() -> None:
    script = session()
    outs = script.client(EHLO + b"STARTTLS\r\nMAIL FROM:<x>\r\n")
    assert NoticeKind.STARTTLS_INJECTION in notice_kinds(outs)
    assert backend_bytes(outs) == EHLO
    outs = script.backend(EHLO_REPLY)
    assert isinstance(outs[-1], StartClientTls)


def test_client_bytes_arriving_before_the_handshake_are_discarded() -> None:
    # The net layer does not read while paused; if bytes arrive anyway they are still dropped.
    script = session()
    script.client(b"STARTTLS\r\n")
    outs = script.client(b"MAIL FROM:<x>\r\n", ignore_pause=True)
    assert_outputs(outs, Notice(NoticeKind.STARTTLS_INJECTION, {"bytes": 15}))


def test_clean_starttls_reports_no_injection() -> None:
    script = session()
    outs = script.starttls()
    assert notice_kinds(outs) == [NoticeKind.STARTTLS]


def test_after_the_handshake_backend_gets_rset_and_its_reply_is_swallowed() -> None:
    # RFC 3207 §4.2: discard any knowledge obtained from the client before TLS.
    script = session()
    script.client(b"STARTTLS\r\n")
    outs = script.tls_established()
    assert_outputs(outs, Notice(NoticeKind.STARTTLS), SendToBackend(b"RSET\r\n"))
    assert not script.paused()
    assert script.backend(RSET_REPLY) == []


def test_ehlo_after_tls_is_answered_after_the_swallowed_rset_reply() -> None:
    script = session()
    script.client(b"STARTTLS\r\n")
    script.tls_established()
    assert_outputs(script.client(EHLO), SendToBackend(EHLO))
    outs = script.backend(RSET_REPLY + b"250-legacy.example\r\n250 AUTH PLAIN\r\n")
    assert_outputs(outs, SendToClient(b"250-legacy.example\r\n250 AUTH PLAIN\r\n"))


def test_starttls_inside_tls_gets_503() -> None:
    script = tls_session()
    outs = script.client(b"STARTTLS\r\n")
    assert_outputs(
        outs,
        Notice(NoticeKind.STARTTLS_REFUSED, {"reason": "tls_already_active"}),
        SendToClient(b"503 5.5.1 TLS already active\r\n"),
    )


def test_starttls_with_argument_gets_501() -> None:
    script = session()
    outs = script.client(b"STARTTLS now\r\n")
    assert_outputs(
        outs,
        Notice(NoticeKind.STARTTLS_REFUSED, {"reason": "syntax"}),
        SendToClient(b"501 5.5.4 Syntax error (no parameters allowed)\r\n"),
    )
    assert not script.paused()
    assert_outputs(script.client(b"STARTTLS\r\n"), SendToClient(READY), StartClientTls())


# ---- AUTH before TLS (RFC 4954 §4, RFC 3207 §4) ----------------------------------------------


def test_auth_before_tls_gets_538_and_nothing_reaches_the_backend() -> None:
    script = session()
    outs = script.client(b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n")
    assert_outputs(
        outs,
        Notice(NoticeKind.AUTH_BEFORE_TLS_REFUSED),
        SendToClient(b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"),
    )
    assert backend_bytes(script.outputs) == b""
    assert not script.paused()


def test_auth_before_tls_is_forwarded_when_the_policy_allows_it() -> None:
    script = session(auth_requires_tls=False)
    assert_outputs(script.client(b"AUTH LOGIN\r\n"), SendToBackend(b"AUTH LOGIN\r\n"))


def test_auth_after_tls_is_forwarded() -> None:
    script = tls_session()
    assert_outputs(
        script.client(b"AUTH PLAIN AHUAcA==\r\n"), SendToBackend(b"AUTH PLAIN AHUAcA==\r\n")
    )
    assert_outputs(script.backend(b"235 2.7.0 ok\r\n"), SendToClient(b"235 2.7.0 ok\r\n"))


def test_auth_is_refused_before_tls_even_when_starttls_is_not_offered() -> None:
    # The issue: for starttls_exclude clients auth_requires_tls still applies.
    script = session(offer_starttls=False)
    outs = script.client(b"AUTH PLAIN x\r\n")
    assert client_bytes(outs).startswith(b"538 5.7.11")
    assert backend_bytes(outs) == b""


# ---- require_tls (RFC 3207 §4) ---------------------------------------------------------------

MUST_STARTTLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"


def test_require_tls_refuses_mail_before_tls_with_530() -> None:
    script = session(require_tls=True)
    outs = script.client(b"MAIL FROM:<a@example.org>\r\n")
    assert_outputs(
        outs,
        Notice(NoticeKind.COMMAND_BEFORE_TLS_REFUSED, {"command": "MAIL"}),
        SendToClient(MUST_STARTTLS),
    )
    assert backend_bytes(script.outputs) == b""


@pytest.mark.parametrize(
    "command",
    [EHLO, b"HELO client.example\r\n", b"NOOP\r\n", b"RSET\r\n", b"QUIT\r\n", b"noop\r\n"],
)
def test_require_tls_lets_the_pre_tls_commands_through(command: bytes) -> None:
    script = session(require_tls=True)
    assert_outputs(script.client(command), SendToBackend(command))


def test_require_tls_still_accepts_starttls() -> None:
    script = session(require_tls=True)
    assert_outputs(script.client(b"STARTTLS\r\n"), SendToClient(READY), StartClientTls())


def test_require_tls_allows_everything_after_tls() -> None:
    script = tls_session(require_tls=True)
    command = b"MAIL FROM:<a@example.org>\r\n"
    assert_outputs(script.client(command), SendToBackend(command))


def test_require_tls_does_not_lock_out_a_client_not_offered_starttls() -> None:
    # Such a client could never satisfy it (starttls_exclude), so it is not enforced.
    script = session(require_tls=True, offer_starttls=False)
    command = b"MAIL FROM:<a@example.org>\r\n"
    assert_outputs(script.client(command), SendToBackend(command))


def test_refused_bdat_octets_are_skipped_not_executed() -> None:
    # RFC 3030 §2: the chunk's octets follow BDAT whatever its reply; they are data, and here
    # they look like commands that must not reach the backend.
    script = session(require_tls=True)
    chunk = b"QUIT\r\nRSET\r\n"
    outs = script.client(b"BDAT 12 LAST\r\n" + chunk[:5])
    assert client_bytes(outs) == MUST_STARTTLS
    outs = script.client(chunk[5:] + b"NOOP\r\n")
    assert_outputs(outs, SendToBackend(b"NOOP\r\n"))


# ---- pipelining (RFC 2920) -------------------------------------------------------------------


def test_pipelined_replies_keep_command_order_around_a_local_refusal() -> None:
    script = session()
    outs = script.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nAUTH PLAIN AHUAcA==\r\nNOOP\r\n")
    assert backend_bytes(outs) == b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nNOOP\r\n"
    assert client_bytes(outs) == b""  # the 538 waits for the replies before it
    assert not script.paused()
    outs = script.backend(b"250 2.1.0 sender ok\r\n")
    assert client_bytes(outs) == b"250 2.1.0 sender ok\r\n"
    outs = script.backend(b"250 2.1.5 recipient ok\r\n250 2.0.0 noop\r\n")
    assert client_bytes(outs) == (
        b"250 2.1.5 recipient ok\r\n"
        b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
        b"250 2.0.0 noop\r\n"
    )


def test_pipelined_replies_split_mid_line_keep_their_order() -> None:
    script = tls_session()
    script.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nSTARTTLS\r\nNOOP\r\n")
    replies = b"250 sender ok\r\n250 recipient ok\r\n250 noop\r\n"
    outs = [out for byte in replies for out in script.backend(bytes([byte]))]
    assert client_bytes(outs) == (
        b"250 sender ok\r\n250 recipient ok\r\n503 5.5.1 TLS already active\r\n250 noop\r\n"
    )


def test_commands_split_one_byte_at_a_time_are_forwarded_whole() -> None:
    script = session()
    outs = [out for byte in b"NOOP\r\nRSET\n" for out in script.client(bytes([byte]))]
    assert backend_bytes(outs) == b"NOOP\r\nRSET\n"
    assert [len(o.data) for o in outs if isinstance(o, SendToBackend)] == [6, 5]


# ---- DATA (RFC 5321 §4.1.1.4, §4.5.2) --------------------------------------------------------


def mail_transaction(script: Script) -> None:
    script.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
    script.backend(b"250 ok\r\n250 ok\r\n")


def test_data_pauses_the_client_until_the_354() -> None:
    script = tls_session()
    mail_transaction(script)
    assert_outputs(script.client(b"DATA\r\n"), SendToBackend(b"DATA\r\n"))
    assert script.paused()
    assert_outputs(script.backend(b"354 go ahead\r\n"), SendToClient(b"354 go ahead\r\n"))
    assert not script.paused()


def test_data_body_passes_untouched_in_chunks() -> None:
    script = tls_session()
    mail_transaction(script)
    script.client(b"DATA\r\n")
    script.backend(b"354 go ahead\r\n")
    chunks = [
        b"Subject: test\r\n\r\n",
        b"STARTTLS\r\nAUTH PLAIN x\r\nQUIT\r\n",
        b"..leading dot, stuffed\r\n.x\r",
        b"\n" + b"x" * 100_000 + b"\r\n",  # longer than any command line may be
        b"..\n..\n...\r\n. \r\n",  # dot-stuffed with bare LFs: body, not an end
    ]
    for chunk in chunks:
        # Each chunk goes on as it is: a body is never split into lines.
        assert_outputs(script.client(chunk), SendToBackend(chunk))
    assert not script.paused()


@pytest.mark.parametrize("smuggled", [b"\n.\n", b"\r\n.\n", b"\n.\r\n"])
def test_bare_lf_dot_line_in_data_is_refused_and_closes(smuggled: bytes) -> None:
    # SMTP smuggling: a sendmail-style backend would end the body here and run what follows
    # (here an AUTH before TLS) as commands tlsgate never saw. Postfix answers 521 and closes.
    script = session()
    script.client(b"EHLO c\r\n")
    script.backend(b"250 legacy\r\n")
    mail_transaction(script)
    script.client(b"DATA\r\n")
    script.backend(b"354 go ahead\r\n")
    outs = script.client(b"body" + smuggled + b"AUTH PLAIN AGRlbW8AcGFzcw==\r\n\r\n.\r\n")
    assert backend_bytes(outs) == b""
    assert client_bytes(outs).startswith(b"521 5.5.2 ")
    assert Close(CloseReason.PROTOCOL_ERROR) in outs


def test_end_of_body_then_commands_again() -> None:
    script = tls_session()
    mail_transaction(script)
    script.client(b"DATA\r\n")
    script.backend(b"354 go ahead\r\n")
    outs = script.client(b"body line\r\n.\r\nQUIT\r\n")
    assert_outputs(outs, SendToBackend(b"body line\r\n.\r\nQUIT\r\n"))
    outs = script.backend(b"250 2.0.0 queued\r\n221 2.0.0 bye\r\n")
    assert client_bytes(outs) == b"250 2.0.0 queued\r\n221 2.0.0 bye\r\n"
    # And STARTTLS is a command again, not body.
    assert client_bytes(script.client(b"STARTTLS\r\n")).startswith(b"503")


def test_body_end_split_across_chunks_returns_to_commands() -> None:
    script = tls_session()
    mail_transaction(script)
    script.client(b"DATA\r\n")
    script.backend(b"354 go ahead\r\n")
    for piece in (b"last line\r", b"\n.", b"\r", b"\nST"):
        script.client(piece)
    outs = script.client(b"ARTTLS\r\n")
    assert backend_bytes(script.outputs).endswith(b"last line\r\n.\r\n")
    assert client_bytes(outs) == b""  # the 503 waits for the reply to the message (RFC 2920)
    outs = script.backend(b"250 2.0.0 queued\r\n")
    assert client_bytes(outs) == b"250 2.0.0 queued\r\n503 5.5.1 TLS already active\r\n"


def test_empty_body_ends_at_once() -> None:
    script = tls_session()
    mail_transaction(script)
    script.client(b"DATA\r\n")
    script.backend(b"354 go ahead\r\n")
    # STARTTLS is answered by tlsgate only if it is read as a command, not as body.
    outs = script.client(b".\r\nNOOP\r\nSTARTTLS\r\n")
    assert backend_bytes(outs) == b".\r\nNOOP\r\n"
    assert client_bytes(outs) == b""
    outs = script.backend(b"250 queued\r\n250 noop\r\n")
    assert client_bytes(outs) == b"250 queued\r\n250 noop\r\n503 5.5.1 TLS already active\r\n"


def test_body_bytes_read_with_data_wait_for_the_354() -> None:
    # Bytes that came in the same read as DATA are held, not parsed, until the reply decides.
    script = tls_session()
    mail_transaction(script)
    outs = script.client(b"DATA\r\nSubject: x\r\n\r\nSTARTTLS\r\n.\r\n")
    assert_outputs(outs, SendToBackend(b"DATA\r\n"))
    outs = script.backend(b"354 go ahead\r\n")
    assert_outputs(
        outs,
        SendToClient(b"354 go ahead\r\n"),
        SendToBackend(b"Subject: x\r\n\r\nSTARTTLS\r\n.\r\n"),
    )


def test_refused_data_leaves_the_following_bytes_as_commands() -> None:
    script = tls_session()
    script.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
    script.backend(b"250 ok\r\n550 no such user\r\n")
    script.client(b"DATA\r\n")
    outs = script.backend(b"554 5.5.1 No valid recipients\r\n")
    assert_outputs(outs, SendToClient(b"554 5.5.1 No valid recipients\r\n"))
    assert not script.paused()
    outs = script.client(b"STARTTLS\r\nRSET\r\n")
    assert client_bytes(outs) == b"503 5.5.1 TLS already active\r\n"
    assert backend_bytes(outs) == b"RSET\r\n"


# ---- BDAT (RFC 3030) -------------------------------------------------------------------------


def test_bdat_chunks_pass_as_counted_octets() -> None:
    script = tls_session()
    mail_transaction(script)
    first = b"Subject: x\r\n\r\n.\r\n"  # a "." line means nothing in BDAT
    outs = script.client(b"BDAT 17\r\n" + first)
    assert_outputs(outs, SendToBackend(b"BDAT 17\r\n" + first))
    last = b"STARTTLS\r\nQUIT\r\n"
    outs = script.client(b"BDAT 16 LAST\r\n" + last[:3])
    assert backend_bytes(outs) == b"BDAT 16 LAST\r\n" + last[:3]
    outs = script.client(last[3:] + b"NOOP\r\n")
    assert backend_bytes(outs) == last[3:] + b"NOOP\r\n"
    outs = script.backend(b"250 chunk\r\n250 queued\r\n250 noop\r\n")
    assert client_bytes(outs) == b"250 chunk\r\n250 queued\r\n250 noop\r\n"
    # Back to commands: STARTTLS is parsed again.
    assert client_bytes(script.client(b"STARTTLS\r\n")).startswith(b"503")


def test_bdat_zero_last_has_no_octets() -> None:
    script = tls_session()
    mail_transaction(script)
    outs = script.client(b"BDAT 0 LAST\r\nSTARTTLS\r\n")
    assert backend_bytes(outs) == b"BDAT 0 LAST\r\n"
    script.backend(b"250 queued\r\n")
    assert b"503" in client_bytes(script.outputs)


# ---- AUTH exchange after TLS (RFC 4954 §4) ---------------------------------------------------


def test_auth_exchange_forwards_sasl_lines_as_opaque_data() -> None:
    script = tls_session()
    assert_outputs(script.client(b"AUTH LOGIN\r\n"), SendToBackend(b"AUTH LOGIN\r\n"))
    assert script.paused()
    assert_outputs(script.backend(b"334 VXNlcm5hbWU6\r\n"), SendToClient(b"334 VXNlcm5hbWU6\r\n"))
    assert not script.paused()
    # The response is data for the SASL mechanism, whatever it looks like.
    assert_outputs(script.client(b"STARTTLS\r\n"), SendToBackend(b"STARTTLS\r\n"))
    assert script.paused()
    script.backend(b"334 UGFzc3dvcmQ6\r\n")
    assert_outputs(script.client(b"QUIT\r\n"), SendToBackend(b"QUIT\r\n"))
    outs = script.backend(b"235 2.7.0 Authentication successful\r\n")
    assert_outputs(outs, SendToClient(b"235 2.7.0 Authentication successful\r\n"))
    assert not script.paused()
    # A command again.
    assert client_bytes(script.client(b"STARTTLS\r\n")).startswith(b"503")


def test_sasl_response_read_with_the_auth_command_waits_for_the_challenge() -> None:
    script = tls_session()
    outs = script.client(b"AUTH LOGIN\r\nU1RBUlRUTFM=\r\n")
    assert_outputs(outs, SendToBackend(b"AUTH LOGIN\r\n"))
    outs = script.backend(b"334 VXNlcm5hbWU6\r\n")
    assert_outputs(outs, SendToClient(b"334 VXNlcm5hbWU6\r\n"), SendToBackend(b"U1RBUlRUTFM=\r\n"))


def test_failed_auth_returns_to_commands() -> None:
    script = tls_session()
    script.client(b"AUTH PLAIN AHUAcA==\r\n")
    outs = script.backend(b"535 5.7.8 Authentication credentials invalid\r\n")
    assert client_bytes(outs).startswith(b"535")
    assert not script.paused()
    assert_outputs(script.client(b"NOOP\r\n"), SendToBackend(b"NOOP\r\n"))


def test_sasl_line_longer_than_4k_is_accepted_after_tls() -> None:
    # Only the pre-TLS limit is 4 KiB; a GSSAPI token may be longer (RFC 4954 §4).
    script = tls_session()
    line = b"AUTH GSSAPI " + b"A" * 10_000 + b"\r\n"
    assert_outputs(script.client(line), SendToBackend(line))


# ---- a client not offered STARTTLS (starttls_exclude) ----------------------------------------


def test_backend_starttls_is_hidden_when_starttls_is_not_offered() -> None:
    script = session(offer_starttls=False, auth_requires_tls=False)
    script.client(EHLO)
    outs = script.backend(b"250-legacy.example\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n")
    assert client_bytes(outs) == b"250-legacy.example\r\n250 AUTH PLAIN\r\n"


def test_starttls_not_offered_is_forwarded_and_backend_220_switches_to_relay() -> None:
    script = session(offer_starttls=False)
    assert_outputs(script.client(b"STARTTLS\r\n"), SendToBackend(b"STARTTLS\r\n"))
    assert script.paused()
    outs = script.backend(b"220 2.0.0 Ready\r\n")
    assert client_bytes(outs) == b"220 2.0.0 Ready\r\n"
    assert controls(outs) == [SwitchToRelay()]
    assert isinstance(normalise(outs)[-1], SwitchToRelay)
    assert not script.paused()


def test_after_relay_switch_bytes_pass_both_ways_opaquely() -> None:
    script = session(offer_starttls=False)
    script.client(b"STARTTLS\r\n")
    script.backend(b"220 2.0.0 Ready\r\n")
    # TLS records: binary, with line endings, dots and over-long "lines" that mean nothing.
    hello = b"\x16\x03\x01\x02\x00STARTTLS\r\n.\r\n" + b"\xff" * 20_000
    assert_outputs(script.client(hello), SendToBackend(hello))
    reply = b"\x16\x03\x03\x00\x7a\n250 fake\r\n" + b"\x00" * 70_000
    assert_outputs(script.backend(reply), SendToClient(reply))


def test_backend_refusing_forwarded_starttls_returns_to_commands() -> None:
    script = session(offer_starttls=False)
    script.client(b"STARTTLS\r\n")
    outs = script.backend(b"454 4.7.0 TLS not available\r\n")
    assert_outputs(outs, SendToClient(b"454 4.7.0 TLS not available\r\n"))
    assert not script.paused()
    assert_outputs(script.client(b"NOOP\r\n"), SendToBackend(b"NOOP\r\n"))


# ---- implicit TLS (client_tls=True) ----------------------------------------------------------


def test_implicit_tls_refuses_starttls_with_503() -> None:
    outs = implicit_session().client(b"STARTTLS\r\n")
    assert client_bytes(outs) == b"503 5.5.1 TLS already active\r\n"
    assert not any(isinstance(out, StartClientTls) for out in outs)


def test_implicit_tls_ehlo_shows_auth_and_hides_backend_starttls() -> None:
    script = implicit_session()
    script.client(EHLO)
    outs = script.backend(b"250-legacy.example\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 SIZE 9\r\n")
    assert client_bytes(outs) == b"250-legacy.example\r\n250-AUTH PLAIN\r\n250 SIZE 9\r\n"


def test_implicit_tls_forwards_auth() -> None:
    script = implicit_session()
    assert_outputs(
        script.client(b"AUTH PLAIN AHUAcA==\r\n"), SendToBackend(b"AUTH PLAIN AHUAcA==\r\n")
    )


# ---- failures and the end of a session -------------------------------------------------------


def test_idle_timeout_gets_421_then_close() -> None:
    script = session()
    assert_outputs(
        script.idle_timeout(),
        Notice(NoticeKind.IDLE_TIMEOUT),
        SendToClient(b"421 4.4.2 Idle timeout, closing connection\r\n"),
        Close(CloseReason.IDLE_TIMEOUT),
    )


def test_shutdown_gets_421_4_3_2_between_replies_even_with_one_owed() -> None:
    script = session()
    script.client(b"MAIL FROM:<a@example.test>\r\n")  # its reply is still to come
    assert_outputs(
        script.shutdown(),
        SendToClient(b"421 4.3.2 Service shutting down, closing connection\r\n"),
        Close(CloseReason.SHUTDOWN),
    )


def test_shutdown_says_nothing_to_a_client_that_is_starting_tls() -> None:
    script = session()
    script.client(b"STARTTLS\r\n")
    assert_outputs(script.shutdown(), Close(CloseReason.SHUTDOWN))


def test_nothing_happens_after_close() -> None:
    script = session()
    script.idle_timeout()
    assert script.client(b"NOOP\r\n") == []
    assert script.backend(b"250 ok\r\n") == []
    assert script.client_eof() == []


def test_line_over_4k_before_tls_gets_500_and_closes() -> None:
    script = session()
    outs = script.client(b"NOOP\r\nEHLO " + b"x" * 4100)
    assert_outputs(
        outs,
        SendToBackend(b"NOOP\r\n"),
        Notice(NoticeKind.PROTOCOL_ERROR, {"detail": "client line over 4096 bytes"}),
        SendToClient(b"500 5.5.2 Line too long, closing connection\r\n"),
        Close(CloseReason.PROTOCOL_ERROR),
    )


def test_complete_line_over_4k_before_tls_gets_500_and_closes() -> None:
    outs = session().client(b"NOOP " + b"x" * 4095 + b"\r\n")
    assert client_bytes(outs) == b"500 5.5.2 Line too long, closing connection\r\n"
    assert outs[-1] == Close(CloseReason.PROTOCOL_ERROR)
    assert backend_bytes(outs) == b""


def test_line_of_4k_before_tls_is_accepted() -> None:
    line = b"NOOP " + b"x" * (4096 - 7) + b"\r\n"
    assert len(line) == 4096
    assert_outputs(session().client(line), SendToBackend(line))


def test_over_long_line_split_in_small_pieces_is_caught() -> None:
    script = session()
    outs = [out for _ in range(100) for out in script.client(b"x" * 64)]
    assert outs[-1] == Close(CloseReason.PROTOCOL_ERROR)
    assert backend_bytes(outs) == b""


def test_backend_reply_line_over_64k_closes_with_421() -> None:
    script = session()
    script.client(b"NOOP\r\n")
    outs = script.backend(b"250 " + b"x" * 70_000)
    assert client_bytes(outs).startswith(b"421 4.3.0")
    assert outs[-1] == Close(CloseReason.PROTOCOL_ERROR)


def test_client_eof_half_closes_the_backend() -> None:
    script = session()
    assert_outputs(script.client_eof(), EofToBackend())


def test_backend_eof_half_closes_the_client() -> None:
    script = session()
    assert_outputs(script.backend_eof(), EofToClient())


def test_backend_eof_flushes_an_unterminated_reply() -> None:
    script = session()
    script.client(b"QUIT\r\n")
    outs = script.backend(b"221 bye")
    assert outs == []
    assert_outputs(script.backend_eof(), SendToClient(b"221 bye"), EofToClient())


@pytest.mark.parametrize("client_first", [True, False])
def test_both_eofs_close_completed(client_first: bool) -> None:
    script = session()
    script.client(b"QUIT\r\n")
    script.backend(b"221 2.0.0 bye\r\n")
    first, second = (
        (script.client_eof, script.backend_eof)
        if client_first
        else (script.backend_eof, script.client_eof)
    )
    outs = first()
    assert not any(isinstance(out, Close) for out in outs)
    outs = second()
    assert outs[-1] == Close(CloseReason.COMPLETED)


# ---- bounded cost (the issue: "memory per connection stays bounded whatever the client sends")


def forward_time(commands: bytes) -> float:
    script = implicit_session()
    started = time.perf_counter()
    outs = script.client(commands)
    elapsed = time.perf_counter() - started
    assert backend_bytes(outs) == commands
    return elapsed


def test_many_pipelined_commands_in_one_read_cost_linear_time() -> None:
    # A ratio, not a deadline, so the verdict does not depend on the machine: four times the
    # lines should cost about four times as much, not sixteen.
    small = min(forward_time(b"NOOP\r\n" * (MAX_PENDING_REPLIES // 4)) for _ in range(5))
    large = min(forward_time(b"NOOP\r\n" * MAX_PENDING_REPLIES) for _ in range(5))
    assert large / small < 8


def test_pipelining_past_the_reply_bound_pauses_the_client_until_replies_catch_up() -> None:
    script = implicit_session()
    outs = script.client(b"NOOP\r\n" * (MAX_PENDING_REPLIES + 10))
    assert backend_bytes(outs) == b"NOOP\r\n" * MAX_PENDING_REPLIES
    assert script.paused()
    outs = script.backend(b"250 ok\r\n" * MAX_PENDING_REPLIES)
    assert client_bytes(outs) == b"250 ok\r\n" * MAX_PENDING_REPLIES
    assert backend_bytes(outs) == b"NOOP\r\n" * 10  # the lines held back go on
    assert not script.paused()


def test_refusals_owed_behind_an_unanswered_command_are_bounded() -> None:
    script = session()
    script.client(b"NOOP\r\n")  # the backend takes its time to answer
    flood = b"AUTH x\r\n" * 8192  # 64 KiB, 8192 refusals owed
    stopped = False
    for _ in range(16):  # 1 MiB in all
        outs = script.client(flood)
        if script.paused() or any(isinstance(out, Close) for out in outs):
            stopped = True
            break
    assert stopped, "1 MiB of refused commands queued: neither paused nor closed"


def test_endless_multiline_backend_reply_is_bounded() -> None:
    script = session()
    script.client(b"NOOP\r\n")
    lines = b"250-X\r\n" * 8192
    fed = 0
    passed_on = 0
    closed = False
    while fed < 4 * 1024 * 1024 and not closed:
        outs = script.backend(lines)
        fed += len(lines)
        passed_on += len(client_bytes(outs))
        closed = any(isinstance(out, Close) for out in outs)
    # Either the reply was streamed on (not held) or the session was closed as garbled.
    assert closed or fed - passed_on < 1024 * 1024
