"""Overload: connection limits and the bound on TLS handshakes in progress.

`max_connections` (top level and per listener) is checked at accept: a client beyond it gets
its protocol's "try again later" written straight into the new socket, which is then closed.
No task, no backend connection and no handshake is spent on it, so a flood of refused clients
costs an accept and a write each, and sessions already established are not affected.

`max_handshakes_in_progress` bounds the TLS handshakes running at once in this process, so a
flood of slow or bogus handshakes cannot take the CPU from established sessions. An implicit-TLS
accept loop takes a slot before it hands the connection on; while none is free it accepts
nothing, and new clients wait in the kernel's accept backlog (CONTRACT.md: not closed). A
STARTTLS handshake waits for a slot within its own handshake deadline.
"""

from __future__ import annotations

import contextlib
import os

import trio


class HandshakeSlots:
    """A counted permission to run a TLS handshake; the owner is the session."""

    def __init__(self, limit: int) -> None:
        self._limiter = trio.CapacityLimiter(limit)

    async def take(self, owner: object) -> None:
        """Take a slot for `owner`, waiting (a checkpoint only when one must wait)."""
        try:
            self._limiter.acquire_on_behalf_of_nowait(owner)
        except trio.WouldBlock:
            await self._limiter.acquire_on_behalf_of(owner)

    def give_back(self, owner: object) -> None:
        self._limiter.release_on_behalf_of(owner)

    @property
    def in_use(self) -> int:
        return int(self._limiter.borrowed_tokens)


def refuse(stream: trio.SocketStream, reply: bytes) -> None:
    """Answer a client beyond `max_connections` with `reply` (may be empty) and close it.

    The reply is a few dozen bytes into a brand-new socket's empty send buffer, so a plain
    non-blocking write cannot block; if it fails, the client just sees the close.
    """
    sock = stream.socket
    if reply:
        with contextlib.suppress(OSError):
            os.write(sock.fileno(), reply)
    sock.close()
