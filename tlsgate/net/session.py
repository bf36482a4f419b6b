"""One client connection from accept to close.

accept -> implicit: handshake, backend, relay or mediate
       -> starttls/none: backend, mediate (the mediator asks for TLS when the client does)
       -> auto: wait up to detect_timeout for the first byte: 0x16 -> implicit path with the
          bytes already read; other bytes -> early talker on the plaintext path; silence ->
          plaintext path with STARTTLS offered
A session never raises into the server: every way it can end is classified into a
`CloseReason` and logged once as `closed`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl

import trio
from structlog.typing import FilteringBoundLogger

from tlsgate.config.model import ListenerConfig, Protocol, TlsMode
from tlsgate.net.activity import Activity
from tlsgate.net.backend import BackendFailure, BackendUnavailableError, connect_backend
from tlsgate.net.limits import HandshakeSlots
from tlsgate.net.mediate import GOODBYE_SEND_TIMEOUT_SECONDS, MediationRunner
from tlsgate.net.outbound import BackendConnection, RelayMemory, connect_outbound
from tlsgate.net.relay import (
    RECEIVE_SIZE_BYTES,
    PeerBrokenError,
    Side,
    relay_both_ways,
    tune_for_relay,
)
from tlsgate.net.tls_stream import TlsStream
from tlsgate.observe.events import CloseReason, DetectedKind, HandshakeFailure
from tlsgate.observe.metrics import ListenerMetrics
from tlsgate.observe.observer import SessionObserver
from tlsgate.protocol.io_types import Mediator, Notice, SessionPolicy
from tlsgate.protocol.pop3_server import Pop3ServerMediator
from tlsgate.protocol.smtp_server import SmtpServerMediator
from tlsgate.protocol.tempfail import backend_unavailable_reply
from tlsgate.sniff import Verdict, classify
from tlsgate.tls.client_auth import ClientIdentity, client_identity
from tlsgate.tls.failures import TlsHandshakeError

_STREAM_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class Session:
    def __init__(
        self,
        stream: trio.SocketStream,
        listener: ListenerConfig,
        context: ssl.SSLContext | None,
        logger: FilteringBoundLogger,
        *,
        conn_id: str,
        backend_context: ssl.SSLContext | None = None,
        relays: RelayMemory | None = None,
        metrics: ListenerMetrics,
        handshake_slots: HandshakeSlots | None = None,
        holds_handshake_slot: bool = False,
    ) -> None:
        self.listener = listener
        self._raw = stream
        tune_for_relay(stream)
        self._context = context
        self._log = logger
        self._client: trio.abc.Stream = stream
        self._backend: trio.abc.Stream | None = None
        self._backend_context = backend_context
        self._relays = relays or RelayMemory()
        # An outbound STARTTLS read the relay's greeting; the client gets it first.
        self._backend_greeting = b""
        # The run's clock, asked directly: trio.current_time() reaches it through three calls.
        self._now = trio.lowlevel.current_clock().current_time
        self._accepted_at = self._now()
        self._bytes_from_client = 0
        self._bytes_from_backend = 0
        self._peer_ip, self._peer = _peer(stream)
        # Bound once, so every line of the session names the client, not only `accepted`.
        self._log = logger.bind(conn_id=conn_id, listener=listener.name, peer=self._peer)
        self._observer = SessionObserver(self._log, metrics)
        self._handshake_slots = handshake_slots
        # Implicit TLS: the accept loop took this session's handshake slot (net.limits).
        self._holds_handshake_slot = holds_handshake_slot
        # The client certificate that passed verification (client_auth), for later features.
        self.client_identity: ClientIdentity | None = None

    async def run(self) -> None:
        self._observer.accepted()
        reason = CloseReason.INTERNAL_ERROR
        try:
            reason = await self._serve()
        except PeerBrokenError as exc:
            reason = (
                CloseReason.CLIENT_RESET if exc.side is Side.CLIENT else CloseReason.BACKEND_RESET
            )
        except TlsHandshakeError as exc:
            reason = CloseReason.HANDSHAKE_FAILED
            self._observer.handshake_failed(exc.failure, exc.detail)
        except trio.Cancelled:
            reason = CloseReason.SHUTDOWN
            raise
        except Exception:
            self._observer.internal_error()
        finally:
            self._give_back_handshake_slot()  # a session that ended before its handshake
            with trio.CancelScope(shield=True):
                await self._close_streams()
            self._observer.closed(
                reason,
                self._bytes_from_client,
                self._bytes_from_backend,
                self._now() - self._accepted_at,
            )

    async def _serve(self) -> CloseReason:
        listener = self.listener
        initial_data = b""
        client_tls = False
        if listener.tls is TlsMode.IMPLICIT:
            await self._start_tls(b"", self._accepted_at + listener.handshake_timeout)
            client_tls = True
        elif listener.tls is TlsMode.AUTO:
            detected = await self._detect()
            if detected is None:
                return CloseReason.COMPLETED  # closed before saying anything
            kind, initial_data = detected
            self._observer.detected(kind)
            if kind is DetectedKind.TLS:
                await self._start_tls(initial_data, self._accepted_at + listener.handshake_timeout)
                client_tls, initial_data = True, b""
        if not await self._connect_backend():
            return CloseReason.BACKEND_UNAVAILABLE
        assert self._backend is not None
        activity = Activity(listener.idle_timeout, self._observer.bytes_moved)
        if not listener.mediates:
            return await self._relay(initial_data, activity)
        runner = MediationRunner(
            self._mediator(client_tls),
            self._client,
            self._backend,
            start_client_tls=self._start_tls_after_command,
            on_notice=self._on_notice,
            activity=activity,
        )
        try:
            return await runner.run(initial_data, self._backend_greeting)
        finally:
            self._client = runner.client
            self._bytes_from_client += runner.bytes_from_client
            self._bytes_from_backend += runner.bytes_from_backend

    async def _relay(self, initial_data: bytes, activity: Activity) -> CloseReason:
        assert self._backend is not None
        if initial_data:
            await self._backend.send_all(initial_data)
            self._bytes_from_client += len(initial_data)
        copied = [0, 0]
        try:
            idle = await relay_both_ways(self._client, self._backend, activity, copied)
        finally:
            self._bytes_from_client += copied[0]
            self._bytes_from_backend += copied[1]
        return CloseReason.IDLE_TIMEOUT if idle else CloseReason.COMPLETED

    # ---- detection and TLS ------------------------------------------------------------------

    async def _detect(self) -> tuple[DetectedKind, bytes] | None:
        """CONTRACT.md: detect_timeout bounds the wait for the first byte only; a TLS record
        header commits to TLS, the rest of the hello is the handshake's business."""
        with trio.move_on_after(self.listener.detect_timeout) as waiting:
            first = await self._receive_raw()
        if waiting.cancelled_caught:
            return DetectedKind.PLAINTEXT, b""
        if not first:
            return None
        with trio.move_on_at(self._accepted_at + self.listener.handshake_timeout) as hello:
            while (verdict := classify(first)) is Verdict.NEED_MORE:
                more = await self._receive_raw()
                if not more:
                    return None
                first += more
        if hello.cancelled_caught:
            # A record header that never completes is a handshake that never starts.
            raise TlsHandshakeError(HandshakeFailure.TIMEOUT, "handshake timeout")
        return (DetectedKind.TLS if verdict is Verdict.TLS else DetectedKind.EARLY_TALKER), first

    async def _receive_raw(self) -> bytes:
        try:
            return await self._raw.receive_some(RECEIVE_SIZE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerBrokenError(Side.CLIENT) from exc

    async def _start_tls(self, initial_data: bytes, deadline: float) -> TlsStream:
        assert self._context is not None, "config validation guarantees a certificate"
        tls = TlsStream(self._raw, self._context, server_side=True, initial_data=initial_data)
        self._client = tls
        started = self._now()
        try:
            # Not fail_at(): it is move_on_at() inside a generator-based context manager.
            with trio.move_on_at(deadline) as handshake:
                if self._handshake_slots is not None and not self._holds_handshake_slot:
                    await self._handshake_slots.take(self)
                    self._holds_handshake_slot = True
                try:
                    await tls.do_handshake()
                finally:
                    self._give_back_handshake_slot()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TlsHandshakeError(HandshakeFailure.EOF, "connection lost") from None
        if handshake.cancelled_caught:
            raise TlsHandshakeError(HandshakeFailure.TIMEOUT, "handshake timeout")
        ssl_object = tls.ssl_object
        cipher = ssl_object.cipher()
        identity = self.client_identity = client_identity(ssl_object)
        client = (
            {"client_subject": identity.subject, "client_fingerprint": identity.fingerprint}
            if identity is not None
            else {}
        )
        self._observer.tls_established(
            ssl_object.version() or "",
            cipher[0] if cipher else "",
            # Set by the SNI callback (tlsgate.tls.contexts.sni_callback).
            getattr(ssl_object, "tlsgate_sni", None) or "",
            self._now() - started,
            **client,
        )
        return tls

    def _give_back_handshake_slot(self) -> None:
        if self._holds_handshake_slot and self._handshake_slots is not None:
            self._handshake_slots.give_back(self)
            self._holds_handshake_slot = False

    async def _start_tls_after_command(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        assert stream is self._raw, "STARTTLS happens once, on the plaintext transport"
        return await self._start_tls(b"", self._now() + self.listener.handshake_timeout)

    # ---- backend ----------------------------------------------------------------------------

    async def _connect_backend(self) -> bool:
        listener = self.listener
        started = self._now()
        try:
            if self._backend_context is None:
                stream, endpoint = await connect_backend(
                    listener.backend, listener.connect_timeout, self._on_backend_failure
                )
                connection = BackendConnection(stream, endpoint, encrypted=False)
            else:
                connection = await connect_outbound(
                    listener, self._backend_context, self._relays, self._on_backend_failure
                )
        except BackendUnavailableError:
            tls_wanted = self._backend_context is not None
            await self._send_goodbye(backend_unavailable_reply(listener.protocol, tls_wanted))
            return False
        self._backend, self._backend_greeting = connection.stream, connection.greeting
        tls_version = ""
        if isinstance(connection.stream, TlsStream):
            tls_version = connection.stream.ssl_object.version() or ""
        elif self._backend_context is not None:
            # Only where the operator asked for it (backend_tls_fallback); never silent.
            self._observer.plaintext_fallback(connection.endpoint)
        self._observer.backend_connected(
            self._now() - started, connection.endpoint, tls_version=tls_version
        )
        return True

    def _on_backend_failure(self, failure: BackendFailure) -> None:
        self._observer.backend_failed(failure.reason, failure.detail, endpoint=failure.endpoint)

    async def _send_goodbye(self, reply: bytes) -> None:
        if not reply:
            return
        with trio.move_on_after(GOODBYE_SEND_TIMEOUT_SECONDS):
            with contextlib.suppress(*_STREAM_GONE):
                await self._client.send_all(reply)

    # ---- mediation --------------------------------------------------------------------------

    def _mediator(self, client_tls: bool) -> Mediator:
        listener = self.listener
        if listener.tls is TlsMode.NONE:
            # CONTRACT.md: auth_requires_tls and require_tls are ignored without TLS.
            policy = SessionPolicy(
                client_tls=False, offer_starttls=False, auth_requires_tls=False, require_tls=False
            )
        else:
            excluded = not client_tls and self._excluded_from_starttls()
            policy = SessionPolicy(
                client_tls=client_tls,
                offer_starttls=not client_tls and not excluded,
                auth_requires_tls=listener.auth_requires_tls,
                # A client that is not offered STARTTLS could never satisfy require_tls.
                require_tls=listener.require_tls and not excluded,
            )
        if listener.protocol is Protocol.POP3:
            return Pop3ServerMediator(policy)
        return SmtpServerMediator(policy)

    def _excluded_from_starttls(self) -> bool:
        if self._peer_ip is None or not self.listener.starttls_exclude:
            return False
        address = ipaddress.ip_address(self._peer_ip)
        return any(address in network for network in self.listener.starttls_exclude)

    def _on_notice(self, notice: Notice) -> None:
        self._observer.notice(notice)

    # ---- closing ----------------------------------------------------------------------------

    async def _close_streams(self) -> None:
        # A TlsStream bounds its own close_notify (and closes its transport whatever happens);
        # a socket closes at once. So no deadline is needed here, even shielded at shutdown.
        for stream in (self._client, self._backend):
            if isinstance(stream, trio.SocketStream):
                stream.socket.close()  # what SocketStream.aclose does, minus its schedule point
            elif stream is not None:
                with contextlib.suppress(*_STREAM_GONE, OSError):
                    await stream.aclose()


def _peer(stream: trio.SocketStream) -> tuple[str | None, str]:
    """The client's IP (for starttls_exclude) and its printable HOST:PORT (for the log)."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return None, "unknown"
    ip = str(host).split("%", 1)[0]
    return ip, (f"[{host}]:{port}" if ":" in ip else f"{host}:{port}")
