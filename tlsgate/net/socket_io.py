"""Socket calls on the per-connection paths without trio's layers of Python around them.

`SocketStream.receive_some` goes through an error-translating context manager, the trio
socket's method wrapper and its try-then-wait helper before it reaches `recv`. Measured here,
a send plus a receive costs 21 µs that way against 9.6 µs for the same two syscalls with the
same checkpoints around them; a relayed handshake makes about ten such calls.

`SocketFastPath` does what trio does, in the same order, directly on the stdlib socket: a
cancel point, the syscall, an IO wait only if it would block, and the same translation of
OSError into `ClosedResourceError`/`BrokenResourceError`. Where trio then always yields to the
scheduler, it yields every few calls (`SCHEDULE_CREDIT`). Shutdown and close
still go through the trio socket, which keeps their bookkeeping (`did_shutdown_SHUT_WR`, waking
tasks blocked on a socket being closed).

It skips `SocketStream`'s check that two tasks do not send at once, so only a sole sender may
use it: TlsStream under its send lock, and each direction of the relay.

`ListenerFastPath.accept` and `connect_ip` do the same for the two calls that open a session's
sockets; together with the fast path's `send_eof` they take 3% of the instructions off a
relayed handshake (callgrind, 4.45 M to 4.32 M per handshake).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import trio

Receive = Callable[[int], Awaitable[bytes | bytearray]]
Send = Callable[[bytes | bytearray | memoryview], Awaitable[None]]
SendEof = Callable[[], Awaitable[None]]

# The errnos SocketStream reports as ClosedResourceError (trio/_highlevel_socket.py).
_CLOSED_SOCKET_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno in _CLOSED_SOCKET_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


# A call that did not have to wait is a schedule point only when it has used up the credit
# below (trio makes every such call one; tokio's coop budget yields every 128 polls). Each call
# costs one unit and one more per 32 KiB it moved, so a stream yields at least every 8 small calls
# or 256 KiB: a peer that is always ready cannot starve other sessions, and a relayed handshake
# makes ~14 fewer trips through the scheduler. Cancellation is still checked on every call.
SCHEDULE_CREDIT = 8
# A read below this size (and below what was asked) counts as having emptied the socket.
SMALL_READ_BYTES = 4096
_BYTES_PER_CREDIT_SHIFT = 15


class SocketFastPath:
    """`receive_some` and `send_all` of one `trio.SocketStream`, with its semantics, except
    that a call that need not wait yields to other tasks only every few calls."""

    __slots__ = ("_credit", "_drained", "_sock", "_trio_socket")

    def __init__(self, trio_socket: trio.socket.SocketType, sock: socket.socket) -> None:
        self._trio_socket = trio_socket
        self._sock = sock
        self._credit = SCHEDULE_CREDIT
        # The last read was small and returned less than it asked for: the socket was empty
        # then, and the next read, soon after, would most likely only raise BlockingIOError (an
        # interactive peer, a handshake's next flight). It waits for readiness first. After a
        # large read the caller is busy long enough for more data to arrive: it reads at once.
        self._drained = False

    async def _maybe_yield(self, moved: int) -> None:
        self._credit -= 1 + (moved >> _BYTES_PER_CREDIT_SHIFT)
        if self._credit <= 0:
            self._credit = SCHEDULE_CREDIT
            await trio.lowlevel.cancel_shielded_checkpoint()

    @classmethod
    def of(cls, stream: trio.abc.Stream) -> SocketFastPath | None:
        """The fast path for `stream`, or None if it is not a SocketStream over a stdlib socket."""
        if not isinstance(stream, trio.SocketStream):
            return None
        # trio's socket wrapper has no public accessor for the socket it wraps; if a trio
        # release renames it, callers fall back to the stream's own methods.
        sock = getattr(stream.socket, "_sock", None)
        if not isinstance(sock, socket.socket):
            return None
        return cls(stream.socket, sock)

    async def receive_some(self, max_bytes: int) -> bytes:
        """`SocketStream.receive_some(max_bytes)` (max_bytes >= 1)."""
        sock = self._sock
        if not self._drained:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise _stream_error(exc) from exc
            else:
                self._drained = 0 < len(data) < min(max_bytes, SMALL_READ_BYTES)
                await self._maybe_yield(len(data))
                return data
        self._credit = SCHEDULE_CREDIT
        while True:
            await trio.lowlevel.wait_readable(sock)  # a checkpoint
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            self._drained = 0 < len(data) < min(max_bytes, SMALL_READ_BYTES)
            return data

    async def send_eof(self) -> None:
        """`SocketStream.send_eof()`, but a cancel point only, not a schedule point: a shutdown
        never blocks, and both callers have just passed one (the relay's last receive, the TLS
        stream's flush of its close_notify)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._trio_socket.did_shutdown_SHUT_WR:
            return
        try:
            self._trio_socket.shutdown(socket.SHUT_WR)  # trio's own: it records the shutdown
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """`SocketStream.send_all(data)`."""
        if self._trio_socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        sock = self._sock
        if not data:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("socket was already closed")
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise _stream_error(exc) from exc
        if sent < len(data):
            with memoryview(data) as view:
                while sent < len(view):
                    # Each wait is a checkpoint, as each `send` of SocketStream's loop is.
                    await trio.lowlevel.wait_writable(sock)
                    waited = True
                    try:
                        with view[sent:] as remaining:
                            sent += sock.send(remaining)
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        raise _stream_error(exc) from exc
        if waited:
            self._credit = SCHEDULE_CREDIT
        else:
            await self._maybe_yield(sent)


class StreamIO(NamedTuple):
    """A stream's receive, send and half-close, through the fast path where it applies."""

    receive: Receive
    send: Send
    send_eof: SendEof | None  # None: the stream cannot half-close


def stream_io(stream: trio.abc.Stream) -> StreamIO:
    """For a sole receiver and a sole sender of `stream`."""
    fast = SocketFastPath.of(stream)
    if fast is not None:
        return StreamIO(fast.receive_some, fast.send_all, fast.send_eof)
    if isinstance(stream, trio.abc.HalfCloseableStream):
        return StreamIO(stream.receive_some, stream.send_all, stream.send_eof)
    return StreamIO(stream.receive_some, stream.send_all, None)


async def connect_ip(family: socket.AddressFamily, address: tuple[str, int]) -> trio.SocketStream:
    """Connect a TCP socket to an IP literal (`trio.socket.socket().connect` without the
    address resolution trio runs even for literals)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await trio.lowlevel.checkpoint_if_cancelled()
        error = sock.connect_ex(address)
        if error == errno.EINPROGRESS and _connected(sock):
            error = 0
        if error == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        if error:
            raise OSError(error, os.strerror(error))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def _connected(sock: socket.socket) -> bool:
    """Whether a connect that said EINPROGRESS has already completed. To a backend on the
    same host it always has: the kernel runs the whole TCP handshake inside connect(). Then
    the wait for writability, a trip through the event loop, can be skipped."""
    try:
        sock.getpeername()
    except OSError:  # ENOTCONN: still in progress, or failed (SO_ERROR says which)
        return False
    return True


# accept() errors that concern only the connection being accepted, which is skipped
# (trio/_highlevel_socket.py lists the same, with why).
_IGNORABLE_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)


class ListenerFastPath:
    """`SocketListener.accept()` on the stdlib socket, with its semantics: EMFILE and the
    like reach the caller, errors of one aborted connection are skipped."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def of(cls, listener: trio.SocketListener) -> ListenerFastPath | None:
        """The fast path for `listener`, or None if it does not wrap a stdlib socket."""
        sock = getattr(listener.socket, "_sock", None)
        return cls(sock) if isinstance(sock, socket.socket) else None

    async def accept(self) -> trio.SocketStream:
        """A checkpoint, like every trio accept: a busy listener cannot starve sessions.

        Raises:
            trio.ClosedResourceError: the listening socket was closed (also while waiting).
            OSError: EMFILE, ENFILE, ENOBUFS, ENOMEM and other errors of the listener itself.
        """
        sock = self._sock
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
                continue
            except OSError as exc:
                if exc.errno in _CLOSED_SOCKET_ERRNOS:
                    raise trio.ClosedResourceError from None
                if exc.errno in _IGNORABLE_ACCEPT_ERRNOS:
                    continue
                raise
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return trio.SocketStream(trio.socket.from_stdlib_socket(conn))
