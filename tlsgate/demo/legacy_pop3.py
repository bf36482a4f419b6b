"""A legacy plaintext POP3 server in the manner of qpopper: no TLS, mail kept in memory.

RFC 1939 with the RFC 2449 extensions (CAPA, TOP, UIDL, PIPELINING, RESP-CODES,
AUTH-RESP-CODE) and SASL PLAIN (RFC 5034). It is the POP3 backend of `tlsgate demo` and of
the end-to-end tests:

- every line received (commands and SASL responses) is appended, without its line terminator,
  to this connection's list in `LegacyPop3Server.transcript`;
- `capa=False` answers CAPA with `-ERR unknown command`, like the pre-2449 daemons tlsgate
  must synthesise a CAPA reply for;
- `advertise_stls=True` lists STLS in CAPA and answers it with `-ERR`, so tests can check that
  tlsgate hides the backend's STLS and never forwards the command;
- a bare LF ends a line; a line over `max_line_bytes` gets `-ERR` and the connection closes.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from base64 import b64decode
from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from itertools import count

import trio

from tlsgate.demo.legacy_smtp import DEMO_USERS
from tlsgate.demo.mailstore import MailStore, StoredMessage
from tlsgate.demo.wire import (
    IDLE_TIMEOUT_SECONDS,
    MAX_LINE_BYTES,
    LineReader,
    LineTooLongError,
    PeerClosedError,
    linger_close,
)

_CAPABILITIES = ("TOP", "USER", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE", "SASL PLAIN")
_AUTH_FAILED = "-ERR [AUTH] Authentication failed"


class Pop3State(Enum):
    AUTHORIZATION = "authorization"  # RFC 1939 §4
    TRANSACTION = "transaction"  # RFC 1939 §5


class LegacyPop3Server:
    """Configuration and observable state of the legacy POP3 server.

    Args:
        store: the mailboxes (shared with the SMTP server to read what it accepted).
        users: credentials, user -> password; a user's mailbox is `store.mailbox(user)`.
        hostname: used in the greeting and the APOP timestamp.
        capa: answer CAPA (RFC 2449); off, CAPA is an unknown command.
        advertise_stls: list STLS in CAPA and answer STLS with -ERR.
        apop: put an APOP timestamp in the greeting and accept APOP (RFC 1939 §7).
        idle_timeout: seconds to wait for a command before closing silently (RFC 1939 §3).
        max_line_bytes: longer lines get -ERR and the connection is closed.

    Attributes:
        transcript: per connection, in accept order, every line received, without its CRLF.
        logins: user names that logged in successfully, in order.
    """

    def __init__(
        self,
        store: MailStore | None = None,
        *,
        users: Mapping[str, str] = DEMO_USERS,
        hostname: str = "legacy.localdomain",
        capa: bool = True,
        advertise_stls: bool = False,
        apop: bool = True,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.store = store if store is not None else MailStore()
        self.users = dict(users)
        self.hostname = hostname
        self.capa = capa
        self.advertise_stls = advertise_stls
        self.apop = apop
        self.idle_timeout = idle_timeout
        self.max_line_bytes = max_line_bytes
        self.transcript: list[list[bytes]] = []
        self.logins: list[str] = []
        self._connection_ids = count(1)

    def capabilities(self) -> list[str]:
        """The CAPA lines, in order (STLS last when advertised)."""
        return [*_CAPABILITIES, *(["STLS"] if self.advertise_stls else [])]

    def apop_timestamp(self) -> str:
        return f"<{os.getpid()}.{next(self._connection_ids)}@{self.hostname}>"

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until QUIT, EOF, a timeout or an over-long line."""
        session = _Pop3Session(self, stream)
        try:
            await session.run()
        finally:
            session.unlock()


def byte_stuff(data: bytes) -> bytes:
    """The multi-line body of RETR/TOP (RFC 1939 §3): dot-stuffed, CRLF-ended, "." line."""
    stuffed = data.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def _top(data: bytes, body_lines: int) -> bytes:
    """The header, the blank line and the first `body_lines` body lines (RFC 1939 §7 TOP)."""
    lines = data.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            return b"".join(lines[: index + 1 + body_lines])
    return data


class _Pop3Session:
    def __init__(self, server: LegacyPop3Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.reader = LineReader(
            stream, max_line_bytes=server.max_line_bytes, idle_timeout=server.idle_timeout
        )
        self.lines: list[bytes] = []
        server.transcript.append(self.lines)
        self.state = Pop3State.AUTHORIZATION
        self.timestamp = server.apop_timestamp() if server.apop else ""
        self.pending_user: str | None = None
        self.user: str | None = None
        self.messages: list[StoredMessage] = []
        self.deleted: set[int] = set()

    def unlock(self) -> None:
        if self.user is not None:
            self.server.store.locked.discard(self.user)

    async def send(self, *lines: str, body: bytes = b"") -> None:
        await self.stream.send_all("".join(f"{line}\r\n" for line in lines).encode() + body)

    async def read_line(self) -> str:
        line = await self.reader.readline()
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        self.lines.append(line)
        return line.decode("latin-1")

    async def run(self) -> None:
        stamp = f" {self.timestamp}" if self.timestamp else ""
        await self.send(f"+OK qpopper (tlsgate legacy demo) ready, no TLS here{stamp}")
        try:
            while True:
                verb, _, arg = (await self.read_line()).partition(" ")
                verb = verb.upper()
                handler = _HANDLERS[self.state].get(verb)
                if verb not in _KNOWN or not self._is_enabled(verb):
                    await self.send("-ERR unknown command")
                elif handler is None:
                    await self.send("-ERR command not valid in this state")
                elif await handler(self, arg):
                    return
        except LineTooLongError:
            await self.send("-ERR line too long; closing connection")
            await linger_close(self.stream)
        except (trio.TooSlowError, PeerClosedError):
            return  # RFC 1939 §3: the autologout timer closes without a response or UPDATE

    def _is_enabled(self, verb: str) -> bool:
        optional = {"CAPA": self.server.capa, "STLS": self.server.advertise_stls}
        return optional.get(verb, True) and (verb != "APOP" or self.server.apop)

    def _visible(self) -> list[tuple[int, StoredMessage]]:
        return [(n, m) for n, m in enumerate(self.messages, 1) if n not in self.deleted]

    def _drop_summary(self) -> str:
        visible = self._visible()
        return f"{len(visible)} messages ({sum(len(m.data) for _, m in visible)} octets)"

    async def cmd_capa(self, arg: str) -> bool:
        await self.send("+OK Capability list follows", *self.server.capabilities(), ".")
        return False

    async def cmd_stls(self, arg: str) -> bool:
        await self.send("-ERR [SYS/PERM] TLS not available")  # only when advertise_stls
        return False

    async def cmd_quit(self, arg: str) -> bool:
        if self.state is Pop3State.TRANSACTION and self.user is not None:
            # RFC 1939 §6: the UPDATE state removes the messages marked as deleted.
            doomed = {self.messages[n - 1].uid for n in self.deleted}
            self.server.store.remove(self.user, doomed)
        await self.send(f"+OK {self.server.hostname} signing off")
        return True

    async def cmd_user(self, arg: str) -> bool:
        self.pending_user = arg
        await self.send(f"+OK Password required for {arg}")
        return False

    async def cmd_pass(self, arg: str) -> bool:
        user, self.pending_user = self.pending_user, None
        if user is None:
            await self.send("-ERR USER first")
        else:
            ok = self.server.users.get(user) == arg  # RFC 1939 §7: the rest of the line
            await self._login(user if ok else None)
        return False

    async def cmd_apop(self, arg: str) -> bool:
        user, _, digest = arg.partition(" ")
        password = self.server.users.get(user)
        expected = hashlib.md5(  # RFC 1939 §7: MD5(timestamp + secret), lowercase hex
            (self.timestamp + (password or "")).encode(), usedforsecurity=False
        ).hexdigest()
        await self._login(user if password is not None and digest == expected else None)
        return False

    async def cmd_auth(self, arg: str) -> bool:
        mechanism, _, initial = arg.partition(" ")
        if not mechanism:
            await self.send("+OK SASL mechanisms follow", "PLAIN", ".")
            return False
        if mechanism.upper() != "PLAIN":
            await self.send("-ERR Unrecognized authentication type")
            return False
        if not initial:  # RFC 5034 §4: an empty challenge is "+ "
            await self.send("+ ")
            initial = await self.read_line()
        if initial == "*":
            await self.send("-ERR AUTH cancelled")
            return False
        try:
            response = b"" if initial == "=" else b64decode(initial, validate=True)
            _authzid, user_b, password_b = response.split(b"\0", 2)
        except (binascii.Error, ValueError):
            await self.send("-ERR [AUTH] Cannot decode AUTH response")
            return False
        user = user_b.decode("utf-8", "replace")
        ok = self.server.users.get(user) == password_b.decode("utf-8", "replace")
        await self._login(user if ok else None)
        return False

    async def _login(self, user: str | None) -> None:
        if user is None:
            await self.send(_AUTH_FAILED)
        elif user in self.server.store.locked:
            await self.send("-ERR [IN-USE] Maildrop already locked")  # RFC 2449 §8.1.2
        else:
            self.server.store.locked.add(user)
            self.user = user
            self.server.logins.append(user)
            self.messages = self.server.store.mailbox(user)
            self.state = Pop3State.TRANSACTION
            await self.send(f"+OK {user} has {self._drop_summary()}")

    def _message(self, arg: str) -> tuple[int, StoredMessage] | str:
        """The message numbered `arg`, or the -ERR reply for a bad or deleted number."""
        if not arg.isdigit() or not 1 <= int(arg) <= len(self.messages):
            return f"-ERR no such message: {arg}"
        number = int(arg)
        if number in self.deleted:
            return f"-ERR message {number} already deleted"
        return number, self.messages[number - 1]

    async def cmd_stat(self, arg: str) -> bool:
        visible = self._visible()
        await self.send(f"+OK {len(visible)} {sum(len(m.data) for _, m in visible)}")
        return False

    async def _scan(self, arg: str, field: Callable[[StoredMessage], str]) -> None:
        """LIST and UIDL: one "n value" line for `arg`, or all as a multi-line reply."""
        if arg:
            found = self._message(arg)
            reply = found if isinstance(found, str) else f"+OK {found[0]} {field(found[1])}"
            await self.send(reply)
        else:
            rows = [f"{n} {field(m)}" for n, m in self._visible()]
            await self.send(f"+OK {self._drop_summary()}", *rows, ".")

    async def cmd_list(self, arg: str) -> bool:
        await self._scan(arg, lambda m: str(len(m.data)))
        return False

    async def cmd_uidl(self, arg: str) -> bool:
        await self._scan(arg, lambda m: m.uid)
        return False

    async def cmd_retr(self, arg: str) -> bool:
        found = self._message(arg)
        if isinstance(found, str):
            await self.send(found)
        else:
            data = found[1].data
            await self.send(f"+OK {len(data)} octets", body=byte_stuff(data))
        return False

    async def cmd_top(self, arg: str) -> bool:
        number, _, lines = arg.partition(" ")
        found = self._message(number)
        if isinstance(found, str):
            await self.send(found)
        elif not lines.isdigit():
            await self.send("-ERR TOP needs a message number and a line count")
        else:
            await self.send(
                "+OK top of message follows", body=byte_stuff(_top(found[1].data, int(lines)))
            )
        return False

    async def cmd_dele(self, arg: str) -> bool:
        found = self._message(arg)
        if isinstance(found, str):
            await self.send(found)
        else:
            self.deleted.add(found[0])
            await self.send(f"+OK message {found[0]} deleted")
        return False

    async def cmd_noop(self, arg: str) -> bool:
        await self.send("+OK")
        return False

    async def cmd_rset(self, arg: str) -> bool:
        self.deleted.clear()
        await self.send(f"+OK maildrop has {self._drop_summary()}")
        return False


_Handler = Callable[[_Pop3Session, str], Awaitable[bool]]
_ANY_STATE: dict[str, _Handler] = {"CAPA": _Pop3Session.cmd_capa, "QUIT": _Pop3Session.cmd_quit}
_HANDLERS: dict[Pop3State, dict[str, _Handler]] = {
    Pop3State.AUTHORIZATION: {
        **_ANY_STATE,
        "STLS": _Pop3Session.cmd_stls,
        "USER": _Pop3Session.cmd_user,
        "PASS": _Pop3Session.cmd_pass,
        "APOP": _Pop3Session.cmd_apop,
        "AUTH": _Pop3Session.cmd_auth,
    },
    Pop3State.TRANSACTION: {
        **_ANY_STATE,
        "STAT": _Pop3Session.cmd_stat,
        "LIST": _Pop3Session.cmd_list,
        "UIDL": _Pop3Session.cmd_uidl,
        "RETR": _Pop3Session.cmd_retr,
        "TOP": _Pop3Session.cmd_top,
        "DELE": _Pop3Session.cmd_dele,
        "NOOP": _Pop3Session.cmd_noop,
        "RSET": _Pop3Session.cmd_rset,
    },
}
_KNOWN = frozenset(verb for table in _HANDLERS.values() for verb in table)
