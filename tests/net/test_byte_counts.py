"""A long relay publishes its byte counts while it runs; the totals stay exact."""

from __future__ import annotations

import trio
import trio.testing

from tlsgate.net.activity import PUBLISH_INTERVAL_SECONDS, Activity
from tlsgate.net.relay import PeerBrokenError, Side, relay_both_ways

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
    copied = [0, 0]
    idle: list[bool] = []

    async def relay() -> None:
        idle.append(await relay_both_ways(proxy_client, proxy_backend, activity, copied))

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
    assert (copied, idle) == ([1550, 500], [False])
    assert published == [(1500, 0), (0, 500)]


async def test_a_relay_cut_short_still_reports_every_byte_it_copied(
    mock_clock: trio.testing.MockClock,
) -> None:
    published: list[tuple[int, int]] = []
    activity = Activity(NEVER_IDLE_SECONDS, lambda c2b, b2c: published.append((c2b, b2c)))
    client, proxy_client = trio.testing.memory_stream_pair()
    proxy_backend, backend = trio.testing.memory_stream_pair()
    copied = [0, 0]
    broke: list[PeerBrokenError] = []

    async def relay() -> None:
        try:
            await relay_both_ways(proxy_client, proxy_backend, activity, copied)
        except PeerBrokenError as exc:
            broke.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay)
        await client.send_all(b"c" * 700)
        assert await _receive_exactly(backend, 700) == b"c" * 700
        mock_clock.jump(PUBLISH_INTERVAL_SECONDS + 1)
        await client.send_all(b"c" * 300)
        assert await _receive_exactly(backend, 300) == b"c" * 300
        await backend.aclose()  # the backend goes away: the next chunk cannot be delivered
        await client.send_all(b"lost")
    assert [exc.side for exc in broke] == [Side.BACKEND]
    assert published == [(1000, 0)]
    assert copied == [1000, 0]  # what was delivered, published or not, and nothing more
