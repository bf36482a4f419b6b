"""Which listening sockets a reload keeps, opens and closes. PURE: no I/O, no trio.

Listeners are frozen, hashable `ListenerConfig` values keyed by name (mitmproxy's
`Servers.update` does the same with its mode specs), so a reload is a diff:

- same name, equal value: kept, nothing happens;
- same name, same `listen`, other settings changed: the socket is kept and new sessions get the
  new settings (no rebind, so no moment when the port refuses connections);
- a name only in the old config: its socket closes (its sessions drain normally);
- a name only in the new config, or a listener whose `listen` changed: a socket is bound, and
  the server binds every new socket before it closes any old one.

Binding first would fail when a new socket wants an address an old one still holds: a listener
renamed in place, or two listeners swapping addresses. So an address that an old listener is
leaving and a new one is arriving at keeps its socket too, and the socket changes hands.
Port 0 asks the kernel for a fresh port, so it never matches an address.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tlsgate.config.model import ListenerConfig


@dataclass(frozen=True, slots=True)
class ListenerDiff:
    """What a reload does to the listening sockets.

    Every old listener is in exactly one of `to_stop`, `kept` or the first place of a
    `to_update` pair; every new listener is in exactly one of `to_start`, `kept` or the second
    place of a pair.
    """

    to_stop: tuple[ListenerConfig, ...] = ()  # close the socket
    to_start: tuple[ListenerConfig, ...] = ()  # bind a socket
    to_update: tuple[tuple[ListenerConfig, ListenerConfig], ...] = ()  # (old, new): one socket
    kept: tuple[ListenerConfig, ...] = ()

    def counts(self) -> dict[str, int]:
        """Listeners added, removed, changed and kept, by name, as an operator counts them.

        A listener that moved to another address is one change, though its socket is replaced.
        """
        old = {listener.name for listener in self.to_stop}
        old.update(before.name for before, _ in self.to_update)
        new = {listener.name for listener in self.to_start}
        new.update(after.name for _, after in self.to_update)
        kept = {listener.name for listener in self.kept}
        return {
            "added": len(new - old),
            "removed": len(old - new),
            "changed": len(old & new),
            "kept": len(kept),
        }


def diff_listeners(old: Sequence[ListenerConfig], new: Sequence[ListenerConfig]) -> ListenerDiff:
    """Compare the running listeners with a new config's (names are unique in each).

    Returns:
        The diff; `to_start` follows the new config's order, `to_stop` the old one's.
    """
    old_by_name = {listener.name: listener for listener in old}
    kept: list[ListenerConfig] = []
    to_update: list[tuple[ListenerConfig, ListenerConfig]] = []
    arriving: list[ListenerConfig] = []
    for listener in new:
        before = old_by_name.get(listener.name)
        if before == listener:
            kept.append(listener)
        elif before is not None and before.listen == listener.listen:
            to_update.append((before, listener))
        else:
            arriving.append(listener)
    matched = {listener.name for listener in kept} | {before.name for before, _ in to_update}
    leaving = [listener for listener in old if listener.name not in matched]
    # The socket of an address being left goes to the listener arriving at it (see above).
    left_addresses = {
        listener.listen: listener for listener in leaving if listener.listen.port != 0
    }
    to_start: list[ListenerConfig] = []
    for listener in arriving:
        before = left_addresses.pop(listener.listen, None)
        if before is None:
            to_start.append(listener)
        else:
            to_update.append((before, listener))
    handed_over = {before.name for before, _ in to_update}
    return ListenerDiff(
        to_stop=tuple(listener for listener in leaving if listener.name not in handed_over),
        to_start=tuple(to_start),
        to_update=tuple(to_update),
        kept=tuple(kept),
    )
