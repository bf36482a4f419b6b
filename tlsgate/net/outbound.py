"""Reaching a listener's relays over TLS (outbound), as stunnel's client mode does, mail-aware.

For each relay in order, one attempt under `connect_timeout`: TCP connect, then for
`backend_tls = "starttls"` the plaintext dialogue up to STARTTLS/STLS
(`protocol.starttls_client`), then the handshake with SNI and verification. The first relay
that completes all of it serves the session. Each failure is reported (`on_failure`) with a
fixed reason, and the next relay is tried.

When none can be reached over TLS, `backend_tls_fallback` decides, and only because the
operator asked for it:
- `none`: `BackendUnavailableError`; the session sends its tempfail (421 4.7.0 / -ERR) and the
  client's MTA queues the mail and retries.
- `plaintext`: the relays that answered but failed at TLS are tried again in the clear, in
  order, on a fresh connection. TLS on any relay is preferred to plaintext on the first.
- `alternate`: per relay, a failed TLS attempt makes the next attempt to that relay plaintext
  and the one after TLS again (`RelayMemory`), so a queueing MTA gets through on a retry
  while TLS keeps being tried.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass

import trio

from tlsgate.config.model import BackendTls, Endpoint, ListenerConfig, Protocol, TlsFallback
from tlsgate.net.backend import (
    BackendAttemptError,
    BackendFailure,
    BackendUnavailableError,
    FailureReport,
    connect_one,
)
from tlsgate.net.relay import RECEIVE_SIZE_BYTES
from tlsgate.net.tls_stream import TlsStream
from tlsgate.observe.events import BackendFailureReason
from tlsgate.protocol.starttls_client import (
    Pop3StartTlsClient,
    Ready,
    SmtpStartTlsClient,
    StartTlsClient,
)
from tlsgate.tls.failures import TlsHandshakeError

__all__ = ["BackendConnection", "RelayMemory", "connect_outbound"]

# A failure at one of these stages happened after the relay answered: TLS, not reachability.
_TLS_STAGE_REASONS = frozenset(
    {
        BackendFailureReason.TLS_HANDSHAKE,
        BackendFailureReason.TLS_VERIFY,
        BackendFailureReason.STARTTLS_NOT_OFFERED,
        BackendFailureReason.STARTTLS_REFUSED,
        BackendFailureReason.RESPONSE_INJECTION,
        BackendFailureReason.PROTOCOL_ERROR,
    }
)


@dataclass(frozen=True, slots=True)
class BackendConnection:
    """A connected backend, ready for the client's session.

    Attributes:
        greeting: the relay's greeting, already read during STARTTLS; the session gives it
            to the client before anything else the relay sends (b"" otherwise).
        encrypted: False only on a plaintext fallback.
    """

    stream: trio.abc.Stream
    endpoint: Endpoint
    greeting: bytes = b""
    encrypted: bool = True


class RelayMemory:
    """Which relays failed their last TLS attempt (`alternate`); shared by all sessions.

    Keyed by listener name and relay, so a reload that keeps a listener keeps its memory.
    """

    def __init__(self) -> None:
        self._tls_failed: set[tuple[str, Endpoint]] = set()

    def plaintext_turn(self, listener: str, relay: Endpoint) -> bool:
        """True when this attempt should be plaintext; the next one will be TLS again."""
        key = (listener, relay)
        if key in self._tls_failed:
            self._tls_failed.discard(key)
            return True
        return False

    def tls_failed(self, listener: str, relay: Endpoint) -> None:
        self._tls_failed.add((listener, relay))


async def connect_outbound(
    listener: ListenerConfig,
    context: ssl.SSLContext,
    memory: RelayMemory,
    on_failure: FailureReport,
) -> BackendConnection:
    """Connect to the first relay reachable over TLS (or, if the operator allows, without).

    Raises:
        BackendUnavailableError: every relay failed (each failure was also reported).
    """
    failures: list[BackendFailure] = []

    def failed(relay: Endpoint, exc: BackendAttemptError) -> None:
        failure = BackendFailure(relay, exc.reason, exc.detail)
        failures.append(failure)
        on_failure(failure)

    tls_refused: list[Endpoint] = []  # relays that answered, but not over TLS
    alternate = listener.backend_tls_fallback is TlsFallback.ALTERNATE
    for relay in listener.backend:
        plaintext = alternate and memory.plaintext_turn(listener.name, relay)
        try:
            if plaintext:
                return await _plaintext(listener, relay)
            return await _attempt_tls(listener, context, relay)
        except BackendAttemptError as exc:
            failed(relay, exc)
            if not plaintext and exc.reason in _TLS_STAGE_REASONS:
                tls_refused.append(relay)
                memory.tls_failed(listener.name, relay)
    if listener.backend_tls_fallback is TlsFallback.PLAINTEXT:
        for relay in tls_refused:
            try:
                return await _plaintext(listener, relay)
            except BackendAttemptError as exc:
                failed(relay, exc)
    raise BackendUnavailableError(failures)


async def _attempt_tls(
    listener: ListenerConfig, context: ssl.SSLContext, relay: Endpoint
) -> BackendConnection:
    """One relay: connect, STARTTLS if configured, handshake; all under connect_timeout."""
    deadline = trio.current_time() + listener.connect_timeout
    transport = await connect_one(relay, listener.connect_timeout)
    try:
        with trio.fail_at(deadline):
            greeting = b""
            if listener.backend_tls is BackendTls.STARTTLS:
                greeting = await _negotiate_starttls(transport, _negotiator(listener, transport))
            tls = TlsStream(
                transport,
                context,
                server_side=False,
                server_hostname=listener.backend_server_name or relay.host,
            )
            await _handshake(tls)
    except trio.TooSlowError:
        await _close(transport)
        raise BackendAttemptError(BackendFailureReason.TIMEOUT, "TLS setup timed out") from None
    except BaseException:
        await _close(transport)
        raise
    return BackendConnection(tls, relay, greeting)


async def _plaintext(listener: ListenerConfig, relay: Endpoint) -> BackendConnection:
    """A fresh plaintext connection to `relay`: the session then runs as with tls "none"."""
    stream = await connect_one(relay, listener.connect_timeout)
    return BackendConnection(stream, relay, encrypted=False)


def _negotiator(listener: ListenerConfig, transport: trio.SocketStream) -> StartTlsClient:
    if listener.protocol is Protocol.POP3:
        return Pop3StartTlsClient()
    return SmtpStartTlsClient(_ehlo_name(transport))


def _ehlo_name(transport: trio.SocketStream) -> str:
    """Our address as an RFC 5321 §4.1.3 address literal: no name lookup on the session path,
    and exactly what the relay sees (a name could disagree with it)."""
    try:
        host = str(transport.socket.getsockname()[0]).split("%", 1)[0]
    except OSError:
        return "[127.0.0.1]"
    return f"[IPv6:{host}]" if ":" in host else f"[{host}]"


async def _negotiate_starttls(transport: trio.SocketStream, negotiator: StartTlsClient) -> bytes:
    """Talk plaintext up to the STARTTLS/STLS reply; return the relay's greeting."""
    try:
        while negotiator.verdict is None:
            data = await transport.receive_some(RECEIVE_SIZE_BYTES)
            if not data:
                negotiator.receive_eof()
                break
            reply = negotiator.receive(data)
            if reply and negotiator.verdict is None:
                await transport.send_all(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise BackendAttemptError(
            BackendFailureReason.PROTOCOL_ERROR, "connection lost before STARTTLS"
        ) from exc
    verdict = negotiator.verdict
    if isinstance(verdict, Ready):
        return verdict.greeting
    assert verdict is not None
    raise BackendAttemptError(verdict.reason, verdict.detail)


async def _handshake(tls: TlsStream) -> None:
    try:
        await tls.do_handshake()
    except TlsHandshakeError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            # "Hostname mismatch", "certificate has expired", "unable to get local issuer..."
            detail = cause.verify_message or exc.detail
            raise BackendAttemptError(BackendFailureReason.TLS_VERIFY, detail) from exc
        raise BackendAttemptError(BackendFailureReason.TLS_HANDSHAKE, exc.detail) from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise BackendAttemptError(
            BackendFailureReason.TLS_HANDSHAKE, "connection lost in the handshake"
        ) from exc


async def _close(stream: trio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(OSError, trio.BrokenResourceError):
        await stream.aclose()
