"""Listeners: bind, accept, hand each connection to a Session, drain on shutdown.

Accept loops run in their own nursery inside the handler nursery (hypercorn's shape): stopping
them leaves sessions running, and a deadline on the handler nursery bounds the drain.
"""

from __future__ import annotations

import errno
import itertools
import ssl
from dataclasses import dataclass

import trio

from tlsgate.config.model import Config, ListenerConfig, TlsMode
from tlsgate.net.session import Session, remember_sni
from tlsgate.observe.events import NoticeKind
from tlsgate.observe.logs import get_logger
from tlsgate.tls.contexts import build_server_context

# Out of file descriptors or kernel memory: the accept loop waits and tries again rather than
# dying (trio's serve_listeners does the same).
ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_SECONDS = 0.1
LISTEN_BACKLOG = 1024


# What `run` reports once listening: each listener's name and bound (host, port).
Bound = dict[str, tuple[str, int]]


class ListenerBindError(Exception):
    def __init__(self, listener: ListenerConfig, cause: OSError) -> None:
        super().__init__(
            f"listener {listener.name!r}: cannot listen on {listener.listen}: {cause.strerror}"
        )
        self.listener = listener


@dataclass(slots=True)
class _Bound:
    config: ListenerConfig
    sockets: list[trio.SocketListener]

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sockets[0].socket.getsockname()[:2]
        return str(host), int(port)


class Server:
    """Serves every listener of one config until `shutdown()` and the drain that follows."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.draining = False
        self._accept_scope = trio.CancelScope()
        self._handlers: trio.Nursery | None = None
        self._connection_ids = itertools.count(1)
        self._log = get_logger()

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind every listener, report the bound addresses, serve, and return once drained.

        Raises:
            ListenerBindError: a listener could not bind (before `task_status.started`).
        """
        context = self._server_context()
        bound = [await self._bind(listener) for listener in self.config.listeners]
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            try:
                with self._accept_scope:
                    async with trio.open_nursery() as acceptors:
                        for entry in bound:
                            for listener_socket in entry.sockets:
                                acceptors.start_soon(
                                    self._accept_loop, listener_socket, entry.config, context
                                )
                            self._log.info(
                                NoticeKind.LISTENING.value,
                                listener=entry.config.name,
                                address="{}:{}".format(*entry.address),
                                protocol=entry.config.protocol.value,
                                tls=entry.config.tls.value,
                            )
                        task_status.started({entry.config.name: entry.address for entry in bound})
            finally:
                # Closed as soon as accepting stops, not after the drain: a client connecting
                # during the drain is refused at once instead of waiting in the backlog.
                with trio.CancelScope(shield=True):
                    for entry in bound:
                        for listener_socket in entry.sockets:
                            await listener_socket.aclose()

    def shutdown(self) -> None:
        """Stop accepting now; give sessions `shutdown_timeout` seconds, then cancel them."""
        self.draining = True
        self._accept_scope.cancel()
        if self._handlers is not None:
            self._handlers.cancel_scope.deadline = (
                trio.current_time() + self.config.shutdown_timeout
            )
        self._log.info(NoticeKind.DRAINING.value, timeout_seconds=self.config.shutdown_timeout)

    def _server_context(self) -> ssl.SSLContext | None:
        if all(listener.tls is TlsMode.NONE for listener in self.config.listeners):
            return None
        context = build_server_context(self.config)
        context.sni_callback = remember_sni
        return context

    async def _bind(self, listener: ListenerConfig) -> _Bound:
        try:
            sockets = await trio.open_tcp_listeners(
                listener.listen.port, host=listener.listen.host, backlog=LISTEN_BACKLOG
            )
        except OSError as exc:
            raise ListenerBindError(listener, exc) from exc
        return _Bound(listener, sockets)

    async def _accept_loop(
        self,
        listener_socket: trio.SocketListener,
        listener: ListenerConfig,
        context: ssl.SSLContext | None,
    ) -> None:
        assert self._handlers is not None
        while True:
            try:
                stream = await listener_socket.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_RETRY_ERRNOS:
                    raise
                self._log.error("accept_failed", listener=listener.name, error=exc.strerror)
                await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                continue
            conn_id = f"{next(self._connection_ids):x}"
            logger = self._log.bind(conn_id=conn_id, listener=listener.name)
            logger.info(NoticeKind.ACCEPTED.value, peer=_peer(stream))
            self._handlers.start_soon(Session(stream, listener, context, logger).run)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "unknown"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def serve(
    config: Config,
    *,
    task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `config` until cancelled (the demo and the tests use this)."""
    await Server(config).run(task_status=task_status)
