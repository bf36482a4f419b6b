"""The one vocabulary of events and the fixed label sets metrics may carry.

PURE. Every structlog event name and every metric label value comes from an enum here, so a log
line and a metric can never disagree about what happened and labels stay low-cardinality.
"""

from __future__ import annotations

from enum import StrEnum


class NoticeKind(StrEnum):
    ACCEPTED = "accepted"
    DETECTED = "detected"
    TLS_ESTABLISHED = "tls_established"
    HANDSHAKE_FAILED = "handshake_failed"
    STARTTLS = "starttls"
    STARTTLS_INJECTION = "starttls_injection"
    STARTTLS_REFUSED = "starttls_refused"
    AUTH_BEFORE_TLS_REFUSED = "auth_before_tls_refused"
    COMMAND_BEFORE_TLS_REFUSED = "command_before_tls_refused"
    PROTOCOL_ERROR = "protocol_error"
    BACKEND_CONNECTED = "backend_connected"
    BACKEND_FAILED = "backend_failed"
    IDLE_TIMEOUT = "idle_timeout"
    CLOSED = "closed"
    LISTENING = "listening"
    TLS_LEGACY_PROFILE = "tls_legacy_profile"  # a listener accepts TLS 1.0/1.1 (profile legacy)
    DRAINING = "draining"
    STOPPED = "stopped"
    CONFIG_RELOADED = "config_reloaded"
    CONFIG_RELOAD_FAILED = "config_reload_failed"
    CERTIFICATES_RELOADED = "certificates_reloaded"
    RELOAD_IGNORED = "reload_ignored"
    LISTENER_STOPPED = "listener_stopped"


class DetectedKind(StrEnum):
    TLS = "tls"
    PLAINTEXT = "plaintext"
    EARLY_TALKER = "early_talker"


class HandshakeFailure(StrEnum):
    PROTOCOL_VERSION = "protocol_version"
    NO_SHARED_CIPHER = "no_shared_cipher"
    UNKNOWN_CA = "unknown_ca"
    BAD_CERTIFICATE = "bad_certificate"
    TIMEOUT = "timeout"
    NOT_TLS = "not_tls"
    EOF = "eof"
    OTHER = "other"


class CloseReason(StrEnum):
    """Why a session ended; the `outcome` label of the connection counter."""

    COMPLETED = "completed"  # both sides finished (EOF or QUIT) normally
    CLIENT_RESET = "client_reset"  # the client's TCP connection broke
    BACKEND_RESET = "backend_reset"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    HANDSHAKE_FAILED = "handshake_failed"
    PROTOCOL_ERROR = "protocol_error"
    IDLE_TIMEOUT = "idle_timeout"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal_error"


class Direction(StrEnum):
    CLIENT_TO_BACKEND = "client_to_backend"
    BACKEND_TO_CLIENT = "backend_to_client"
