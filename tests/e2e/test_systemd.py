"""tlsgate as systemd runs it: sd_notify, socket activation, dropping root, the unit files.

No systemd runs here. What it would do is done by hand, through the same interfaces: a datagram
socket given as NOTIFY_SOCKET that the test reads, sockets bound by the test and passed as fds
3, 4, ... with LISTEN_FDS/LISTEN_FDNAMES and a LISTEN_PID naming the daemon
(`tests.helpers.launch` sets it, then execs the daemon under the same pid). Daemons are
`python -m tlsgate run -c FILE` subprocesses, as in test_daemon.py.
"""

from __future__ import annotations

import configparser
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import CertFiles
from tests.e2e.test_daemon import Daemon, Wire, backend_address
from tests.helpers.gateway import SMTP_BACKEND, Gateway, running_gateway
from tlsgate.config import load_config
from tlsgate.service.socket_match import InheritedSocket, match_sockets

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
START_TIMEOUT_SECONDS = 20.0
# CONTRACT.md: generous bounds on 2-core machines.
PROMPT_SECONDS = 5.0
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@pytest.fixture(scope="module")
def backend(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The legacy SMTP backend every daemon here relays to."""
    with running_gateway(
        [{"name": "unused", "protocol": "smtp", "tls": "none", "backend": SMTP_BACKEND}],
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("systemd") / "unused.toml",
    ) as running:
        yield running


def write_config(
    directory: Path,
    cert_files: CertFiles,
    backend: str,
    listeners: Sequence[tuple[str, str, str]],
    *,
    top: str = "",
) -> Path:
    """A config with one SMTP listener per (name, listen, tls)."""
    blocks = [
        f'[[listener]]\nname = "{name}"\nlisten = "{listen}"\nprotocol = "smtp"\n'
        f'tls = "{tls}"\nbackend = "{backend}"\n'
        for name, listen, tls in listeners
    ]
    config = directory / "tlsgate.toml"
    config.write_text(
        f'{top}\n[log]\nformat = "json"\n\n[[certificate]]\ncert = "{cert_files.cert_file}"\n'
        f'key = "{cert_files.key_file}"\n\n' + "\n".join(blocks)
    )
    return config


class Notifications:
    """A NOTIFY_SOCKET, read by a thread: the kernel queues only ~10 datagrams
    (net.unix.max_dgram_qlen), and a daemon pinging a full queue would stall."""

    def __init__(self) -> None:
        self.address = f"@tlsgate-test-{uuid.uuid4().hex}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + self.address[1:])
        self._queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self._socket.recv(4096)
            except OSError:
                return  # closed
            self._queue.put(data.decode())

    def next(self, timeout: float = START_TIMEOUT_SECONDS) -> dict[str, str]:
        """The next message as its fields; WATCHDOG=1 pings are recorded and skipped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no notification within {timeout} s; seen: {self.seen}"
            try:
                message = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(message)
            if message != "WATCHDOG=1":
                return dict(line.split("=", 1) for line in message.split("\n"))

    def drain(self) -> list[str]:
        """Every message waiting now, watchdog pings included."""
        messages: list[str] = []
        while True:
            try:
                messages.append(self._queue.get_nowait())
            except queue.Empty:
                self.seen.extend(messages)
                return messages

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(timeout=PROMPT_SECONDS)


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    receiver = Notifications()
    yield receiver
    receiver.close()


def _env(extra: dict[str, str]) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    pythonpath = f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    # Nothing systemd-ish leaks in from the environment the tests themselves run in.
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))
    }
    return {**base, "PYTHONPATH": pythonpath, **extra}


class ServiceDaemon(Daemon):
    """`tlsgate run` started through `tests.helpers.launch`, as systemd would start it."""

    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str] | None = None,
        sockets: Sequence[socket.socket] = (),
        pid_vars: Sequence[str] = (),
        mdwe: bool = False,
    ) -> None:
        self.stderr_path = config.with_suffix(".stderr")
        launcher = [sys.executable, "-m", "tests.helpers.launch"]
        launcher += ["--fds", ",".join(str(sock.fileno()) for sock in sockets)]
        for name in pid_vars:
            launcher += ["--pid-var", name]
        if mdwe:
            launcher.append("--mdwe")
        command = [*launcher, "--", sys.executable, "-m", "tlsgate", "run", "-c", str(config)]
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=config.parent,
                env=_env(env or {}),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=[sock.fileno() for sock in sockets],
            )
        self.ports: dict[str, int] = {}

    def listening(self) -> dict[str, int]:
        """Listener name -> port, from the `listening` events logged so far."""
        return {
            event["listener"]: int(event["address"].rsplit(":", 1)[1])
            for event in self.events()
            if event.get("event") == "listening"
        }

    def uid_gid_groups(self) -> tuple[list[int], list[int], list[int]]:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return (
            [int(value) for value in fields["Uid"].split()],
            [int(value) for value in fields["Gid"].split()],
            [int(value) for value in fields["Groups"].split()],
        )


@pytest.fixture
def daemons() -> Iterator[list[ServiceDaemon]]:
    """Daemons a test starts; none outlives it."""
    started: list[ServiceDaemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound and listening, as systemd hands them over."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(16)
    return sock


def starttls_session(port: int, client: ssl.SSLContext) -> str:
    """A STARTTLS session; returns the TLS version, proving the listener mediates STARTTLS."""
    with Wire(port) as wire:
        assert wire.reply().startswith(b"220 ")
        assert b"STARTTLS" in wire.smtp(b"EHLO activated.test")
        wire.start_tls(client)
        assert wire.smtp(b"EHLO activated.test").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")
        assert isinstance(wire.sock, ssl.SSLSocket)
        return str(wire.sock.version())


def implicit_session(port: int, client: ssl.SSLContext) -> bytes:
    """TLS from the first byte, then the greeting; fails on a STARTTLS listener."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.recv(4096)


# ---- sd_notify ------------------------------------------------------------------------------


def test_ready_comes_once_every_listener_accepts(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    listeners = [("submission", "127.0.0.1:0", "starttls"), ("smtps", "127.0.0.1:0", "implicit")]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    daemon = ServiceDaemon(config, env={"NOTIFY_SOCKET": notifications.address})
    daemons.append(daemon)
    ready = notifications.next()
    # Read right after READY=1, not waited for: both ports must be listening by now.
    ports = daemon.listening()
    assert ready == {"READY": "1", "STATUS": "serving 2 listeners: submission, smtps"}
    assert set(ports) == {"submission", "smtps"}
    client = cert_files.client_context()
    assert starttls_session(ports["submission"], client).startswith("TLSv1")
    assert implicit_session(ports["smtps"], client).startswith(b"220 ")


def test_sighup_sends_reloading_with_monotonic_usec_then_ready(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    listeners = [("submission", "127.0.0.1:0", "starttls")]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    daemon = ServiceDaemon(config, env={"NOTIFY_SOCKET": notifications.address})
    daemons.append(daemon)
    assert notifications.next()["READY"] == "1"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.signal(signal.SIGHUP)
    reloading = notifications.next()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading["RELOADING"] == "1"
    # The same CLOCK_MONOTONIC as systemd's, read while the reload ran.
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    assert "config_reloaded" not in [event["event"] for event in daemon.events()]
    assert notifications.next()["READY"] == "1"
    assert "config_reloaded" in [event["event"] for event in daemon.events()]


def test_a_refused_reload_still_ends_with_ready(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    listeners = [("submission", "127.0.0.1:0", "starttls")]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    daemon = ServiceDaemon(config, env={"NOTIFY_SOCKET": notifications.address})
    daemons.append(daemon)
    assert notifications.next()["READY"] == "1"
    config.write_text(config.read_text().replace('protocol = "smtp"', 'protocol = "smpt"'))
    daemon.signal(signal.SIGHUP)
    assert notifications.next()["RELOADING"] == "1"
    assert notifications.next()["READY"] == "1"  # the old config still serves
    assert "config_reload_failed" in [event["event"] for event in daemon.events()]
    assert starttls_session(daemon.listening()["submission"], cert_files.client_context())


def test_sigterm_sends_stopping_when_the_drain_starts_then_exits_0(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    listeners = [("submission", "127.0.0.1:0", "starttls")]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    daemon = ServiceDaemon(config, env={"NOTIFY_SOCKET": notifications.address})
    daemons.append(daemon)
    assert notifications.next()["READY"] == "1"
    with Wire(daemon.listening()["submission"]) as session:
        assert session.reply().startswith(b"220 ")
        daemon.signal(signal.SIGTERM)
        # While a session is still open: STOPPING=1 marks the start of the drain, not its end.
        assert notifications.next(PROMPT_SECONDS)["STOPPING"] == "1"
        assert session.smtp(b"NOOP").startswith(b"250")
        assert session.smtp(b"QUIT").startswith(b"221")
    assert daemon.wait() == 0, daemon.stderr()
    assert [message for message in notifications.drain() if message != "WATCHDOG=1"] == []


def test_watchdog_pings_at_half_of_watchdog_usec(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    listeners = [("submission", "127.0.0.1:0", "starttls")]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    env = {"NOTIFY_SOCKET": notifications.address, "WATCHDOG_USEC": "400000"}
    daemon = ServiceDaemon(config, env=env, pid_vars=["WATCHDOG_PID"])
    daemons.append(daemon)
    assert notifications.next()["READY"] == "1"
    notifications.drain()
    time.sleep(2.0)
    pings = notifications.drain()
    # Every 0.2 s: 10 in 2 s; loose bounds for a busy machine, tight enough to tell "half the
    # interval" from "the whole interval" (5) and from a busy loop.
    assert set(pings) == {"WATCHDOG=1"}
    assert 7 <= len(pings) <= 13, pings


def test_no_watchdog_pings_when_watchdog_pid_names_another_process(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    listeners = [("submission", "127.0.0.1:0", "starttls")]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    env = {
        "NOTIFY_SOCKET": notifications.address,
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": "1",
    }
    daemons.append(ServiceDaemon(config, env=env))
    assert notifications.next()["READY"] == "1"
    time.sleep(1.0)
    assert notifications.drain() == []
    assert "WATCHDOG=1" not in notifications.seen


# ---- socket activation ----------------------------------------------------------------------


def test_sockets_are_matched_by_distinct_names_and_serve_real_sessions(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    # The config's own addresses say nothing about the inherited sockets: only the names do.
    listeners = [
        ("submission", "127.0.0.1:0", "starttls"),
        ("smtps", "127.0.0.1:0", "implicit"),
        ("own", "127.0.0.1:0", "starttls"),  # no socket passed: binds its own
    ]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    smtps, submission = listening_socket(), listening_socket()
    with smtps, submission:
        env = {
            "NOTIFY_SOCKET": notifications.address,
            "LISTEN_FDS": "2",
            "LISTEN_FDNAMES": "smtps:submission",
        }
        daemon = ServiceDaemon(
            config, env=env, sockets=[smtps, submission], pid_vars=["LISTEN_PID"]
        )
        daemons.append(daemon)
        assert notifications.next()["READY"] == "1"
        expected = {"smtps": smtps.getsockname()[1], "submission": submission.getsockname()[1]}
    ports = daemon.listening()
    assert {name: ports[name] for name in expected} == expected
    assert ports["own"] not in expected.values()
    client = cert_files.client_context()
    # Closed in the test process: only the daemon's copies remain, and they serve.
    assert implicit_session(expected["smtps"], client).startswith(b"220 ")
    assert starttls_session(expected["submission"], client).startswith("TLSv1")
    assert starttls_session(ports["own"], client).startswith("TLSv1")


def test_sockets_sharing_a_name_are_matched_by_bound_address(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    daemons: list[ServiceDaemon],
) -> None:
    smtps, submission = listening_socket(), listening_socket()
    with smtps, submission:
        listeners = [
            ("submission", f"127.0.0.1:{submission.getsockname()[1]}", "starttls"),
            ("smtps", f"127.0.0.1:{smtps.getsockname()[1]}", "implicit"),
        ]
        config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
        env = {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "tlsgate.socket:tlsgate.socket"}
        # The passed order is not the config's order. The test still holds both addresses, so
        # the daemon could not have bound them itself.
        daemon = ServiceDaemon(
            config, env=env, sockets=[smtps, submission], pid_vars=["LISTEN_PID"]
        )
        daemons.append(daemon)
        daemon.wait_for_event("listening")
        ports = {"smtps": smtps.getsockname()[1], "submission": submission.getsockname()[1]}
    client = cert_files.client_context()
    assert implicit_session(ports["smtps"], client).startswith(b"220 ")
    assert starttls_session(ports["submission"], client).startswith("TLSv1")


def test_an_inherited_socket_matching_no_listener_exits_1_naming_it(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
) -> None:
    listeners = [("submission", "127.0.0.1:0", "starttls")]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    with listening_socket() as stray:
        env = {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "tlsgate.socket"}
        daemon = ServiceDaemon(config, env=env, sockets=[stray], pid_vars=["LISTEN_PID"])
        try:
            assert daemon.wait(START_TIMEOUT_SECONDS) == 1
        finally:
            daemon.stop()
        port = stray.getsockname()[1]
    lines = [line for line in daemon.stderr().splitlines() if not line.startswith("{")]
    assert lines == [
        f"tlsgate: inherited socket fd 3 (127.0.0.1:{port}, FileDescriptorName=tlsgate.socket): "
        "no listener has that name or that address; give its unit "
        "FileDescriptorName=LISTENER, or make its ListenStream= a listener's `listen`"
    ]


def test_sockets_meant_for_another_process_are_left_alone(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    daemons: list[ServiceDaemon],
) -> None:
    listeners = [("submission", "127.0.0.1:0", "starttls")]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    with listening_socket() as passed:
        env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "submission"}
        daemon = ServiceDaemon(config, env=env, sockets=[passed])
        daemons.append(daemon)
        daemon.wait_for_event("listening")
        assert daemon.listening()["submission"] != passed.getsockname()[1]


def test_a_reload_adding_a_listener_binds_it_while_inherited_ones_keep_serving(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    address = backend_address(backend)
    config = write_config(
        tmp_path, cert_files, address, [("submission", "127.0.0.1:0", "starttls")]
    )
    with listening_socket() as passed:
        env = {
            "NOTIFY_SOCKET": notifications.address,
            "LISTEN_FDS": "1",
            "LISTEN_FDNAMES": "submission",
        }
        daemon = ServiceDaemon(config, env=env, sockets=[passed], pid_vars=["LISTEN_PID"])
        daemons.append(daemon)
        assert notifications.next()["READY"] == "1"
        inherited_port = passed.getsockname()[1]
    listeners = [("submission", "127.0.0.1:0", "starttls"), ("added", "127.0.0.1:0", "implicit")]
    write_config(tmp_path, cert_files, address, listeners)
    daemon.signal(signal.SIGHUP)
    assert notifications.next()["RELOADING"] == "1"
    assert notifications.next()["READY"] == "1"
    ports = daemon.listening()
    assert ports["submission"] == inherited_port
    client = cert_files.client_context()
    assert implicit_session(ports["added"], client).startswith(b"220 ")
    assert starttls_session(inherited_port, client).startswith("TLSv1")


# ---- dropping root --------------------------------------------------------------------------


def free_privileged_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free loopback port below 1024")


@ROOT_ONLY
def test_started_as_root_it_binds_a_low_port_then_serves_as_user_and_group(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    tmp_path.chmod(0o755)  # the daemon, no longer root, only reads what it already opened
    listeners = [("submission", f"127.0.0.1:{free_privileged_port()}", "starttls")]
    config = write_config(
        tmp_path,
        cert_files,
        backend_address(backend),
        listeners,
        top='user = "nobody"\ngroup = "nogroup"',
    )
    daemon = ServiceDaemon(config, env={"NOTIFY_SOCKET": notifications.address})
    daemons.append(daemon)
    assert notifications.next()["READY"] == "1"
    nobody, nogroup = 65534, 65534
    assert daemon.uid_gid_groups() == ([nobody] * 4, [nogroup] * 4, [nogroup])
    assert "privileges_dropped" in [event["event"] for event in daemon.events()]
    assert starttls_session(daemon.listening()["submission"], cert_files.client_context())


@ROOT_ONLY
def test_run_exits_1_when_the_user_does_not_exist_and_check_does_not_mind(
    tmp_path: Path, cert_files: CertFiles, backend: Gateway
) -> None:
    config = write_config(
        tmp_path,
        cert_files,
        backend_address(backend),
        [("submission", "127.0.0.1:0", "starttls")],
        top='user = "tlsgate-no-such-user"',
    )

    def tlsgate(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tlsgate", command, "-c", str(config)],
            cwd=REPO,
            env=_env({}),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_SECONDS,
            check=False,
        )

    run = tlsgate("run")
    assert run.returncode == 1
    assert [line for line in run.stderr.splitlines() if not line.startswith("{")] == [
        "tlsgate: user 'tlsgate-no-such-user' (config key `user`) does not exist"
    ]
    assert "listening" not in run.stderr  # refused before anything was bound
    check = tlsgate("check")
    assert (check.returncode, check.stdout) == (0, "config OK: 1 listener\n"), check.stderr


# ---- the unit files -------------------------------------------------------------------------


def installed_tlsgate() -> str:
    """The `tlsgate` command this test run uses: on PATH, else next to this Python (a venv
    that is not activated), else `python -m tlsgate`."""
    found = shutil.which("tlsgate") or shutil.which(
        "tlsgate", path=str(Path(sys.executable).parent)
    )
    return found or f"{sys.executable} -m tlsgate"


def test_the_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    # CONTRACT.md: verify wants the ExecStart binary to exist, so a copy points at this one.
    for unit in [*UNITS.glob("*.service"), *UNITS.glob("*.socket")]:
        text = unit.read_text().replace("/opt/tlsgate/bin/tlsgate", installed_tlsgate())
        (tmp_path / unit.name).write_text(text)
    units = sorted(path.name for path in tmp_path.iterdir())
    assert units == ["tlsgate-submission.socket", "tlsgate.service", "tlsgate.socket"]
    result = subprocess.run(
        [analyze, "verify", *(f"./{name}" for name in units)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown or misspelt settings are only warnings to systemd: any output is a failure here.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(_joined_repeats((UNITS / name).read_text()))
    return parser


def _joined_repeats(text: str) -> str:
    """systemd repeats keys (ListenStream=); configparser would keep the last, so they are
    numbered: ListenStream, ListenStream#2, ..."""
    counts: dict[tuple[str, str], int] = {}
    lines, section = [], ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            counts[section, key] = counts.get((section, key), 0) + 1
            if counts[section, key] > 1:
                line = f"{key}#{counts[section, key]}={value}"
        lines.append(line)
    return "\n".join(lines)


def listen_streams(name: str) -> list[tuple[str, int]]:
    socket_section = unit(name)["Socket"]
    streams = [
        value for key, value in socket_section.items() if key.split("#")[0] == "ListenStream"
    ]
    addresses = []
    for stream in streams:
        match = re.fullmatch(r"\[?([0-9a-fA-F:.]+)\]?:([0-9]+)", stream)
        assert match, f"{name}: ListenStream={stream} is not HOST:PORT"
        addresses.append((match.group(1), int(match.group(2))))
    return addresses


def test_the_shipped_socket_units_fit_the_reference_config(tmp_path: Path) -> None:
    """Every socket the units pass finds its listener in conf/tlsgate.toml, by the same rule
    the daemon applies; both units at once, as an admin enabling both would have them."""
    reference = load_config(REPO / "conf" / "tlsgate.toml")
    shared = [
        InheritedSocket(3 + index, "tlsgate.socket", address)
        for index, address in enumerate(listen_streams("tlsgate.socket"))
    ]
    named = unit("tlsgate-submission.socket")["Socket"]["FileDescriptorName"]
    [submission] = listen_streams("tlsgate-submission.socket")
    # tlsgate-submission.socket replaces 587 in tlsgate.socket, so that port is left out.
    shared = [inherited for inherited in shared if inherited.address != ("0.0.0.0", 587)]
    sockets = [*shared, InheritedSocket(3 + len(shared), named, submission)]
    matched = match_sockets(sockets, reference.listeners)
    # The usual mail port table; listeners on loopback (an outbound relay) bind their own.
    assert sorted(matched) == ["pop3", "pop3s", "smtp", "submission", "submissions"]
    assert matched["submission"] == (sockets[-1].fd,)


def test_the_service_unit_lets_the_drain_finish_and_is_hardened() -> None:
    service = unit("tlsgate.service")["Service"]
    reference = load_config(REPO / "conf" / "tlsgate.toml")
    assert float(service["TimeoutStopSec"].removesuffix("s")) > reference.shutdown_timeout
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith("tlsgate run -c /etc/tlsgate/tlsgate.toml")
    assert service["ExecReload#2"] == "/bin/kill -HUP $MAINPID"
    assert service["User"] == "tlsgate"
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    for setting, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service",
        "MemoryDenyWriteExecute": "yes",
    }.items():
        assert service[setting] == value, setting


def test_the_sysusers_snippet_creates_the_units_user(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed (Debian: apt-get install systemd)")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(UNITS / "tlsgate.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    [entry] = [line for line in passwd if line.startswith("tlsgate:")]
    assert entry.endswith(":/nonexistent:/usr/sbin/nologin")
    assert unit("tlsgate.service")["Service"]["User"] == entry.split(":")[0]


# ---- MemoryDenyWriteExecute -----------------------------------------------------------------


def test_tls_sessions_work_under_memory_deny_write_execute(
    tmp_path: Path,
    cert_files: CertFiles,
    backend: Gateway,
    notifications: Notifications,
    daemons: list[ServiceDaemon],
) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: CPython, OpenSSL and cryptography's bindings
    must never need writable-and-executable memory. The kernel's PR_SET_MDWE enforces the same
    rule as systemd's seccomp filter."""
    probe = subprocess.run(
        [sys.executable, "-m", "tests.helpers.launch", "--mdwe", "--", sys.executable, "-c", ""],
        cwd=REPO,
        env=_env({}),
        check=False,
        timeout=START_TIMEOUT_SECONDS,
    )
    if probe.returncode == 75:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3+)")
    listeners = [("submission", "127.0.0.1:0", "starttls"), ("smtps", "127.0.0.1:0", "implicit")]
    config = write_config(tmp_path, cert_files, backend_address(backend), listeners)
    env = {"NOTIFY_SOCKET": notifications.address}
    daemon = ServiceDaemon(config, env=env, mdwe=True)
    daemons.append(daemon)
    assert notifications.next()["READY"] == "1"
    client = cert_files.client_context()
    ports = daemon.listening()
    assert starttls_session(ports["submission"], client).startswith("TLSv1")
    assert implicit_session(ports["smtps"], client).startswith(b"220 ")
    daemon.signal(signal.SIGHUP)  # a reload rebuilds every TLS context under the rule too
    assert notifications.next()["RELOADING"] == "1"
    assert notifications.next()["READY"] == "1"
    assert "config_reloaded" in [event["event"] for event in daemon.events()]


def test_the_mdwe_launcher_really_forbids_writable_executable_memory() -> None:
    """The control for the test above: under --mdwe a W+X mapping fails."""
    code = (
        "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    )
    launch = [sys.executable, "-m", "tests.helpers.launch"]
    results = [
        subprocess.run(
            [*launch, *flags, "--", sys.executable, "-c", code],
            cwd=REPO,
            env=_env({}),
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_SECONDS,
        )
        for flags in ([], ["--mdwe"])
    ]
    if results[1].returncode == 75:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert results[0].returncode == 0, results[0].stderr
    assert "PermissionError" in results[1].stderr
