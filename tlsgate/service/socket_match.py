"""Which listener each socket inherited from systemd serves. PURE: no I/O.

CONTRACT.md: by `LISTEN_FDNAMES` when the names are distinct, otherwise by bound address. The
rule is applied per socket, so one service can inherit from both kinds of unit at once:

- A socket whose `FileDescriptorName=` no other inherited socket carries, and which is the
  name of a configured listener, serves that listener (a per-listener unit such as
  `tlsgate-submission.socket`). Its bound address may differ from the listener's `listen`:
  the unit decides where to listen, as it does for any socket-activated service.
- Every other socket serves the listener whose `listen` is its bound address. A `.socket`
  unit gives all its sockets one name (the unit's own by default), so a shared name says
  nothing and the address is what tells them apart (`tlsgate.socket`).

An inherited socket that serves no listener is an error naming it: systemd would keep the port
open and accept into a queue nobody reads, and the admin would never learn why mail stalls.
A listener that no socket serves binds its own, as without systemd.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tlsgate.config.model import Endpoint, ListenerConfig


@dataclass(frozen=True, slots=True)
class InheritedSocket:
    """What matching needs to know about one inherited file descriptor."""

    fd: int
    name: str | None  # its LISTEN_FDNAMES entry; None when systemd passed no names
    # The bound (host, port) of a listening TCP socket; None for anything else (a UNIX or
    # datagram socket, a socket that does not listen, not a socket at all).
    address: tuple[str, int] | None

    def __str__(self) -> str:
        named = "" if self.name is None else f", FileDescriptorName={self.name}"
        where = "not a listening TCP socket" if self.address is None else _show(*self.address)
        return f"inherited socket fd {self.fd} ({where}{named})"


class ActivationError(Exception):
    """The inherited sockets do not fit the config; `problems` has one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def match_sockets(
    sockets: Sequence[InheritedSocket], listeners: Sequence[ListenerConfig]
) -> dict[str, tuple[int, ...]]:
    """Map listener names to the fds of the inherited sockets each one serves.

    Listeners without an inherited socket are absent from the result.

    Raises:
        ActivationError: a socket is not a listening TCP socket, or serves no listener.
    """
    by_name = {listener.name: listener for listener in listeners}
    by_address = {
        key: listener for listener in listeners if (key := _endpoint_key(listener.listen))
    }
    names = Counter(inherited.name for inherited in sockets)
    matched: dict[str, list[int]] = {}
    problems: list[str] = []
    for inherited in sockets:
        if inherited.address is None:
            problems.append(f"{inherited}: tlsgate serves TCP listeners only")
            continue
        listener = None
        if inherited.name is not None and names[inherited.name] == 1:
            listener = by_name.get(inherited.name)
        if listener is None:
            listener = by_address.get(_address_key(*inherited.address))
        if listener is None:
            problems.append(
                f"{inherited}: no listener has that name or that address; give its unit "
                "FileDescriptorName=LISTENER, or make its ListenStream= a listener's `listen`"
            )
            continue
        matched.setdefault(listener.name, []).append(inherited.fd)
    if problems:
        raise ActivationError(problems)
    return {name: tuple(fds) for name, fds in matched.items()}


def _endpoint_key(endpoint: Endpoint) -> tuple[str, int] | None:
    """The address key of a configured `listen`; None for a host name or port 0, which name
    no one address a socket could be bound to."""
    if endpoint.port == 0:
        return None
    try:
        return _address_key(endpoint.host, endpoint.port)
    except ValueError:
        return None


def _address_key(host: str, port: int) -> tuple[str, int]:
    # One spelling per address: "::1" and "0:0::1" are one socket address.
    return ipaddress.ip_address(host).compressed, port


def _show(host: str, port: int) -> str:
    return str(Endpoint(host, port))
