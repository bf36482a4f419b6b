"""The configuration as frozen, typed data: what the rest of tlsgate sees.

PURE: no I/O. `load.py` turns a TOML file into these objects; attribute names are the TOML key
names (a contract, see CONTRACT.md), so a key path in an error message maps straight onto them.
Frozen dataclasses are hashable, which lets a reload diff listeners by value.
"""

from __future__ import annotations

import ipaddress
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
class TlsSettings:
    """Server-side TLS policy. Unset versions mean "the profile decides" (CONTRACT.md);
    until profiles exist (issue 3) that is a TLS 1.2 floor and no ceiling."""

    min_version: TlsVersion | None = None
    max_version: TlsVersion | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateEntry:
    cert: Path  # absolute: resolved against the config file's directory
    key: Path


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

    @property
    def mediates(self) -> bool:
        """True when a protocol mediator (not a byte relay) serves this listener."""
        return self.protocol is not Protocol.TCP


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: Path  # the file this was loaded from; relative paths resolved against its parent
    shutdown_timeout: float = 30.0  # seconds to let sessions finish on SIGTERM
    log: LogConfig = field(default_factory=LogConfig)
    tls: TlsSettings = field(default_factory=TlsSettings)
    certificates: tuple[CertificateEntry, ...] = ()
    listeners: tuple[ListenerConfig, ...] = ()
