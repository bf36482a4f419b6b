"""`tlsgate run`: the foreground daemon with signal handling and a bounded drain."""

from __future__ import annotations

import signal
import sys

import trio

from tlsgate.config.model import Config
from tlsgate.net.reload import Reloader
from tlsgate.net.server import Bound, ListenerBindError, Server
from tlsgate.observe.events import NoticeKind
from tlsgate.observe.logs import configure_logging, get_logger

EXIT_OK = 0
EXIT_RUNTIME_FAILURE = 1


def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT, drain, and return the process exit code.

    The first signal stops accepting and lets sessions finish for `shutdown_timeout`; a second
    one closes them at once. SIGHUP reloads the config and certificates (`net.reload`).
    """
    configure_logging(config.log)
    exit_code = EXIT_OK
    try:
        trio.run(_serve_until_signalled, config)
    except* ListenerBindError as group:
        for error in group.exceptions:
            get_logger().error("startup_failed", error=str(error))
            print(f"tlsgate: {error}", file=sys.stderr)  # noqa: T201  # the line an admin reads
        exit_code = EXIT_RUNTIME_FAILURE
    return exit_code


async def _serve_until_signalled(config: Config) -> None:
    server = Server(config)
    reloader = Reloader(server)
    # SIGHUP is received from the start: its default action would end the process.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop(
                task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await server.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # drained: stop waiting for signals

            await nursery.start(serve_then_stop)
            nursery.start_soon(reloader.run)
            async for signum in signals:
                # Fetched per signal: a reload may have changed the log settings.
                get_logger().info("signal", signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    reloader.request_reload()
                elif server.draining:
                    nursery.cancel_scope.cancel()
                    break
                else:
                    server.shutdown()
    get_logger().info(NoticeKind.STOPPED.value)
