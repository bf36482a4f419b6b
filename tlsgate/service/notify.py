"""sd_notify(3) without libsystemd: datagrams of `KEY=VALUE` lines to `$NOTIFY_SOCKET`.

With `Type=notify` systemd considers tlsgate started when READY=1 arrives (so units ordered
after it see bound ports), shows RELOADING=1 ... READY=1 as the `reloading` state, STOPPING=1 as
`deactivating`, and restarts it when WATCHDOG=1 pings stop coming for `WatchdogSec`.

Telling systemd is never worth failing over: without `$NOTIFY_SOCKET` (not started by systemd)
every call does nothing, and a send that fails is logged once and otherwise ignored. A service
whose READY=1 is lost is killed by systemd after `TimeoutStartSec`, which says more than any
exception could.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import trio

from tlsgate.observe.events import NoticeKind
from tlsgate.observe.logs import get_logger

# systemd reads its notify socket at once; the bound exists for a stuck manager (or a test
# receiver that stopped reading), so the event loop stalls at most this long per message.
NOTIFY_SEND_TIMEOUT_SECONDS = 1.0
# sd_watchdog_enabled(3): "send keep-alive notifications at half the interval", leaving room
# for a late wake-up without a missed deadline.
WATCHDOG_PING_FRACTION = 0.5


def notify_address(value: str | None) -> bytes | None:
    """The AF_UNIX address `$NOTIFY_SOCKET` names: a path, or `@name` in the abstract namespace.

    Returns:
        The address for `sendto`, or None when `value` is unset, empty or of a kind not
        supported here (systemd 254's `vsock:`; tlsgate does not run inside VMs that way).
    """
    if not value:
        return None
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    return None


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog interval systemd expects pings within, as sd_watchdog_enabled(3) reads it.

    None when `WATCHDOG_USEC` is unset or not a positive integer, or when `WATCHDOG_PID` names
    another process (the variables were inherited by a child that is not the service).
    """
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner != str(pid):
        return None
    raw = environ.get("WATCHDOG_USEC", "")
    if not raw.isascii() or not raw.isdigit() or int(raw) == 0:
        return None
    return int(raw) / 1_000_000


def _monotonic_usec() -> int:
    # systemd compares it with its own CLOCK_MONOTONIC reading, so exactly that clock.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Tells the service manager about start-up, reloads, shutdown and liveness.

    Once STOPPING=1 has been sent, READY=1 and RELOADING=1 are dropped: a reload that was
    already queued when the drain began must not make a stopping service look started again.
    """

    def __init__(self, address: bytes | None, *, watchdog: float | None = None) -> None:
        self._address = address
        self._watchdog = watchdog if address is not None else None
        self._socket: socket.socket | None = None
        self._stopping = False
        self._warned = False

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        """A notifier for the service manager that started this process, if any."""
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        raw = environ.get("NOTIFY_SOCKET")
        notifier = cls(notify_address(raw), watchdog=watchdog_seconds(environ, pid))
        if raw and notifier._address is None:
            notifier._warn(f"unsupported NOTIFY_SOCKET address {raw!r}")
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd expects a WATCHDOG=1, or None when it expects none."""
        return self._watchdog

    def ready(self, status: str | None = None) -> None:
        """READY=1: every listener is bound (at start), or a reload has finished."""
        if not self._stopping:
            self._send("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> None:
        """RELOADING=1 with the MONOTONIC_USEC= that systemd's `notify-reload` type requires."""
        if not self._stopping:
            self._send("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", *_status(status))

    def stopping(self, status: str | None = None) -> None:
        """STOPPING=1: the drain has begun."""
        self._stopping = True
        self._send("STOPPING=1", *_status(status))

    def status(self, text: str) -> None:
        """STATUS=: the one line `systemctl status` shows."""
        self._send(*_status(text))

    def watchdog(self) -> None:
        """WATCHDOG=1: the event loop is alive."""
        self._send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping at half the watchdog interval until cancelled; returns at once without one.

        The pings come from a trio task on purpose: an event loop that is blocked stops them,
        and that is exactly the hang systemd should restart tlsgate for.
        """
        if self._watchdog is None:
            return
        while True:
            self.watchdog()
            await trio.sleep(self._watchdog * WATCHDOG_PING_FRACTION)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, *fields: str) -> None:
        if self._address is None:
            return
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.settimeout(NOTIFY_SEND_TIMEOUT_SECONDS)
            self._socket.sendto(message, self._address)
        except OSError as exc:
            self._warn(f"{exc.strerror or exc}", sent=fields[0])

    def _warn(self, error: str, **context: str) -> None:
        # Once: a manager that is gone stays gone, and a warning per watchdog ping would bury
        # the log.
        if not self._warned:
            self._warned = True
            get_logger().warning(NoticeKind.NOTIFY_FAILED.value, error=error, **context)


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # One datagram field is one line: a newline would start a bogus field.
    return ("STATUS=" + " ".join(text.splitlines()),)
