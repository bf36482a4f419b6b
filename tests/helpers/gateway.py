"""A running tlsgate in front of the legacy backends, in a background thread.

End-to-end tests drive it with blocking clients nobody here wrote (smtplib, poplib,
`openssl s_client`, swaks, curl), so the daemon runs its own trio loop in a thread and the
tests stay ordinary synchronous code.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import trio

from tlsgate.config import Config, parse_config
from tlsgate.demo.legacy import (
    LegacyPop3Server,
    LegacySmtpServer,
    MailStore,
    serve_pop3,
    serve_smtp,
)
from tlsgate.net.server import serve
from tlsgate.observe.metrics import Metrics

ListenerSpec = Mapping[str, object]


class GatewayCertificates(TypedDict):
    """The certificate files `running_gateway` serves and tells clients to trust."""

    cert_file: Path
    key_file: Path
    ca_file: Path


# Port numbers written into a listener's `backend` before the config is parsed.
SMTP_BACKEND = "SMTP_BACKEND"
POP3_BACKEND = "POP3_BACKEND"
POP3_NO_CAPA_BACKEND = "POP3_NO_CAPA_BACKEND"
DEAD_BACKEND = "DEAD_BACKEND"


@dataclass
class Gateway:
    """What a test sees: listener ports, the backends' state, and the certificate to trust."""

    ports: dict[str, int]
    store: MailStore
    smtp: LegacySmtpServer
    pop3: LegacyPop3Server
    ca_file: Path
    config: Config
    metrics: Metrics = field(default_factory=Metrics)  # the gateway's own registry
    _token: trio.lowlevel.TrioToken | None = field(default=None, repr=False)

    def port(self, listener: str) -> int:
        return self.ports[listener]


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _backend(value: object, backends: Mapping[str, int]) -> object:
    """A placeholder (SMTP_BACKEND, ...) becomes its address; anything else is kept as
    written (an outbound test points a listener at another gateway or a real TLS server)."""
    if isinstance(value, str) and value in backends:
        return f"127.0.0.1:{backends[value]}"
    return value


@contextmanager
def running_gateway(
    listeners: Sequence[ListenerSpec],
    *,
    cert_file: Path,
    key_file: Path,
    ca_file: Path,
    source: Path,
    extra: Mapping[str, object] | None = None,
    smtp_options: Mapping[str, object] | None = None,
    pop3_options: Mapping[str, object] | None = None,
) -> Iterator[Gateway]:
    """Start backends and tlsgate on free loopback ports; stop both on exit."""
    store = MailStore()
    smtp = LegacySmtpServer(store, **(smtp_options or {}))  # type: ignore[arg-type]
    pop3 = LegacyPop3Server(store, **(pop3_options or {}))  # type: ignore[arg-type]
    pop3_no_capa = LegacyPop3Server(store, capa=False)
    ready: queue.Queue[Gateway | BaseException] = queue.Queue()
    stop: list[Callable[[], None]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            backends = {
                SMTP_BACKEND: await nursery.start(serve_smtp, smtp),
                POP3_BACKEND: await nursery.start(serve_pop3, pop3),
                POP3_NO_CAPA_BACKEND: await nursery.start(serve_pop3, pop3_no_capa),
                DEAD_BACKEND: _dead_port(),
            }
            data: dict[str, object] = {
                "certificate": [{"cert": str(cert_file), "key": str(key_file)}],
                "listener": [
                    {
                        "listen": "127.0.0.1:0",
                        **spec,
                        "backend": _backend(spec["backend"], backends),
                    }
                    for spec in listeners
                ],
                **(extra or {}),
            }
            config = parse_config(data, source)
            metrics = Metrics()
            bound = await nursery.start(functools.partial(serve, metrics=metrics), config)
            stop.append(nursery.cancel_scope.cancel)
            ready.put(
                Gateway(
                    ports={name: port for name, (_, port) in bound.items()},
                    store=store,
                    smtp=smtp,
                    pop3=pop3,
                    ca_file=ca_file,
                    config=config,
                    metrics=metrics,
                    _token=trio.lowlevel.current_trio_token(),
                )
            )

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test thread, not lost in this one
            ready.put(exc)

    thread = threading.Thread(target=thread_main, name="tlsgate-e2e", daemon=True)
    thread.start()
    started = ready.get(timeout=30)
    if isinstance(started, BaseException):
        raise started
    try:
        yield started
    finally:
        assert started._token is not None
        trio.from_thread.run_sync(stop[0], trio_token=started._token)
        thread.join(timeout=30)
