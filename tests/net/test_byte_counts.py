"""A long relay publishes its byte counts while it runs; the totals stay exact."""

from __future__ import annotations

import trio
import trio.testing

from tlsgate.net.activity import PUBLISH_INTERVAL_SECONDS, Activity
from tlsgate.net.relay import relay_both_ways

# Longer than any test here runs on the mock clock: the idle watchdog never fires.
NEVER_IDLE_SECONDS = 3600.0


async def _receive_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        data += await stream.receive_some(count - len(data))
    return data


async def test_a_long_relay_publishes_as_it_goes_and_totals_stay_exact(
    mock_clock: trio.testing.MockClock,
) -> None:
    published: list[tuple[int, int]] = []
    activity = Activity(NEVER_IDLE_SECONDS, lambda c2b, b2c: published.append((c2b, b2c)))
    client, proxy_client = trio.testing.memory_stream_pair()
    proxy_backend, backend = trio.testing.memory_stream_pair()
    totals: list[tuple[int, int, bool]] = []

    async def relay() -> None:
        totals.append(await relay_both_ways(proxy_client, proxy_backend, activity))

    async def client_to_backend(size: int) -> None:
        await client.send_all(b"c" * size)
        assert await _receive_exactly(backend, size) == b"c" * size

    async def backend_to_client(size: int) -> None:
        await backend.send_all(b"b" * size)
        assert await _receive_exactly(client, size) == b"b" * size

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay)
        await client_to_backend(1000)
        assert published == []  # not due yet: nothing is published per chunk
        mock_clock.jump(PUBLISH_INTERVAL_SECONDS + 1)
        await client_to_backend(500)
        assert published == [(1500, 0)]
        await backend_to_client(200)
        mock_clock.jump(PUBLISH_INTERVAL_SECONDS + 1)
        await backend_to_client(300)
        assert published == [(1500, 0), (0, 500)]
        await client_to_backend(50)  # after the last publish: left for the close
        await client.send_eof()
        await backend.send_eof()
    assert totals == [(1550, 500, False)]
    assert published == [(1500, 0), (0, 500)]
