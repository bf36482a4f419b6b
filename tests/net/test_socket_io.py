"""SocketFastPath: SocketStream's semantics on real socket pairs, and its schedule credit;
connect_ip on real loopback connects."""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from tlsgate.net.socket_io import SCHEDULE_CREDIT, SocketFastPath, connect_ip


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SocketFastPath, socket.socket]]:
    """A fast path over one end of a socket pair, and the plain other end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    ours.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    fast = SocketFastPath.of(stream)
    assert fast is not None
    try:
        yield fast, theirs
    finally:
        await stream.aclose()
        theirs.close()


class TurnCounter:
    """Counts how often a busy neighbour task gets the CPU."""

    def __init__(self) -> None:
        self.turns = 0

    async def run(self) -> None:
        while True:
            self.turns += 1
            await trio.lowlevel.checkpoint()


async def test_receive_send_and_eof(pair: tuple[SocketFastPath, socket.socket]) -> None:
    fast, theirs = pair
    theirs.sendall(b"hello")
    assert await fast.receive_some(100) == b"hello"
    await fast.send_all(b"world")
    assert theirs.recv(100) == b"world"
    theirs.shutdown(socket.SHUT_WR)
    assert await fast.receive_some(100) == b""


async def test_receive_waits_for_data(pair: tuple[SocketFastPath, socket.socket]) -> None:
    fast, theirs = pair
    async with trio.open_nursery() as nursery:
        received: list[bytes] = []

        async def receive() -> None:
            received.append(await fast.receive_some(100))

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert received == []
        theirs.sendall(b"late")
    assert received == [b"late"]


async def test_send_after_eof_and_a_reset_peer(pair: tuple[SocketFastPath, socket.socket]) -> None:
    fast, theirs = pair
    await fast.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        await fast.send_all(b"too late")
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    theirs.close()
    with pytest.raises(trio.BrokenResourceError):
        await fast.receive_some(100)


async def test_every_call_is_a_cancel_point(pair: tuple[SocketFastPath, socket.socket]) -> None:
    fast, theirs = pair
    theirs.sendall(b"ready")
    with trio.CancelScope() as scope:
        scope.cancel()
        await fast.receive_some(100)
    assert scope.cancelled_caught
    assert await fast.receive_some(100) == b"ready"  # the cancelled call read nothing


async def test_small_ready_calls_yield_every_credit(
    pair: tuple[SocketFastPath, socket.socket],
) -> None:
    fast, theirs = pair
    calls = SCHEDULE_CREDIT * 10
    theirs.sendall(b"x" * calls)
    await trio.sleep(0.05)  # all of it in our receive buffer
    neighbour = TurnCounter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(neighbour.run)
        await trio.lowlevel.checkpoint()  # the neighbour never blocks: let it start
        before = neighbour.turns
        for _ in range(calls):
            assert await fast.receive_some(1) == b"x"
        for _ in range(calls):
            await fast.send_all(b"y")
        turns = neighbour.turns - before
        nursery.cancel_scope.cancel()
    # Fewer trips through the scheduler than one per call, but never a long run without one
    # (give or take one: the scheduler runs the two tasks in either order within a batch).
    assert 2 * calls // SCHEDULE_CREDIT - 1 <= turns < calls


async def test_bulk_calls_yield_every_time(pair: tuple[SocketFastPath, socket.socket]) -> None:
    fast, theirs = pair
    fast._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    chunk = b"z" * (224 * 1024)  # 7 credits for the bytes, one for the call
    neighbour = TurnCounter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(neighbour.run)
        await trio.lowlevel.checkpoint()  # the neighbour never blocks: let it start
        before = neighbour.turns
        for _ in range(8):
            await fast.send_all(chunk)  # into an empty socket buffer: no wait
            received = 0
            while received < len(chunk):
                received += len(theirs.recv(len(chunk)))
        turns = neighbour.turns - before
        nursery.cancel_scope.cancel()
    # The scheduler runs the two tasks in either order within a batch: give or take one.
    assert turns >= 8 - 1


async def test_after_a_short_read_data_already_waiting_is_still_read(
    pair: tuple[SocketFastPath, socket.socket],
) -> None:
    # A short read makes the next receive wait for readiness first instead of trying recv:
    # data that arrived in between must come back at once all the same.
    fast, theirs = pair
    theirs.sendall(b"first")
    await trio.sleep(0.01)
    assert await fast.receive_some(100) == b"first"
    theirs.sendall(b"second")
    await trio.sleep(0.01)
    with trio.fail_after(1):
        assert await fast.receive_some(100) == b"second"
    theirs.shutdown(socket.SHUT_WR)
    with trio.fail_after(1):
        assert await fast.receive_some(100) == b""
        assert await fast.receive_some(100) == b""


# --- connect_ip ----------------------------------------------------------------------------


async def test_connect_ip_to_a_listener_gives_a_working_stream() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with trio.fail_after(2):
            stream = await connect_ip(socket.AF_INET, listener.getsockname())
        peer, _ = listener.accept()
        with peer:
            async with stream:
                await stream.send_all(b"hello")
                assert peer.recv(100) == b"hello"
                peer.sendall(b"there")
                with trio.fail_after(2):
                    assert await stream.receive_some(100) == b"there"


async def test_connect_ip_to_a_closed_port_is_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = listener.getsockname()
    with trio.fail_after(2), pytest.raises(ConnectionRefusedError) as refused:
        await connect_ip(socket.AF_INET, address)
    assert refused.value.errno == errno.ECONNREFUSED


@pytest.fixture
def full_listener() -> Iterator[tuple[str, int]]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect to
    it stays in progress (the slow path, where connect_ip waits)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        queued: list[socket.socket] = []
        try:
            for _ in range(4):  # listen(0) still queues one or two; fill it for sure
                client = socket.socket()
                client.setblocking(False)
                client.connect_ex(address)
                queued.append(client)
            yield address
        finally:
            for client in queued:
                client.close()


async def test_connect_ip_still_in_progress_waits_and_can_be_cancelled(
    full_listener: tuple[str, int],
) -> None:
    with trio.move_on_after(0.3) as waiting:
        await connect_ip(socket.AF_INET, full_listener)
    assert waiting.cancelled_caught
