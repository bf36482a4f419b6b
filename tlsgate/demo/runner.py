"""`tlsgate demo`: the legacy backend and tlsgate in one process, on loopback ports.

Theory of operation: a private temporary directory gets a fresh self-signed certificate and a
real TOML config file, which goes through the same loader as `tlsgate run` (so the demo also
proves the config path). One trio nursery then runs the legacy SMTP and POP3 servers and
tlsgate's `serve()`. Interactively, it prints the ports and commands and waits for Ctrl-C; with
`check`, it drives one stdlib client session per listener in worker threads and reports.
"""

from __future__ import annotations

import poplib
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from tlsgate.config import load_config
from tlsgate.demo import clients
from tlsgate.demo.legacy import (
    DEMO_USERS,
    LegacyPop3Server,
    LegacySmtpServer,
    MailStore,
    serve_pop3,
    serve_smtp,
)
from tlsgate.demo.listeners import LISTENERS, DemoListener, announcement, render_config
from tlsgate.demo.selfsigned import SelfSignedPaths, write_self_signed
from tlsgate.net.server import ListenerBindError, serve
from tlsgate.observe.logs import configure_logging

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
# A whole client session, on top of the clients' own per-operation socket timeouts.
CHECK_SESSION_TIMEOUT_SECONDS = 30.0
LOOPBACK = "127.0.0.1"
# What a failed client session raises: socket, TLS and SMTP errors are all OSErrors.
_CLIENT_ERRORS = (
    OSError,
    EOFError,
    poplib.error_proto,
    trio.TooSlowError,
    clients.CheckFailedError,
)


@dataclass(frozen=True, slots=True)
class _Workdir:
    directory: Path
    certificate: SelfSignedPaths
    message: Path  # a sample message for the curl commands

    def write_config(self, text: str) -> Path:
        path = self.directory / "tlsgate.toml"
        path.write_text(text)
        return path


def run_demo(*, check: bool) -> int:
    """Run the demo (until Ctrl-C) or its self-check; returns the process exit code."""
    with tempfile.TemporaryDirectory(prefix="tlsgate-demo-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o700)  # mkdtemp's mode already; said again because the key lives here
        message = directory / "message.txt"
        message.write_bytes(clients.demo_message("curl"))
        workdir = _Workdir(directory, write_self_signed(directory), message)
        try:
            return trio.run(_demo, workdir, check)
        except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
            return EXIT_FAILED if check else EXIT_OK
        except BaseExceptionGroup as group:
            interrupted, rest = group.split(KeyboardInterrupt)
            if interrupted is None or rest is not None:
                raise
            return EXIT_FAILED if check else EXIT_OK


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _port_is_free(port: int) -> bool:
    """Whether `LOOPBACK:port` can be bound now (as trio binds: with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _choose_ports(check: bool) -> dict[str, int]:
    """The usual demo ports; a busy one (and every one in check mode) becomes port 0."""
    return {
        listener.name: listener.demo_port if not check and _port_is_free(listener.demo_port) else 0
        for listener in LISTENERS
    }


async def _demo(workdir: _Workdir, check: bool) -> int:
    store = MailStore()
    certificate = workdir.certificate
    async with trio.open_nursery() as nursery:
        smtp_port: int = await nursery.start(serve_smtp, LegacySmtpServer(store), LOOPBACK)
        pop3_port: int = await nursery.start(serve_pop3, LegacyPop3Server(store), LOOPBACK)
        config_path = workdir.write_config(
            render_config(
                cert=certificate.cert.name,
                key=certificate.key.name,
                ports=_choose_ports(check),
                backends={"smtp": smtp_port, "pop3": pop3_port},
                log_level="warning" if check else "info",
            )
        )
        config = load_config(config_path)
        configure_logging(config.log)
        try:
            bound: dict[str, tuple[str, int]] = await nursery.start(serve, config)
        except ListenerBindError as exc:
            _say(f"tlsgate demo: {exc}")
            nursery.cancel_scope.cancel()
            return EXIT_FAILED
        ports = {name: address[1] for name, address in bound.items()}
        if check:
            code = await _run_checks(ports, certificate.cert, store)
        else:
            backends = (smtp_port, pop3_port)
            text = announcement(ports, config_path, certificate.cert, workdir.message, backends)
            await _announce_and_wait_for_interrupt(text)
            code = EXIT_OK
        nursery.cancel_scope.cancel()
    return code


async def _announce_and_wait_for_interrupt(text: str) -> None:
    # The handler goes in before the text that says "Press Ctrl-C" comes out, so a Ctrl-C
    # right after it is a clean stop too, not a KeyboardInterrupt somewhere in the nursery.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        _say(text)
        async for _ in signals:
            break
    _say("\ntlsgate demo: stopped.")


async def _in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(CHECK_SESSION_TIMEOUT_SECONDS):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


async def _run_checks(ports: dict[str, int], cafile: Path, store: MailStore) -> int:
    """One session per listener, in table order (the POP3 ones read what SMTP delivered)."""
    failures = 0
    for listener in LISTENERS:
        target = clients.Target(ports[listener.name], cafile, DEMO_USERS[clients.USER])
        try:
            detail = await _check_one(listener, target, store)
        except _CLIENT_ERRORS as exc:
            failures += 1
            _say(f"FAIL  {_label(listener, target.port)}  {_reason(exc)}")
        else:
            _say(f"ok    {_label(listener, target.port)}  {detail}")
    return EXIT_OK if failures == 0 else EXIT_FAILED


def _label(listener: DemoListener, port: int) -> str:
    return f"{listener.name:<11} {f'{listener.usual_port}->{port}':<12}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {CHECK_SESSION_TIMEOUT_SECONDS:g} s"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, clients.CheckFailedError) else f"{type(exc).__name__}: {text}"


async def _check_one(listener: DemoListener, target: clients.Target, store: MailStore) -> str:
    if listener.protocol == "pop3":
        mailbox = store.mailbox(clients.USER)
        if not mailbox:
            raise clients.CheckFailedError("no message to retrieve (the SMTP checks failed)")
        check_pop3 = clients.pop3_implicit if listener.tls == "implicit" else clients.pop3_stls
        return await _in_thread(lambda: check_pop3(target, mailbox[0].data))
    sent_before = len(store.messages)
    if listener.tls == "auto":
        messages = (
            clients.demo_message(f"{listener.name} (implicit TLS)"),
            clients.demo_message(f"{listener.name} (STARTTLS)"),
        )
        detail = await _in_thread(lambda: clients.smtp_auto(target, messages))
        sent = list(messages)
    else:
        message = clients.demo_message(listener.name)
        check_smtp = clients.smtp_implicit if listener.tls == "implicit" else clients.smtp_starttls
        detail = await _in_thread(lambda: check_smtp(target, message))
        sent = [message]
    delivered = [delivery.body for delivery in store.messages[sent_before:]]
    if delivered != sent:
        raise clients.CheckFailedError("the backend did not receive the message byte-identical")
    return detail
