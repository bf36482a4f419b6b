"""Socket activation, sd_listen_fds(3) without libsystemd: take the sockets systemd bound.

systemd passes them as fds 3, 4, ... with `LISTEN_FDS` (how many), `LISTEN_FDNAMES` (their
`FileDescriptorName=`s, colon-separated) and `LISTEN_PID` (which process they are for: the
variables survive `exec` into children that must not take them). The variables are removed once
read, as `sd_listen_fds(1)` does. `socket_match` decides which listener each socket serves.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping, Sequence

import trio

from tlsgate.config.model import ListenerConfig
from tlsgate.service.socket_match import ActivationError, InheritedSocket, match_sockets

__all__ = ["ActivationError", "inherited_sockets", "listen_fds", "trio_listeners"]

SD_LISTEN_FDS_START = 3  # sd-daemon.h: the first passed fd
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds(environ: Mapping[str, str], pid: int) -> list[tuple[int, str | None]]:
    """The (fd, name) pairs passed to process `pid`, read from `environ` as sd_listen_fds does.

    Raises:
        ActivationError: the variables are for this process but malformed.
    """
    if environ.get("LISTEN_PID") != str(pid):
        return []
    raw_count = environ.get("LISTEN_FDS", "")
    if not (raw_count.isascii() and raw_count.isdigit()):
        raise ActivationError([f"LISTEN_FDS: expected a number of sockets, got {raw_count!r}"])
    count = int(raw_count)
    raw_names = environ.get("LISTEN_FDNAMES")
    names: list[str | None] = [None] * count
    if raw_names is not None and count:
        names = list(raw_names.split(":"))
        if len(names) != count:
            raise ActivationError(
                [f"LISTEN_FDNAMES: expected {count} names, got {len(names)}: {raw_names!r}"]
            )
    return [(SD_LISTEN_FDS_START + index, name) for index, name in enumerate(names)]


def inherited_sockets(
    listeners: Sequence[ListenerConfig], environ: MutableMapping[str, str] | None = None
) -> dict[str, list[socket.socket]]:
    """Take the sockets systemd passed and match them to `listeners`.

    Returns:
        Listener name -> its inherited sockets; empty when not socket-activated.

    Raises:
        ActivationError: a passed fd is not open, is not a listening TCP socket, or serves no
            listener. The sockets are closed then.
    """
    environ = os.environ if environ is None else environ
    try:
        passed = listen_fds(environ, os.getpid())
    finally:
        for variable in _VARIABLES:  # whatever they held, no child may take them
            environ.pop(variable, None)
    sockets: dict[int, socket.socket] = {}
    described: list[InheritedSocket] = []
    try:
        for fd, name in passed:
            sockets[fd] = _adopt(fd, name)
            described.append(InheritedSocket(fd, name, _listening_address(sockets[fd])))
        matched = match_sockets(described, listeners)
    except ActivationError:
        for sock in sockets.values():
            sock.close()
        raise
    return {name: [sockets[fd] for fd in fds] for name, fds in matched.items()}


def trio_listeners(
    sockets: Mapping[str, Sequence[socket.socket]],
) -> dict[str, list[trio.SocketListener]]:
    """Wrap inherited sockets for the server's accept loops (inside `trio.run`)."""
    return {
        name: [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in group]
        for name, group in sockets.items()
    }


def _adopt(fd: int, name: str | None) -> socket.socket:
    try:
        # The kernel reports family and type; systemd passes the fds without close-on-exec.
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        shown = "" if name is None else f" (FileDescriptorName={name})"
        raise ActivationError([f"inherited fd {fd}{shown}: {exc.strerror or exc}"]) from exc
    sock.set_inheritable(False)
    return sock


def _listening_address(sock: socket.socket) -> tuple[str, int] | None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return None
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return None
    host, port = sock.getsockname()[:2]
    return str(host), int(port)
