"""`tlsgate run`: the foreground daemon with signal handling and a bounded drain."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence

import trio

from tlsgate.config.model import Config
from tlsgate.net.reload import Reloader
from tlsgate.net.server import Bound, ListenerBindError, Server
from tlsgate.net.supervisor import run_supervised
from tlsgate.observe.endpoint import MetricsEndpointError, start_metrics_endpoint
from tlsgate.observe.events import NoticeKind
from tlsgate.observe.logs import configure_logging, get_logger
from tlsgate.service import activation, privileges
from tlsgate.service.limits import raise_open_files_limit
from tlsgate.service.notify import Notifier

EXIT_OK = 0
EXIT_RUNTIME_FAILURE = 1


def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT, drain, and return the process exit code.

    The first signal stops accepting and lets sessions finish for `shutdown_timeout`; a second
    one closes them at once. SIGHUP reloads the config and certificates (`net.reload`).
    """
    configure_logging(config.log)
    # Both before anything is bound: a missing user or a socket systemd passed that fits no
    # listener fails at once, not after the ports were taken.
    try:
        account = privileges.resolve_account(config.user, config.group)
        inherited = activation.inherited_sockets(config.listeners)
    except (privileges.PrivilegeError, activation.ActivationError) as exc:
        problems = exc.problems if isinstance(exc, activation.ActivationError) else [str(exc)]
        _startup_failed(problems)
        return EXIT_RUNTIME_FAILURE
    raise_open_files_limit()
    notifier = Notifier.from_environment()
    workers = config.workers or len(os.sched_getaffinity(0))
    if workers > 1:
        try:
            return run_supervised(config, workers, inherited, notifier, _privilege_drop(account))
        except (ListenerBindError, privileges.PrivilegeError, MetricsEndpointError) as exc:
            _startup_failed([str(exc)])
            return EXIT_RUNTIME_FAILURE
        finally:
            notifier.close()
    exit_code = EXIT_OK
    try:
        trio.run(_serve_until_signalled, config, notifier, inherited, _privilege_drop(account))
    except* (ListenerBindError, privileges.PrivilegeError, MetricsEndpointError) as group:
        _startup_failed([str(error) for error in group.exceptions])
        exit_code = EXIT_RUNTIME_FAILURE
    finally:
        notifier.close()
    return exit_code


def _startup_failed(problems: Sequence[str]) -> None:
    for problem in problems:
        get_logger().error("startup_failed", error=problem)
        print(f"tlsgate: {problem}", file=sys.stderr)  # noqa: T201  # the line an admin reads


def _privilege_drop(account: privileges.Account | None) -> Callable[[], None] | None:
    """What the server runs between binding and the first accept: the switch to `user`."""
    if account is None:
        return None
    if not privileges.running_as_root():
        # The usual case under systemd (User=): nothing to drop. A different user is worth a
        # line, since the config says otherwise.
        if account.uid is not None and account.uid != os.geteuid():
            get_logger().warning(
                NoticeKind.PRIVILEGES_NOT_DROPPED.value, reason="not root", wanted=str(account)
            )
        return None

    def drop() -> None:
        privileges.drop_privileges(account)
        get_logger().info(NoticeKind.PRIVILEGES_DROPPED.value, account=str(account))

    return drop


@contextlib.contextmanager
def _announce_reload(notifier: Notifier, server: Server) -> Iterator[None]:
    notifier.reloading("reloading the config")
    try:
        yield
    finally:
        # READY=1 whatever the outcome: a refused reload leaves the old config serving.
        notifier.ready(_status(server))


def _status(server: Server) -> str:
    names = [listener.name for listener in server.config.listeners]
    return f"serving {len(names)} listener{'' if len(names) == 1 else 's'}: {', '.join(names)}"


async def _serve_until_signalled(
    config: Config,
    notifier: Notifier,
    inherited: Mapping[str, Sequence[socket.socket]],
    after_bind: Callable[[], None] | None,
) -> None:
    server = Server(config, inherited=activation.trio_listeners(inherited), after_bind=after_bind)
    reloader = Reloader(server, around_reload=functools.partial(_announce_reload, notifier, server))
    # SIGHUP is received from the start: its default action would end the process.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop(
                task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await server.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # drained: stop waiting for signals

            await nursery.start(serve_then_stop)
            start_metrics_endpoint(config, server.metrics)  # in a daemon thread, if configured
            notifier.ready(_status(server))  # every listener bound, root dropped
            nursery.start_soon(reloader.run)
            nursery.start_soon(notifier.run_watchdog)
            async for signum in signals:
                # Fetched per signal: a reload may have changed the log settings.
                get_logger().info("signal", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    reloader.request_reload()
                elif server.draining:
                    nursery.cancel_scope.cancel()
                    break
                else:
                    notifier.stopping("draining sessions")
                    server.shutdown()
    get_logger().info(NoticeKind.STOPPED.value)
