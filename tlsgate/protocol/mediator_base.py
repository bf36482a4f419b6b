"""What the SMTP and POP3 (and later IMAP) server-side mediators share.

PURE. Theory of operation: commands from the client are parsed line by line and either
forwarded to the backend or answered locally (STARTTLS, refused AUTH). Replies must reach the
client in command order even with pipelining (RFC 2920, RFC 2449), so every command gets an
entry in one FIFO: forwarded entries are completed by the backend's next reply, local entries
carry their reply and are released as soon as everything before them has been answered.
Bulk bodies never go through the line splitter (see `lines.BodyEndScanner`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from tlsgate.observe.events import CloseReason, NoticeKind
from tlsgate.protocol.io_types import (
    BackendData,
    BackendEof,
    ClientData,
    ClientEof,
    ClientTlsEstablished,
    Close,
    EofToBackend,
    EofToClient,
    IdleTimeout,
    Input,
    Notice,
    Output,
    SendToBackend,
    SendToClient,
    SessionPolicy,
    Shutdown,
    StartClientTls,
    SwitchToRelay,
)
from tlsgate.protocol.lines import LineBuffer

# RFC 5321 §4.5.3.1.4 allows 512 octets per command line and RFC 4954 raises it for AUTH to
# 12288; before TLS nothing legitimate comes close to 4 KiB (the limit), so anything
# longer is an attack or garbage. After TLS an authenticated user may send a large SASL token
# (Kerberos/GSSAPI), so the limit only bounds memory.
MAX_LINE_BYTES_BEFORE_TLS = 4096
MAX_LINE_BYTES_AFTER_TLS = 65536
# Backend replies: a legacy server is trusted more than a client, but still bounded.
MAX_BACKEND_LINE_BYTES = 65536
# Replies the client is owed at once. RFC 2920 pipelining sends a transaction's worth of
# commands (Postfix caps recipients at 1000 by default); beyond this the client is not read
# until replies catch up, which bounds the queue however fast a client pipelines.
MAX_PENDING_REPLIES = 1024

CommandT = TypeVar("CommandT")


@dataclass(slots=True)
class Pending(Generic[CommandT]):
    """A command that still owes the client a reply."""

    command: CommandT
    local_reply: bytes | None = None  # set: answered by tlsgate, not the backend
    start_tls: bool = False  # after sending local_reply, hand the client transport to TLS


class MediatorBase(Generic[CommandT]):
    """Output collection, the reply FIFO and end-of-stream bookkeeping."""

    def __init__(self, policy: SessionPolicy) -> None:
        self.policy = policy
        self.client_tls = policy.client_tls
        self._client_lines = LineBuffer(
            MAX_LINE_BYTES_AFTER_TLS if policy.client_tls else MAX_LINE_BYTES_BEFORE_TLS
        )
        self._backend_lines = LineBuffer(MAX_BACKEND_LINE_BYTES)
        self._pending: deque[Pending[CommandT]] = deque()
        self._out: list[Output] = []
        self._client_eof = False
        self._backend_eof = False
        self._closed = False

    # ---- the Mediator interface -------------------------------------------------------------

    def handle(self, event: Input) -> list[Output]:
        if self._closed:
            return []
        match event:
            case ClientData(data):
                self._on_client_data(data)
            case BackendData(data):
                self._on_backend_data(data)
            case ClientEof():
                self._on_client_eof()
            case BackendEof():
                self._on_backend_eof()
            case ClientTlsEstablished():
                self.client_tls = True
                self._client_lines.max_line_bytes = MAX_LINE_BYTES_AFTER_TLS
                self._on_client_tls_established()
            case IdleTimeout():
                self._notice(NoticeKind.IDLE_TIMEOUT)
                self._send_client(self._idle_timeout_reply())
                self._close(CloseReason.IDLE_TIMEOUT)
            case Shutdown():
                self._send_client(self._shutdown_reply())
                self._close(CloseReason.SHUTDOWN)
        out, self._out = self._out, []
        return _coalesce(out) if len(out) > 1 else out

    # ---- hooks for the protocol subclasses --------------------------------------------------

    def _on_client_data(self, data: bytes) -> None:
        raise NotImplementedError

    def _on_backend_data(self, data: bytes) -> None:
        raise NotImplementedError

    def _on_client_tls_established(self) -> None:
        raise NotImplementedError

    def _idle_timeout_reply(self) -> bytes:
        raise NotImplementedError

    def _shutdown_reply(self) -> bytes:
        """The goodbye for `Shutdown`, or b"" where a reply line would corrupt what the
        client is reading (a TLS handshake, opaque relayed bytes, a multi-line response)."""
        raise NotImplementedError

    def _on_client_eof(self) -> None:
        # A partial command line at EOF is dropped: an unterminated command is not a command.
        self._client_eof = True
        self._out.append(EofToBackend())
        self._close_if_both_done()

    def _on_backend_eof(self) -> None:
        self._backend_eof = True
        leftover = self._backend_lines.take_all()
        if leftover:
            self._send_client(leftover)
        self._out.append(EofToClient())
        self._close_if_both_done()

    # ---- helpers ----------------------------------------------------------------------------

    @property
    def _owes_too_many_replies(self) -> bool:
        return len(self._pending) >= MAX_PENDING_REPLIES

    def _send_client(self, data: bytes) -> None:
        if data:
            self._out.append(SendToClient(data))

    def _send_backend(self, data: bytes) -> None:
        if data:
            self._out.append(SendToBackend(data))

    def _notice(self, kind: NoticeKind, **fields: str | int) -> None:
        self._out.append(Notice(kind, fields))

    def _close(self, reason: CloseReason) -> None:
        self._out.append(Close(reason))
        self._closed = True

    def _close_if_both_done(self) -> None:
        if self._client_eof and self._backend_eof:
            self._close(CloseReason.COMPLETED)

    def _protocol_error(self, reply: bytes, detail: str) -> None:
        self._notice(NoticeKind.PROTOCOL_ERROR, detail=detail)
        self._send_client(reply)
        self._close(CloseReason.PROTOCOL_ERROR)

    def _expect_backend_reply(self, command: CommandT) -> None:
        self._pending.append(Pending(command))

    def _reply_locally(self, command: CommandT, reply: bytes, *, start_tls: bool = False) -> None:
        """Answer a command ourselves, after every reply the client is still waiting for."""
        self._pending.append(Pending(command, local_reply=reply, start_tls=start_tls))
        self._release_local_replies()

    def _release_local_replies(self) -> None:
        while self._pending and (reply := self._pending[0].local_reply) is not None:
            entry = self._pending.popleft()
            self._send_client(reply)
            if entry.start_tls:
                self._out.append(StartClientTls())

    def _accept_starttls(self, command: CommandT, reply: bytes) -> None:
        """Say yes to STARTTLS/STLS and hand the client transport to TLS after the reply."""
        # RFC 3207 §4 / RFC 2595 §4, CVE-2011-0411: nothing the client sent after the command
        # and before the handshake may be executed inside TLS, so it is thrown away.
        self._discard_injection(len(self._client_lines))
        self._client_lines.take_all()
        self._reply_locally(command, reply, start_tls=True)

    def _discard_injection(self, size: int) -> None:
        if size:
            self._notice(NoticeKind.STARTTLS_INJECTION, bytes=size)

    def _switch_to_relay(self) -> None:
        """The backend agreed to a client's own STARTTLS: from here on it is their TLS."""
        self._send_backend(self._client_lines.take_all())
        self._out.append(SwitchToRelay())

    def _next_backend_command(self) -> CommandT | None:
        """Pop the command the backend's next reply answers; None for an unsolicited reply."""
        return self._pending.popleft().command if self._pending else None


def _coalesce(outputs: list[Output]) -> list[Output]:
    """Join runs of sends to the same peer into one send each (one syscall, one TLS flush),
    in one pass: pipelined commands then cost linear time, not quadratic."""
    merged: list[Output] = []
    run: list[bytes] = []
    run_type: type[SendToClient] | type[SendToBackend] | None = None
    for output in [*outputs, None]:
        output_type = type(output)
        if run_type is not None and output_type is not run_type:
            merged.append(run_type(run[0] if len(run) == 1 else b"".join(run)))
            run, run_type = [], None
        if isinstance(output, SendToClient | SendToBackend):
            run.append(output.data)
            run_type = type(output)
        elif output is not None:
            merged.append(output)
    return merged
