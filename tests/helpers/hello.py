"""Real ClientHello bytes, made by OpenSSL in memory: no sockets, no server.

`client_hello()` starts a client handshake over two `ssl.MemoryBIO`s and returns what the
client would put on the wire first: one or more TLS records holding the ClientHello.
"""

from __future__ import annotations

import ssl
import warnings

__all__ = ["HELLO_SERVER_NAME", "client_hello"]

HELLO_SERVER_NAME = "mail.example.test"

# TLS 1.0 and 1.1 need OpenSSL's security level 0 and make Python warn that they are deprecated.
_OLD_VERSIONS = frozenset({ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1})


def client_hello(
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    *,
    server_name: str | None = HELLO_SERVER_NAME,
) -> bytes:
    """The first flight of a client limited to exactly `version`.

    Args:
        version: the only version the client offers.
        server_name: sent as SNI; None sends no server_name extension.

    Returns:
        The bytes the client sends first, starting with the record header 16 03 01.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_name is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        if version in _OLD_VERSIONS:
            warnings.simplefilter("ignore", DeprecationWarning)
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = version
        context.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass  # expected: it now waits for a ServerHello that will never come
    else:  # pragma: no cover - a client cannot finish without a server
        raise AssertionError("handshake finished without a server")
    return outgoing.read()
