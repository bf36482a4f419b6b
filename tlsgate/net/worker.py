"""One worker process of `workers = N`: serves the supervisor's sockets with its TLS snapshot.

A worker is forked by the supervisor (`net.supervisor`) and never reloads anything itself: it
serves the config, listening sockets and TLS contexts it was forked with, which are the same
objects in every worker of its generation (so the same session-ticket keys), until told:

- SIGTERM / SIGINT: drain as `tlsgate run` does (stop accepting, `shutdown_timeout`, then
  close); a second one closes the sessions at once.
- SIGUSR2: retire after a reload: stop accepting, let every session finish however long it
  takes (a reload drops no session), then exit.

A worker whose supervisor dies (SIGKILL, the OOM killer) gets SIGTERM from the kernel and
drains: an unsupervised worker would hold the ports with nobody to restart or reload it.

It reports to the supervisor on a pipe, one byte per event: READY once it accepts, STOPPED once
it accepts no more. The supervisor waits for these so that a reload has no moment where no
worker accepts, and none where an old worker still does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from tlsgate.config.model import Config
from tlsgate.net.server import Server
from tlsgate.observe.events import NoticeKind
from tlsgate.observe.logs import configure_logging, get_logger
from tlsgate.observe.multiprocess import worker_metrics
from tlsgate.tls.contexts import TlsSnapshot

READY = b"R"
STOPPED = b"S"
RETIRE_SIGNAL = signal.SIGUSR2
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, RETIRE_SIGNAL)
# <linux/prctl.h>
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker serves; built by the supervisor before it forks."""

    worker_id: int
    config: Config
    tls: TlsSnapshot
    sockets: Mapping[str, Sequence[socket.socket]]  # listener name -> its listening sockets


def run_worker(spec: WorkerSpec, status_fd: int, supervisor_pid: int) -> int:
    """The body of a forked worker; returns its exit status."""
    configure_logging(spec.config.log, worker=spec.worker_id)
    _drain_when_orphaned()
    # The supervisor blocks these to take them synchronously; a worker takes them in trio.
    # Unblocked only now, so a SIGTERM sent by the kernel above waits for trio's handler.
    if os.getppid() != supervisor_pid:
        get_logger().warning(NoticeKind.WORKER_ORPHANED.value)
        return 0  # the supervisor died before the death signal was armed
    try:
        trio.run(_serve, spec, status_fd)
    except Exception:
        get_logger().exception(NoticeKind.WORKER_FAILED.value)
        return 1
    return 0


async def _serve(spec: WorkerSpec, status_fd: int) -> None:
    listeners = {
        name: [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in socks]
        for name, socks in spec.sockets.items()
    }
    server = Server(spec.config, inherited=listeners, tls=spec.tls, metrics=worker_metrics())
    with trio.open_signal_receiver(*_SIGNALS) as signals:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        async with trio.open_nursery() as nursery:

            async def serve_then_stop() -> None:
                await server.run()
                nursery.cancel_scope.cancel()

            async def report_stopped() -> None:
                await server.stopped_accepting.wait()
                _report(status_fd, STOPPED)

            nursery.start_soon(serve_then_stop)
            await server.accepting.wait()
            _report(status_fd, READY)
            nursery.start_soon(report_stopped)
            async for signum in signals:
                if signum == RETIRE_SIGNAL:
                    server.retire()
                elif signum == signal.SIGHUP:
                    continue  # the supervisor reloads by replacing workers
                elif server.draining:
                    nursery.cancel_scope.cancel()
                    break
                else:
                    server.shutdown()


def _drain_when_orphaned() -> None:
    """Linux: have the kernel send SIGTERM to this process when the supervisor dies."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no parent-death signal
        # Cannot fail with these arguments on Linux (prctl(2)), so the result is not checked.
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _report(status_fd: int, event: bytes) -> None:
    # The supervisor may be gone; the worker then carries on until signalled.
    with contextlib.suppress(OSError):
        os.write(status_fd, event)
