"""What the net layer tells a mediator (inputs: facts) and what it asks back (outputs: imperatives).

PURE. A mediator is a sans-I/O state machine in the style of h11: the net layer feeds it one
`Input` at a time and executes the returned `Output`s in order, awaiting each send, so
backpressure and ordering are the net layer's and correctness is the mediator's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from tlsgate.observe.events import CloseReason, NoticeKind

# ---- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientData:
    data: bytes


@dataclass(frozen=True, slots=True)
class BackendData:
    data: bytes


@dataclass(frozen=True, slots=True)
class ClientEof:
    """The client shut its write side (FIN or TLS close_notify)."""


@dataclass(frozen=True, slots=True)
class BackendEof:
    """The backend shut its write side."""


@dataclass(frozen=True, slots=True)
class ClientTlsEstablished:
    """The handshake asked for by `StartClientTls` completed; the client stream is now TLS."""


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    """Nothing moved in either direction for the listener's `idle_timeout`."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The daemon is stopping and the session outlived `shutdown_timeout`: it ends now."""


Input: TypeAlias = (
    ClientData
    | BackendData
    | ClientEof
    | BackendEof
    | ClientTlsEstablished
    | IdleTimeout
    | Shutdown
)

# ---- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendToBackend:
    data: bytes


@dataclass(frozen=True, slots=True)
class EofToClient:
    """Half-close: shut the write side towards the client (close_notify on TLS)."""


@dataclass(frozen=True, slots=True)
class EofToBackend:
    """Half-close: shut the write side towards the backend."""


@dataclass(frozen=True, slots=True)
class StartClientTls:
    """Run the server-side TLS handshake on the client transport now.

    The mediator guarantees it holds no unread plaintext from the client when it asks for this
    (RFC 3207 §4: bytes before the handshake are never executed inside TLS).
    """


@dataclass(frozen=True, slots=True)
class SwitchToRelay:
    """The mediator steps aside for good: relay opaque bytes both ways from now on.

    Used when a client that tlsgate does not offer STARTTLS to negotiates TLS with the backend
    itself; the bytes are then ciphertext the mediator cannot and must not interpret.
    """


@dataclass(frozen=True, slots=True)
class Close:
    """End the session after the outputs before this one have been sent."""

    reason: CloseReason


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth one log event and its metrics (see `tlsgate.observe`)."""

    kind: NoticeKind
    fields: Mapping[str, str | int] = field(default_factory=dict)


Output: TypeAlias = (
    SendToClient
    | SendToBackend
    | EofToClient
    | EofToBackend
    | StartClientTls
    | SwitchToRelay
    | Close
    | Notice
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionPolicy:
    """What a mediator enforces for one connection; the net layer derives it from the listener
    and the client's address (`starttls_exclude`)."""

    client_tls: bool  # the client transport is TLS already (implicit, or auto-detected TLS)
    offer_starttls: bool  # tlsgate advertises and answers STARTTLS/STLS itself
    auth_requires_tls: bool  # hide and refuse authentication until the client side is TLS
    require_tls: bool  # refuse everything but the few pre-TLS commands until TLS


class Mediator(Protocol):
    """The interface the net layer drives; SMTP, POP3 and (later) IMAP implement it."""

    def handle(self, event: Input) -> list[Output]:
        """Consume one input and return what to do, in order."""
        ...

    @property
    def client_reading_paused(self) -> bool:
        """True while the net layer must not read from the client transport: a STARTTLS was
        accepted and the handshake is still to come, so the next bytes belong to TLS."""
        ...
