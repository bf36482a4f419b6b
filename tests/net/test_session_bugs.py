"""A bug in one session's bookkeeping is logged; the server and its other sessions carry on."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from tests.net.test_reconfigure import config, free_port, served_by
from tlsgate.net.server import Server
from tlsgate.observe.events import CloseReason
from tlsgate.observe.observer import SessionObserver


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as entries:
        yield entries


async def test_a_session_whose_close_raises_does_not_stop_the_server(
    tmp_path: Path,
    nursery: trio.Nursery,
    logs: list[MutableMapping[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = SessionObserver.closed
    calls = 0

    def closed_with_a_bug(
        self: SessionObserver, reason: CloseReason, c2b: int, b2c: int, seconds: float
    ) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug in the first session's bookkeeping")
        closed(self, reason, c2b, b2c, seconds)

    monkeypatch.setattr(SessionObserver, "closed", closed_with_a_bug)
    port = free_port()
    await nursery.start(Server(config(tmp_path, ("smtp", port))).run)
    assert await served_by(port, logs) == "smtp"
    assert await served_by(port, logs) == "smtp"  # the server is still serving
    errors = [entry for entry in logs if entry["event"] == "internal_error"]
    assert [entry["listener"] for entry in errors] == ["smtp"]
