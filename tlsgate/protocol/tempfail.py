"""Protocol-correct "try again later" replies (CONTRACT.md "Tempfail replies").

PURE. A real MTA queues and retries on a 4xx; a POP3 client shows the text and retries.
"""

from __future__ import annotations

from tlsgate.config.model import Protocol

_BACKEND_UNAVAILABLE = {
    # RFC 3463 4.3.2: "System not accepting network messages".
    Protocol.SMTP: b"421 4.3.2 Service not available, closing transmission channel\r\n",
    # RFC 3206 §4: [SYS/TEMP] is a transient system problem.
    Protocol.POP3: b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n",
}


def backend_unavailable_reply(protocol: Protocol) -> bytes:
    """The reply for a backend that cannot be reached; empty for raw TCP (just close)."""
    return _BACKEND_UNAVAILABLE.get(protocol, b"")
