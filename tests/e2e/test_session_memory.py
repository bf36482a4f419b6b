"""A finished session is freed at once, whatever protocol it spoke and however it ended.

Nothing may keep a closed session's objects (its TLS state, buffers, mediator) alive until its
idle timeout: on a busy server that is thousands of dead sessions held for minutes, and every
garbage collection walks them. The clients are real (smtplib, poplib, ssl).
"""

from __future__ import annotations

import gc
import poplib
import smtplib
import socket
import struct
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import CertFiles
from tests.helpers.gateway import (
    POP3_BACKEND,
    SMTP_BACKEND,
    Gateway,
    ListenerSpec,
    running_gateway,
)
from tlsgate.net.session import Session

CLIENT_TIMEOUT_SECONDS = 10.0
FREED_WITHIN_SECONDS = 5.0  # the sessions' own close; generous for these machines

LISTENERS: list[ListenerSpec] = [
    # An idle timeout far beyond the test: a session held until then would be caught.
    {
        "name": "submission",
        "protocol": "smtp",
        "tls": "starttls",
        "backend": SMTP_BACKEND,
        "idle_timeout": 3600,
    },
    {
        "name": "pop3",
        "protocol": "pop3",
        "tls": "starttls",
        "backend": POP3_BACKEND,
        "idle_timeout": 3600,
    },
    {
        "name": "smtps-relay",
        "protocol": "tcp",
        "tls": "implicit",
        "backend": SMTP_BACKEND,
        "idle_timeout": 3600,
    },
]


@pytest.fixture(scope="module")
def gateway(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(
        LISTENERS,
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("session-memory") / "tlsgate.toml",
    ) as running:
        yield running


class SessionProbe:
    """Counts the Sessions created while installed, and tracks which are still alive."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.created = 0
        self.alive: weakref.WeakSet[Session] = weakref.WeakSet()
        original = Session.__init__

        def recording_init(session: Session, *args: Any, **kwargs: Any) -> None:
            original(session, *args, **kwargs)
            self.created += 1
            self.alive.add(session)

        monkeypatch.setattr(Session, "__init__", recording_init)


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> SessionProbe:
    return SessionProbe(monkeypatch)


def smtp_quit(gateway: Gateway, cert_files: CertFiles) -> None:
    with smtplib.SMTP(
        "127.0.0.1", gateway.port("submission"), timeout=CLIENT_TIMEOUT_SECONDS
    ) as client:
        client.starttls(context=cert_files.client_context())
        client.ehlo()
        assert client.noop()[0] == 250


def smtp_dropped(gateway: Gateway, cert_files: CertFiles) -> None:
    """STARTTLS, a command, then the TCP connection closes: no QUIT, no close_notify."""
    client = smtplib.SMTP("127.0.0.1", gateway.port("submission"), timeout=CLIENT_TIMEOUT_SECONDS)
    client.starttls(context=cert_files.client_context())
    assert client.noop()[0] == 250
    client.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): tlsgate's next read fails, on the error path."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def smtp_reset(gateway: Gateway, cert_files: CertFiles) -> None:
    """STARTTLS, a command, then a TCP reset while the backend is still there."""
    client = smtplib.SMTP("127.0.0.1", gateway.port("submission"), timeout=CLIENT_TIMEOUT_SECONDS)
    client.starttls(context=cert_files.client_context())
    assert client.noop()[0] == 250
    assert client.sock is not None
    _reset(client.sock)
    client.close()


def smtp_quit_then_reset(gateway: Gateway, cert_files: CertFiles) -> None:
    """QUIT answered, then a reset instead of a close_notify: a complete session all the same."""
    client = smtplib.SMTP("127.0.0.1", gateway.port("submission"), timeout=CLIENT_TIMEOUT_SECONDS)
    client.starttls(context=cert_files.client_context())
    assert client.docmd("QUIT")[0] == 221
    assert client.sock is not None
    _reset(client.sock)
    client.close()


def relay_reset(gateway: Gateway, cert_files: CertFiles) -> None:
    context = cert_files.client_context()
    raw = socket.create_connection(("127.0.0.1", gateway.port("smtps-relay")))
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.settimeout(CLIENT_TIMEOUT_SECONDS)
    assert tls.recv(100).startswith(b"220")
    _reset(tls)


def pop3_quit(gateway: Gateway, cert_files: CertFiles) -> None:
    client = poplib.POP3("127.0.0.1", gateway.port("pop3"), timeout=CLIENT_TIMEOUT_SECONDS)
    client.stls(context=cert_files.client_context())
    assert "USER" in client.capa()
    client.quit()


def implicit_relay(gateway: Gateway, cert_files: CertFiles) -> None:
    context = cert_files.client_context()
    raw = socket.create_connection(("127.0.0.1", gateway.port("smtps-relay")))
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.settimeout(CLIENT_TIMEOUT_SECONDS)
        assert tls.recv(100).startswith(b"220")
        tls.sendall(b"QUIT\r\n")
        assert tls.recv(100).startswith(b"221")


CLIENTS = [
    smtp_quit,
    smtp_dropped,
    smtp_reset,
    smtp_quit_then_reset,
    pop3_quit,
    implicit_relay,
    relay_reset,
]


def run_three_and_wait_until_freed(
    gateway: Gateway,
    cert_files: CertFiles,
    sessions: SessionProbe,
    client: Callable[[Gateway, CertFiles], None],
    *,
    collect_cycles: bool,
) -> None:
    for _ in range(3):
        client(gateway, cert_files)
    assert sessions.created == 3
    deadline = time.monotonic() + FREED_WITHIN_SECONDS
    while sessions.alive and time.monotonic() < deadline:
        time.sleep(0.05)
        if collect_cycles:
            gc.collect()
    assert len(sessions.alive) == 0


@pytest.mark.parametrize("client", CLIENTS, ids=[client.__name__ for client in CLIENTS])
def test_a_finished_session_is_freed_at_once(
    gateway: Gateway,
    cert_files: CertFiles,
    sessions: SessionProbe,
    client: Callable[[Gateway, CertFiles], None],
) -> None:
    # With the cyclic collector run: only what keeps a session reachable counts here.
    run_three_and_wait_until_freed(gateway, cert_files, sessions, client, collect_cycles=True)


# A reset while the backend is still connected is left out: trio 0.35 itself leaves a cycle
# when a nursery's body fails while another task waits (the group it builds and its frame).
CLEAN_ENDINGS = [smtp_quit, smtp_dropped, pop3_quit, implicit_relay]


@pytest.mark.parametrize("client", CLEAN_ENDINGS, ids=[client.__name__ for client in CLEAN_ENDINGS])
@pytest.mark.usefixtures("no_automatic_gc")
def test_a_finished_session_is_freed_by_reference_counting_alone(
    gateway: Gateway,
    cert_files: CertFiles,
    sessions: SessionProbe,
    client: Callable[[Gateway, CertFiles], None],
) -> None:
    # No reference cycle through a session: then a finished session costs the cyclic garbage
    # collector nothing, and its memory comes back the moment it ends.
    run_three_and_wait_until_freed(gateway, cert_files, sessions, client, collect_cycles=False)
