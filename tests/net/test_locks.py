"""TaskLock: mutual exclusion, FIFO hand-over, and a waiter cancelled in line."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tlsgate.net.locks import TaskLock


async def test_waiters_get_the_lock_in_the_order_they_asked() -> None:
    lock = TaskLock()
    order: list[int] = []

    async def holder(number: int) -> None:
        async with lock:
            order.append(number)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for number in range(5):
            nursery.start_soon(holder, number)
            await trio.testing.wait_all_tasks_blocked()
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked()


async def test_release_hands_over_so_the_releaser_queues_behind_a_waiter() -> None:
    lock = TaskLock()
    order: list[str] = []
    lock.acquire_nowait()

    async def waiter() -> None:
        async with lock:
            order.append("waiter")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        lock.release()
        assert lock.locked()  # already the waiter's
        with pytest.raises(trio.WouldBlock):
            lock.acquire_nowait()
        async with lock:
            order.append("releaser")
    assert order == ["waiter", "releaser"]


async def test_a_waiter_cancelled_in_line_does_not_take_the_lock() -> None:
    lock = TaskLock()
    lock.acquire_nowait()
    with trio.move_on_after(0.01):
        await lock.acquire()
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


async def test_take_is_immediate_when_free_and_waits_in_line_when_held() -> None:
    lock = TaskLock()
    await lock.take()  # free: taken at once
    assert lock.locked()
    order: list[str] = []

    async def taker() -> None:
        await lock.take()
        order.append("taker")
        lock.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(taker)
        await trio.testing.wait_all_tasks_blocked()
        assert order == []  # waiting for the holder
        lock.release()
    assert order == ["taker"]
    assert not lock.locked()
