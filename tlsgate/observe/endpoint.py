"""The `/metrics` HTTP endpoint: prometheus_client's own server, in a daemon thread.

A scrape renders the registry in that thread, never on the trio loop, so a slow or stuck
scraper cannot delay a session; the counters it reads are updated under prometheus_client's
per-value locks. The thread is a daemon thread, so an exiting process does not wait for it;
`MetricsEndpoint.close()` exists for tests and for anything that must free the port.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from tlsgate.config.model import Config, Endpoint
from tlsgate.observe.events import NoticeKind
from tlsgate.observe.logs import get_logger

__all__ = ["MetricsEndpoint", "MetricsEndpointError", "start_metrics_endpoint"]

# How long `close()` waits for a scrape in progress to finish.
CLOSE_JOIN_TIMEOUT_SECONDS = 5.0


class MetricsEndpointError(OSError):
    """The metrics port could not be bound: a runtime failure (exit code 1, CONTRACT.md)."""

    def __init__(self, listen: Endpoint, cause: OSError) -> None:
        # One argument, not (errno, text): str() is then exactly the line an admin reads.
        super().__init__(f"[metrics] listen: cannot listen on {listen}: {cause.strerror or cause}")
        self.listen = listen


@dataclass(slots=True, eq=False)
class MetricsEndpoint:
    server: WSGIServer
    thread: threading.Thread

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the kernel's choice when port 0 was asked for."""
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving and free the port; waits for a scrape in progress."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=CLOSE_JOIN_TIMEOUT_SECONDS)


class Registered(Protocol):
    """Whatever owns the registry to serve: a process's `Metrics`, or the supervisor's."""

    @property
    def registry(self) -> CollectorRegistry: ...


def start_metrics_endpoint(config: Config, metrics: Registered) -> MetricsEndpoint | None:
    """Serve `metrics` on `config.metrics.listen`; nothing when `[metrics]` is absent.

    Raises:
        MetricsEndpointError: the address cannot be bound (in use, not local, no permission).
    """
    if config.metrics is None:
        return None
    listen = config.metrics.listen
    try:
        server, thread = start_http_server(listen.port, listen.host, registry=metrics.registry)
    except OSError as exc:
        raise MetricsEndpointError(listen, exc) from exc
    endpoint = MetricsEndpoint(server, thread)
    host, port = endpoint.address
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    get_logger().info(NoticeKind.METRICS_LISTENING.value, address=address, path="/metrics")
    return endpoint
