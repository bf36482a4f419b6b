"""A long relay publishes its byte counts while it runs; the totals stay exact."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
import trio.testing

from tlsgate.net.activity import PUBLISH_INTERVAL_SECONDS, Activity
from tlsgate.net.relay import PeerBrokenError, Side, relay_both_ways

# Longer than any test here runs on the mock clock: the idle reaper never fires.
NEVER_IDLE_SECONDS = 3600.0


async def _receive_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        data += await stream.receive_some(count - len(data))
    return data


@dataclass
class RelayUnderTest:
    """A relay between two memory stream pairs, recording what its Activity publishes."""

    published: list[tuple[int, int]] = field(default_factory=list)
    copied: list[int] = field(default_factory=lambda: [0, 0])
    # How run() ended: whether the relay went idle, or the PeerBrokenError it raised.
    outcome: list[bool | PeerBrokenError] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.activity = Activity(NEVER_IDLE_SECONDS, self._publish)
        self.client, self._proxy_client = trio.testing.memory_stream_pair()
        self._proxy_backend, self.backend = trio.testing.memory_stream_pair()

    def _publish(self, c2b: int, b2c: int) -> None:
        self.published.append((c2b, b2c))

    async def run(self) -> None:
        try:
            idle = await relay_both_ways(
                self._proxy_client, self._proxy_backend, self.activity, self.copied
            )
        except PeerBrokenError as exc:
            self.outcome.append(exc)
        else:
            self.outcome.append(idle)

    async def client_to_backend(self, size: int) -> None:
        await self.client.send_all(b"c" * size)
        assert await _receive_exactly(self.backend, size) == b"c" * size

    async def backend_to_client(self, size: int) -> None:
        await self.backend.send_all(b"b" * size)
        assert await _receive_exactly(self.client, size) == b"b" * size


async def test_a_long_relay_publishes_as_it_goes_and_totals_stay_exact(
    mock_clock: trio.testing.MockClock,
) -> None:
    relay = RelayUnderTest()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.run)
        await relay.client_to_backend(1000)
        assert relay.published == []  # not due yet: nothing is published per chunk
        mock_clock.jump(PUBLISH_INTERVAL_SECONDS + 1)
        await relay.client_to_backend(500)
        assert relay.published == [(1500, 0)]
        await relay.backend_to_client(200)
        mock_clock.jump(PUBLISH_INTERVAL_SECONDS + 1)
        await relay.backend_to_client(300)
        assert relay.published == [(1500, 0), (0, 500)]
        await relay.client_to_backend(50)  # after the last publish: left for the close
        await relay.client.send_eof()
        await relay.backend.send_eof()
    assert (relay.copied, relay.outcome) == ([1550, 500], [False])
    assert relay.published == [(1500, 0), (0, 500)]


async def test_a_relay_cut_short_still_reports_every_byte_it_copied(
    mock_clock: trio.testing.MockClock,
) -> None:
    relay = RelayUnderTest()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.run)
        await relay.client_to_backend(700)
        mock_clock.jump(PUBLISH_INTERVAL_SECONDS + 1)
        await relay.client_to_backend(300)
        await relay.backend.aclose()  # the backend goes away: the next chunk cannot be delivered
        await relay.client.send_all(b"lost")
    (ended,) = relay.outcome
    assert isinstance(ended, PeerBrokenError)
    assert ended.side is Side.BACKEND
    assert relay.published == [(1000, 0)]
    assert relay.copied == [1000, 0]  # what was delivered, published or not, and nothing more
