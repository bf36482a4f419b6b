"""Per-session bookkeeping on the per-chunk path, and one idle reaper for all sessions.

`Activity` records when data last moved and when the bytes moved since are due to be
published. Both cost one `trio.current_time()` and a float compare per chunk; nothing is
logged or counted per chunk (PERFORMANCE.md §3). Byte counts stay in the relay's locals and
are handed to `publish` every `PUBLISH_INTERVAL_SECONDS` while data flows, and the rest at
close: a 2 GB transfer moves `tlsgate_bytes_total` while it runs, not only when it ends.

Idle timeouts are enforced by one reaper task per trio run, not by a watchdog task per session:
a task spawned, cancelled and reaped per connection cost 5% of the instructions of a relayed
handshake (bench/instructions.py). The reaper sleeps until the earliest deadline any watched
session could have (`last` + its idle timeout), but at least `REAPER_MIN_INTERVAL_SECONDS`; when
it wakes, it starts the `on_idle` of every session past its deadline in that session's nursery
and sleeps until the next one. A session is registered exactly while its nursery is open
(`Activity.watched_nursery`), so the reaper cannot keep a finished session alive; registering
costs a dict insert, and moves the reaper's wake-up only if the new deadline comes before it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from types import TracebackType

import trio

# How often a session that keeps moving data publishes its byte counts (issue 7 §1).
PUBLISH_INTERVAL_SECONDS = 5.0

# The reaper scans no more often than this; an idle session is ended at most this late.
REAPER_MIN_INTERVAL_SECONDS = 0.5

# Receives (bytes client to backend, bytes backend to client) moved since its last call.
Publish = Callable[[int, int], None]
OnIdle = Callable[[trio.Nursery], Awaitable[None]]


def _discard(_c2b: int, _b2c: int) -> None:
    pass


class Activity:
    """When data last moved. `touch()` is on the per-chunk path, so it only stores a float
    and compares one."""

    __slots__ = ("_now", "_publish", "_publish_at", "idle_timeout_seconds", "last")

    def __init__(self, idle_timeout_seconds: float, publish: Publish = _discard) -> None:
        self.idle_timeout_seconds = idle_timeout_seconds
        # The run's clock, asked directly: trio.current_time() reaches it through three calls.
        self._now = trio.lowlevel.current_clock().current_time
        self.last = self._now()
        self._publish = publish
        self._publish_at = self.last + PUBLISH_INTERVAL_SECONDS

    def touch(self) -> bool:
        """Data moved now. Returns whether byte counts are due: then pass the bytes moved
        since the last `publish` to `publish`."""
        now = self.last = self._now()
        return now >= self._publish_at

    def publish(self, bytes_c2b: int, bytes_b2c: int) -> None:
        self._publish_at = self.last + PUBLISH_INTERVAL_SECONDS
        self._publish(bytes_c2b, bytes_b2c)

    def watched_nursery(self, on_idle: OnIdle) -> WatchedNursery:
        """`async with activity.watched_nursery(on_idle) as nursery:` a trio nursery in which
        `on_idle(nursery)` is started (once) when nothing has moved for the idle timeout.

        The reaper lets go of the session when the nursery has closed, however it closes: what
        it holds (`on_idle`, and through it the whole session) must not outlive the session.
        """
        return WatchedNursery(self, on_idle)


class WatchedNursery:
    """`Activity.watched_nursery()`: a nursery, registered with the reaper while it is open."""

    __slots__ = ("_activity", "_manager", "_on_idle")

    def __init__(self, activity: Activity, on_idle: OnIdle) -> None:
        self._activity = activity
        self._on_idle = on_idle
        self._manager = trio.open_nursery()

    async def __aenter__(self) -> trio.Nursery:
        nursery = await self._manager.__aenter__()
        _IdleReaper.of_this_run().watch(self._activity, nursery, self._on_idle)
        return nursery

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._manager.__aexit__(exc_type, exc, traceback)
        finally:
            _IdleReaper.of_this_run().forget(self._activity)


class _IdleReaper:
    """The one task of a trio run that ends idle sessions (see the module docstring)."""

    _current: trio.lowlevel.RunVar[_IdleReaper] = trio.lowlevel.RunVar("tlsgate_idle_reaper")

    def __init__(self) -> None:
        self._watched: dict[Activity, tuple[trio.Nursery, OnIdle]] = {}
        # The reaper sleeps inside this scope; its deadline is the next wake-up.
        self._sleep = trio.CancelScope()

    @classmethod
    def of_this_run(cls) -> _IdleReaper:
        try:
            return cls._current.get()
        except LookupError:
            reaper = cls()
            cls._current.set(reaper)
            # A system task: it must outlive any one session's or server's nursery, and the
            # run cancels it at its end.
            trio.lowlevel.spawn_system_task(reaper._run, name="tlsgate idle reaper")
            return reaper

    def watch(self, activity: Activity, nursery: trio.Nursery, on_idle: OnIdle) -> None:
        self._watched[activity] = (nursery, on_idle)
        deadline = activity.last + activity.idle_timeout_seconds
        if deadline < self._sleep.deadline:
            self._sleep.deadline = deadline

    def forget(self, activity: Activity) -> None:
        self._watched.pop(activity, None)

    async def _run(self) -> None:
        while True:
            with self._sleep:
                await trio.sleep_forever()
            now = trio.current_time()
            # Sessions that opened together go idle together. Woken at each one's own deadline,
            # the reaper scanned all of them once per session: 9,000 sessions opened 1 ms
            # apart cost 2.8 s of CPU to reap. With a floor under the interval, one scan reaps
            # every session due within it, each at most that much late.
            wake_at = max(self._expire(now), now + REAPER_MIN_INTERVAL_SECONDS)
            self._sleep = trio.CancelScope(deadline=wake_at)

    def _expire(self, now: float) -> float:
        """Start `on_idle` for every session past its deadline; return the next deadline."""
        earliest = math.inf
        expired: list[Activity] = []
        for activity in self._watched:
            deadline = activity.last + activity.idle_timeout_seconds
            if deadline <= now:
                expired.append(activity)
            elif deadline < earliest:
                earliest = deadline
        for activity in expired:
            nursery, on_idle = self._watched.pop(activity)
            # A system task must never raise (it would end the whole run); a nursery that is
            # closing but not yet forgotten refuses new tasks, and its session is ending anyway.
            with contextlib.suppress(RuntimeError):
                nursery.start_soon(on_idle, nursery)
        return earliest
