"""The client side of STARTTLS (RFC 3207) and STLS (RFC 2595 §4), towards a relay.

PURE, sans-I/O: feed the relay's bytes in, get what to send back and, at the end, a verdict.
An outbound listener runs one of these on a fresh plaintext connection before its handshake:

    SMTP: read the greeting, send EHLO, require STARTTLS among the extensions, send STARTTLS,
          require 220.
    POP3: read the greeting, send STLS, require +OK.

The relay's greeting is kept: the client behind tlsgate gets it after the handshake, and its
own EHLO then reaches the relay inside TLS (RFC 3207 §4.2: the client must discard what it
knew and say EHLO again, which is what the client does).

Response injection: anything the relay (or a man in the middle) sends after the STARTTLS reply
and before the handshake would be read as if it came through TLS. The verdict is then a
refusal, never `Ready` (CVE-2011-0411 in reverse, as Postfix's client checks it).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from tlsgate.observe.events import BackendFailureReason
from tlsgate.protocol.lines import LineBuffer, LineTooLongError
from tlsgate.protocol.smtp_reply import Reply, ReplyAssembler, ReplyTooLongError, ehlo_keyword

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; POP3's greeting is one line too.
MAX_REPLY_LINE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Ready:
    """STARTTLS was accepted: start the TLS handshake now, then give the client `greeting`."""

    greeting: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """The relay cannot be spoken to over TLS on this connection.

    Attributes:
        greeting: the relay's greeting, if one came (b"" otherwise).
        plaintext_usable: the connection is still a clean plaintext session after `greeting`
            (only when STARTTLS was not offered), so a fallback may go on using it.
    """

    reason: BackendFailureReason
    detail: str
    greeting: bytes = b""
    plaintext_usable: bool = False


Verdict = Ready | Refused


class StartTlsClient(abc.ABC):
    """Drives one relay connection up to the point where TLS starts, or refuses it.

    Call `receive(data)` with each chunk the relay sends and `receive_eof()` when it closes;
    each returns the bytes to send to the relay (possibly b""). Once `verdict` is set, the
    negotiation is over and nothing more may be fed.
    """

    def __init__(self) -> None:
        self.verdict: Verdict | None = None
        self.greeting = b""
        self._lines = LineBuffer(MAX_REPLY_LINE_BYTES)

    def receive(self, data: bytes) -> bytes:
        self._lines.feed(data)
        to_send: list[bytes] = []
        try:
            while (line := self._lines.next_line()) is not None:
                to_send.append(self._line(line))
                if self.done:
                    break
        except (LineTooLongError, ReplyTooLongError):
            self._refuse(BackendFailureReason.PROTOCOL_ERROR, "reply too long")
        return b"".join(to_send)

    @property
    def done(self) -> bool:
        return self.verdict is not None

    def receive_eof(self) -> None:
        if self.verdict is None:
            self._refuse(BackendFailureReason.PROTOCOL_ERROR, "connection closed by the relay")

    @abc.abstractmethod
    def _line(self, line: bytes) -> bytes:
        """Take one line from the relay; return what to send it."""

    def _after_final_reply(self) -> bool:
        """True when the relay sent nothing after a reply that must be the last for now.

        A relay speaks only when spoken to, so bytes that follow a reply before our next
        command are injected (or a broken relay): either way, not to be trusted.
        """
        if len(self._lines):
            self._refuse(BackendFailureReason.RESPONSE_INJECTION, "data after the reply")
            return False
        return True

    def _refuse(
        self, reason: BackendFailureReason, detail: str, *, plaintext_usable: bool = False
    ) -> None:
        self.verdict = Refused(reason, detail, self.greeting, plaintext_usable)


class SmtpStartTlsClient(StartTlsClient):
    """RFC 3207 §4 from the client's side: greeting, EHLO, STARTTLS, 220."""

    def __init__(self, ehlo_name: str) -> None:
        super().__init__()
        self._ehlo = b"EHLO " + ehlo_name.encode("ascii") + b"\r\n"
        self._replies = ReplyAssembler()
        self._step = self._on_greeting

    def _line(self, line: bytes) -> bytes:
        reply = self._replies.add(line)
        return b"" if reply is None else self._step(reply)

    def _on_greeting(self, reply: Reply) -> bytes:
        if reply.code != 220:
            return self._refused_by(BackendFailureReason.PROTOCOL_ERROR, "greeting", reply)
        self.greeting = reply.raw
        if not self._after_final_reply():
            return b""
        self._step = self._on_ehlo
        return self._ehlo

    def _on_ehlo(self, reply: Reply) -> bytes:
        if reply.code != 250:
            return self._refused_by(BackendFailureReason.PROTOCOL_ERROR, "EHLO", reply)
        if not self._after_final_reply():
            return b""
        if not any(ehlo_keyword(line) == b"STARTTLS" for line in reply.lines[1:]):
            # Stripping, or a relay without TLS. The session is clean: the client's own EHLO
            # will simply start it over (RFC 5321 §4.1.4), so a fallback may use it.
            self._refuse(
                BackendFailureReason.STARTTLS_NOT_OFFERED,
                "STARTTLS not offered",
                plaintext_usable=True,
            )
            return b""
        self._step = self._on_starttls
        return b"STARTTLS\r\n"

    def _on_starttls(self, reply: Reply) -> bytes:
        if reply.code != 220:
            return self._refused_by(BackendFailureReason.STARTTLS_REFUSED, "STARTTLS", reply)
        if self._after_final_reply():
            self.verdict = Ready(self.greeting)
        return b""

    def _refused_by(self, reason: BackendFailureReason, command: str, reply: Reply) -> bytes:
        self._refuse(reason, f"{command} answered {reply.code or 'with a non-reply'}")
        return b""


class Pop3StartTlsClient(StartTlsClient):
    """RFC 2595 §4 from the client's side: greeting, STLS, +OK."""

    def __init__(self) -> None:
        super().__init__()
        self._sent_stls = False

    def _line(self, line: bytes) -> bytes:
        positive = line.startswith(b"+OK")
        if not self._sent_stls:
            if not positive:
                self._refuse(BackendFailureReason.PROTOCOL_ERROR, "greeting was not +OK")
                return b""
            self.greeting = line
            if not self._after_final_reply():
                return b""
            self._sent_stls = True
            return b"STLS\r\n"
        if not positive:
            # RFC 2449: a server without STLS answers -ERR; no command is pending after it,
            # so the plaintext session is still usable by a fallback.
            self._refuse(
                BackendFailureReason.STARTTLS_NOT_OFFERED,
                "STLS answered -ERR",
                plaintext_usable=not len(self._lines),
            )
            return b""
        if self._after_final_reply():
            self.verdict = Ready(self.greeting)
        return b""
