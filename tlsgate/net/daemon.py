"""`tlsgate run`: the foreground daemon with signal handling and a bounded drain."""

from __future__ import annotations

import signal
import sys

import trio

from tlsgate.config.model import Config
from tlsgate.net.server import Bound, ListenerBindError, Server
from tlsgate.observe.events import NoticeKind
from tlsgate.observe.logs import configure_logging, get_logger

EXIT_OK = 0
EXIT_RUNTIME_FAILURE = 1


def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT, drain, and return the process exit code.

    The first signal stops accepting and lets sessions finish for `shutdown_timeout`; a second
    one closes them at once.
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
    log = get_logger()
    server = Server(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop(
                task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await server.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # drained: stop waiting for signals

            await nursery.start(serve_then_stop)
            async for signum in signals:
                log.info("signal", signal=signal.Signals(signum).name)
                if server.draining:
                    nursery.cancel_scope.cancel()
                    break
                server.shutdown()
    log.info(NoticeKind.STOPPED.value)
