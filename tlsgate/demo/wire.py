"""Byte plumbing shared by the legacy demo servers: a bounded line reader and a TCP serve loop.

The legacy servers are test fixtures as much as a demo, so their reader is deliberately lenient
where old daemons were (a bare LF ends a line, as sendmail and qpopper accept) and strict where a
test needs a bound (a line longer than `MAX_LINE_BYTES` is an error, never an unbounded buffer).
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import trio

# RFC 5321 §4.5.3.1.4-6 set 512 octets for a command line and 1000 for a text line, and SASL
# responses (RFC 4954) may be longer; 64 KiB is far above every legitimate line and still bounds
# the per-connection buffer.
MAX_LINE_BYTES = 64 * 1024

# One receive call at most; matches the relay chunk size tlsgate itself uses.
RECEIVE_CHUNK_BYTES = 64 * 1024

# sendmail's `Timeout.command` default is one hour and qpopper's is 10 minutes; 5 minutes is
# RFC 5321 §4.5.3.2.7's minimum for the server and keeps abandoned demo sessions from piling up.
IDLE_TIMEOUT_SECONDS = 300.0


# After a fatal error reply, how long to keep reading (and discarding) what the client still
# sends. Closing a socket with unread input makes the kernel send RST, and an RST can destroy
# the error reply before the client reads it (RFC 1122 §4.2.2.13); a short linger avoids that.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1024 * 1024


class LineTooLongError(Exception):
    """A line exceeded `MAX_LINE_BYTES` without a line feed."""


class PeerClosedError(Exception):
    """The peer closed its side before the line or block was complete."""


class LineReader:
    """Reads LF-terminated lines and exact byte counts from a trio stream, with bounds.

    The buffer is consumed by offset and compacted only when more data is needed, so reading a
    large DATA body line by line costs O(n), not O(n^2).

    Args:
        stream: where bytes come from.
        max_line_bytes: the longest accepted line, terminator included.
        idle_timeout: seconds a single receive may wait; exceeding it raises `trio.TooSlowError`.
    """

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
    ) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._pos = 0
        self._max_line_bytes = max_line_bytes
        self._idle_timeout = idle_timeout

    async def _fill(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        with trio.fail_after(self._idle_timeout):
            data = await self._stream.receive_some(RECEIVE_CHUNK_BYTES)
        if not data:
            raise PeerClosedError
        self._buf += data

    async def readline(self) -> bytes:
        """Return the next line including its terminator (CRLF or a bare LF).

        Raises:
            LineTooLongError: no LF within `max_line_bytes`.
            PeerClosedError: EOF before a complete line.
            trio.TooSlowError: nothing arrived within the idle timeout.
        """
        search_from = self._pos
        while True:
            end = self._buf.find(b"\n", search_from)
            if end >= 0:
                if end + 1 - self._pos > self._max_line_bytes:
                    raise LineTooLongError
                line = bytes(self._buf[self._pos : end + 1])
                self._pos = end + 1
                return line
            if len(self._buf) - self._pos >= self._max_line_bytes:
                raise LineTooLongError
            # Bytes already searched need no second look: remember the offset (h11's trick).
            searched = len(self._buf) - self._pos
            await self._fill()
            search_from = self._pos + searched

    async def read_exact(self, count: int, *, keep: bool = True) -> bytes:
        """Return exactly `count` bytes (or b"" and discard them when `keep` is false).

        Discarding lets a server consume a BDAT chunk it refuses without buffering it.

        Raises:
            PeerClosedError: EOF before `count` bytes.
            trio.TooSlowError: nothing arrived within the idle timeout.
        """
        parts: list[bytes] = []
        remaining = count
        while remaining:
            if self._pos >= len(self._buf):
                await self._fill()
            take = min(remaining, len(self._buf) - self._pos)
            if keep:
                parts.append(bytes(self._buf[self._pos : self._pos + take]))
            self._pos += take
            remaining -= take
        return b"".join(parts)


async def linger_close(stream: trio.abc.Stream) -> None:
    """Half-close our side, then discard the peer's remaining input for a bounded time.

    Call after a fatal error reply so the reply survives the close (see `LINGER_SECONDS`).
    """
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    discarded = 0
    with trio.move_on_after(LINGER_SECONDS):
        while discarded < LINGER_MAX_BYTES:
            data = await stream.receive_some(RECEIVE_CHUNK_BYTES)
            if not data:
                break
            discarded += len(data)


class StreamHandler(Protocol):
    """Anything that can serve one accepted connection (the legacy servers are)."""

    async def handle(self, stream: trio.abc.Stream) -> None: ...


async def serve_tcp_handler(
    server: StreamHandler,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int],
) -> None:
    """Bind `host:port`, report the bound port through `task_status`, serve until cancelled."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port: int = listeners[0].socket.getsockname()[1]

    async def handle_and_close(stream: trio.SocketStream) -> None:
        async with stream:
            # A client that resets or vanishes mid-reply is an ordinary end for a mail session.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await server.handle(stream)

    task_status.started(bound_port)
    await trio.serve_listeners(handle_and_close, listeners)
