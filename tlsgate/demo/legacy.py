"""The legacy plaintext mail backend: SMTP and POP3 servers sharing one in-memory `MailStore`.

This is what tlsgate sits in front of in `tlsgate demo` and in the end-to-end tests: an old
daemon with no TLS at all (sendmail 8 / qpopper style). Typical use in a test::

    store = MailStore()
    smtp = LegacySmtpServer(store, advertise_starttls=True)
    pop3 = LegacyPop3Server(store, capa=False)
    async with trio.open_nursery() as nursery:
        smtp_port = await nursery.start(serve_smtp, smtp)
        pop3_port = await nursery.start(serve_pop3, pop3)
        ...  # drive clients; assert on store.messages, smtp.transcript, pop3.transcript
        nursery.cancel_scope.cancel()

A server's `handle(stream)` also serves any trio stream directly, e.g. one end of
`trio.testing.memory_stream_pair()`.
"""

from __future__ import annotations

import trio

from tlsgate.demo.legacy_pop3 import LegacyPop3Server, Pop3State, byte_stuff
from tlsgate.demo.legacy_smtp import DEMO_USERS, MAX_MESSAGE_BYTES, LegacySmtpServer
from tlsgate.demo.mailstore import Delivery, MailStore, StoredMessage, local_part
from tlsgate.demo.wire import IDLE_TIMEOUT_SECONDS, MAX_LINE_BYTES, serve_tcp_handler

__all__ = [
    "DEMO_USERS",
    "IDLE_TIMEOUT_SECONDS",
    "MAX_LINE_BYTES",
    "MAX_MESSAGE_BYTES",
    "Delivery",
    "LegacyPop3Server",
    "LegacySmtpServer",
    "MailStore",
    "Pop3State",
    "StoredMessage",
    "byte_stuff",
    "local_part",
    "serve_pop3",
    "serve_smtp",
]


async def serve_smtp(
    server: LegacySmtpServer,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `server` on `host:port` until cancelled; `nursery.start` returns the bound port."""
    await serve_tcp_handler(server, host, port, task_status=task_status)


async def serve_pop3(
    server: LegacyPop3Server,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `server` on `host:port` until cancelled; `nursery.start` returns the bound port."""
    await serve_tcp_handler(server, host, port, task_status=task_status)
