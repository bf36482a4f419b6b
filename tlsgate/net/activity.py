"""Idle detection for a session: a timestamp touched per chunk and one watchdog task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


class Activity:
    """When data last moved. `touch()` is on the per-chunk path, so it only stores a float."""

    __slots__ = ("idle_timeout_seconds", "last")

    def __init__(self, idle_timeout_seconds: float) -> None:
        self.idle_timeout_seconds = idle_timeout_seconds
        self.last = trio.current_time()

    def touch(self) -> None:
        self.last = trio.current_time()

    async def watch(self, on_idle: Callable[[], Awaitable[None]]) -> None:
        """Call `on_idle` once nothing has moved for the idle timeout, then return."""
        while True:
            deadline = self.last + self.idle_timeout_seconds
            if trio.current_time() >= deadline:
                await on_idle()
                return
            await trio.sleep_until(deadline)
