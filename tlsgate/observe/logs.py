"""structlog configuration: console or JSON lines on stderr, secrets never printed."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from tlsgate.config.model import LogConfig, LogFormat

# Fields whose values are secrets or message content whatever code tries to log them.
REDACTED_FIELDS = frozenset({"password", "auth", "sasl", "credentials", "line", "body", "data"})

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def _redact(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in REDACTED_FIELDS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(config: LogConfig, *, worker: int | None = None) -> None:
    """Configure structlog for the whole process (the CLI calls this once).

    `worker`: the worker id of a `workers = N` process, carried by every line it logs.
    """
    if worker is not None:
        # trio's tasks start from a copy of this context, so every session's lines get it.
        structlog.contextvars.bind_contextvars(worker=worker)
    renderer: structlog.typing.Processor
    if config.format is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level.value]),
        # One write per line, newline included (print() makes two): the workers of
        # `workers = N` share stderr, and a pipe keeps a write of up to PIPE_BUF whole, so lines
        # of different workers never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**context)
    return logger
