"""One reaper ends every idle session at its own deadline, and only idle ones."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio
import trio.testing

from tlsgate.net.activity import REAPER_MIN_INTERVAL_SECONDS, Activity, OnIdle, _IdleReaper


async def test_each_session_goes_idle_at_its_own_deadline_unless_data_moves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    del autojump_clock  # time jumps whenever every task waits
    went_idle: dict[str, float] = {}
    started = trio.current_time()

    async def session(name: str, idle_timeout: float, touches_at: tuple[float, ...]) -> None:
        activity = Activity(idle_timeout)

        async def on_idle(nursery: trio.Nursery) -> None:
            went_idle[name] = trio.current_time() - started
            nursery.cancel_scope.cancel()

        async with activity.watched_nursery(on_idle):
            for at in touches_at:
                await trio.sleep_until(started + at)
                activity.touch()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session, "long", 300.0, ())
        nursery.start_soon(session, "short", 1.0, ())  # registers after a later deadline
        nursery.start_soon(session, "kept busy", 10.0, (4.0, 8.0, 12.0))
        nursery.start_soon(session, "medium", 30.0, ())
    assert went_idle == {"short": 1.0, "kept busy": 22.0, "medium": 30.0, "long": 300.0}


async def test_sessions_that_go_idle_together_are_reaped_in_a_few_scans(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst of 1,000 sessions opened 1 ms apart: woken at each one's deadline, the reaper
    # would scan all of them 1,000 times (quadratic). Each may be ended at most the reaper's
    # interval late, and no earlier than its deadline.
    del autojump_clock
    scans = 0
    expire = _IdleReaper._expire

    def counted_expire(reaper: _IdleReaper, now: float) -> float:
        nonlocal scans
        scans += 1
        return expire(reaper, now)

    monkeypatch.setattr(_IdleReaper, "_expire", counted_expire)
    late: list[float] = []

    async def session(opens_after: float) -> None:
        await trio.sleep(opens_after)
        activity = Activity(10.0)
        deadline = trio.current_time() + 10.0

        async def on_idle(nursery: trio.Nursery) -> None:
            late.append(trio.current_time() - deadline)
            nursery.cancel_scope.cancel()

        async with activity.watched_nursery(on_idle):
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for i in range(1000):
            nursery.start_soon(session, i * 0.001)
    assert len(late) == 1000
    assert min(late) >= 0
    assert max(late) <= REAPER_MIN_INTERVAL_SECONDS
    assert scans <= 5  # 1 s of deadlines: a scan per half second, and the first


class Session:
    """What a session's `on_idle` drags along: the reaper must not keep it alive."""

    async def on_idle(self, _nursery: trio.Nursery) -> None:
        raise AssertionError("reaped after its nursery closed")


async def test_a_closed_nursery_lets_go_of_its_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    del autojump_clock
    activity, session = Activity(1.0), Session()
    async with activity.watched_nursery(session.on_idle):
        pass
    still_held = weakref.ref(session)
    del session
    gc.collect()
    assert still_held() is None
    await trio.sleep(5.0)  # past the deadline: nothing is started


async def test_a_nursery_that_ends_with_an_error_lets_go_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    del autojump_clock
    activity, session = Activity(1.0), Session()
    with pytest.raises(ExceptionGroup) as raised:
        await _run_with_a_broken_pump(activity, session.on_idle)
    assert raised.group_contains(ValueError)
    still_held = weakref.ref(session)
    del session, raised
    gc.collect()
    assert still_held() is None


async def _run_with_a_broken_pump(activity: Activity, on_idle: OnIdle) -> None:
    async with activity.watched_nursery(on_idle) as nursery:
        nursery.start_soon(_fail)
        await trio.sleep_forever()


async def _fail() -> None:
    raise ValueError("a pump broke")
