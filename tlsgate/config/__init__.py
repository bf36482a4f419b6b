"""The configuration: typed, frozen data (`model`) loaded and validated from TOML (`load`)."""

from tlsgate.config.load import (
    ConfigError,
    ConfigProblem,
    ConfigWarning,
    load_config,
    load_config_with_warnings,
    parse_config,
    parse_config_with_warnings,
)
from tlsgate.config.model import (
    CertificateEntry,
    ClientAuth,
    Config,
    Endpoint,
    ListenerConfig,
    LogConfig,
    LogFormat,
    LogLevel,
    Profile,
    Protocol,
    TlsMode,
    TlsSettings,
    TlsVersion,
)

__all__ = [
    "CertificateEntry",
    "ClientAuth",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "ConfigWarning",
    "Endpoint",
    "ListenerConfig",
    "LogConfig",
    "LogFormat",
    "LogLevel",
    "Profile",
    "Protocol",
    "TlsMode",
    "TlsSettings",
    "TlsVersion",
    "load_config",
    "load_config_with_warnings",
    "parse_config",
    "parse_config_with_warnings",
]
