"""One reaper ends every idle session at its own deadline, and only idle ones."""

from __future__ import annotations

import trio
import trio.testing

from tlsgate.net.activity import Activity


async def test_each_session_goes_idle_at_its_own_deadline_unless_data_moves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    del autojump_clock  # time jumps whenever every task waits
    went_idle: dict[str, float] = {}
    started = trio.current_time()

    async def session(name: str, idle_timeout: float, touches_at: tuple[float, ...]) -> None:
        activity = Activity(idle_timeout)
        try:
            async with trio.open_nursery() as nursery:

                async def on_idle() -> None:
                    went_idle[name] = trio.current_time() - started
                    nursery.cancel_scope.cancel()

                activity.watch(nursery, on_idle)
                for at in touches_at:
                    await trio.sleep_until(started + at)
                    activity.touch()
                await trio.sleep_forever()
        finally:
            activity.forget()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session, "long", 300.0, ())
        nursery.start_soon(session, "short", 1.0, ())  # registers after a later deadline
        nursery.start_soon(session, "kept busy", 10.0, (4.0, 8.0, 12.0))
        nursery.start_soon(session, "medium", 30.0, ())
    assert went_idle == {"short": 1.0, "kept busy": 22.0, "medium": 30.0, "long": 300.0}


async def test_a_session_that_forgets_is_never_reaped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    del autojump_clock
    reaped: list[str] = []
    activity = Activity(1.0)
    async with trio.open_nursery() as nursery:

        async def on_idle() -> None:
            reaped.append("reaped")

        activity.watch(nursery, on_idle)
        activity.forget()
        await trio.sleep(5.0)
    assert reaped == []
