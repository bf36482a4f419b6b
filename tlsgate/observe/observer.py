"""Turns each mediator `Notice` into exactly one log event (and, later, its metrics).

The single place where the event vocabulary meets its outputs, so a notice cannot be logged
without being counted or the other way round (STYLE.md principle 4).
"""

from __future__ import annotations

from structlog.typing import FilteringBoundLogger

from tlsgate.observe.events import NoticeKind
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
