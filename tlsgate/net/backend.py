"""Connecting to a listener's backend: each address in order, each under connect_timeout."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from tlsgate.config.model import Endpoint


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
                return await trio.open_tcp_stream(endpoint.host, endpoint.port), endpoint
        except trio.TooSlowError:
            failures.append(BackendFailure(endpoint, "timeout"))
        except OSError as exc:
            failures.append(BackendFailure(endpoint, _failure_reason(exc)))
    raise BackendUnavailableError(failures)


def _failure_reason(exc: OSError) -> str:
    """trio's open_tcp_stream reports "all attempts failed" with the real errors (one per
    resolved address) in an exception group as the cause; the first one says why."""
    cause = exc.__cause__
    errors = list(cause.exceptions) if isinstance(cause, BaseExceptionGroup) else [exc]
    if any(isinstance(error, ConnectionRefusedError) for error in errors):
        return "refused"
    first = errors[0]
    return (isinstance(first, OSError) and first.strerror) or type(first).__name__
