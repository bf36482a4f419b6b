"""The reference point of PERFORMANCE.md: a bare trio.SSLStream relay, nothing else.

``python bench/baseline_relay.py CERT KEY LISTEN_PORT:BACKEND_PORT ...`` terminates TLS on each
127.0.0.1:LISTEN_PORT and relays to 127.0.0.1:BACKEND_PORT with ``SSLStream.receive_some(65536)``
into ``send_all``. It exits when its standard input closes.
"""

from __future__ import annotations

import functools
import ssl
import sys

import trio

ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


async def relay(backend_port: int, client: trio.SSLStream[trio.SocketStream]) -> None:
    try:
        await client.do_handshake()
        backend = await trio.open_tcp_stream("127.0.0.1", backend_port)
    except ERRORS:
        await trio.aclose_forcefully(client)
        return

    async def client_to_backend() -> None:
        while data := await client.receive_some(65536):
            await backend.send_all(data)
        await backend.send_eof()  # the backend's last words still reach the client

    async def backend_to_client() -> None:
        while data := await backend.receive_some(65536):
            await client.send_all(data)
        nursery.cancel_scope.cancel()

    try:
        async with backend, client, trio.open_nursery() as nursery:
            nursery.start_soon(client_to_backend)
            nursery.start_soon(backend_to_client)
    except* ERRORS:
        pass


async def main(cert: str, key: str, routes: list[tuple[int, int]]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with trio.open_nursery() as nursery:
        for listen_port, backend_port in routes:
            handler = functools.partial(relay, backend_port)
            nursery.start_soon(
                functools.partial(
                    trio.serve_ssl_over_tcp, handler, listen_port, context, host="127.0.0.1"
                )
            )
        await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    routes = []
    for arg in sys.argv[3:]:
        listen, backend = arg.split(":")
        routes.append((int(listen), int(backend)))
    trio.run(main, sys.argv[1], sys.argv[2], routes)
