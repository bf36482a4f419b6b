"""Turns each session event into exactly one log event and its metric updates.

The single place where the event vocabulary meets its outputs, so an event cannot be logged
without being counted or the other way round (STYLE.md principle 4). A session calls its
`SessionObserver` once per event (accepted, detected, tls_established, a mediator `Notice`,
backend_connected, closed, ...), never per chunk: byte counts arrive with `closed`, and every
few seconds for a session that keeps moving data (`bytes_moved`).

Every line a session logs carries `conn_id`, `listener` and `peer`, bound into its logger
once. Field values are facts tlsgate decided (versions, reasons, counts) or short bounded
names (a command verb, the SNI name), never a command's argument, an AUTH payload or a message
body; `tlsgate.observe.logs` redacts such fields anyway, should a caller ever pass one.
"""

from __future__ import annotations

from structlog.typing import FilteringBoundLogger

from tlsgate.config.model import Endpoint
from tlsgate.observe.events import (
    BackendFailureReason,
    CloseReason,
    DetectedKind,
    HandshakeFailure,
    NoticeKind,
)
from tlsgate.observe.metrics import ListenerMetrics
from tlsgate.protocol.io_types import Notice

# Attacks and client errors are warnings: an operator wants to see them without debug logs.
_WARNINGS = frozenset(
    {
        NoticeKind.STARTTLS_INJECTION,
        NoticeKind.PROTOCOL_ERROR,
        NoticeKind.HANDSHAKE_FAILED,
        NoticeKind.BACKEND_FAILED,
    }
)


def log_notice(logger: FilteringBoundLogger, notice: Notice) -> None:
    if notice.kind in _WARNINGS:
        logger.warning(notice.kind.value, **notice.fields)
    else:
        logger.info(notice.kind.value, **notice.fields)


class SessionObserver:
    """One session's log lines and metrics; each method is one event, logged and counted."""

    __slots__ = ("_metrics", "_published_b2c", "_published_c2b", "log")

    def __init__(self, logger: FilteringBoundLogger, metrics: ListenerMetrics) -> None:
        """
        Args:
            logger: bound to the session's `conn_id`, `listener` and `peer`.
            metrics: the listener's series (`Metrics.listener`).
        """
        self.log = logger
        self._metrics = metrics
        self._published_c2b = self._published_b2c = 0

    def accepted(self) -> None:
        self._metrics.connection_opened()
        self.log.info(NoticeKind.ACCEPTED.value)

    def detected(self, kind: DetectedKind) -> None:
        self._metrics.detected(kind)
        self.log.info(NoticeKind.DETECTED.value, kind=kind.value)

    def tls_established(
        self, version: str, cipher: str, sni: str, seconds: float, **client: str
    ) -> None:
        """A client handshake completed; `client` holds the verified client certificate's
        `client_subject` and `client_fingerprint`, if there is one."""
        self._metrics.tls_established(version, seconds)
        self.log.info(
            NoticeKind.TLS_ESTABLISHED.value,
            version=version,
            cipher=cipher,
            sni=sni,
            handshake_ms=round(seconds * 1000, 1),
            **client,
        )

    def handshake_failed(self, failure: HandshakeFailure, detail: str) -> None:
        """`detail` is OpenSSL's reason (`ssl_error_detail`), e.g. "UNSUPPORTED_PROTOCOL"."""
        self._metrics.handshake_failed(failure)
        self.log.warning(NoticeKind.HANDSHAKE_FAILED.value, reason=failure.value, detail=detail)

    def notice(self, notice: Notice) -> None:
        """A mediator's notice: logged, and counted if it is one of the counted kinds."""
        self._metrics.notice(notice.kind)
        log_notice(self.log, notice)

    def backend_connected(
        self, seconds: float, endpoint: Endpoint | str, *, tls_version: str = ""
    ) -> None:
        """Connected (outbound: TLS is up too) after `seconds`; `tls_version` only with TLS."""
        self._metrics.backend_connected(seconds)
        tls = {"tls_version": tls_version} if tls_version else {}
        self.log.info(
            NoticeKind.BACKEND_CONNECTED.value,
            backend=str(endpoint),
            connect_ms=round(seconds * 1000, 1),
            **tls,
        )

    def backend_failed(
        self, reason: BackendFailureReason, detail: str, *, endpoint: Endpoint | str = ""
    ) -> None:
        """One attempt to reach one backend address failed; call it once per attempt."""
        self._metrics.backend_failed(reason)
        self.log.warning(
            NoticeKind.BACKEND_FAILED.value,
            backend=str(endpoint),
            reason=reason.value,
            detail=detail,
        )

    def plaintext_fallback(self, endpoint: Endpoint | str) -> None:
        """Outbound: the relays could not be reached over TLS and the operator allows the
        clear (backend_tls_fallback); a warning, never silent."""
        self._metrics.plaintext_fallback()
        self.log.warning(NoticeKind.PLAINTEXT_FALLBACK.value, backend=str(endpoint))

    def internal_error(self) -> None:
        """Call from an `except` block: the traceback is logged (the outcome is counted by
        `closed`, with `CloseReason.INTERNAL_ERROR`)."""
        self.log.exception(NoticeKind.INTERNAL_ERROR.value)

    def bytes_moved(self, bytes_c2b: int, bytes_b2c: int) -> None:
        """A long session's bytes so far, counted without a log line (net.activity)."""
        self._metrics.bytes_relayed(bytes_c2b, bytes_b2c)
        self._published_c2b += bytes_c2b
        self._published_b2c += bytes_b2c

    def closed(self, reason: CloseReason, bytes_c2b: int, bytes_b2c: int, seconds: float) -> None:
        """`bytes_*`: the session's totals, of which `bytes_moved` may have counted a part."""
        self._metrics.connection_closed(
            reason, bytes_c2b - self._published_c2b, bytes_b2c - self._published_b2c
        )
        self.log.info(
            NoticeKind.CLOSED.value,
            reason=reason.value,
            bytes_client_to_backend=bytes_c2b,
            bytes_backend_to_client=bytes_b2c,
            duration_ms=round(seconds * 1000),
        )
