"""`workers = 2`: a supervisor and two worker processes, as an administrator runs them.

The daemon is a subprocess (`python -m tlsgate run`); the legacy SMTP backend runs in this
process. Which worker takes a connection is the kernel's choice, so the tests that must see
both workers make enough connections for both to be hit, and check that they were.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509

from tests.conftest import CertFiles
from tests.e2e.test_daemon import (
    PROMPT_SECONDS,
    Daemon,
    StartDaemon,
    Wire,
    backend,
    backend_address,
    start_daemon,
)
from tests.helpers.gateway import Gateway
from tests.helpers.metrics_text import parse_samples, sample
from tlsgate import __version__

__all__ = ["backend", "start_daemon"]  # fixtures shared with test_daemon

WORKERS = 2
CONNECTIONS = 12
# Which worker accepts is a race the kernel runs; sequential connections may all go to one
# worker for a while, so tests that need both keep connecting, up to this many times.
MAX_CONNECTIONS_FOR_BOTH = 300


@pytest.fixture
def certificate(cert_files: CertFiles, tmp_path: Path) -> Path:
    """A leaf of the test CA in files the test may replace (to see a reload)."""
    write_leaf(cert_files.ca, tmp_path)
    return tmp_path / "leaf.pem"


def write_leaf(ca: trustme.CA, directory: Path) -> int:
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    (directory / "leaf.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key = directory / "leaf.key"
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


def write_config(directory: Path, backend: str, *, metrics: bool = False) -> Path:
    config = directory / "tlsgate.toml"
    config.write_text(
        f"""\
workers = {WORKERS}
shutdown_timeout = 10.0

[log]
format = "json"
{"[metrics]" + chr(10) + 'listen = "127.0.0.1:0"' if metrics else ""}

[[certificate]]
cert = "leaf.pem"
key = "leaf.key"

[[listener]]
name = "submission"
listen = "127.0.0.1:0"
protocol = "smtp"
tls = "starttls"
backend = "{backend}"

[[listener]]
name = "smtps"
listen = "127.0.0.1:0"
protocol = "smtp"
tls = "implicit"
backend = "{backend}"
"""
    )
    return config


@pytest.fixture
def daemon(
    start_daemon: StartDaemon, backend: Gateway, certificate: Path, tmp_path: Path
) -> Daemon:
    running = start_daemon(write_config(tmp_path, backend_address(backend)))
    running.wait_for_event("workers_started")
    learn_ports(running)
    return running


def learn_ports(daemon: Daemon) -> None:
    """Both listeners' ports, from the `listening` lines (each worker logs its own)."""

    def learned() -> bool:
        for event in daemon.events():
            if event.get("event") == "listening":
                daemon.ports[event["listener"]] = int(event["address"].rsplit(":", 1)[1])
        return {"submission", "smtps"} <= set(daemon.ports)

    wait_until(learned)


def events_named(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [event for event in daemon.events() if event.get("event") == name]


def wait_until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def smtp_session(port: int) -> None:
    with Wire(port) as wire:
        assert wire.reply().startswith(b"220 ")
        assert wire.smtp(b"EHLO test").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")


def served_serial(port: int, ca_file: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def worker_pids(daemon: Daemon) -> dict[int, int]:
    """Worker id -> pid of the workers alive now (the latest start of each id)."""
    pids: dict[int, int] = {}
    exited = {event["pid"] for event in events_named(daemon, "worker_exited")}
    exited |= {event["pid"] for event in events_named(daemon, "worker_died")}
    for event in events_named(daemon, "worker_started"):
        if event["pid"] not in exited:
            pids[event["worker"]] = event["pid"]
    return pids


def until_both_workers_served(daemon: Daemon, session: Callable[[], object]) -> int:
    """Run `session` (one connection each) until both workers have closed one; returns how
    many ran."""
    before = len(events_named(daemon, "closed"))
    for count in range(1, MAX_CONNECTIONS_FOR_BOTH + 1):
        session()
        wait_until(lambda n=count: len(events_named(daemon, "closed")) >= before + n)
        if count >= CONNECTIONS and set(closed_by_worker(daemon, skip=before)) == {1, 2}:
            return count
    raise AssertionError(f"one worker took all {MAX_CONNECTIONS_FOR_BOTH} connections")


def closed_by_worker(daemon: Daemon, *, skip: int = 0) -> dict[int, int]:
    """Worker id -> sessions it closed, leaving out the first `skip` ones logged."""
    counts: dict[int, int] = {}
    for event in events_named(daemon, "closed")[skip:]:
        counts[event["worker"]] = counts.get(event["worker"], 0) + 1
    return counts


# ---- the tests -----------------------------------------------------------------------------


def test_two_workers_share_the_listeners_and_every_line_names_its_worker(daemon: Daemon) -> None:
    pids = worker_pids(daemon)
    assert sorted(pids) == [1, 2]
    for pid in pids.values():
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        assert int(parent) == daemon.process.pid
    until_both_workers_served(daemon, lambda: smtp_session(daemon.port("submission")))
    session_lines = [e for e in daemon.events() if "conn_id" in e]
    assert session_lines
    assert all(e["worker"] in (1, 2) for e in session_lines)


def test_sighup_reaches_every_worker(daemon: Daemon, cert_files: CertFiles, tmp_path: Path) -> None:
    port = daemon.port("smtps")
    before = served_serial(port, cert_files.ca_file)
    renewed = write_leaf(cert_files.ca, tmp_path)
    assert renewed != before
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event("config_reloaded")
    serials = [served_serial(port, cert_files.ca_file) for _ in range(CONNECTIONS)]
    assert serials == [renewed] * CONNECTIONS
    new_workers = worker_pids(daemon)
    assert sorted(new_workers) == [1, 2]
    wait_until(lambda: len(events_named(daemon, "worker_exited")) == WORKERS)


def test_a_killed_worker_is_replaced(daemon: Daemon) -> None:
    victim = worker_pids(daemon)[1]
    os.kill(victim, signal.SIGKILL)
    died = daemon.wait_for_event("worker_died")
    assert died["pid"] == victim
    assert "SIGKILL" in died["status"]
    wait_until(lambda: worker_pids(daemon).get(1) not in (None, victim))
    for _ in range(CONNECTIONS):
        smtp_session(daemon.port("submission"))


def test_workers_drain_and_exit_when_the_supervisor_is_killed(daemon: Daemon) -> None:
    pids = worker_pids(daemon)
    with Wire(daemon.port("submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        daemon.process.kill()
        daemon.process.wait(timeout=10)
        # The kernel's parent-death signal is a SIGTERM: the session in flight still finishes.
        wait_until(lambda: len(events_named(daemon, "draining")) == WORKERS)
        assert wire.smtp(b"EHLO test").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")
    wait_until(lambda: not any(_running(pid) for pid in pids.values()))


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status waits for init to collect it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_metrics_are_totals_across_workers(
    start_daemon: StartDaemon, backend: Gateway, certificate: Path, tmp_path: Path
) -> None:
    del certificate
    running = start_daemon(write_config(tmp_path, backend_address(backend), metrics=True))
    running.wait_for_event("workers_started")
    learn_ports(running)
    address = running.wait_for_event("metrics_listening")["address"]
    sessions = until_both_workers_served(running, lambda: smtp_session(running.port("submission")))
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        samples = parse_samples(response.read().decode())
    total = "tlsgate_connections_total"
    assert sample(samples, total, listener="submission", outcome="completed") == sessions
    assert sample(samples, "tlsgate_connections_active", listener="submission") == 0
    assert sample(samples, "tlsgate_build_info", version=__version__) == 1
    assert sample(samples, "tlsgate_config_reloads_total", result="success") == 0


def test_sigterm_drains_every_worker(daemon: Daemon) -> None:
    wires = [Wire(daemon.port("submission")) for _ in range(CONNECTIONS)]
    with contextlib.ExitStack() as stack:
        for wire in wires:
            stack.enter_context(wire)
            assert wire.reply().startswith(b"220 ")
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_event("draining")
        # New connections are refused at once; the sessions in flight carry on.
        deadline = time.monotonic() + PROMPT_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", daemon.port("submission")), 1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting after SIGTERM"
            time.sleep(0.05)
        for wire in wires:
            assert wire.smtp(b"EHLO test").startswith(b"250")
            assert wire.smtp(b"QUIT").startswith(b"221")
    assert daemon.wait(timeout=20) == 0
    assert len(events_named(daemon, "draining")) == WORKERS


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_session_ticket_resumes_on_either_worker(
    daemon: Daemon, cert_files: CertFiles, version: ssl.TLSVersion
) -> None:
    port = daemon.port("smtps")
    context = ssl.create_default_context(cafile=str(cert_files.ca_file))
    context.minimum_version = context.maximum_version = version
    session = _session(port, context)
    wait_until(lambda: len(events_named(daemon, "closed")) == 1)
    resumed: list[bool] = []
    until_both_workers_served(daemon, lambda: resumed.append(_resumes(port, context, session)))
    assert all(resumed), resumed


def _session(port: int, context: ssl.SSLContext) -> ssl.SSLSession:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.recv(4096)  # the greeting
        assert tls.session is not None
        return tls.session


def _resumes(port: int, context: ssl.SSLContext, session: ssl.SSLSession) -> bool:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.recv(4096)
        return bool(tls.session_reused)


@pytest.fixture(autouse=True)
def _no_leftover_workers(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that fails mid-way must not leave forked workers behind."""
    yield
    daemon = request.node.funcargs.get("daemon")
    if isinstance(daemon, Daemon):
        for pid in worker_pids(daemon).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
