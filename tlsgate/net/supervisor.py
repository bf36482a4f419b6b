"""`workers = N`: a supervisor process and N forked workers sharing the listening sockets.

Theory of operation (nginx's master and workers, gunicorn's arbiter). The supervisor binds (or
inherits from systemd) every listener, builds the TLS snapshot, drops privileges, and forks the
workers (`net.worker`). Every worker inherits the same sockets, and the same `SSLContext`
objects, hence the same session-ticket keys: a ticket one worker issued resumes on any other
(CONTRACT.md; Python's ssl cannot set ticket keys, so sharing them means forking after the
contexts exist). The kernel hands each new connection to one of the workers blocked in accept.

The supervisor never runs trio: a process that forks inside `trio.run` cannot run trio again
in the child. It blocks its signals and takes them one at a time with `sigtimedwait`, which
also wakes it for its timers, so no handler ever runs at an arbitrary point.

A reload is a new generation of workers, built off to the side like `tlsgate run`'s reload:
- SIGHUP re-reads the config and every certificate (the same validation as `tlsgate check`)
  and binds new listeners. Any failure is logged and the running generation keeps serving.
- The new generation is forked with the new config and snapshot; once every new worker accepts,
  the old ones are told to retire (stop accepting, finish every session, exit), and once none
  of them accepts, the sockets of removed listeners are closed. No session is dropped, and from
  `config_reloaded` on, every new connection gets the new config and certificates.
- Ticket-key rotation, changed certificate files and certificate validity changes do the same
  with the running config, so the workers always share their keys.

SIGTERM/SIGINT is passed to every worker (each drains for `shutdown_timeout`), a second one
too (each then closes its sessions at once); the supervisor exits 0 once all have exited. A
worker of the current generation that dies is logged, counted, and replaced.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tlsgate.config.load import ConfigError, load_config_with_warnings
from tlsgate.config.model import Config, ListenerConfig
from tlsgate.net.listener_diff import diff_listeners
from tlsgate.net.reload import CERTIFICATE_SETTLE_ROUNDS_MAX, CERTIFICATE_SETTLE_SECONDS, Trigger
from tlsgate.net.server import LISTEN_BACKLOG, ListenerBindError, build_tls
from tlsgate.net.worker import READY, RETIRE_SIGNAL, STOPPED, WorkerSpec, run_worker
from tlsgate.observe.endpoint import start_metrics_endpoint
from tlsgate.observe.events import NoticeKind, ReloadResult
from tlsgate.observe.logs import get_logger
from tlsgate.observe.multiprocess import SupervisorMetrics
from tlsgate.service.notify import Notifier
from tlsgate.tls.contexts import TlsSnapshot, tls_file_stamps

__all__ = ["Supervisor", "run_supervised"]

_SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
# How long a new generation may take to accept, and an old one to stop accepting.
WORKER_START_TIMEOUT_SECONDS = 30.0
WORKER_STOP_TIMEOUT_SECONDS = 10.0
# A worker that keeps dying is restarted no faster than this (systemd's RestartSec spirit).
RESTART_BACKOFF_SECONDS = 1.0


@dataclass(eq=False)
class _Worker:
    worker_id: int
    pid: int
    status: int  # read end of the worker's status pipe
    generation: int
    ready: bool = False
    stopped: bool = False


@dataclass(eq=False)
class _Generation:
    number: int
    config: Config
    tls: TlsSnapshot
    workers: dict[int, _Worker] = field(default_factory=dict)  # worker id -> worker


class Supervisor:
    """Runs `workers` worker processes for one daemon; `run()` returns the exit code."""

    def __init__(
        self,
        config: Config,
        workers: int,
        sockets: Mapping[str, Sequence[socket.socket]],
        notifier: Notifier,
        metrics: SupervisorMetrics,
    ) -> None:
        self._workers = workers
        self._sockets = {name: list(socks) for name, socks in sockets.items()}
        self._notifier = notifier
        self._metrics = metrics
        self._by_pid: dict[int, _Worker] = {}
        self._current = _Generation(0, config, build_tls(config))
        self._retiring: list[_Generation] = []
        self._stopping = 0  # SIGTERM/SIGINT received so far
        self._stamps = tls_file_stamps(config)
        now = time.monotonic()
        self._next_rotation = now + (config.ticket_key_rotation_interval or math.inf)
        self._next_file_check = now + (config.reload_certificates_interval or math.inf)
        # Without trio's watchdog task, the loop pings systemd itself (WatchdogSec).
        interval = notifier.watchdog_interval
        self._watchdog_period = interval / 2 if interval else math.inf
        self._next_watchdog = now + self._watchdog_period
        self._log = get_logger()

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        self._metrics.certificates_loaded(self._current.tls.certificates)
        for worker_id in range(1, self._workers + 1):
            self._spawn(self._current, worker_id)
        self._await_status(self._current.workers.values(), READY, WORKER_START_TIMEOUT_SECONDS)
        self._notifier.ready(f"serving with {self._workers} workers")
        self._log.info(NoticeKind.WORKERS_STARTED.value, workers=self._workers)
        while self._by_pid:
            received = signal.sigtimedwait(_SIGNALS, self._seconds_to_next_timer())
            if received is None:
                self._on_timer()
            elif received.si_signo == signal.SIGCHLD:
                self._reap()
            elif received.si_signo == signal.SIGHUP:
                self._on_sighup()
            else:
                self._on_stop_signal(signal.Signals(received.si_signo))
        self._log.info(NoticeKind.STOPPED.value)
        return 0

    def _on_stop_signal(self, signum: signal.Signals) -> None:
        self._log.info(NoticeKind.SIGNAL.value, signal=signum.name)
        self._stopping += 1
        if self._stopping == 1:
            self._notifier.stopping("draining sessions")
            self._close_sockets(self._sockets)  # new connections are refused from now on
            self._sockets = {}
        for worker in list(self._by_pid.values()):
            _signal(worker.pid, signal.SIGTERM)

    def _on_sighup(self) -> None:
        self._log.info(NoticeKind.SIGNAL.value, signal="SIGHUP")
        if self._stopping:
            self._log.info(NoticeKind.RELOAD_IGNORED.value, reason="draining")
            return
        self._notifier.reloading("reloading the config")
        try:
            self._reload_config()
        finally:
            self._notifier.ready(f"serving with {self._workers} workers")

    # ---- reloads ----------------------------------------------------------------------------

    def _reload_config(self) -> None:
        old = self._current
        try:
            config, warnings = load_config_with_warnings(old.config.source)
            tls = build_tls(config)
        except ConfigError as exc:
            self._reload_failed(Trigger.SIGNAL, [str(problem) for problem in exc.problems])
            return
        diff = diff_listeners(old.config.listeners, config.listeners)
        try:
            fresh = _bind_all(diff.to_start)
        except ListenerBindError as exc:
            self._reload_failed(Trigger.SIGNAL, [str(exc)])
            return
        retired = {before.name: self._sockets.pop(before.name) for before in diff.to_stop}
        for before, after in diff.to_update:
            self._sockets[after.name] = self._sockets.pop(before.name)
        self._sockets.update(fresh)
        self._replace_generation(config, tls)
        self._close_sockets(retired)
        self._stamps = tls_file_stamps(config)
        self._schedule_timers(config)
        self._metrics.config_reload(ReloadResult.SUCCESS)
        self._log.info(
            NoticeKind.CONFIG_RELOADED.value,
            **diff.counts(),
            warnings=[str(warning) for warning in (*warnings, *tls.warnings)],
        )

    def _reload_certificates(self, trigger: Trigger) -> None:
        config = self._current.config
        self._stamps = tls_file_stamps(config)
        try:
            tls = build_tls(config)
        except ConfigError as exc:
            self._reload_failed(trigger, [str(problem) for problem in exc.problems])
            return
        self._replace_generation(config, tls)
        self._log.info(
            NoticeKind.CERTIFICATES_RELOADED.value,
            trigger=trigger.value,
            warnings=[str(warning) for warning in tls.warnings],
        )

    def _replace_generation(self, config: Config, tls: TlsSnapshot) -> None:
        """Fork the new generation, wait until it accepts, then retire the old one."""
        old = self._current
        new = self._current = _Generation(old.number + 1, config, tls)
        self._metrics.certificates_loaded(tls.certificates)
        for worker_id in range(1, self._workers + 1):
            self._spawn(new, worker_id)
        self._await_status(new.workers.values(), READY, WORKER_START_TIMEOUT_SECONDS)
        self._retiring.append(old)
        for worker in old.workers.values():
            _signal(worker.pid, RETIRE_SIGNAL)
        self._await_status(old.workers.values(), STOPPED, WORKER_STOP_TIMEOUT_SECONDS)

    def _reload_failed(self, trigger: Trigger, problems: list[str]) -> None:
        self._metrics.config_reload(ReloadResult.FAILURE)
        self._log.error(
            NoticeKind.CONFIG_RELOAD_FAILED.value, trigger=trigger.value, problems=problems
        )

    # ---- timers -----------------------------------------------------------------------------

    def _schedule_timers(self, config: Config) -> None:
        now = time.monotonic()
        self._next_rotation = now + (config.ticket_key_rotation_interval or math.inf)
        self._next_file_check = now + (config.reload_certificates_interval or math.inf)

    def _seconds_to_next_timer(self) -> float:
        due = self._next_watchdog
        if not self._stopping:
            due = min(due, self._next_rotation, self._next_file_check, self._validity_change())
        return min(max(due - time.monotonic(), 0.0), 3600.0)

    def _validity_change(self) -> float:
        moment = self._current.tls.next_change
        if moment is None:
            return math.inf
        return time.monotonic() + max(moment.timestamp() - time.time(), 0.0)

    def _on_timer(self) -> None:
        now = time.monotonic()
        if self._next_watchdog <= now:
            self._notifier.watchdog()
            self._next_watchdog = now + self._watchdog_period
        if self._stopping:
            return
        config = self._current.config
        if self._validity_change() <= now:
            self._reload_certificates(Trigger.CERTIFICATE_VALIDITY_CHANGED)
        elif self._next_rotation <= now:
            self._reload_certificates(Trigger.TICKET_KEY_ROTATION)
        elif self._next_file_check <= now:
            if self._files_changed(config):
                self._reload_certificates(Trigger.CERTIFICATE_FILES_CHANGED)
        else:
            return
        self._schedule_timers(self._current.config)

    def _files_changed(self, config: Config) -> bool:
        current = tls_file_stamps(config)
        if current == self._stamps:
            return False
        for _ in range(CERTIFICATE_SETTLE_ROUNDS_MAX):
            time.sleep(CERTIFICATE_SETTLE_SECONDS)
            settled = tls_file_stamps(config)
            if settled == current:
                break
            current = settled
        return True

    # ---- workers ----------------------------------------------------------------------------

    def _spawn(self, generation: _Generation, worker_id: int) -> None:
        read_end, write_end = os.pipe()
        spec = WorkerSpec(worker_id, generation.config, generation.tls, self._sockets)
        supervisor_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                os.close(read_end)
                for worker in self._by_pid.values():
                    os.close(worker.status)
                status = run_worker(spec, write_end, supervisor_pid)
            finally:
                os._exit(status)  # never return into the supervisor's stack
        os.close(write_end)
        worker = _Worker(worker_id, pid, read_end, generation.number)
        generation.workers[worker_id] = worker
        self._by_pid[pid] = worker
        self._log.info(
            NoticeKind.WORKER_STARTED.value, worker=worker_id, pid=pid, generation=generation.number
        )

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._by_pid.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.status)
            self._metrics.worker_exited(pid)
            generation = self._generation(worker.generation)
            if generation is not None:
                generation.workers.pop(worker.worker_id, None)
            expected = self._stopping or generation is not self._current
            if expected:
                self._log.info(
                    NoticeKind.WORKER_EXITED.value, worker=worker.worker_id, pid=pid, status=status
                )
                continue
            self._log.warning(
                NoticeKind.WORKER_DIED.value,
                worker=worker.worker_id,
                pid=pid,
                status=_describe(status),
            )
            self._metrics.worker_restarted()
            time.sleep(RESTART_BACKOFF_SECONDS)
            self._spawn(self._current, worker.worker_id)

    def _generation(self, number: int) -> _Generation | None:
        if number == self._current.number:
            return self._current
        for generation in self._retiring:
            if generation.number == number:
                return generation
        return None

    def _await_status(self, workers: Iterable[_Worker], event: bytes, timeout: float) -> None:
        """Wait until every worker reported `event` (or exited), at most `timeout` seconds."""
        waiting = {worker.status: worker for worker in workers}
        deadline = time.monotonic() + timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(list(waiting), [], [], left)
            for fd in readable:
                worker = waiting[fd]
                try:
                    data = os.read(fd, 64)
                except OSError:
                    data = b""
                worker.ready = worker.ready or READY in data
                worker.stopped = worker.stopped or STOPPED in data
                if not data or event in data or (event == READY and worker.ready):
                    del waiting[fd]
        for worker in waiting.values():
            self._log.warning(
                NoticeKind.WORKER_SLOW.value, worker=worker.worker_id, waiting_for=event.decode()
            )

    def _close_sockets(self, sockets: Mapping[str, Sequence[socket.socket]]) -> None:
        for socks in sockets.values():
            for sock in socks:
                sock.close()


def run_supervised(
    config: Config,
    workers: int,
    inherited: Mapping[str, Sequence[socket.socket]],
    notifier: Notifier,
    after_bind: Callable[[], None] | None,
) -> int:
    """`tlsgate run` with `workers` > 1; returns the exit code.

    Raises:
        ListenerBindError, PrivilegeError, MetricsEndpointError: before any worker started.
    """
    sockets = _bind_all([item for item in config.listeners if item.name not in inherited])
    sockets.update({name: list(socks) for name, socks in inherited.items()})
    if after_bind is not None:
        after_bind()  # root is dropped before any worker exists
    metrics = SupervisorMetrics()
    endpoint = start_metrics_endpoint(config, metrics)
    try:
        return Supervisor(config, workers, sockets, notifier, metrics).run()
    finally:
        if endpoint is not None:
            endpoint.close()
        metrics.close()


def _bind_all(listeners: Sequence[ListenerConfig]) -> dict[str, list[socket.socket]]:
    """Bind new listeners' sockets in the supervisor, or none of them."""
    bound: dict[str, list[socket.socket]] = {}
    try:
        for listener in listeners:
            bound[listener.name] = bind_listener(listener)
    except BaseException:
        for socks in bound.values():
            for sock in socks:
                sock.close()
        raise
    return bound


def bind_listener(listener: ListenerConfig) -> list[socket.socket]:
    """The listening sockets of one listener, as trio's `open_tcp_listeners` makes them.

    Raises:
        ListenerBindError: the address cannot be bound.
    """
    host, port = listener.listen.host, listener.listen.port
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
        sockets: list[socket.socket] = []
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            sockets.append(sock)
    except OSError as exc:
        raise ListenerBindError(listener, exc) from exc
    return sockets


def multiprocess_directory() -> Path:
    """A fresh directory for prometheus_client's per-process metric files."""
    return Path(tempfile.mkdtemp(prefix="tlsgate-metrics-"))


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"
