"""Listeners: bind, accept, hand each connection to a Session, drain on shutdown, reconfigure.

Accept loops run in their own nursery inside the handler nursery (hypercorn's shape): stopping
them leaves sessions running, and a deadline on the handler nursery bounds the drain.

Each bound listener (`_Listening`) holds its sockets and the `ListenerConfig` that new sessions
get; an accept loop reads that config and the TLS context at accept time, and the session keeps
both to its end. `reconfigure` swaps them between two accepts, so a reload changes what the
next session gets and never what a running one has.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from tlsgate.config.model import Config, ListenerConfig, TlsMode
from tlsgate.net.limits import HandshakeSlots, refuse
from tlsgate.net.listener_diff import ListenerDiff, diff_listeners
from tlsgate.net.outbound import RelayMemory
from tlsgate.net.session import Session
from tlsgate.net.socket_io import ListenerFastPath
from tlsgate.observe.events import CloseReason, NoticeKind
from tlsgate.observe.logs import configure_logging, get_logger
from tlsgate.observe.metrics import Metrics
from tlsgate.protocol.tempfail import too_many_connections_reply
from tlsgate.tls.contexts import TlsSnapshot, build_tls_snapshot

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


def build_tls(config: Config) -> TlsSnapshot:
    """Load every certificate of `config` and build its listeners' server contexts.

    The one place the server gets its TLS contexts from, at start and on every reload. Pure
    apart from reading the certificate files: nothing running is touched, so a reload can call
    it off to the side and drop the result if it fails.

    Raises:
        ConfigError: a certificate or key is unusable, or none is configured.
    """
    return build_tls_snapshot(config)


@dataclass(slots=True, eq=False)
class _Listening:
    config: ListenerConfig  # what the next session accepted here gets; a reload may replace it
    sockets: list[trio.SocketListener]
    accepting: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sockets[0].socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def address_text(self) -> str:
        return "{}:{}".format(*self.address)

    async def aclose(self) -> None:
        for listener_socket in self.sockets:
            await listener_socket.aclose()


class Server:
    """Serves every listener of one config until `shutdown()` and the drain that follows."""

    def __init__(
        self,
        config: Config,
        *,
        inherited: Mapping[str, Sequence[trio.SocketListener]] | None = None,
        after_bind: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        tls: TlsSnapshot | None = None,
    ) -> None:
        self.config = config
        # One per server, passed in rather than global (ghostunnel): every session counts here.
        self.metrics = metrics if metrics is not None else Metrics()
        # Socket activation (`tlsgate.service.activation`): listener name -> sockets systemd
        # bound. Only the first bind takes them; a listener a reload adds binds its own.
        self._inherited = dict(inherited or {})
        # Runs once every listener is bound and before the first accept: dropping root there
        # means no connection is ever handled as root.
        self._after_bind = after_bind
        self.draining = False
        # A worker of `workers = N` serves the snapshot the supervisor built before forking, so
        # that every worker has the same session-ticket keys; otherwise `run` builds one.
        self._tls: TlsSnapshot | None = tls
        self.accepting = trio.Event()  # set once every listener accepts
        self.stopped_accepting = trio.Event()  # set once no listener accepts any more
        self._listening: dict[str, _Listening] = {}
        self._accept_scope = trio.CancelScope()
        self._acceptors: trio.Nursery | None = None
        self._handlers: trio.Nursery | None = None
        self._connection_ids = itertools.count(1)
        # Outlives reloads: which relays failed TLS last time (backend_tls_fallback "alternate").
        self._relays = RelayMemory()
        # Sessions open now, in all and per listener name (net.limits: max_connections).
        self._open = 0
        self._open_by_listener: dict[str, int] = {}
        self._handshake_slots = HandshakeSlots(config.max_handshakes_in_progress)
        self._log = get_logger()

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind every listener, report the bound addresses, serve, and return once drained.

        Raises:
            ConfigError: a certificate is unusable (before `task_status.started`).
            ListenerBindError: a listener could not bind (before `task_status.started`).
        """
        if self._tls is None:
            self._tls = build_tls(self.config)
        self.metrics.certificates_loaded(self._tls.certificates)
        self._warn_legacy()
        bound = await _bind_all(self.config.listeners, self._inherited)
        self._inherited = {}
        self._listening = {entry.config.name: entry for entry in bound}
        try:
            if self._after_bind is not None:
                self._after_bind()
        except BaseException:
            with trio.CancelScope(shield=True):
                await _close_all(bound)
            raise
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            try:
                with self._accept_scope:
                    async with trio.open_nursery() as acceptors:
                        self._acceptors = acceptors
                        for entry in bound:
                            self._start_accepting(entry)
                        task_status.started({entry.config.name: entry.address for entry in bound})
                        self.accepting.set()
            finally:
                self._acceptors = None
                # Closed as soon as accepting stops, not after the drain: a client connecting
                # during the drain is refused at once instead of waiting in the backlog.
                with trio.CancelScope(shield=True):
                    for entry in self._listening.values():
                        await entry.aclose()
                self.stopped_accepting.set()

    def shutdown(self) -> None:
        """Stop accepting now; give sessions `shutdown_timeout` seconds, then cancel them."""
        self.draining = True
        self._accept_scope.cancel()
        if self._handlers is not None:
            self._handlers.cancel_scope.deadline = (
                trio.current_time() + self.config.shutdown_timeout
            )
        self._log.info(NoticeKind.DRAINING.value, timeout_seconds=self.config.shutdown_timeout)

    def retire(self) -> None:
        """Stop accepting now and let every session finish, however long it takes.

        A worker replaced by a reload retires: no session is cut short. `shutdown()` after it
        still bounds the drain.
        """
        self._accept_scope.cancel()
        self._log.info(NoticeKind.RETIRING.value)

    @property
    def tls(self) -> TlsSnapshot:
        """The snapshot new handshakes use (after `run` has started)."""
        assert self._tls is not None
        return self._tls

    async def reconfigure(self, config: Config, tls: TlsSnapshot) -> ListenerDiff | None:
        """Serve `config` from now on, with `tls` (built from it) for new handshakes.

        New sockets are bound first; only when all are bound does anything change, in one step
        without a checkpoint: the config, the TLS contexts, the listener each socket serves.
        Then sockets no longer wanted stop accepting and close. Running sessions keep the
        listener settings and TLS context they started with and drain normally.

        Returns:
            What happened to the listeners, or None when a drain began meanwhile (then nothing
            changed).

        Raises:
            ListenerBindError: a new listener could not bind; nothing changed.
        """
        diff = diff_listeners(self.config.listeners, config.listeners)
        fresh = await _bind_all(diff.to_start)
        if self.draining or self._acceptors is None:
            with trio.CancelScope(shield=True):
                await _close_all(fresh)
            return None
        # From here to the last socket started there is no checkpoint: no connection is
        # accepted under half a reload.
        retiring = [self._listening.pop(before.name) for before in diff.to_stop]
        moving = [(self._listening.pop(before.name), after) for before, after in diff.to_update]
        for entry, after in moving:
            entry.config = after
            self._listening[after.name] = entry
        if config.log != self.config.log:
            configure_logging(config.log)
            self._log = get_logger()
        self.config, self._tls = config, tls
        self.metrics.certificates_loaded(tls.certificates)
        self._warn_legacy()
        for entry in fresh:
            self._listening[entry.config.name] = entry
            self._start_accepting(entry)
        for entry in retiring:
            entry.accepting.cancel()
        with trio.CancelScope(shield=True):
            for entry in retiring:
                address = entry.address_text
                await entry.aclose()
                # Logged once closed: from this line on, the port refuses connections.
                self._log.info(
                    NoticeKind.LISTENER_STOPPED.value, listener=entry.config.name, address=address
                )
        return diff

    def replace_tls(self, tls: TlsSnapshot) -> None:
        """New handshakes use `tls` (built from the current config); sessions keep theirs."""
        self._tls = tls
        self.metrics.certificates_loaded(tls.certificates)

    def _warn_legacy(self) -> None:
        for name in self.tls.legacy_listeners:
            self._log.warning(NoticeKind.TLS_LEGACY_PROFILE.value, listener=name)

    def _start_accepting(self, entry: _Listening) -> None:
        assert self._acceptors is not None
        self.metrics.listener(entry.config)  # its series exist, at 0, before the first accept
        self._acceptors.start_soon(self._serve_listener, entry)
        self._log.info(
            NoticeKind.LISTENING.value,
            listener=entry.config.name,
            address=entry.address_text,
            protocol=entry.config.protocol.value,
            tls=entry.config.tls.value,
        )

    async def _serve_listener(self, entry: _Listening) -> None:
        with entry.accepting:
            async with trio.open_nursery() as loops:
                for listener_socket in entry.sockets:
                    loops.start_soon(self._accept_loop, listener_socket, entry)

    async def _accept_loop(self, listener_socket: trio.SocketListener, entry: _Listening) -> None:
        fast = ListenerFastPath.of(listener_socket)
        accept = fast.accept if fast is not None else listener_socket.accept
        while True:
            try:
                stream = await accept()
            except trio.ClosedResourceError:
                return  # a reload retired this listener
            except OSError as exc:
                if exc.errno not in ACCEPT_RETRY_ERRNOS:
                    raise
                self._log.error(
                    NoticeKind.ACCEPT_FAILED.value, listener=entry.config.name, error=exc.strerror
                )
                await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                continue
            await self._start_session(stream, entry.config)

    async def _start_session(self, stream: trio.SocketStream, listener: ListenerConfig) -> None:
        """Refuse `stream` or start its session; a method of its own so that no accept loop
        local keeps the last session alive after it ends.

        `listener` is read at accept time and kept by the session to its end (see the module
        docstring).
        """
        assert self._handlers is not None
        if self._over_limit(listener):
            self._refuse(stream, listener)
            return
        assert self._tls is not None
        context = self._tls.context_for(listener.name)
        implicit = listener.tls is TlsMode.IMPLICIT
        session = Session(
            stream,
            listener,
            context,
            self._log,
            conn_id=f"{next(self._connection_ids):x}",
            backend_context=self._tls.backend_context_for(listener.name),
            relays=self._relays,
            metrics=self.metrics.listener(listener),
            handshake_slots=self._handshake_slots,
            holds_handshake_slot=implicit,
        )
        if implicit:
            # While no slot is free the accept loop accepts nothing: the backlog holds the rest.
            await self._handshake_slots.take(session)
        self._open += 1
        self._open_by_listener[listener.name] = self._open_by_listener.get(listener.name, 0) + 1
        self._handlers.start_soon(self._run_session, session)

    async def _run_session(self, session: Session) -> None:
        try:
            await session.run()
        except Exception:
            # Session.run classifies every way a session ends; an exception here is a bug in
            # its own bookkeeping, and it must not end the other sessions of this nursery.
            self._log.exception(NoticeKind.INTERNAL_ERROR.value, listener=session.listener.name)
        finally:
            self._open -= 1
            self._open_by_listener[session.listener.name] -= 1

    def _over_limit(self, listener: ListenerConfig) -> bool:
        total, mine = self.config.max_connections, listener.max_connections
        return (total is not None and self._open >= total) or (
            mine is not None and self._open_by_listener.get(listener.name, 0) >= mine
        )

    def _refuse(self, stream: trio.SocketStream, listener: ListenerConfig) -> None:
        # Counted and logged first: once closed, the client may already be looking.
        self.metrics.listener(listener).connection_refused(CloseReason.OVER_LIMIT)
        self._log.warning(
            NoticeKind.CONNECTION_REFUSED.value,
            listener=listener.name,
            reason="max_connections",
            open=self._open,
        )
        refuse(stream, too_many_connections_reply(listener.protocol, listener.tls))


async def _bind(
    listener: ListenerConfig, inherited: Sequence[trio.SocketListener] = ()
) -> _Listening:
    if inherited:
        return _Listening(listener, list(inherited))
    try:
        sockets = await trio.open_tcp_listeners(
            listener.listen.port, host=listener.listen.host, backlog=LISTEN_BACKLOG
        )
    except OSError as exc:
        raise ListenerBindError(listener, exc) from exc
    return _Listening(listener, sockets)


async def _bind_all(
    listeners: Sequence[ListenerConfig],
    inherited: Mapping[str, Sequence[trio.SocketListener]] | None = None,
) -> list[_Listening]:
    """Bind each listener, or none: on a failure the sockets bound so far are closed.

    A listener with `inherited` sockets (socket activation) serves those instead of binding.
    """
    taken = inherited or {}
    bound: list[_Listening] = []
    try:
        for listener in listeners:
            # A loop, not a comprehension: what is bound before a failure must be closed.
            bound.append(await _bind(listener, taken.get(listener.name, ())))  # noqa: PERF401
    except BaseException:
        with trio.CancelScope(shield=True):
            await _close_all(bound)
        raise
    return bound


async def _close_all(entries: Iterable[_Listening]) -> None:
    for entry in entries:
        await entry.aclose()


async def serve(
    config: Config,
    *,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `config` until cancelled (the demo and the tests use this)."""
    await Server(config, metrics=metrics).run(task_status=task_status)
