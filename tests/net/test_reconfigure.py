"""`Server.reconfigure` in-process: sockets change hands, a bind failure changes nothing.

Listeners here use `tls = "none"` in front of a port nothing listens on: each session logs
`accepted` with the listener it was given, answers 421 and closes, which is all these tests
need to see which listener served a socket.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from tlsgate.config import Config, parse_config
from tlsgate.net.server import ListenerBindError, Server, build_tls

TIMEOUT_SECONDS = 10  # generous: these machines are small and shared (CONTRACT.md)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


DEAD_BACKEND = f"127.0.0.1:{free_port()}"


def config(tmp_path: Path, *listeners: tuple[str, int]) -> Config:
    return parse_config(
        {
            "listener": [
                {
                    "name": name,
                    "listen": f"127.0.0.1:{port}",
                    "protocol": "smtp",
                    "tls": "none",
                    "backend": DEAD_BACKEND,
                }
                for name, port in listeners
            ]
        },
        tmp_path / "tlsgate.toml",
    )


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as entries:
        yield entries


async def served_by(port: int, logs: Sequence[MutableMapping[str, Any]]) -> str:
    """Connect, read the tempfail reply, and return the listener the session was given."""
    accepted = len([entry for entry in logs if entry["event"] == "accepted"])
    with trio.fail_after(TIMEOUT_SECONDS):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            assert (await stream.receive_some()).startswith(b"421 ")
    return str([entry for entry in logs if entry["event"] == "accepted"][accepted]["listener"])


async def test_listeners_swapping_addresses_keep_their_sockets(
    tmp_path: Path, nursery: trio.Nursery, logs: list[MutableMapping[str, Any]]
) -> None:
    first, second = free_port(), free_port()
    server = Server(config(tmp_path, ("a", first), ("b", second)))
    await nursery.start(server.run)
    assert await served_by(first, logs) == "a"
    swapped = config(tmp_path, ("a", second), ("b", first))
    diff = await server.reconfigure(swapped, build_tls(swapped))
    assert diff is not None
    assert len(diff.to_update) == 2
    assert await served_by(first, logs) == "b"
    assert await served_by(second, logs) == "a"
    assert [entry["event"] for entry in logs].count("listener_stopped") == 0


async def test_a_port_in_use_refuses_the_reload_and_changes_nothing(
    tmp_path: Path, nursery: trio.Nursery, logs: list[MutableMapping[str, Any]]
) -> None:
    kept, added = free_port(), free_port()
    old = config(tmp_path, ("kept", kept))
    server = Server(old)
    await nursery.start(server.run)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        new = config(tmp_path, ("renamed", kept), ("added", added), ("blocked", taken))
        with pytest.raises(ListenerBindError, match="'blocked'"):
            await server.reconfigure(new, build_tls(new))
    assert server.config is old
    assert await served_by(kept, logs) == "kept"
    # What was bound before the failure was closed again.
    with pytest.raises(OSError, match="all attempts to connect"):
        await trio.open_tcp_stream("127.0.0.1", added)


async def test_a_reload_racing_a_drain_changes_nothing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    old = config(tmp_path, ("kept", 0))
    server = Server(old)
    await nursery.start(server.run)
    server.shutdown()
    new = config(tmp_path, ("kept", 0), ("added", 0))
    assert await server.reconfigure(new, build_tls(new)) is None
    assert server.config is old
