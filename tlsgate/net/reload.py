"""Reloading a running server: SIGHUP re-reads the config, a timer re-reads the certificates.

Theory of operation. A reload has two halves. Everything that can fail comes first, off to the
side, while the old config keeps serving: the file is read and validated
(`load_config_with_warnings`, the same function `tlsgate check` runs), every certificate is
loaded and the TLS contexts are built (`build_tls`), both in a worker thread because they read
files, and the sockets of new listeners are bound. A failure there (a config problem, an
unusable certificate, a port that cannot be bound) is logged as `config_reload_failed` with
every problem, and the server stays exactly as it was (ghostunnel: "the old state is kept").
Only then does `Server.reconfigure` switch, in one step: new handshakes get the new
certificates, listeners follow the new config, running sessions keep what they started with.

A listener that cannot bind refuses the whole reload rather than being skipped. Either the file
is in force or the previous one is, never a mix that no file describes; `config_reloaded` then
means the running state is the file's, and the next reload diffs against something real. It
matches start-up, where a port in use is fatal too, and binding comes before anything changes,
so refusing costs nothing. Certificates renewed meanwhile are not held hostage: the certificate
watcher reloads them for the running config.

Reloads are serialized by one lock. SIGHUPs that arrive while one runs are coalesced into at
most one more (it reads the file afresh anyway); SIGHUP during a drain is ignored.

The certificate watcher rebuilds only the TLS snapshot of the running config, with the same
validation and the same keep-the-old-on-failure rule, in two cases:
- `reload_certificates_interval` is set (seconds) and, at one of its looks, a file the snapshot
  was built from has a new identity (`tls_file_stamps`: inode, size, mtime, ctime), as when an
  ACME client replaces files, and the files have then settled;
- the moment the snapshot names as `next_change` has come: a certificate became valid or
  expired, which may change the one served for a name. This needs no setting.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import trio

from tlsgate.config.load import ConfigError, load_config_with_warnings
from tlsgate.net.server import ListenerBindError, Server, build_tls
from tlsgate.observe.events import NoticeKind, ReloadResult
from tlsgate.observe.logs import get_logger
from tlsgate.tls.contexts import FileStamp, TlsSnapshot, tls_file_stamps

# An ACME client writes the certificate and the key as two files (certbot swaps two symlinks,
# acme.sh copies two files). Reading between the two writes would pair the new certificate with
# the old key and log a failed reload, so a change is acted on only once the files have stayed
# unchanged for this long.
CERTIFICATE_SETTLE_SECONDS = 0.5
# A file rewritten without pause still gets its reload attempted after this many settle waits.
CERTIFICATE_SETTLE_ROUNDS_MAX = 10
# `next_change` is wall-clock time and trio sleeps on a monotonic clock; the wall clock may
# jump (NTP, a resumed VM), so a far-off moment is looked at again at least this often.
VALIDITY_RECHECK_SECONDS = 3600.0

Stamps = dict[Path, FileStamp | None]


class Trigger(StrEnum):
    """What started a reload: the `trigger` field of its log event."""

    SIGNAL = "signal"
    CERTIFICATE_FILES_CHANGED = "certificate_files_changed"
    CERTIFICATE_VALIDITY_CHANGED = "certificate_validity_changed"
    TICKET_KEY_ROTATION = "ticket_key_rotation"


class Reloader:
    """Runs the reloads of one running `Server`: on request (SIGHUP), and when certificate
    files change or a certificate's validity begins or ends."""

    def __init__(
        self,
        server: Server,
        *,
        around_reload: Callable[[], contextlib.AbstractContextManager[object]] = (
            contextlib.nullcontext
        ),
    ) -> None:
        self._server = server
        # Wraps each requested (SIGHUP) reload, whatever its outcome: the daemon's sd_notify
        # RELOADING=1 ... READY=1.
        self._around_reload = around_reload
        self._lock = trio.Lock()
        self._requests, self._pending = trio.open_memory_channel[None](1)
        # Set, then replaced, whenever a reload put a new config in force: the certificate
        # watcher wakes to re-read its interval and files.
        self._config_swapped = trio.Event()
        # The identities of the files the serving snapshot was built from. Taken before the
        # server builds its snapshot, so that a change in between is seen, not lost.
        self._stamps: Stamps = tls_file_stamps(server.config)
        self._validity_handled: datetime | None = None

    def request_reload(self) -> None:
        """Ask for a config reload (SIGHUP). Ignored during a drain; coalesced while pending."""
        if self._server.draining:
            get_logger().info(NoticeKind.RELOAD_IGNORED.value, reason="draining")
            return
        with contextlib.suppress(trio.WouldBlock):
            self._requests.send_nowait(None)

    async def run(self) -> None:
        """Serve reload requests and watch the certificates until cancelled; the server must
        be running (its snapshot built)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_certificates)
            nursery.start_soon(self._rotate_ticket_keys)
            async for _ in self._pending:
                with self._around_reload():
                    await self.reload_config()

    async def reload_config(self) -> bool:
        """Re-read the config file and every certificate; switch to them if all are valid.

        Returns:
            True when the new config is in force; False when it was refused (and logged) or a
            drain began.
        """
        async with self._lock:
            if self._server.draining:
                return False
            try:
                config, warnings = await trio.to_thread.run_sync(
                    load_config_with_warnings, self._server.config.source
                )
                stamps = tls_file_stamps(config)
                tls = await trio.to_thread.run_sync(build_tls, config)
                previous = self._server.config
                diff = await self._server.reconfigure(config, tls)
            except ConfigError as exc:
                self._failed(Trigger.SIGNAL, [str(problem) for problem in exc.problems])
                return False
            except ListenerBindError as exc:
                self._failed(Trigger.SIGNAL, [str(exc)])
                return False
            except Exception as exc:  # a reload must never take a serving daemon down
                self._failed(Trigger.SIGNAL, [f"internal error: {exc!r}"], exc_info=True)
                return False
            if diff is None:
                get_logger().info(NoticeKind.RELOAD_IGNORED.value, reason="draining")
                return False
            self._stamps = stamps
            self._config_swapped.set()
            self._config_swapped = trio.Event()
            self._server.metrics.config_reload(ReloadResult.SUCCESS)
            notes = [str(warning) for warning in (*warnings, *tls.warnings)]
            if config.metrics != previous.metrics:
                # prometheus_client's server cannot move; the old endpoint keeps serving.
                notes.append("[metrics] changed: the metrics endpoint moves on restart only")
            get_logger().info(NoticeKind.CONFIG_RELOADED.value, **diff.counts(), warnings=notes)
            return True

    async def reload_certificates(self, trigger: Trigger) -> bool:
        """Rebuild the TLS snapshot of the running config from the files as they are now.

        Returns:
            True when new handshakes use the new snapshot; False when the certificates were
            refused (and logged, the old snapshot still serving) or a drain began.
        """
        async with self._lock:
            if self._server.draining:
                return False
            config = self._server.config
            # Recorded whatever the outcome: a broken renewal is reported once, and tried
            # again when the files change again, not on every look.
            self._stamps = tls_file_stamps(config)
            try:
                tls: TlsSnapshot = await trio.to_thread.run_sync(build_tls, config)
            except ConfigError as exc:
                self._failed(trigger, [str(problem) for problem in exc.problems])
                return False
            except Exception as exc:
                self._failed(trigger, [f"internal error: {exc!r}"], exc_info=True)
                return False
            # A drain that began meanwhile accepts nothing more, so the swap is harmless then.
            self._server.replace_tls(tls)
            self._server.metrics.config_reload(ReloadResult.SUCCESS)
            get_logger().info(
                NoticeKind.CERTIFICATES_RELOADED.value,
                trigger=trigger.value,
                warnings=[str(warning) for warning in tls.warnings],
            )
            return True

    def _failed(self, trigger: Trigger, problems: list[str], *, exc_info: bool = False) -> None:
        self._server.metrics.config_reload(ReloadResult.FAILURE)
        _log_failure(trigger, problems, exc_info=exc_info)

    async def _watch_certificates(self) -> None:
        while True:
            swapped = self._config_swapped
            interval = self._server.config.reload_certificates_interval or math.inf
            with trio.move_on_after(min(interval, self._until_validity_changes())):
                await swapped.wait()
            if swapped.is_set():
                continue  # another config: look at its interval and snapshot
            due = self._server.tls.next_change
            if due is not None and due != self._validity_handled and due <= _now():
                self._validity_handled = due
                await self.reload_certificates(Trigger.CERTIFICATE_VALIDITY_CHANGED)
            elif interval < math.inf and await self._files_changed():
                await self.reload_certificates(Trigger.CERTIFICATE_FILES_CHANGED)

    async def _rotate_ticket_keys(self) -> None:
        """CONTRACT.md: Python's ssl cannot set ticket keys, so every context is rebuilt on a
        timer; OpenSSL gives each new context fresh keys, and tickets issued under the old
        ones fall back to a full handshake."""
        while True:
            swapped = self._config_swapped
            interval = self._server.config.ticket_key_rotation_interval or math.inf
            with trio.move_on_after(interval):
                await swapped.wait()
            if not swapped.is_set():
                await self.reload_certificates(Trigger.TICKET_KEY_ROTATION)

    def _until_validity_changes(self) -> float:
        due = self._server.tls.next_change
        if due is None or due == self._validity_handled:
            return math.inf
        seconds = (due - _now()).total_seconds()
        return min(max(seconds, 0.0), VALIDITY_RECHECK_SECONDS)

    async def _files_changed(self) -> bool:
        """True once the files differ from those last loaded and have stopped changing."""
        # A few stat calls on local files: cheap enough for the event loop.
        current = tls_file_stamps(self._server.config)
        if current == self._stamps:
            return False
        for _ in range(CERTIFICATE_SETTLE_ROUNDS_MAX):
            await trio.sleep(CERTIFICATE_SETTLE_SECONDS)
            settled = tls_file_stamps(self._server.config)
            if settled == current:
                break
            current = settled
        return True


def _now() -> datetime:
    return datetime.now(UTC)


def _log_failure(trigger: Trigger, problems: list[str], *, exc_info: bool = False) -> None:
    get_logger().error(
        NoticeKind.CONFIG_RELOAD_FAILED.value,
        trigger=trigger.value,
        problems=problems,
        exc_info=exc_info,
    )
