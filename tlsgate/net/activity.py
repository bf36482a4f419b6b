"""Per-session bookkeeping on the per-chunk path: when data last moved, and when the bytes
moved since are due to be published.

Both cost one `trio.current_time()` and a float compare per chunk; nothing is logged or
counted per chunk (PERFORMANCE.md §3). Byte counts stay in the relay's locals and are handed
to `publish` every `PUBLISH_INTERVAL_SECONDS` while data flows, and the rest at close: a
2 GB transfer moves `tlsgate_bytes_total` while it runs, not only when it ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

# How often a session that keeps moving data publishes its byte counts (issue 7 §1).
PUBLISH_INTERVAL_SECONDS = 5.0

# Receives (bytes client to backend, bytes backend to client) moved since its last call.
Publish = Callable[[int, int], None]


def _discard(_c2b: int, _b2c: int) -> None:
    pass


class Activity:
    """When data last moved. `touch()` is on the per-chunk path, so it only stores a float
    and compares one."""

    __slots__ = ("_publish", "_publish_at", "idle_timeout_seconds", "last")

    def __init__(self, idle_timeout_seconds: float, publish: Publish = _discard) -> None:
        self.idle_timeout_seconds = idle_timeout_seconds
        self.last = trio.current_time()
        self._publish = publish
        self._publish_at = self.last + PUBLISH_INTERVAL_SECONDS

    def touch(self) -> bool:
        """Data moved now. Returns whether byte counts are due: then pass the bytes moved
        since the last `publish` to `publish`."""
        now = self.last = trio.current_time()
        return now >= self._publish_at

    def publish(self, bytes_c2b: int, bytes_b2c: int) -> None:
        self._publish_at = self.last + PUBLISH_INTERVAL_SECONDS
        self._publish(bytes_c2b, bytes_b2c)

    async def watch(self, on_idle: Callable[[], Awaitable[None]]) -> None:
        """Call `on_idle` once nothing has moved for the idle timeout, then return."""
        while True:
            deadline = self.last + self.idle_timeout_seconds
            if trio.current_time() >= deadline:
                await on_idle()
                return
            await trio.sleep_until(deadline)
