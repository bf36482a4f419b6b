"""SmtpServerMediator: STARTTLS in front of a plaintext SMTP backend (RFC 3207, 5321, 2920, 3030).

PURE. Rules, each enforced where it is cited:
- STARTTLS is tlsgate's: advertised in pre-TLS EHLO replies, answered with 220 by tlsgate,
  never forwarded, never advertised after TLS; the backend's own STARTTLS never reaches the
  client. A client that tlsgate does not offer STARTTLS to (starttls_exclude, tls = "none")
  has its STARTTLS forwarded; if the backend starts TLS the mediator steps aside.
- Bytes that follow a STARTTLS line before the handshake are discarded, never executed
  inside TLS (CVE-2011-0411, the Postfix fix).
- After the handshake the backend gets RSET, whose reply is swallowed.
- AUTH is hidden and refused before TLS when the policy says so; with require_tls only the
  commands RFC 3207 §4 lets a client send first are accepted.
- DATA and BDAT bodies pass untouched as whole chunks.
It never reads, writes, sleeps or logs: it returns outputs.
"""

from __future__ import annotations

from enum import Enum, auto

from tlsgate.observe.events import NoticeKind
from tlsgate.protocol.io_types import SessionPolicy
from tlsgate.protocol.lines import AmbiguousBodyEndError, BodyEndScanner, LineTooLongError
from tlsgate.protocol.mediator_base import MediatorBase, Pending
from tlsgate.protocol.smtp_reply import (
    Reply,
    ReplyAssembler,
    ReplyTooLongError,
    rewrite_ehlo_reply,
)

REPLY_READY_FOR_TLS = b"220 2.0.0 Ready to start TLS\r\n"
REPLY_TLS_ALREADY_ACTIVE = b"503 5.5.1 TLS already active\r\n"
REPLY_STARTTLS_SYNTAX = b"501 5.5.4 Syntax error (no parameters allowed)\r\n"
# RFC 4954 §6 / RFC 5248: 538 5.7.11 "Encryption required for requested authentication mechanism".
REPLY_AUTH_NEEDS_TLS = b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
# RFC 3207 §4: "530 Must issue a STARTTLS command first".
REPLY_MUST_STARTTLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
REPLY_IDLE_TIMEOUT = b"421 4.4.2 Idle timeout, closing connection\r\n"
# RFC 5321 §3.8: a server shut down by external means SHOULD send 421 first; the client reads
# it after its next command. RFC 3463: X.3.2, system not accepting network messages.
REPLY_SHUTTING_DOWN = b"421 4.3.2 Service shutting down, closing connection\r\n"
REPLY_LINE_TOO_LONG = b"500 5.5.2 Line too long, closing connection\r\n"
REPLY_BACKEND_GARBLED = b"421 4.3.0 Backend sent an invalid reply, closing connection\r\n"
# Postfix's answer to SMTP smuggling (smtpd_forbid_bare_newline): refuse and disconnect.
REPLY_BARE_LF_DOT_LINE = b"521 5.5.2 Error: bare <LF> received, closing connection\r\n"

# RFC 3207 §4 and the issue: what a client may do before TLS when TLS is required.
_ALLOWED_BEFORE_TLS = frozenset({b"EHLO", b"HELO", b"STARTTLS", b"NOOP", b"RSET", b"QUIT"})
_STARTTLS = b"STARTTLS"
_AUTH = b"AUTH"


class Command(Enum):
    GREETING = auto()
    EHLO = auto()
    DATA = auto()
    DATA_END = auto()  # the reply to the end of the body
    AUTH = auto()
    STARTTLS = auto()
    RESET_AFTER_TLS = auto()  # our own RSET; its reply is swallowed
    OTHER = auto()


class State(Enum):
    # Members are singletons compared by identity; object's C hash keeps the state-set tests
    # on the per-command path off Enum.__hash__, a Python function.
    __hash__ = object.__hash__

    COMMAND = auto()
    SASL_RESPONSE = auto()  # the next client line answers a 334 challenge
    DATA_BODY = auto()
    BDAT_BODY = auto()
    BDAT_DISCARD = auto()  # the octets of a BDAT we refused (RFC 3030 §4: still consumed)
    AWAITING_DATA_REPLY = auto()
    AWAITING_AUTH_REPLY = auto()
    AWAITING_STARTTLS_REPLY = auto()  # a STARTTLS forwarded to the backend
    AWAITING_TLS = auto()
    RELAY = auto()


_LINE_STATES = frozenset({State.COMMAND, State.SASL_RESPONSE})
_BODY_STATES = frozenset({State.DATA_BODY, State.BDAT_BODY, State.BDAT_DISCARD})
# The client's next bytes mean something that depends on a reply still to come, so the net
# layer stops reading them until it arrives (backpressure instead of buffering).
_PAUSED_STATES = frozenset(
    {
        State.AWAITING_DATA_REPLY,
        State.AWAITING_AUTH_REPLY,
        State.AWAITING_STARTTLS_REPLY,
        State.AWAITING_TLS,
    }
)


def _bdat_size(argument: bytes) -> int | None:
    """RFC 3030 §2: "BDAT" SP chunk-size [ SP end-marker ]."""
    words = argument.split()
    if not 1 <= len(words) <= 2 or not words[0].isdigit():
        return None
    if len(words) == 2 and words[1].upper() != b"LAST":
        return None
    return int(words[0])


class SmtpServerMediator(MediatorBase[Command]):
    def __init__(self, policy: SessionPolicy) -> None:
        super().__init__(policy)
        self._state = State.COMMAND
        self._replies = ReplyAssembler()
        self._body_end = BodyEndScanner(strict=True)
        self._bdat_remaining = 0
        self._expect_backend_reply(Command.GREETING)

    @property
    def client_reading_paused(self) -> bool:
        return self._state in _PAUSED_STATES or self._owes_too_many_replies

    def _relaying(self) -> bool:
        # A method, not an inline test: _on_reply changes the state behind mypy's narrowing.
        return self._state is State.RELAY

    # ---- client side ------------------------------------------------------------------------

    def _on_client_data(self, data: bytes) -> None:
        if self._state is State.RELAY:
            self._send_backend(data)
        elif self._state is State.AWAITING_TLS:
            self._discard_injection(len(data))
        else:
            self._run_client(data)

    def _run_client(self, data: bytes) -> None:
        """Process what the line buffer holds and then `data`, until both are used up or the
        state pauses the client."""
        while not self._closed:
            if self._state in _BODY_STATES:
                if self._client_lines:
                    data = self._client_lines.take_all() + data
                if not data:
                    return
                data = self._consume_body(data)
            elif self._state in _LINE_STATES:
                if data:
                    self._client_lines.feed(data)
                    data = b""
                if self._owes_too_many_replies or not self._process_one_line():
                    return
            else:
                if data:  # paused: keep it until the awaited reply decides what it is
                    self._client_lines.feed(data)
                return

    def _process_one_line(self) -> bool:
        try:
            line = self._client_lines.next_line()
        except LineTooLongError as exc:
            self._protocol_error(REPLY_LINE_TOO_LONG, f"client line over {exc.limit_bytes} bytes")
            return False
        if line is None:
            return False
        if self._state is State.SASL_RESPONSE:
            self._send_backend(line)  # a SASL response is opaque: never parsed or logged
            self._state = State.AWAITING_AUTH_REPLY
        else:
            self._on_command(line)
        return True

    def _consume_body(self, data: bytes) -> bytes:
        """Pass body bytes on; return what follows the body's end."""
        if self._state is State.DATA_BODY:
            try:
                end = self._body_end.feed(data)
            except AmbiguousBodyEndError:
                # Neither forwarded nor answered: the backend sees the connection drop in the
                # middle of DATA and, per RFC 5321 §4.1.1.4, delivers nothing.
                self._protocol_error(REPLY_BARE_LF_DOT_LINE, "bare LF in a DATA dot line")
                return b""
            if end < 0:
                self._send_backend(data)
                return b""
            self._send_backend(data[:end])
            self._state = State.COMMAND
            return data[end:]
        taken = min(self._bdat_remaining, len(data))
        if self._state is State.BDAT_BODY:
            self._send_backend(data[:taken])
        self._bdat_remaining -= taken
        if self._bdat_remaining == 0:
            self._state = State.COMMAND
        return data[taken:]

    def _on_command(self, line: bytes) -> None:
        words = line.split(None, 1)
        verb = words[0].upper() if words else b""
        argument = words[1].strip() if len(words) > 1 else b""
        before_tls = not self.client_tls
        if verb == _STARTTLS:
            self._on_starttls(argument, line)
        elif verb == _AUTH and before_tls and self.policy.auth_requires_tls:
            # The line may carry an initial response (a password): it is dropped, never logged.
            self._notice(NoticeKind.AUTH_BEFORE_TLS_REFUSED)
            self._reply_locally(Command.OTHER, REPLY_AUTH_NEEDS_TLS)
        elif (
            before_tls
            and self.policy.require_tls
            and self.policy.offer_starttls
            and verb not in _ALLOWED_BEFORE_TLS
        ):
            self._notice(NoticeKind.COMMAND_BEFORE_TLS_REFUSED, command=_printable(verb))
            if verb == b"BDAT" and (size := _bdat_size(argument)) is not None:
                self._start_bdat(size, State.BDAT_DISCARD)
            self._reply_locally(Command.OTHER, REPLY_MUST_STARTTLS)
        else:
            self._forward_command(verb, argument, line)

    def _forward_command(self, verb: bytes, argument: bytes, line: bytes) -> None:
        self._send_backend(line)
        if verb == b"DATA":
            self._expect_backend_reply(Command.DATA)
            self._state = State.AWAITING_DATA_REPLY
        elif verb == b"BDAT" and (size := _bdat_size(argument)) is not None:
            self._expect_backend_reply(Command.OTHER)
            self._start_bdat(size, State.BDAT_BODY)
        elif verb == _AUTH:
            self._expect_backend_reply(Command.AUTH)
            self._state = State.AWAITING_AUTH_REPLY
        elif verb == b"EHLO":  # RFC 5321 §4.1.1.1: a HELO reply carries no extensions
            self._expect_backend_reply(Command.EHLO)
        else:
            self._expect_backend_reply(Command.OTHER)

    def _start_bdat(self, size: int, state: State) -> None:
        self._bdat_remaining = size
        if size:
            self._state = state

    def _on_starttls(self, argument: bytes, line: bytes) -> None:
        if self.client_tls:
            self._notice(NoticeKind.STARTTLS_REFUSED, reason="tls_already_active")
            self._reply_locally(Command.OTHER, REPLY_TLS_ALREADY_ACTIVE)
        elif not self.policy.offer_starttls:
            self._send_backend(line)
            self._expect_backend_reply(Command.STARTTLS)
            self._state = State.AWAITING_STARTTLS_REPLY
        elif argument:
            self._notice(NoticeKind.STARTTLS_REFUSED, reason="syntax")
            self._reply_locally(Command.OTHER, REPLY_STARTTLS_SYNTAX)
        else:
            self._state = State.AWAITING_TLS
            self._accept_starttls(Command.OTHER, REPLY_READY_FOR_TLS)

    def _on_client_tls_established(self) -> None:
        self._state = State.COMMAND
        self._notice(NoticeKind.STARTTLS)
        # RFC 3207 §4.2: the server MUST discard any knowledge obtained from the client before
        # TLS; the legacy backend cannot, so its transaction state is reset for it.
        self._send_backend(b"RSET\r\n")
        self._expect_backend_reply(Command.RESET_AFTER_TLS)

    def _idle_timeout_reply(self) -> bytes:
        return REPLY_IDLE_TIMEOUT

    def _shutdown_reply(self) -> bytes:
        # Replies reach the client whole (ReplyAssembler), so between two of them a 421 is
        # a reply like any other; a client mid-handshake or past a relay switch reads no lines.
        if self._state in (State.AWAITING_TLS, State.RELAY):
            return b""
        return REPLY_SHUTTING_DOWN

    # ---- backend side -----------------------------------------------------------------------

    def _on_backend_data(self, data: bytes) -> None:
        if self._relaying():
            self._send_client(data)
            return
        self._backend_lines.feed(data)
        while not self._closed and not self._relaying():
            try:
                line = self._backend_lines.next_line()
            except LineTooLongError:
                self._protocol_error(REPLY_BACKEND_GARBLED, "backend reply line too long")
                return
            if line is None:
                return
            try:
                reply = self._replies.add(line)
            except ReplyTooLongError:
                self._protocol_error(REPLY_BACKEND_GARBLED, "backend reply has too many lines")
                return
            if reply is not None:
                self._on_reply(reply)
        if self._relaying() and (rest := self._backend_lines.take_all()):
            self._send_client(rest)

    def _on_reply(self, reply: Reply) -> None:
        command = self._next_backend_command()
        if command is Command.RESET_AFTER_TLS:
            pass  # our RSET: the client never asked, so it never hears
        elif command is Command.EHLO and reply.code == 250:
            self._send_client(self._rewrite_ehlo(reply))
        else:
            self._send_client(reply.raw)
        if command is Command.DATA:
            if reply.code == 354:
                self._body_end = BodyEndScanner(strict=True)
                self._state = State.DATA_BODY
                self._pending.appendleft(Pending(Command.DATA_END))
            else:
                self._state = State.COMMAND
        elif command is Command.AUTH:
            if reply.code == 334:  # RFC 4954 §4: a challenge; the next client line answers it
                self._state = State.SASL_RESPONSE
                self._pending.appendleft(Pending(Command.AUTH))
            else:
                self._state = State.COMMAND
        elif command is Command.STARTTLS:
            if reply.code == 220:
                self._state = State.RELAY
                self._switch_to_relay()
                return
            self._state = State.COMMAND
        self._release_local_replies()
        if not self.client_reading_paused:
            self._run_client(b"")

    def _rewrite_ehlo(self, reply: Reply) -> bytes:
        before_tls = not self.client_tls
        remove = {_STARTTLS}
        if before_tls and self.policy.auth_requires_tls:
            remove.add(_AUTH)
        add = (_STARTTLS,) if before_tls and self.policy.offer_starttls else ()
        return rewrite_ehlo_reply(reply, remove=frozenset(remove), add=add)


def _printable(verb: bytes) -> str:
    """A command verb fit for a log field: bounded and ASCII."""
    return verb[:16].decode("ascii", "replace")
