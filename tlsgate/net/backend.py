"""Connecting to a listener's backend: each address in order, each under connect_timeout.

The plaintext path, and the TCP step of every outbound TLS attempt (`net.outbound`).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio

from tlsgate.config.model import Endpoint
from tlsgate.net.relay import tune_for_relay
from tlsgate.net.socket_io import connect_ip
from tlsgate.observe.events import BackendFailureReason


@dataclass(frozen=True, slots=True)
class BackendFailure:
    endpoint: Endpoint
    reason: BackendFailureReason
    detail: str  # for the log line: the OS error's text, OpenSSL's verify message, ...


class BackendAttemptError(Exception):
    """One attempt to reach one backend address failed."""

    def __init__(self, reason: BackendFailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class BackendUnavailableError(Exception):
    """No backend address could be used; `failures` has one entry per attempt."""

    def __init__(self, failures: list[BackendFailure]) -> None:
        super().__init__("; ".join(f"{f.endpoint}: {f.detail}" for f in failures))
        self.failures = failures


# Called once per failed attempt, so that each is logged and counted as it happens.
FailureReport = Callable[[BackendFailure], None]


async def connect_backend(
    endpoints: tuple[Endpoint, ...], timeout_seconds: float, on_failure: FailureReport
) -> tuple[trio.SocketStream, Endpoint]:
    """Return a connected stream to the first endpoint that answers.

    Raises:
        BackendUnavailableError: every endpoint failed; it lists each failure.
    """
    failures: list[BackendFailure] = []
    for endpoint in endpoints:
        try:
            return await connect_one(endpoint, timeout_seconds), endpoint
        except BackendAttemptError as exc:
            failure = BackendFailure(endpoint, exc.reason, exc.detail)
            failures.append(failure)
            on_failure(failure)
    raise BackendUnavailableError(failures)


async def connect_one(endpoint: Endpoint, timeout_seconds: float) -> trio.SocketStream:
    """One TCP connection, tuned for relaying.

    Raises:
        BackendAttemptError: refused, timed out, or another OS error (unreachable).
    """
    try:
        # Not fail_after(): it is move_on_after() inside a generator-based context manager.
        with trio.move_on_after(timeout_seconds) as connecting:
            stream = await _open(endpoint)
    except OSError as exc:
        raise _attempt_error(exc) from None
    if connecting.cancelled_caught:
        raise BackendAttemptError(BackendFailureReason.TIMEOUT, "connect timed out")
    tune_for_relay(stream)
    return stream


async def _open(endpoint: Endpoint) -> trio.SocketStream:
    """Connect; an IP literal skips open_tcp_stream's resolver and happy-eyeballs nursery,
    which cost more per connection than the rest of a relayed handshake's Python work."""
    family = _ip_family(endpoint.host)
    if family is None:
        return await trio.open_tcp_stream(endpoint.host, endpoint.port)
    return await connect_ip(family, (endpoint.host, endpoint.port))


@functools.lru_cache(maxsize=256)
def _ip_family(host: str) -> socket.AddressFamily | None:
    """The family of an IP literal, None for a name; parsed once per host, not per connect."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def _attempt_error(exc: OSError) -> BackendAttemptError:
    """trio's open_tcp_stream reports "all attempts failed" with the real errors (one per
    resolved address) in an exception group as the cause; the first one says why."""
    cause = exc.__cause__
    errors = list(cause.exceptions) if isinstance(cause, BaseExceptionGroup) else [exc]
    if any(isinstance(error, ConnectionRefusedError) for error in errors):
        return BackendAttemptError(BackendFailureReason.REFUSED, "connection refused")
    first = errors[0]
    detail = (isinstance(first, OSError) and first.strerror) or str(first) or type(first).__name__
    return BackendAttemptError(BackendFailureReason.UNREACHABLE, detail)
