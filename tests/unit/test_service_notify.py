"""sd_notify without libsystemd: real datagrams on a real socket, read back as systemd would."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from tlsgate.service.notify import Notifier, notify_address, watchdog_seconds

Closing = Callable[[Notifier], Notifier]


@pytest.fixture
def closing() -> Iterator[Closing]:
    """Close, after the test, each notifier passed through it: each may hold a socket."""
    made: list[Notifier] = []

    def keep(notifier: Notifier) -> Notifier:
        made.append(notifier)
        return notifier

    yield keep
    for notifier in made:
        notifier.close()


@pytest.fixture
def receiver() -> Iterator[tuple[str, socket.socket]]:
    """A NOTIFY_SOCKET in the abstract namespace: no path length limit, nothing to clean up."""
    name = f"@tlsgate-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        yield name, sock


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting, without blocking."""
    messages: list[str] = []
    while True:
        try:
            messages.append(sock.recv(4096, socket.MSG_DONTWAIT).decode())
        except BlockingIOError:
            return messages


def test_ready_reloading_stopping_and_status_are_the_sd_notify_lines(
    closing: Closing,
    receiver: tuple[str, socket.socket],
) -> None:
    name, sock = receiver
    notifier = closing(Notifier.from_environment({"NOTIFY_SOCKET": name}, pid=os.getpid()))
    notifier.ready("serving 2 listeners")
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.status("line one\nline two")
    notifier.stopping()
    notifier.watchdog()
    messages = received(sock)
    assert messages[0] == "READY=1\nSTATUS=serving 2 listeners"
    reloading, usec = messages[1].split("\n")
    assert reloading == "RELOADING=1"
    assert before <= int(usec.removeprefix("MONOTONIC_USEC=")) <= after
    assert messages[2:] == ["STATUS=line one line two", "STOPPING=1", "WATCHDOG=1"]


def test_a_path_notify_socket_works_too(closing: Closing, tmp_path: Path) -> None:
    path = tmp_path / "n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        closing(Notifier.from_environment({"NOTIFY_SOCKET": str(path)}, pid=1)).ready()
        assert sock.recv(4096) == b"READY=1"


def test_after_stopping_ready_and_reloading_are_not_sent(
    closing: Closing,
    receiver: tuple[str, socket.socket],
) -> None:
    name, sock = receiver
    notifier = closing(Notifier(notify_address(name)))
    notifier.stopping()
    notifier.reloading()
    notifier.ready()
    notifier.watchdog()
    assert received(sock) == ["STOPPING=1", "WATCHDOG=1"]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"}, pid=1)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    with capture_logs() as logs:
        notifier.ready()
        notifier.stopping()
    assert logs == []


def test_a_failing_send_warns_once_and_never_raises(closing: Closing, tmp_path: Path) -> None:
    notifier = closing(Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")}, 1))
    with capture_logs() as logs:
        for _ in range(3):
            notifier.ready()
            notifier.watchdog()
    assert [(log["event"], log["log_level"]) for log in logs] == [("notify_failed", "warning")]
    assert logs[0]["sent"] == "READY=1"


def test_an_unsupported_address_warns_once_and_is_a_no_op() -> None:
    with capture_logs() as logs:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}, pid=1)
        notifier.ready()
    assert not notifier.enabled
    assert [log["event"] for log in logs] == ["notify_failed"]


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", b"/run/systemd/notify"),
        ("@abstract", b"\0abstract"),
        ("@", None),
        ("", None),
        (None, None),
        ("relative/path", None),
        ("vsock:2:1", None),
    ],
)
def test_notify_address(value: str | None, address: bytes | None) -> None:
    assert notify_address(value) == address


@pytest.mark.parametrize(
    ("environ", "seconds"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "1e6"}, None),
        ({"WATCHDOG_USEC": "٣"}, None),  # a digit to str.isdigit(), not to systemd
        ({}, None),
    ],
)
def test_watchdog_seconds(environ: dict[str, str], seconds: float | None) -> None:
    assert watchdog_seconds(environ, pid=42) == seconds


async def test_the_watchdog_task_pings_at_half_the_interval(
    closing: Closing, receiver: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    name, sock = receiver
    environ = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"}
    notifier = closing(Notifier.from_environment(environ, 1))
    assert notifier.watchdog_interval == 4.0
    with trio.move_on_after(9.0):  # pings at 0, 2, 4, 6, 8 seconds
        await notifier.run_watchdog()
    assert received(sock) == ["WATCHDOG=1"] * 5


async def test_the_watchdog_task_returns_at_once_without_an_interval(
    receiver: tuple[str, socket.socket],
) -> None:
    name, sock = receiver
    with trio.fail_after(1):
        await Notifier.from_environment({"NOTIFY_SOCKET": name}, 1).run_watchdog()
    assert received(sock) == []
