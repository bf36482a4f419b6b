"""Pop3ServerMediator: STLS in front of a plaintext POP3 backend (RFC 1939, 2449, 2595, 5034).

PURE. Rules, each enforced where it is cited:
- STLS is tlsgate's: listed in pre-TLS CAPA replies (synthesised when the backend has no
  CAPA), answered with +OK by tlsgate, never forwarded, never listed after TLS; the backend's
  own STLS never reaches the client. A client not offered STLS has its STLS forwarded, and
  if the backend starts TLS the mediator steps aside.
- Bytes that follow STLS before the handshake are discarded (the STARTTLS injection rule).
- USER/PASS/APOP/AUTH are hidden (CAPA USER, SASL) and refused before TLS when the policy
  says so; with require_tls only CAPA, STLS and QUIT are accepted before TLS.
- Multi-line responses (RETR, TOP, LIST, UIDL) stream to the client as whole chunks; only a
  CAPA response is collected, to be filtered.
It never reads, writes, sleeps or logs: it returns outputs.
"""

from __future__ import annotations

from enum import Enum, auto

from tlsgate.observe.events import NoticeKind
from tlsgate.protocol.io_types import SessionPolicy
from tlsgate.protocol.lines import BodyEndScanner, LineTooLongError
from tlsgate.protocol.mediator_base import MediatorBase, Pending

REPLY_BEGIN_TLS = b"+OK Begin TLS negotiation\r\n"
REPLY_TLS_ALREADY_ACTIVE = b"-ERR Command not permitted when TLS active\r\n"
REPLY_STLS_NOT_IN_AUTHORIZATION = b"-ERR STLS only permitted in AUTHORIZATION state\r\n"
REPLY_STLS_SYNTAX = b"-ERR STLS takes no arguments\r\n"
# RFC 3206 §4: [AUTH] marks a refusal for a reason other than bad credentials.
REPLY_AUTH_NEEDS_TLS = b"-ERR [AUTH] Authentication requires TLS, issue STLS first\r\n"
REPLY_MUST_STLS = b"-ERR Must issue a STLS command first\r\n"
REPLY_IDLE_TIMEOUT = b"-ERR Idle timeout, closing connection\r\n"
# RFC 3206: SYS/TEMP, a temporary failure of the server; the client may try again later.
REPLY_SHUTTING_DOWN = b"-ERR [SYS/TEMP] Service shutting down, closing connection\r\n"
REPLY_LINE_TOO_LONG = b"-ERR Line too long, closing connection\r\n"
REPLY_BACKEND_GARBLED = b"-ERR [SYS/TEMP] Backend sent an invalid response, closing connection\r\n"
SYNTHESISED_CAPA_STATUS = b"+OK Capability list follows\r\n"

# A CAPA response is a few dozen lines; this bounds what is held to filter it.
MAX_CAPA_LINES = 256

_ALLOWED_BEFORE_TLS = frozenset({b"CAPA", b"STLS", b"QUIT"})
_AUTH_COMMANDS = frozenset({b"USER", b"PASS", b"APOP", b"AUTH"})
# RFC 1939 §5 / RFC 2449 §5: these answer +OK with a dot-terminated body.
_ALWAYS_MULTILINE = frozenset({b"RETR", b"TOP", b"CAPA"})
_MULTILINE_WITHOUT_ARGUMENT = frozenset({b"LIST", b"UIDL", b"AUTH"})
_STLS = b"STLS"
_END_OF_BODY = frozenset({b".\r\n", b".\n"})


class Command(Enum):
    GREETING = auto()
    CAPA = auto()
    MULTILINE = auto()
    AUTH = auto()  # AUTH with a mechanism: a SASL exchange (RFC 5034)
    LOGIN = auto()  # PASS, APOP: +OK means the session is authenticated
    STLS = auto()  # an STLS forwarded to the backend
    OTHER = auto()


class State(Enum):
    # Members are singletons compared by identity; object's C hash keeps the state-set tests
    # on the per-command path off Enum.__hash__, a Python function.
    __hash__ = object.__hash__

    COMMAND = auto()
    SASL_RESPONSE = auto()
    AWAITING_AUTH_REPLY = auto()
    AWAITING_STLS_REPLY = auto()
    AWAITING_TLS = auto()
    RELAY = auto()


class BackendState(Enum):
    STATUS_LINE = auto()
    BODY = auto()  # streaming a multi-line response to the client
    CAPA_BODY = auto()  # collecting a CAPA response to filter it


_PAUSED_STATES = frozenset(
    {State.AWAITING_AUTH_REPLY, State.AWAITING_STLS_REPLY, State.AWAITING_TLS}
)


def _capability(line: bytes) -> bytes:
    words = line.split(None, 1)
    return words[0].upper() if words else b""


class Pop3ServerMediator(MediatorBase[Command]):
    def __init__(self, policy: SessionPolicy) -> None:
        super().__init__(policy)
        self._state = State.COMMAND
        self._backend_state = BackendState.STATUS_LINE
        self._body_end = BodyEndScanner(strict=False)
        self._capa_lines: list[bytes] = []
        self._capa_status = b""
        self._authenticated = False
        self._expect_backend_reply(Command.GREETING)

    @property
    def client_reading_paused(self) -> bool:
        return self._state in _PAUSED_STATES or self._owes_too_many_replies

    def _relaying(self) -> bool:
        # A method, not an inline test: replies change the state behind mypy's narrowing.
        return self._state is State.RELAY

    # ---- client side ------------------------------------------------------------------------

    def _on_client_data(self, data: bytes) -> None:
        if self._relaying():
            self._send_backend(data)
        elif self._state is State.AWAITING_TLS:
            self._discard_injection(len(data))
        else:
            self._client_lines.feed(data)
            self._run_client()

    def _run_client(self) -> None:
        while not self._closed and not self.client_reading_paused and not self._relaying():
            # (client_reading_paused also covers too many replies owed: lines wait in the buffer)
            try:
                line = self._client_lines.next_line()
            except LineTooLongError as exc:
                self._protocol_error(
                    REPLY_LINE_TOO_LONG, f"client line over {exc.limit_bytes} bytes"
                )
                return
            if line is None:
                return
            if self._state is State.SASL_RESPONSE:
                self._send_backend(line)  # opaque SASL data: never parsed or logged
                self._state = State.AWAITING_AUTH_REPLY
            else:
                self._on_command(line)

    def _on_command(self, line: bytes) -> None:
        words = line.split(None, 1)
        verb = words[0].upper() if words else b""
        argument = words[1].strip() if len(words) > 1 else b""
        before_tls = not self.client_tls
        if verb == _STLS:
            self._on_stls(argument, line)
        elif verb in _AUTH_COMMANDS and before_tls and self.policy.auth_requires_tls:
            # PASS and AUTH lines carry secrets: dropped here, never logged.
            self._notice(NoticeKind.AUTH_BEFORE_TLS_REFUSED)
            self._reply_locally(Command.OTHER, REPLY_AUTH_NEEDS_TLS)
        elif (
            before_tls
            and self.policy.require_tls
            and self.policy.offer_starttls
            and verb not in _ALLOWED_BEFORE_TLS
        ):
            self._notice(
                NoticeKind.COMMAND_BEFORE_TLS_REFUSED, command=verb[:16].decode("ascii", "replace")
            )
            self._reply_locally(Command.OTHER, REPLY_MUST_STLS)
        else:
            self._send_backend(line)
            self._expect_backend_reply(self._classify(verb, argument))
            if verb == b"AUTH" and argument:
                self._state = State.AWAITING_AUTH_REPLY

    @staticmethod
    def _classify(verb: bytes, argument: bytes) -> Command:
        if verb == b"CAPA":
            return Command.CAPA
        if verb == b"AUTH" and argument:
            return Command.AUTH
        if verb in _ALWAYS_MULTILINE or (verb in _MULTILINE_WITHOUT_ARGUMENT and not argument):
            return Command.MULTILINE
        if verb in (b"PASS", b"APOP"):
            return Command.LOGIN
        return Command.OTHER

    def _on_stls(self, argument: bytes, line: bytes) -> None:
        if self.client_tls:
            self._notice(NoticeKind.STARTTLS_REFUSED, reason="tls_already_active")
            self._reply_locally(Command.OTHER, REPLY_TLS_ALREADY_ACTIVE)
        elif not self.policy.offer_starttls:
            self._send_backend(line)
            self._expect_backend_reply(Command.STLS)
            self._state = State.AWAITING_STLS_REPLY
        elif self._authenticated:
            # RFC 2595 §4: STLS is only permitted in the AUTHORIZATION state.
            self._notice(NoticeKind.STARTTLS_REFUSED, reason="authenticated")
            self._reply_locally(Command.OTHER, REPLY_STLS_NOT_IN_AUTHORIZATION)
        elif argument:
            self._notice(NoticeKind.STARTTLS_REFUSED, reason="syntax")
            self._reply_locally(Command.OTHER, REPLY_STLS_SYNTAX)
        else:
            self._state = State.AWAITING_TLS
            self._accept_starttls(Command.OTHER, REPLY_BEGIN_TLS)

    def _on_client_tls_established(self) -> None:
        # RFC 2595 §4: the session stays in the AUTHORIZATION state; the client must forget
        # the CAPA it saw, the server has nothing to reset.
        self._state = State.COMMAND
        self._notice(NoticeKind.STARTTLS)
        self._run_client()

    def _idle_timeout_reply(self) -> bytes:
        return REPLY_IDLE_TIMEOUT

    def _shutdown_reply(self) -> bytes:
        if self._state in (State.AWAITING_TLS, State.RELAY):
            return b""
        if self._backend_state is not BackendState.STATUS_LINE:
            return b""  # inside a multi-line response: an -ERR line would become part of it
        return REPLY_SHUTTING_DOWN

    # ---- backend side -----------------------------------------------------------------------

    def _on_backend_data(self, data: bytes) -> None:
        while not self._closed:
            if self._relaying():
                self._send_client(self._backend_lines.take_all() + data)
                return
            if self._backend_state is BackendState.BODY:
                if self._backend_lines:
                    data = self._backend_lines.take_all() + data
                if not data:
                    return
                data = self._stream_body(data)
                continue
            if data:
                self._backend_lines.feed(data)
                data = b""
            try:
                line = self._backend_lines.next_line()
            except LineTooLongError:
                self._protocol_error(REPLY_BACKEND_GARBLED, "backend response line too long")
                return
            if line is None:
                return
            if self._backend_state is BackendState.CAPA_BODY:
                self._collect_capa(line)
            else:
                self._on_status_line(line)

    def _stream_body(self, data: bytes) -> bytes:
        end = self._body_end.feed(data)
        if end < 0:
            self._send_client(data)
            return b""
        self._send_client(data[:end])
        self._backend_state = BackendState.STATUS_LINE
        self._after_response()
        return data[end:]

    def _on_status_line(self, line: bytes) -> None:
        command = self._next_backend_command()
        ok = line.startswith(b"+OK")
        if command is Command.CAPA:
            if ok:
                self._capa_status, self._capa_lines = line, []
                self._backend_state = BackendState.CAPA_BODY
                return
            self._send_client(self._capa_response(SYNTHESISED_CAPA_STATUS, [], synthesised=True))
        else:
            self._send_client(line)
        if command is Command.MULTILINE and ok:
            self._body_end = BodyEndScanner(strict=False)
            self._backend_state = BackendState.BODY
            return
        if command is Command.AUTH:
            if line.startswith(b"+") and not ok:  # RFC 5034 §4: "+ " carries a challenge
                self._state = State.SASL_RESPONSE
                self._pending.appendleft(Pending(Command.AUTH))
                self._run_client()
                return
            self._state = State.COMMAND
        if command in (Command.AUTH, Command.LOGIN) and ok:
            self._authenticated = True
        if command is Command.STLS:
            if ok:
                self._state = State.RELAY
                self._switch_to_relay()
                return
            self._state = State.COMMAND
        self._after_response()

    def _collect_capa(self, line: bytes) -> None:
        if line in _END_OF_BODY:
            self._send_client(self._capa_response(self._capa_status, self._capa_lines))
            self._backend_state = BackendState.STATUS_LINE
            self._after_response()
        elif len(self._capa_lines) >= MAX_CAPA_LINES:
            self._protocol_error(REPLY_BACKEND_GARBLED, "backend CAPA response too long")
        else:
            self._capa_lines.append(line)

    def _capa_response(
        self, status: bytes, lines: list[bytes], *, synthesised: bool = False
    ) -> bytes:
        """RFC 2449 §5 / RFC 2595 §4: STLS only before TLS; USER and SASL hidden until TLS."""
        before_tls = not self.client_tls
        remove = {_STLS}
        if before_tls and self.policy.auth_requires_tls:
            remove |= {b"USER", b"SASL"}
        kept = [line for line in lines if _capability(line) not in remove]
        if synthesised and b"USER" not in remove:
            kept.append(b"USER\r\n")  # synthesised: a legacy server without CAPA has USER/PASS
        if before_tls and self.policy.offer_starttls:
            kept.append(b"STLS\r\n")
        return status + b"".join(kept) + b".\r\n"

    def _after_response(self) -> None:
        self._release_local_replies()
        self._run_client()
