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
    CONNECTION_REFUSED = "connection_refused"  # max_connections reached: tempfail, then close
    RETIRING = "retiring"  # a worker replaced by a reload: accepts no more, sessions finish
    # workers = N: the supervisor's view of its worker processes.
    WORKERS_STARTED = "workers_started"
    WORKER_STARTED = "worker_started"
    WORKER_EXITED = "worker_exited"
    WORKER_DIED = "worker_died"  # unexpectedly: it is replaced
    WORKER_FAILED = "worker_failed"  # a worker's own last words (a bug)
    WORKER_ORPHANED = "worker_orphaned"  # its supervisor died before it started serving
    WORKER_SLOW = "worker_slow"  # did not report ready/stopped in time
    STOPPED = "stopped"
    CONFIG_RELOADED = "config_reloaded"
    CONFIG_RELOAD_FAILED = "config_reload_failed"
    CERTIFICATES_RELOADED = "certificates_reloaded"
    RELOAD_IGNORED = "reload_ignored"
    LISTENER_STOPPED = "listener_stopped"
    PLAINTEXT_FALLBACK = "plaintext_fallback"  # outbound: TLS failed, the operator allows clear
    INTERNAL_ERROR = "internal_error"  # a bug: a session ended on an unexpected exception
    ACCEPT_FAILED = "accept_failed"  # out of file descriptors or memory; accepting resumes
    SIGNAL = "signal"
    STARTUP_FAILED = "startup_failed"
    METRICS_LISTENING = "metrics_listening"
    PRIVILEGES_DROPPED = "privileges_dropped"  # started as root: now `user`/`group`
    PRIVILEGES_NOT_DROPPED = "privileges_not_dropped"  # not root, and `user` is someone else
    NOTIFY_FAILED = "notify_failed"  # an sd_notify datagram could not be sent (logged once)


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


class BackendFailureReason(StrEnum):
    """Why one attempt to reach a backend failed; the `reason` label of backend errors."""

    REFUSED = "refused"  # TCP connection refused
    TIMEOUT = "timeout"  # connect (and, outbound, the TLS setup) took longer than connect_timeout
    UNREACHABLE = "unreachable"  # no route, name did not resolve, other OS errors
    TLS_HANDSHAKE = "tls_handshake"  # outbound: the TLS handshake failed
    TLS_VERIFY = "tls_verify"  # outbound: the relay's certificate did not verify
    STARTTLS_NOT_OFFERED = "starttls_not_offered"  # outbound: no STARTTLS/STLS (stripping?)
    STARTTLS_REFUSED = "starttls_refused"  # outbound: the relay answered STARTTLS with an error
    RESPONSE_INJECTION = "response_injection"  # outbound: bytes after the STARTTLS reply
    PROTOCOL_ERROR = "protocol_error"  # outbound: a greeting or reply that makes no sense
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
    OVER_LIMIT = "over_limit"  # refused at accept: max_connections reached


class Direction(StrEnum):
    CLIENT_TO_BACKEND = "client_to_backend"
    BACKEND_TO_CLIENT = "backend_to_client"


class ReloadResult(StrEnum):
    """How a reload (config or certificates) ended; the `result` label of the reload counter."""

    SUCCESS = "success"
    FAILURE = "failure"
