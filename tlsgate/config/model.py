"""The configuration as frozen, typed data: what the rest of tlsgate sees.

PURE: no I/O. `load.py` turns a TOML file into these objects; attribute names are the TOML key
names (a contract, see CONTRACT.md), so a key path in an error message maps straight onto them.
Frozen dataclasses are hashable, which lets a reload diff listeners by value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Protocol(StrEnum):
    SMTP = "smtp"
    POP3 = "pop3"
    TCP = "tcp"


class TlsMode(StrEnum):
    IMPLICIT = "implicit"
    STARTTLS = "starttls"
    AUTO = "auto"
    NONE = "none"


class BackendTls(StrEnum):
    """How tlsgate speaks to its backend (outbound): in the clear, TLS on connect, or STARTTLS."""

    NONE = "none"
    IMPLICIT = "implicit"
    STARTTLS = "starttls"


class TlsFallback(StrEnum):
    """What an outbound listener does when its relays cannot be reached over TLS.

    Anything but `none` gives up secrecy, so only an operator who asks for it gets it.
    """

    NONE = "none"  # tempfail (421 4.7.0 / -ERR): the client's MTA queues and retries
    PLAINTEXT = "plaintext"  # continue in the clear
    ALTERNATE = "alternate"  # per relay: after a failed TLS attempt, the next one is plaintext


class LogFormat(StrEnum):
    CONSOLE = "console"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class TlsVersion(StrEnum):
    """Spelled as OpenSSL and Python's `ssl.TLSVersion` member names spell them."""

    TLSV1 = "TLSv1"
    TLSV1_1 = "TLSv1.1"
    TLSV1_2 = "TLSv1.2"
    TLSV1_3 = "TLSv1.3"


class Profile(StrEnum):
    """Mozilla's Server Side TLS configurations (https://wiki.mozilla.org/Security/Server_Side_TLS).

    `legacy` is Mozilla's "old": TLS 1.0 and 1.1 for clients of the Windows XP / Outlook 2007
    era. The cipher strings live in `tlsgate.tls.policy`; the version range is here, because
    the loader checks `min_version <= max_version` against it.
    """

    MODERN = "modern"
    INTERMEDIATE = "intermediate"
    LEGACY = "legacy"


# The versions each profile allows when min_version / max_version are not set (Mozilla v5.7).
PROFILE_VERSIONS: Mapping[Profile, tuple[TlsVersion, TlsVersion]] = {
    Profile.MODERN: (TlsVersion.TLSV1_3, TlsVersion.TLSV1_3),
    Profile.INTERMEDIATE: (TlsVersion.TLSV1_2, TlsVersion.TLSV1_3),
    Profile.LEGACY: (TlsVersion.TLSV1, TlsVersion.TLSV1_3),
}


class ClientAuth(StrEnum):
    """Whether a listener asks TLS clients for a certificate (verified against `client_ca`)."""

    NONE = "none"
    OPTIONAL = "optional"  # asked for; a client without one is let in, a bad one is refused
    REQUIRED = "required"  # a client without a valid certificate fails the handshake


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A TCP address; `host` is a name or an IP literal without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    format: LogFormat = LogFormat.CONSOLE
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """`[metrics]`: where `/metrics` is served. Without the table there is no endpoint."""

    # Loopback by default: the metrics name listeners and certificates, which is nobody's
    # business off the host unless the operator says so (the example value).
    listen: Endpoint = Endpoint("127.0.0.1", 9464)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """Server-side TLS policy: `[tls]`, or one listener's effective policy (`tls_settings`).

    Unset versions and ciphers mean "the profile decides" (CONTRACT.md); any that is set
    overrides the profile.
    """

    profile: Profile = Profile.INTERMEDIATE
    min_version: TlsVersion | None = None
    max_version: TlsVersion | None = None
    ciphers: str | None = None  # OpenSSL cipher string for TLS 1.2 and below

    @property
    def versions(self) -> tuple[TlsVersion, TlsVersion]:
        """The (lowest, highest) version allowed: the settings, else the profile's."""
        low, high = PROFILE_VERSIONS[self.profile]
        return self.min_version or low, self.max_version or high


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateEntry:
    """One `[[certificate]]`: PEM `cert` (+ `key`, unless `cert` holds it) or `pkcs12`.

    The loader guarantees exactly one of `cert` and `pkcs12`, and `key` only with `cert`.
    Paths are absolute: resolved against the config file's directory.
    """

    cert: Path | None = None
    key: Path | None = None
    pkcs12: Path | None = None
    password_file: Path | None = None  # the password of an encrypted key or PKCS#12 file
    # Listeners select certificates by it; unset, it is the first DNS name of the certificate,
    # else the file's stem (`tlsgate.tls.certstore` decides, since it needs the file).
    name: str | None = None
    default: bool = False  # serves clients without SNI or with an unknown name

    @property
    def source(self) -> Path:
        """The file holding the certificate."""
        source = self.cert or self.pkcs12
        assert source is not None, "the loader guarantees cert or pkcs12"
        return source


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    name: str
    listen: Endpoint
    protocol: Protocol
    tls: TlsMode
    backend: tuple[Endpoint, ...]
    auth_requires_tls: bool = True
    require_tls: bool = False
    starttls_exclude: tuple[IPNetwork, ...] = ()
    detect_timeout: float = 0.5  # seconds
    handshake_timeout: float = 10.0  # seconds, counted from accept
    idle_timeout: float = 300.0  # seconds without a byte in either direction
    connect_timeout: float = 10.0  # seconds per backend connection attempt
    # TLS policy for this listener alone; unset keys take `[tls]`'s (see `tls_settings`).
    profile: Profile | None = None
    min_version: TlsVersion | None = None
    max_version: TlsVersion | None = None
    ciphers: str | None = None
    certificates: tuple[str, ...] = ()  # certificate names this listener serves; () = all
    client_auth: ClientAuth = ClientAuth.NONE
    client_ca: Path | None = None  # PEM file, or directory of PEM files, to verify clients
    max_connections: int | None = None  # sessions at once on this listener; None: no limit
    # Outbound: TLS towards the backend (a relay or smarthost), verified unless told otherwise.
    backend_tls: BackendTls = BackendTls.NONE
    backend_server_name: str | None = None  # SNI and the verified name; None: the backend's host
    backend_ca: Path | None = None  # PEM file or directory; None ("system"): the system's CAs
    backend_verify: bool = True
    backend_cert: Path | None = None  # client certificate for the relay (PEM; may hold the key)
    backend_key: Path | None = None
    backend_min_version: TlsVersion = TlsVersion.TLSV1_2
    backend_tls_fallback: TlsFallback = TlsFallback.NONE

    def tls_settings(self, defaults: TlsSettings) -> TlsSettings:
        """This listener's TLS policy: each key set here replaces the same key of `[tls]`."""
        return TlsSettings(
            profile=self.profile or defaults.profile,
            min_version=self.min_version or defaults.min_version,
            max_version=self.max_version or defaults.max_version,
            ciphers=self.ciphers or defaults.ciphers,
        )

    @property
    def mediates(self) -> bool:
        """True when a protocol mediator (not a byte relay) serves this listener."""
        return self.protocol is not Protocol.TCP


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: Path  # the file this was loaded from; relative paths resolved against its parent
    shutdown_timeout: float = 30.0  # seconds to let sessions finish on SIGTERM
    # Seconds between looks at the certificate files' identities; None: only SIGHUP reloads.
    reload_certificates_interval: float | None = None
    # Seconds between rebuilds of every TLS context, which gives OpenSSL fresh session-ticket
    # keys (Python's ssl cannot set them); tickets from before fall back to a full handshake.
    # 12 hours: tickets live at most that long plus one interval, as nginx and Postfix bound them.
    ticket_key_rotation_interval: float | None = 43200.0
    # Started as root, `run` binds its ports and then switches to these (`tlsgate.service`).
    # `group` unset: the user's own group. Names only; `check` does not look them up.
    user: str | None = None
    group: str | None = None
    # Processes serving the listeners; None ("auto"): one per CPU. More than one: a supervisor
    # forks them and they share the listening sockets and session-ticket keys (net.supervisor).
    workers: int | None = 1
    max_connections: int | None = None  # sessions at once over all listeners; None: no limit
    # TLS handshakes at once per process; more wait in the accept backlog (CONTRACT.md).
    max_handshakes_in_progress: int = 1000
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig | None = None  # None: no /metrics endpoint
    tls: TlsSettings = field(default_factory=TlsSettings)
    certificates: tuple[CertificateEntry, ...] = ()
    listeners: tuple[ListenerConfig, ...] = ()
