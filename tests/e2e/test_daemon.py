"""`tlsgate run` as an administrator runs it: a subprocess, its signals, exit codes and log.

Each test writes a config into `tmp_path` (listeners on port 0, JSON log on stderr), starts
`python -m tlsgate run -c FILE`, learns the bound ports from the `listening` events and talks to
them over loopback. The plaintext SMTP backend behind it is the legacy demo server, run in this
process by `running_gateway`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.conftest import CertFiles
from tests.helpers.gateway import SMTP_BACKEND, Gateway, running_gateway

REPO = Path(__file__).resolve().parents[2]
IO_TIMEOUT_SECONDS = 10.0
START_TIMEOUT_SECONDS = 20.0
# CONTRACT.md: generous bounds. "Promptly" is well under a second here; 5 s catches a hang.
PROMPT_SECONDS = 5.0
PASSWORD = "demo-password"


@pytest.fixture(scope="module")
def backend(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The legacy SMTP backend (and an in-process tlsgate the daemon tests do not use)."""
    with running_gateway(
        [{"name": "unused", "protocol": "smtp", "tls": "none", "backend": SMTP_BACKEND}],
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("daemon") / "unused.toml",
    ) as running:
        yield running


def backend_address(gateway: Gateway) -> str:
    return str(gateway.config.listeners[0].backend[0])


def write_config(
    directory: Path,
    cert_files: CertFiles,
    backend: str,
    *,
    shutdown_timeout: float = 10.0,
    listen: str = "127.0.0.1:0",
    level: str = "info",
) -> Path:
    config = directory / "tlsgate.toml"
    config.write_text(
        f"""\
shutdown_timeout = {shutdown_timeout}

[log]
format = "json"
level = "{level}"

[[certificate]]
cert = "{cert_files.cert_file}"
key = "{cert_files.key_file}"

[[listener]]
name = "submission"
listen = "{listen}"
protocol = "smtp"
tls = "starttls"
backend = "{backend}"
"""
    )
    return config


def tlsgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tlsgate", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_SECONDS,
        check=False,
    )


def _env() -> dict[str, str]:
    """Import tlsgate from this checkout even when it is not installed."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


class Daemon:
    """A running `tlsgate run` whose stderr goes to a file the test can read at any time."""

    def __init__(self, config: Path) -> None:
        self.stderr_path = config.with_suffix(".stderr")
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tlsgate", "run", "-c", str(config)],
                cwd=config.parent,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.ports: dict[str, int] = {}

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log so far (a last line still being written is left out)."""
        events: list[dict[str, Any]] = []
        for line in self.stderr().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def wait_for_event(self, name: str, timeout: float = START_TIMEOUT_SECONDS) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [event for event in self.events() if event.get("event") == name]
            if found:
                return found[0]
            assert self.process.poll() is None, f"exited {self.process.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"no {name!r} event: {self.stderr()}"
            time.sleep(0.02)

    def wait_ready(self) -> None:
        listening = self.wait_for_event("listening")
        # Logged once the socket listens; a probe connect would add a session to the log.
        self.ports[listening["listener"]] = int(listening["address"].rsplit(":", 1)[1])

    def port(self, name: str = "submission") -> int:
        return self.ports[name]

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = PROMPT_SECONDS) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=IO_TIMEOUT_SECONDS)


StartDaemon = Callable[[Path], Daemon]


@pytest.fixture
def start_daemon() -> Iterator[StartDaemon]:
    """Start daemons for a test and make sure none outlives it."""
    started: list[Daemon] = []

    def start(config: Path) -> Daemon:
        daemon = Daemon(config)
        started.append(daemon)
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


class Wire:
    """A blocking SMTP client on a plain or TLS socket."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=IO_TIMEOUT_SECONDS
        )
        self.buffer = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.sock.close()

    def reply(self) -> bytes:
        lines: list[bytes] = []
        while not lines or lines[-1][3:4] == b"-":
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError(f"connection closed; unterminated: {self.buffer!r}")
                self.buffer += chunk
            line, _, self.buffer = self.buffer.partition(b"\n")
            lines.append(line + b"\n")
        return b"".join(lines)

    def smtp(self, command: bytes) -> bytes:
        self.sock.sendall(command + b"\r\n")
        return self.reply()

    def start_tls(self, context: ssl.SSLContext) -> None:
        assert self.smtp(b"STARTTLS").startswith(b"220 ")
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def closed_after(self) -> float:
        """Seconds until the server closes the connection."""
        started = time.monotonic()
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return time.monotonic() - started


@dataclass
class Setup:
    tmp_path: Path
    cert_files: CertFiles
    backend: str

    def config(self, *, shutdown_timeout: float = 10.0, listen: str = "127.0.0.1:0") -> Path:
        return write_config(
            self.tmp_path,
            self.cert_files,
            self.backend,
            shutdown_timeout=shutdown_timeout,
            listen=listen,
        )


@pytest.fixture
def setup(tmp_path: Path, cert_files: CertFiles, backend: Gateway) -> Setup:
    return Setup(tmp_path, cert_files, backend_address(backend))


# ---- signals and the drain ----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_signal_with_no_sessions_exits_0_promptly(
    setup: Setup, start_daemon: StartDaemon, signum: signal.Signals
) -> None:
    daemon = start_daemon(setup.config())
    started = time.monotonic()
    daemon.signal(signum)
    assert daemon.wait() == 0, daemon.stderr()
    assert time.monotonic() - started < PROMPT_SECONDS
    assert [e["event"] for e in daemon.events()][-2:] == ["draining", "stopped"]


def test_sigterm_stops_accepting_new_connections_at_once(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(setup.config())
    with Wire(daemon.port()) as open_session:
        assert open_session.reply().startswith(b"220 ")
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_event("draining")
        try:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", daemon.port()), timeout=1.0).close()
        finally:
            assert open_session.smtp(b"QUIT").startswith(b"221")
    assert daemon.wait() == 0


def test_sigterm_lets_an_open_session_finish_its_transaction_then_exits_0(
    setup: Setup, start_daemon: StartDaemon, backend: Gateway
) -> None:
    daemon = start_daemon(setup.config(shutdown_timeout=30))
    messages = len(backend.store.messages)
    with Wire(daemon.port()) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"EHLO draining.test").startswith(b"250")
        wire.start_tls(setup.cert_files.client_context())
        assert wire.smtp(b"EHLO draining.test").startswith(b"250")
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_event("draining")
        assert wire.smtp(b"MAIL FROM:<drain@x>").startswith(b"250")
        assert wire.smtp(b"RCPT TO:<demo@localhost>").startswith(b"250")
        assert wire.smtp(b"DATA").startswith(b"354")
        assert wire.smtp(b"Subject: drain\r\n\r\nsent while draining\r\n.").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")
    # The last session is over: the drain ends long before shutdown_timeout.
    assert daemon.wait() == 0, daemon.stderr()
    assert [m.mail_from for m in backend.store.messages[messages:]] == ["drain@x"]


def test_shutdown_timeout_says_421_to_an_idle_session_closes_it_and_exits_0(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(setup.config(shutdown_timeout=1))
    with Wire(daemon.port()) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"EHLO lingering.test").startswith(b"250")
        daemon.signal(signal.SIGTERM)
        started = time.monotonic()
        # RFC 5321 §3.8: a server shut down from outside says 421 before it closes.
        goodbye = wire.reply()
        elapsed = time.monotonic() - started + wire.closed_after()
    assert goodbye.startswith(b"421 4.3.2 "), goodbye
    assert 0.5 <= elapsed < PROMPT_SECONDS
    assert daemon.wait() == 0, daemon.stderr()
    closed = [e for e in daemon.events() if e["event"] == "closed"]
    assert [e["reason"] for e in closed] == ["shutdown"]


def test_second_signal_closes_open_sessions_at_once(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(setup.config(shutdown_timeout=60))
    with Wire(daemon.port()) as wire:
        assert wire.reply().startswith(b"220 ")
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_event("draining")
        daemon.signal(signal.SIGTERM)
        elapsed = wire.closed_after()
    assert elapsed < PROMPT_SECONDS
    assert daemon.wait() == 0, daemon.stderr()


# ---- exit codes ---------------------------------------------------------------------------


def test_port_already_in_use_exits_1_naming_the_listener(setup: Setup) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = tlsgate("run", "-c", str(setup.config(listen=f"127.0.0.1:{port}")), cwd=REPO)
    assert result.returncode == 1, result.stderr
    message = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(message) == 1, result.stderr
    assert "submission" in message[0]
    assert f"127.0.0.1:{port}" in message[0]
    assert "in use" in message[0]
    assert "Traceback" not in result.stderr


def test_run_with_an_invalid_config_exits_2_with_the_problem_line(setup: Setup) -> None:
    config = setup.config()
    config.write_text(config.read_text().replace(f'backend = "{setup.backend}"', 'backend = "x"'))
    result = tlsgate("run", "-c", str(config), cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'error: {config}: listener[0].backend: expected HOST:PORT, got "x"'
    ]
    assert result.stdout == ""


def test_check_of_a_valid_config_exits_0(setup: Setup) -> None:
    result = tlsgate("check", "-c", str(setup.config()), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config OK: 1 listener\n"


# ---- the JSON log at debug level ----------------------------------------------------------


@pytest.fixture(scope="module")
def auth_session_log(
    cert_files: CertFiles, backend: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The whole stderr of a debug-level daemon that saw AUTH PLAIN and AUTH LOGIN, in the
    clear (refused) and inside TLS (accepted)."""
    directory = tmp_path_factory.mktemp("auth-log")
    daemon = Daemon(write_config(directory, cert_files, backend_address(backend), level="debug"))
    try:
        daemon.wait_ready()
        plain = base64.b64encode(f"\0demo\0{PASSWORD}".encode())
        with Wire(daemon.port()) as wire:
            assert wire.reply().startswith(b"220 ")
            assert wire.smtp(b"EHLO secret.test").startswith(b"250")
            assert wire.smtp(b"AUTH PLAIN " + plain).startswith(b"538")
            wire.start_tls(cert_files.client_context())
            assert wire.smtp(b"EHLO secret.test").startswith(b"250")
            assert wire.smtp(b"AUTH PLAIN " + plain).startswith(b"235")
            assert wire.smtp(b"QUIT").startswith(b"221")
        with Wire(daemon.port()) as wire:
            assert wire.reply().startswith(b"220 ")
            wire.start_tls(cert_files.client_context())
            assert wire.smtp(b"EHLO secret.test").startswith(b"250")
            assert wire.smtp(b"AUTH LOGIN").startswith(b"334")
            assert wire.smtp(base64.b64encode(b"demo")).startswith(b"334")
            assert wire.smtp(base64.b64encode(PASSWORD.encode())).startswith(b"235")
            assert wire.smtp(b"QUIT").startswith(b"221")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        return daemon.stderr()
    finally:
        daemon.stop()


def test_json_log_is_one_object_per_line_on_stderr(auth_session_log: str) -> None:
    lines = auth_session_log.splitlines()
    events = [json.loads(line) for line in lines]
    assert all(isinstance(event, dict) for event in events)
    names = [event["event"] for event in events]
    for name in ("listening", "accepted", "backend_connected", "tls_established", "closed"):
        assert name in names
    assert names.count("starttls") == 2
    assert all("timestamp" in event and "level" in event for event in events)


def test_debug_log_never_holds_an_auth_password(auth_session_log: str) -> None:
    secrets = [
        PASSWORD,
        base64.b64encode(f"\0demo\0{PASSWORD}".encode()).decode(),
        base64.b64encode(PASSWORD.encode()).decode(),
    ]
    assert [secret for secret in secrets if secret in auth_session_log] == []
