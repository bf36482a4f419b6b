"""Protocol-correct "try again later" replies (CONTRACT.md "Tempfail replies").

PURE. A real MTA queues and retries on a 4xx; a POP3 client shows the text and retries.
"""

from __future__ import annotations

from tlsgate.config.model import Protocol, TlsMode

_BACKEND_UNAVAILABLE = {
    # RFC 3463 4.3.2: "System not accepting network messages".
    Protocol.SMTP: b"421 4.3.2 Service not available, closing transmission channel\r\n",
    # RFC 3206 §4: [SYS/TEMP] is a transient system problem.
    Protocol.POP3: b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n",
}


_NO_TLS_TO_RELAY = {
    # RFC 3463 4.7.0: "Other or undefined security status"; Postfix's answer, too, when its
    # smtp client cannot get the TLS it must have.
    Protocol.SMTP: b"421 4.7.0 TLS to the relay not available, try again later\r\n",
    Protocol.POP3: b"-ERR [SYS/TEMP] TLS to the server not available, try again later\r\n",
}


_TOO_MANY_CONNECTIONS = {
    Protocol.SMTP: b"421 4.7.0 Too many connections, try again later\r\n",
    Protocol.POP3: b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
}


def too_many_connections_reply(protocol: Protocol, tls: TlsMode) -> bytes:
    """What a client beyond max_connections gets before the close.

    Nothing on implicit TLS: a reply in the clear means nothing to a TLS client, and a close
    before any handshake work is the cheapest answer. `auto` cannot know yet which kind of
    client it has; the plaintext reply serves the one that waits for a greeting.
    """
    if tls is TlsMode.IMPLICIT:
        return b""
    return _TOO_MANY_CONNECTIONS.get(protocol, b"")


def backend_unavailable_reply(protocol: Protocol, tls_wanted: bool = False) -> bytes:
    """The reply for a backend that cannot be reached; empty for raw TCP (just close).

    `tls_wanted`: the listener must reach its relays over TLS (CONTRACT.md: 421 4.7.0 then,
    whatever failed: TCP, the handshake, verification or STARTTLS).
    """
    replies = _NO_TLS_TO_RELAY if tls_wanted else _BACKEND_UNAVAILABLE
    return replies.get(protocol, b"")
