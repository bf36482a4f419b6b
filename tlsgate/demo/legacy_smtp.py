"""A legacy plaintext ESMTP server in the manner of sendmail 8: no TLS, mail kept in memory.

It is the backend of `tlsgate demo` and of the end-to-end tests, so it is strict about what
tests assert and lenient about what old daemons accepted:

- every line received outside a message body (commands and SASL responses) is appended, without
  its line terminator, to this connection's list in `LegacySmtpServer.transcript`;
- a bare LF ends a line (sendmail accepts it);
- DATA bodies are dot-unstuffed (RFC 5321 §4.5.2) and stored exactly as the client meant them,
  line endings as received; BDAT chunks (RFC 3030) are stored byte for byte;
- with `advertise_starttls` it claims STARTTLS in EHLO and answers it with
  `454 4.7.0 TLS not available`, like a sendmail whose certificate is missing: tlsgate must
  strip that keyword and never pass the command through;
- it never offers or performs TLS itself.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Awaitable, Callable, Mapping
from itertools import count

import trio

from tlsgate.demo.mailstore import MailStore
from tlsgate.demo.wire import (
    IDLE_TIMEOUT_SECONDS,
    MAX_LINE_BYTES,
    LineReader,
    LineTooLongError,
    PeerClosedError,
    linger_close,
)

# The SIZE the server advertises (RFC 1870) and enforces on DATA and BDAT; sendmail's
# `MaxMessageSize` is commonly set to this value.
MAX_MESSAGE_BYTES = 52_428_800

# RFC 5321 §4.5.3.1.8: a server MUST accept at least 100 recipients per transaction.
MAX_RECIPIENTS = 100

DEMO_USERS: Mapping[str, str] = {"demo": "demo-password"}

_SMTP_KEYWORDS = ("ENHANCEDSTATUSCODES", "PIPELINING", "8BITMIME", f"SIZE {MAX_MESSAGE_BYTES}")
_SMTP_KEYWORDS_TAIL = ("DSN", "CHUNKING")
_MAIL_PARAMS = frozenset({"SIZE", "BODY", "RET", "ENVID", "AUTH"})  # RFC 1870, 6152, 3461, 4954
_RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})  # RFC 3461 §4
_DATA_END = (b".\r\n", b".\n")


class LegacySmtpServer:
    """Configuration and observable state of the legacy SMTP server.

    Args:
        store: where accepted mail goes (a fresh one if omitted).
        users: AUTH credentials, user -> password.
        hostname: used in the greeting and replies.
        advertise_starttls: claim STARTTLS in EHLO and answer it with 454.
        auth: offer AUTH PLAIN LOGIN (RFC 4954); off, AUTH is an unknown command.
        idle_timeout: seconds to wait for a command before `421 4.4.2` and close.
        max_line_bytes: longer lines get `500 5.5.2` and the connection is closed.

    Attributes:
        transcript: per connection, in accept order, every line received outside a message
            body (commands and SASL responses), without its CRLF or LF.
        logins: user names that authenticated successfully, in order.
    """

    def __init__(
        self,
        store: MailStore | None = None,
        *,
        users: Mapping[str, str] = DEMO_USERS,
        hostname: str = "legacy.localdomain",
        advertise_starttls: bool = False,
        auth: bool = True,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.store = store if store is not None else MailStore()
        self.users = dict(users)
        self.hostname = hostname
        self.advertise_starttls = advertise_starttls
        self.auth = auth
        self.idle_timeout = idle_timeout
        self.max_line_bytes = max_line_bytes
        self.transcript: list[list[bytes]] = []
        self.logins: list[str] = []
        self._queue_ids = count(0x5A000001)

    def ehlo_keywords(self) -> list[str]:
        """The extension keywords of the EHLO reply, in order."""
        keywords = list(_SMTP_KEYWORDS)
        if self.advertise_starttls:
            keywords.append("STARTTLS")
        if self.auth:
            keywords.append("AUTH PLAIN LOGIN")
        keywords.extend(_SMTP_KEYWORDS_TAIL)
        return keywords

    def next_queue_id(self) -> str:
        return f"{next(self._queue_ids):08X}"

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until QUIT, EOF, a timeout or an over-long line."""
        await _SmtpSession(self, stream).run()


def _strip_eol(line: bytes) -> bytes:
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]


def _parse_path(arg: str, prefix: str) -> tuple[str, dict[str, str]] | None:
    """`FROM:<a@b> SIZE=10` -> ("a@b", {"SIZE": "10"}); None on a syntax error."""
    if arg[: len(prefix)].upper() != prefix:
        return None
    words = arg[len(prefix) :].strip().split()
    if not words or not (words[0].startswith("<") and words[0].endswith(">")):
        return None
    params: dict[str, str] = {}
    for word in words[1:]:
        key, _, value = word.partition("=")
        params[key.upper()] = value
    return words[0][1:-1], params


class _SmtpSession:
    """One connection: the command loop plus the SMTP transaction state."""

    def __init__(self, server: LegacySmtpServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.reader = LineReader(
            stream, max_line_bytes=server.max_line_bytes, idle_timeout=server.idle_timeout
        )
        self.lines: list[bytes] = []
        server.transcript.append(self.lines)
        self.helo: str | None = None
        self.user: str | None = None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.chunks: list[bytes] = []
        self.chunked_bytes = 0
        self.bdat_started = False

    async def reply(self, *lines: str) -> None:
        """Send one reply; several lines become a multi-line reply (RFC 5321 §4.2.1)."""
        code = lines[-1][:3]
        text = "".join(f"{code}-{line[4:]}\r\n" for line in lines[:-1]) + f"{lines[-1]}\r\n"
        await self.stream.send_all(text.encode("latin-1"))

    async def read_line(self) -> str:
        line = _strip_eol(await self.reader.readline())
        self.lines.append(line)
        return line.decode("latin-1")

    async def run(self) -> None:
        host = self.server.hostname
        await self.reply(f"220 {host} ESMTP Sendmail 8.12.11 (tlsgate legacy demo); no TLS here")
        try:
            while True:
                verb, _, arg = (await self.read_line()).partition(" ")
                handler = _COMMANDS.get(verb.upper())
                if handler is None:
                    await self.reply(f'500 5.5.1 Command unrecognized: "{verb}"')
                elif await handler(self, arg.strip()):
                    return
        except LineTooLongError:
            await self.reply("500 5.5.2 Line too long; closing connection")
            await linger_close(self.stream)
        except trio.TooSlowError:
            await self.reply(f"421 4.4.2 {host} Timeout waiting for command")
        except PeerClosedError:
            return

    async def cmd_ehlo(self, arg: str) -> bool:
        if not arg:
            await self.reply("501 5.0.0 EHLO requires domain address")
            return False
        self.helo = arg
        self._reset_transaction()  # RFC 5321 §4.1.4: EHLO implies RSET
        lines = [f"250-{self.server.hostname} Hello {arg}, pleased to meet you"]
        lines += [f"250-{keyword}" for keyword in self.server.ehlo_keywords()]
        await self.reply(*lines, "250 HELP")
        return False

    async def cmd_helo(self, arg: str) -> bool:
        if not arg:
            await self.reply("501 5.0.0 HELO requires domain address")
            return False
        self.helo = arg
        self._reset_transaction()
        await self.reply(f"250 {self.server.hostname} Hello {arg}, pleased to meet you")
        return False

    async def cmd_mail(self, arg: str) -> bool:
        parsed = _parse_path(arg, "FROM:")
        if self.helo is None:
            await self.reply("503 5.0.0 Polite people say HELO first")
        elif self.mail_from is not None:
            await self.reply("503 5.5.0 Sender already specified")
        elif parsed is None:
            await self.reply('501 5.5.2 Syntax error in parameters scanning "from"')
        elif unknown := sorted(set(parsed[1]) - _MAIL_PARAMS):
            await self.reply(f'555 5.5.4 "{unknown[0]}" parameter unrecognized')
        elif not (size := parsed[1].get("SIZE", "0")).isdigit():
            await self.reply("501 5.5.4 SIZE requires a number")
        elif int(size) > MAX_MESSAGE_BYTES:  # RFC 1870 §6
            await self.reply("552 5.2.3 Message size exceeds fixed maximum message size")
        else:
            self.mail_from = parsed[0]
            await self.reply(f"250 2.1.0 <{parsed[0]}>... Sender ok")
        return False

    async def cmd_rcpt(self, arg: str) -> bool:
        parsed = _parse_path(arg, "TO:")
        if self.mail_from is None:
            await self.reply("503 5.0.0 Need MAIL before RCPT")
        elif parsed is None or not parsed[0]:
            await self.reply('501 5.5.2 Syntax error in parameters scanning "to"')
        elif unknown := sorted(set(parsed[1]) - _RCPT_PARAMS):
            await self.reply(f'555 5.5.4 "{unknown[0]}" parameter unrecognized')
        elif len(self.rcpts) >= MAX_RECIPIENTS:
            await self.reply("452 4.5.3 Too many recipients")
        else:
            self.rcpts.append(parsed[0])
            await self.reply(f"250 2.1.5 <{parsed[0]}>... Recipient ok")
        return False

    def _transaction_refusal(self) -> str | None:
        if self.mail_from is None:
            return "503 5.0.0 Need MAIL command"
        if not self.rcpts:
            return "503 5.0.0 Need RCPT (recipient)"
        return None

    def _deliver(self, body: bytes) -> str:
        assert self.mail_from is not None
        self.server.store.deliver(self.mail_from, tuple(self.rcpts), body)
        self._reset_transaction()
        return f"250 2.0.0 {self.server.next_queue_id()} Message accepted for delivery"

    async def cmd_data(self, arg: str) -> bool:
        refusal = self._transaction_refusal()
        if arg:
            await self.reply("501 5.5.4 Syntax error: DATA takes no argument")
        elif self.bdat_started:
            await self.reply("503 5.5.1 DATA not allowed after BDAT")  # RFC 3030 §2
        elif refusal is not None:
            await self.reply(refusal)
        else:
            await self.reply('354 Enter mail, end with "." on a line by itself')
            await self._receive_data_body()
        return False

    async def _receive_data_body(self) -> None:
        parts: list[bytes] = []
        size = 0
        while (line := await self.reader.readline()) not in _DATA_END:
            if line.startswith(b"."):
                line = line[1:]  # RFC 5321 §4.5.2: the server deletes the first period
            size += len(line)
            if size <= MAX_MESSAGE_BYTES:  # past the limit, keep reading but stop storing
                parts.append(line)
        if size > MAX_MESSAGE_BYTES:
            self._reset_transaction()
            await self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
        else:
            await self.reply(self._deliver(b"".join(parts)))

    async def cmd_bdat(self, arg: str) -> bool:
        words = arg.split()
        last = len(words) == 2 and words[1].upper() == "LAST"
        if not words or not words[0].isdigit() or len(words) > 2 or (len(words) == 2 and not last):
            # Without a valid size the chunk cannot be skipped; the best left is to say so.
            await self.reply("501 5.5.4 Syntax error in BDAT parameters")
            return False
        size = int(words[0])
        refusal = self._transaction_refusal()
        too_big = self.chunked_bytes + size > MAX_MESSAGE_BYTES
        # RFC 3030 §2: a refused chunk is still read, so its bytes are never taken as commands.
        chunk = await self.reader.read_exact(size, keep=refusal is None and not too_big)
        if refusal is not None:
            await self.reply(refusal)
        elif too_big:
            self._reset_transaction()
            await self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
        else:
            self.bdat_started = True
            self.chunks.append(chunk)
            self.chunked_bytes += size
            if last:
                await self.reply(self._deliver(b"".join(self.chunks)))
            else:
                await self.reply(f"250 2.0.0 {size} octets received")
        return False

    async def cmd_rset(self, arg: str) -> bool:
        self._reset_transaction()
        await self.reply("250 2.0.0 Reset state")
        return False

    async def cmd_noop(self, arg: str) -> bool:
        await self.reply("250 2.0.0 OK")
        return False

    async def cmd_quit(self, arg: str) -> bool:
        await self.reply(f"221 2.0.0 {self.server.hostname} closing connection")
        return True

    async def cmd_vrfy(self, arg: str) -> bool:
        await self.reply("252 2.5.2 Cannot VRFY user; try RCPT to attempt delivery")
        return False

    async def cmd_help(self, arg: str) -> bool:
        hidden = {"STARTTLS": not self.server.advertise_starttls, "AUTH": not self.server.auth}
        verbs = " ".join(sorted(verb for verb in _COMMANDS if not hidden.get(verb)))
        await self.reply(f"214-2.0.0 Commands: {verbs}", "214 2.0.0 End of HELP info")
        return False

    async def cmd_starttls(self, arg: str) -> bool:
        if self.server.advertise_starttls:
            await self.reply("454 4.7.0 TLS not available")
        else:
            await self.reply('500 5.5.1 Command unrecognized: "STARTTLS"')
        return False

    async def cmd_auth(self, arg: str) -> bool:
        mechanism, _, initial = arg.partition(" ")
        if not self.server.auth:
            await self.reply('500 5.5.1 Command unrecognized: "AUTH"')
        elif self.helo is None:
            await self.reply("503 5.5.1 Polite people say EHLO first")
        elif self.user is not None:
            await self.reply("503 5.5.0 Already Authenticated")
        elif self.mail_from is not None:
            await self.reply("503 5.5.0 AUTH not permitted during a mail transaction")
        elif mechanism.upper() not in ("PLAIN", "LOGIN"):
            await self.reply("504 5.3.3 AUTH mechanism not available")
        else:
            await self.reply(await self._authenticate(mechanism.upper(), initial.strip()))
        return False

    async def _sasl_response(self, initial: str, challenge: str) -> bytes | None:
        """An initial response (RFC 4954 §4, "=" is empty) or one read after a 334 challenge;
        None when the client cancels with "*"."""
        if not initial:
            await self.reply(f"334 {challenge}")
            initial = await self.read_line()
        if initial == "*":
            return None
        return b"" if initial == "=" else b64decode(initial, validate=True)

    async def _authenticate(self, mechanism: str, initial: str) -> str:
        try:
            if mechanism == "PLAIN":
                response = await self._sasl_response(initial, "")
                if response is None:
                    return "501 5.0.0 AUTH aborted"
                _authzid, user, password = response.split(b"\0", 2)
            else:
                # RFC 4954 has no LOGIN; the de-facto challenges are "Username:", "Password:".
                user_b = await self._sasl_response(initial, "VXNlcm5hbWU6")
                if user_b is None:
                    return "501 5.0.0 AUTH aborted"
                password_b = await self._sasl_response("", "UGFzc3dvcmQ6")
                if password_b is None:
                    return "501 5.0.0 AUTH aborted"
                user, password = user_b, password_b
        except (binascii.Error, ValueError):
            return "501 5.5.2 Cannot decode AUTH parameter"
        name = user.decode("utf-8", "replace")
        if self.server.users.get(name) != password.decode("utf-8", "replace"):
            return "535 5.7.0 authentication failed"
        self.user = name
        self.server.logins.append(name)
        return "235 2.0.0 OK Authenticated"


_Handler = Callable[[_SmtpSession, str], Awaitable[bool]]
_COMMANDS: dict[str, _Handler] = {
    "EHLO": _SmtpSession.cmd_ehlo,
    "HELO": _SmtpSession.cmd_helo,
    "MAIL": _SmtpSession.cmd_mail,
    "RCPT": _SmtpSession.cmd_rcpt,
    "DATA": _SmtpSession.cmd_data,
    "BDAT": _SmtpSession.cmd_bdat,
    "RSET": _SmtpSession.cmd_rset,
    "NOOP": _SmtpSession.cmd_noop,
    "QUIT": _SmtpSession.cmd_quit,
    "VRFY": _SmtpSession.cmd_vrfy,
    "HELP": _SmtpSession.cmd_help,
    "STARTTLS": _SmtpSession.cmd_starttls,
    "AUTH": _SmtpSession.cmd_auth,
}
