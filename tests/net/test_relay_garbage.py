"""A relay that ends on a broken peer is freed by reference counting, with no cycle left.

The error leaves the relay inside a trio exception group. Raised naively from the handler that
caught the group, the leaf gets the group as its `__context__` while the group holds the leaf,
and that cycle holds every frame on the leaf's traceback (so the session's streams and buffers)
until the cyclic collector runs.
"""

from __future__ import annotations

import weakref

import pytest
import trio

from tlsgate.net.activity import Activity
from tlsgate.net.relay import PeerBrokenError, Side, relay_both_ways


class EndedBackend(trio.abc.HalfCloseableStream):
    """A backend that has already said everything: EOF at once, takes whatever is sent."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class ResetClient(EndedBackend):
    """A client whose connection was reset."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("connection reset by peer")


@pytest.mark.usefixtures("no_automatic_gc")
async def test_a_relay_ended_by_a_reset_frees_its_streams_without_the_collector() -> None:
    client, backend = ResetClient(), EndedBackend()
    client_alive = weakref.ref(client)
    with pytest.raises(PeerBrokenError) as raised:
        await relay_both_ways(client, backend, Activity(60.0), [0, 0])
    assert raised.value.side is Side.CLIENT
    del raised, client
    assert client_alive() is None
