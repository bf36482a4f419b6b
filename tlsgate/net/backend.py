"""Connecting to a listener's backend: each address in order, each under connect_timeout."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import trio

from tlsgate.config.model import Endpoint
from tlsgate.net.relay import tune_for_relay


@dataclass(frozen=True, slots=True)
class BackendFailure:
    endpoint: Endpoint
    reason: str  # "timeout", "refused", or the OS error's text


class BackendUnavailableError(Exception):
    """No backend address accepted a connection."""

    def __init__(self, failures: list[BackendFailure]) -> None:
        super().__init__("; ".join(f"{f.endpoint}: {f.reason}" for f in failures))
        self.failures = failures


async def connect_backend(
    endpoints: tuple[Endpoint, ...], timeout_seconds: float
) -> tuple[trio.SocketStream, Endpoint]:
    """Return a connected stream to the first endpoint that answers.

    Raises:
        BackendUnavailableError: every endpoint failed; it lists each failure.
    """
    failures: list[BackendFailure] = []
    for endpoint in endpoints:
        try:
            with trio.fail_after(timeout_seconds):
                stream = await _open(endpoint)
            tune_for_relay(stream)
            return stream, endpoint
        except trio.TooSlowError:
            failures.append(BackendFailure(endpoint, "timeout"))
        except OSError as exc:
            failures.append(BackendFailure(endpoint, _failure_reason(exc)))
    raise BackendUnavailableError(failures)


async def _open(endpoint: Endpoint) -> trio.SocketStream:
    """Connect; an IP literal skips open_tcp_stream's resolver and happy-eyeballs nursery,
    which cost more per connection than the rest of a relayed handshake's Python work."""
    try:
        address = ipaddress.ip_address(endpoint.host)
    except ValueError:
        return await trio.open_tcp_stream(endpoint.host, endpoint.port)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((endpoint.host, endpoint.port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _failure_reason(exc: OSError) -> str:
    """trio's open_tcp_stream reports "all attempts failed" with the real errors (one per
    resolved address) in an exception group as the cause; the first one says why."""
    cause = exc.__cause__
    errors = list(cause.exceptions) if isinstance(cause, BaseExceptionGroup) else [exc]
    if any(isinstance(error, ConnectionRefusedError) for error in errors):
        return "refused"
    first = errors[0]
    return (isinstance(first, OSError) and first.strerror) or type(first).__name__
