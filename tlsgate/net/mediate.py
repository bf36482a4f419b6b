"""Drives a sans-I/O mediator against a client and a backend stream.

Theory of operation: one reader task per side receives a chunk, then, holding the session
lock, feeds it to the mediator and executes the outputs in order, awaiting each send. The lock
keeps outputs of two calls from interleaving and gives backpressure both ways. While the
mediator says `client_reading_paused` (a STARTTLS was accepted, or a DATA/AUTH reply decides
what the next client bytes mean) the client reader does not read at all, so the TLS handshake
can take over the raw transport and no plaintext is ever read past a STARTTLS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio

from tlsgate.net.activity import Activity
from tlsgate.net.locks import TaskLock
from tlsgate.net.relay import (
    RECEIVE_SIZE_BYTES,
    PeerBrokenError,
    Side,
    first_error,
    relay_both_ways,
    send_eof_quietly,
)
from tlsgate.net.socket_io import Receive, Send, stream_io
from tlsgate.observe.events import CloseReason
from tlsgate.protocol.io_types import (
    BackendData,
    BackendEof,
    ClientData,
    ClientEof,
    ClientTlsEstablished,
    Close,
    EofToBackend,
    EofToClient,
    IdleTimeout,
    Input,
    Mediator,
    Notice,
    Output,
    SendToBackend,
    SendToClient,
    Shutdown,
    StartClientTls,
    SwitchToRelay,
)

# After an idle timeout the goodbye reply gets this long to leave before the close.
GOODBYE_SEND_TIMEOUT_SECONDS = 5.0
# At shutdown the drain deadline has already passed: the 421 gets only this long.
SHUTDOWN_GOODBYE_TIMEOUT_SECONDS = 1.0

StartTls = Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]]
NoticeSink = Callable[[Notice], None]


class MediationRunner:
    """One session's mediator loop; `run()` returns how it ended."""

    def __init__(
        self,
        mediator: Mediator,
        client: trio.abc.Stream,
        backend: trio.abc.Stream,
        *,
        start_client_tls: StartTls,
        on_notice: NoticeSink,
        activity: Activity,
    ) -> None:
        self.mediator = mediator
        self.client = client
        self.backend = backend
        # Each stream has one reader task, and one sender at a time (the lock): the socket fast
        # path applies. The client's changes at STARTTLS.
        self._client_io = stream_io(client)
        self._backend_io = stream_io(backend)
        self.bytes_from_client = 0
        self.bytes_from_backend = 0
        self.close_reason = CloseReason.COMPLETED
        self._start_client_tls = start_client_tls
        self._on_notice = on_notice
        self._activity = activity
        self._published_from_client = 0
        self._client_send_torn = False
        self._published_from_backend = 0
        self._lock = TaskLock()
        # Set while the client reader waits for the mediator to unpause it.
        self._client_resumed: trio.Event | None = None
        self._switch_to_relay = False
        self._backend_finished = False
        self._cancel_scope = trio.CancelScope()

    async def run(
        self, initial_client_data: bytes = b"", initial_backend_data: bytes = b""
    ) -> CloseReason:
        """Mediate until the mediator closes the session or a peer breaks off.

        The initial data was read before mediation began: the client's by the sniffer, the
        backend's (a relay's greeting) by an outbound STARTTLS. Cancelled from outside (the
        drain deadline of a stopping daemon), it first gives the client the protocol's
        goodbye where one can be said (SMTP 421, POP3 -ERR), then re-raises.

        Raises:
            PeerBrokenError: a stream broke; its `side` says which.
            TlsHandshakeError: the STARTTLS handshake failed (from `start_client_tls`).
        """
        try:
            return await self._run(initial_client_data, initial_backend_data)
        except trio.Cancelled:
            await self._say_goodbye_at_shutdown()
            raise

    async def _say_goodbye_at_shutdown(self) -> None:
        if self._client_send_torn:
            return  # part of a reply is on the wire: a 421 after it would be garbage
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(SHUTDOWN_GOODBYE_TIMEOUT_SECONDS),
            contextlib.suppress(PeerBrokenError),
        ):
            await self._dispatch(Shutdown())

    async def _run(self, initial_client_data: bytes, initial_backend_data: bytes) -> CloseReason:
        error: BaseException | None = None
        try:
            with self._cancel_scope:
                async with self._activity.watched_nursery(self._on_idle) as nursery:
                    nursery.start_soon(self._read_backend, initial_backend_data)
                    await self._read_client(initial_client_data)  # one spawn fewer
        except BaseExceptionGroup as group:
            error = first_error(group)
        if error is not None:
            try:
                if not self._client_left_after_goodbye(error):
                    raise error
            finally:
                del error  # see first_error
        if self._switch_to_relay:
            await self._relay()
        return self.close_reason

    def _client_left_after_goodbye(self, error: BaseException) -> bool:
        """After the backend has said goodbye (221, +OK and close) many clients just drop the
        connection without a TLS close_notify: the session was complete."""
        return (
            isinstance(error, PeerBrokenError)
            and error.side is Side.CLIENT
            and self._backend_finished
        )

    # ---- readers ----------------------------------------------------------------------------

    async def _read_client(self, initial_data: bytes) -> None:
        if initial_data:
            self.bytes_from_client += len(initial_data)
            await self._dispatch(ClientData(initial_data))
        while True:
            while self.mediator.client_reading_paused:
                resumed = self._client_resumed = trio.Event()
                await resumed.wait()
            data = await self._receive(self._client_io.receive, Side.CLIENT)
            if not data:
                await self._dispatch(ClientEof())
                return
            self.bytes_from_client += len(data)
            await self._dispatch(ClientData(data))

    async def _read_backend(self, initial_data: bytes) -> None:
        if initial_data:
            await self._dispatch(BackendData(initial_data))
        while True:
            data = await self._receive(self._backend_io.receive, Side.BACKEND)
            if not data:
                self._backend_finished = True
                await self._dispatch(BackendEof())
                return
            self.bytes_from_backend += len(data)
            await self._dispatch(BackendData(data))

    async def _receive(self, receive: Receive, side: Side) -> bytes:
        try:
            data = await receive(RECEIVE_SIZE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerBrokenError(side) from exc
        if self._activity.touch():
            self._publish_byte_counts()
        return data if isinstance(data, bytes) else bytes(data)

    def _publish_byte_counts(self) -> None:
        from_client, from_backend = self.bytes_from_client, self.bytes_from_backend
        self._activity.publish(
            from_client - self._published_from_client, from_backend - self._published_from_backend
        )
        self._published_from_client, self._published_from_backend = from_client, from_backend

    async def _on_idle(self, _nursery: trio.Nursery) -> None:
        with trio.move_on_after(GOODBYE_SEND_TIMEOUT_SECONDS):
            await self._dispatch(IdleTimeout())
        self.close_reason = CloseReason.IDLE_TIMEOUT
        self._cancel_scope.cancel()

    # ---- executing outputs ------------------------------------------------------------------

    async def _dispatch(self, event: Input) -> None:
        # Not `acquire()`: its schedule point sat on the path of every command and every
        # reply, and the reads around this are checkpoints anyway.
        await self._lock.take()
        try:
            await self._execute(self.mediator.handle(event))
            resumed = self._client_resumed
            if resumed is not None and not self.mediator.client_reading_paused:
                self._client_resumed = None
                resumed.set()
        finally:
            self._lock.release()

    async def _execute(self, outputs: list[Output]) -> None:
        for output in outputs:
            match output:
                case SendToBackend(data):
                    await self._send(self._backend_io.send, data, Side.BACKEND)
                case SendToClient(data):
                    await self._send(self._client_io.send, data, Side.CLIENT)
                case EofToBackend():
                    await send_eof_quietly(self._backend_io.send_eof)
                case EofToClient():
                    await send_eof_quietly(self._client_io.send_eof)
                case StartClientTls():
                    self.client = await self._start_client_tls(self.client)
                    self._client_io = stream_io(self.client)
                    await self._execute(self.mediator.handle(ClientTlsEstablished()))
                case SwitchToRelay():
                    self._switch_to_relay = True
                    self._cancel_scope.cancel()
                case Close(reason):
                    self.close_reason = reason
                    self._cancel_scope.cancel()
                    return
                case Notice():
                    self._on_notice(output)

    async def _send(self, send: Send, data: bytes, side: Side) -> None:
        try:
            await send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerBrokenError(side) from exc
        except BaseException:
            if side is Side.CLIENT:
                self._client_send_torn = True  # cancelled midway: some of `data` may be out
            raise

    async def _relay(self) -> None:
        """The mediator stepped aside: copy opaque bytes both ways until both sides end."""
        copied = [0, 0]
        try:
            idle = await relay_both_ways(self.client, self.backend, self._activity, copied)
        finally:
            self.bytes_from_client += copied[0]
            self.bytes_from_backend += copied[1]
        if idle:
            self.close_reason = CloseReason.IDLE_TIMEOUT
