"""`TaskLock`: a FIFO mutex for the per-chunk paths, without `trio.Lock`'s bookkeeping.

`trio.Lock` records its owner task, registers a parking-lot breaker on every acquire (so that a
task dying with the lock held breaks it) and runs each call under KeyboardInterrupt
protection. On a relayed TLS handshake, which takes the TLS stream's send lock four times, that
was about 2% of the proxy's CPU. tlsgate's locks are always taken and released in the same
`try`/`finally`, so none of that bookkeeping can ever fire; what remains is the mutex itself.

Same behaviour otherwise: `acquire()` is a checkpoint, waiters are served in FIFO order, and
`release()` hands the lock straight to the first waiter, so a releasing task that tries again
at once queues behind it.
"""

from __future__ import annotations

from types import TracebackType

import trio


class TaskLock:
    __slots__ = ("_held", "_waiters", "_waiting")

    def __init__(self) -> None:
        self._held = False
        # Counted here so that an uncontended release() makes no call into the parking lot.
        self._waiting = 0
        self._waiters = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._held

    def acquire_nowait(self) -> None:
        """Take the lock now.

        Raises:
            trio.WouldBlock: it is held.
        """
        if self._held:
            raise trio.WouldBlock
        self._held = True

    async def acquire(self) -> None:
        """Take the lock, waiting in line if it is held. A checkpoint."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._held:
            self._waiting += 1
            try:
                await self._waiters.park()  # woken by release(), which hands the lock over
            finally:
                self._waiting -= 1
            return
        self._held = True
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def take(self) -> None:
        """Take the lock at once if it is free, without `acquire()`'s schedule point (for
        callers whose own I/O checkpoints anyway); otherwise wait in line."""
        if self._held:
            await self.acquire()
        else:
            self._held = True

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("release of a TaskLock that is not held")
        if not self._waiting or not self._waiters.unpark(count=1):
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
