"""TOML file → `Config`, collecting every problem before giving up.

Theory of operation: the loader walks the TOML document with a key path (`listener[1].backend`).
Each table is driven by a table of parsers keyed by TOML key (the model's attribute names), so a
key is unknown exactly when it has no parser, required exactly when its dataclass field has no
default, and a new key is one new row. A value that fails to parse becomes a `ConfigProblem`
and the walk goes on. Cross-field rules (tcp + starttls, TLS without a certificate, duplicate
names and addresses, min > max version) then run on whatever parsed. Only when nothing at all
went wrong are the frozen dataclasses built; otherwise one `ConfigError` carries every problem.
Non-fatal findings (a key that is set but ignored) come back as `ConfigWarning`s.

`tlsgate check` and `tlsgate run` both come through here, so they refuse the same files with
the same lines.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tlsgate.config import parse, tls_rules
from tlsgate.config.model import (
    BackendTls,
    CertificateEntry,
    ClientAuth,
    Config,
    Endpoint,
    ListenerConfig,
    LogConfig,
    LogFormat,
    LogLevel,
    MetricsConfig,
    Profile,
    Protocol,
    TlsFallback,
    TlsMode,
    TlsSettings,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from tlsgate.config.walk import (
    ConfigError,
    ConfigProblem,
    ConfigWarning,
    Parser,
    Walk,
)

__all__ = [  # the finding types are re-exported: callers import them from here
    "ConfigError",
    "ConfigProblem",
    "ConfigWarning",
    "load_config",
    "load_config_with_warnings",
    "parse_config",
    "parse_config_with_warnings",
]

T = TypeVar("T")


# ---- the key tables ------------------------------------------------------------------------

_LISTENER_KEYS: Mapping[str, Parser] = {
    "name": parse.parse_name,
    "listen": parse.parse_listen,
    "protocol": parse.enum_parser(Protocol),
    "tls": parse.enum_parser(TlsMode),
    "backend": parse.parse_backends,
    "auth_requires_tls": parse.parse_bool,
    "require_tls": parse.parse_bool,
    "starttls_exclude": parse.parse_networks,
    "detect_timeout": parse.parse_duration,
    "handshake_timeout": parse.parse_duration,
    "idle_timeout": parse.parse_duration,
    "connect_timeout": parse.parse_duration,
    # The TLS policy keys of [tls], per listener (client_ca, a path, is added per document).
    "profile": parse.enum_parser(Profile),
    "min_version": parse.parse_tls_version,
    "max_version": parse.parse_tls_version,
    "ciphers": parse.parse_cipher_string,
    "ciphersuites": parse.parse_ciphersuites,
    "certificates": parse.parse_certificate_names,
    "client_auth": parse.enum_parser(ClientAuth),
    "max_connections": parse.parse_count,
    # Outbound (the path keys are added per document, like client_ca).
    "backend_tls": parse.enum_parser(BackendTls),
    "backend_server_name": parse.parse_server_name,
    "backend_verify": parse.parse_bool,
    "backend_min_version": parse.parse_tls_version,
    "backend_tls_fallback": parse.enum_parser(TlsFallback),
}
_LOG_KEYS: Mapping[str, Parser] = {
    "format": parse.enum_parser(LogFormat),
    "level": parse.enum_parser(LogLevel, aliases={"warn": LogLevel.WARNING}),
}
_METRICS_KEYS: Mapping[str, Parser] = {"listen": parse.parse_listen}
_TLS_KEYS: Mapping[str, Parser] = {
    "profile": parse.enum_parser(Profile),
    "min_version": parse.parse_tls_version,
    "max_version": parse.parse_tls_version,
    "ciphers": parse.parse_cipher_string,
    "ciphersuites": parse.parse_ciphersuites,
}
# Nested tables pass through unparsed here; each is walked with its own key table below.
_TOP_KEYS: Mapping[str, Parser] = {
    "shutdown_timeout": parse.parse_duration,
    "reload_certificates_interval": parse.parse_interval_or_off,
    "ticket_key_rotation_interval": parse.parse_interval_or_off,
    "user": parse.parse_account_name,
    "group": parse.parse_account_name,
    "workers": parse.parse_workers,
    "max_connections": parse.parse_count,
    "max_handshakes_in_progress": parse.parse_count,
    "log": lambda raw: raw,
    "metrics": lambda raw: raw,
    "tls": lambda raw: raw,
    "certificate": lambda raw: raw,
    "listener": lambda raw: raw,
}
_SCALAR_TOP_KEYS = (
    "shutdown_timeout",
    "reload_certificates_interval",
    "ticket_key_rotation_interval",
    "user",
    "group",
    "workers",
    "max_connections",
    "max_handshakes_in_progress",
)
# CONTRACT.md: these act only with tls = "starttls" or "auto"; set on tls = "none", they warn.
# The TLS policy keys join them: a listener without TLS has no handshake to apply them to.
_IGNORED_WITHOUT_TLS = (
    "auth_requires_tls",
    "require_tls",
    "profile",
    "min_version",
    "max_version",
    "ciphers",
    "certificates",
    "client_auth",
    "client_ca",
)
# Outbound keys that mean nothing while the backend is spoken to in the clear.
_IGNORED_WITHOUT_BACKEND_TLS = (
    "backend_server_name",
    "backend_ca",
    "backend_verify",
    "backend_cert",
    "backend_key",
    "backend_min_version",
    "backend_tls_fallback",
)
_CERTIFICATE_MODES = (TlsMode.IMPLICIT, TlsMode.STARTTLS, TlsMode.AUTO)
_TCP_MODES = (TlsMode.IMPLICIT, TlsMode.AUTO, TlsMode.NONE)
_TOML_POSITION = re.compile(r"\s*\(at (line \d+, column \d+|end of document)\)$")


def _required(cls: type[DataclassInstance]) -> tuple[str, ...]:
    """The dataclass fields without a default, in field order: the keys a table must have."""
    return tuple(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    )


def _build(factory: Callable[..., T], values: Mapping[str, object]) -> T:
    """Construct a model dataclass from parsed values; absent keys take the field default."""
    return factory(**values)


# ---- the document ----------------------------------------------------------------------------


def parse_config_with_warnings(
    data: Mapping[str, object], source: Path
) -> tuple[Config, list[ConfigWarning]]:
    """Validate a parsed TOML document.

    Args:
        data: what `tomllib` returned.
        source: the config file as the user named it: problems name it that way, and relative
            paths in the document resolve against its directory.

    Returns:
        The config and the non-fatal warnings.

    Raises:
        ConfigError: with every problem found (and the warnings found on the way).
    """
    walk = Walk(str(source))
    top = walk.table("", data, _TOP_KEYS)
    log = walk.table("log", top.get("log", {}), _LOG_KEYS)
    tls = walk.table("tls", top.get("tls", {}), _TLS_KEYS)
    metrics = walk.table("metrics", top["metrics"], _METRICS_KEYS) if "metrics" in top else None
    tls_rules.check_versions(walk, "tls", tls, {})
    base = source.absolute().parent
    certificates = [
        tls_rules.certificate_entry(walk, f"certificate[{index}]", raw, base)
        for index, raw in enumerate(walk.array("certificate", top.get("certificate", [])))
    ]
    tls_rules.check_defaults(walk, certificates)
    listener_keys: dict[str, Parser] = {
        **_LISTENER_KEYS,
        "client_ca": partial(parse.parse_path, base=base),
        "backend_ca": partial(parse.parse_backend_ca, base=base),
        "backend_cert": partial(parse.parse_optional_path, base=base),
        "backend_key": partial(parse.parse_optional_path, base=base),
    }
    raw_listeners = walk.array("listener", top.get("listener", []))
    listeners = [
        walk.table(f"listener[{index}]", raw, listener_keys, _required(ListenerConfig))
        for index, raw in enumerate(raw_listeners)
    ]
    if not listeners and isinstance(top.get("listener", []), list):
        walk.error("listener", "at least one [[listener]]", "none")
    _check_listeners(walk, listeners, raw_listeners, tls, have_certificates=bool(certificates))
    if walk.problems:
        raise ConfigError(walk.problems, walk.warnings)
    settings: dict[str, object] = {key: top[key] for key in _SCALAR_TOP_KEYS if key in top}
    config = _build(
        Config,
        {
            "source": source,
            "log": _build(LogConfig, log),
            "metrics": None if metrics is None else _build(MetricsConfig, metrics),
            "tls": _build(TlsSettings, tls),
            "certificates": tuple(_build(CertificateEntry, values) for values in certificates),
            "listeners": tuple(_build(ListenerConfig, values) for values in listeners),
            **settings,
        },
    )
    return config, walk.warnings


def _check_listeners(
    walk: Walk,
    listeners: Sequence[Mapping[str, object]],
    raws: Sequence[object],
    tls: Mapping[str, object],
    *,
    have_certificates: bool,
) -> None:
    """Rules across fields and across listeners, run on whatever keys parsed.

    `raws` are the tables as written: a warning shows a value the way the file spells it.
    """
    claimed: dict[tuple[str, object], int] = {}  # (key, identity) -> first listener index
    for index, (values, raw) in enumerate(zip(listeners, raws, strict=True)):
        path = f"listener[{index}]"
        assert isinstance(raw, Mapping), "walk.array returns tables only"
        _check_listener(walk, path, values, raw, have_certificates=have_certificates)
        if values.get("tls") is not TlsMode.NONE:
            tls_rules.check_versions(walk, path, values, tls)
            tls_rules.check_client_auth(walk, path, values, raw)
        for key, identity in _claims(values):
            first = claimed.setdefault((key, identity), index)
            if first != index:
                got = f"{parse.render(str(values[key]))} (also listener[{first}])"
                walk.error(f"{path}.{key}", _UNIQUE[key], got)


def _check_listener(
    walk: Walk,
    path: str,
    values: Mapping[str, object],
    raw: Mapping[str, object],
    *,
    have_certificates: bool,
) -> None:
    protocol, mode = values.get("protocol"), values.get("tls")
    if protocol is Protocol.TCP and isinstance(mode, TlsMode) and mode not in _TCP_MODES:
        expected = _alternatives(_TCP_MODES) + ' with protocol "tcp"'
        walk.error(f"{path}.tls", expected, parse.render(str(mode)))
    if mode in _CERTIFICATE_MODES and not have_certificates:
        expected = '"none" (no [[certificate]] is configured)'
        walk.error(f"{path}.tls", expected, parse.render(str(mode)))
    if mode is TlsMode.NONE:
        for key in _IGNORED_WITHOUT_TLS:
            if key in values:
                expected = f'no {key} on a tls = "none" listener (it is ignored there)'
                walk.warn(f"{path}.{key}", expected, parse.render(raw[key]))
    _check_outbound(walk, path, values, raw)


def _check_outbound(
    walk: Walk, path: str, values: Mapping[str, object], raw: Mapping[str, object]
) -> None:
    protocol, backend_tls = values.get("protocol"), values.get("backend_tls", BackendTls.NONE)
    if protocol is Protocol.TCP and backend_tls is BackendTls.STARTTLS:
        expected = '"none" or "implicit" with protocol "tcp" (STARTTLS needs smtp or pop3)'
        walk.error(f"{path}.backend_tls", expected, parse.render(str(backend_tls)))
    if backend_tls is BackendTls.NONE:
        for key in _IGNORED_WITHOUT_BACKEND_TLS:
            if key in values:
                expected = f'no {key} with backend_tls = "none" (it is ignored there)'
                walk.warn(f"{path}.{key}", expected, parse.render(raw[key]))
        return
    fallback = values.get("backend_tls_fallback", TlsFallback.NONE)
    if backend_tls is BackendTls.IMPLICIT and fallback is not TlsFallback.NONE:
        # An implicit-TLS port (465, 995) speaks no plaintext to fall back to.
        expected = '"none" with backend_tls = "implicit" (fallback needs "starttls")'
        walk.error(f"{path}.backend_tls_fallback", expected, parse.render(str(fallback)))
    if values.get("backend_key") is not None and values.get("backend_cert") is None:
        walk.error(f"{path}.backend_cert", "a certificate for backend_key", "none")
    if values.get("backend_verify") is False:
        expected = "backend_verify = true (without it anyone in the path can read the mail)"
        walk.warn(f"{path}.backend_verify", expected, "false")


def _alternatives(modes: Sequence[TlsMode]) -> str:
    quoted = [f'"{mode}"' for mode in modes]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


_UNIQUE = {"name": "a unique name", "listen": "an address no other listener uses"}


def _claims(values: Mapping[str, object]) -> list[tuple[str, object]]:
    """What a listener claims for itself alone: its name, and its address unless port 0."""
    claims: list[tuple[str, object]] = []
    if isinstance(name := values.get("name"), str):
        claims.append(("name", name))
    if isinstance(listen := values.get("listen"), Endpoint) and listen.port != 0:
        # One key for two spellings of one address (`::1` and `0:0::1`, `Mail.` and `mail`).
        try:
            host = ipaddress.ip_address(listen.host).compressed
        except ValueError:
            host = listen.host.lower().removesuffix(".")
        claims.append(("listen", (host, listen.port)))
    return claims


# ---- entry points ----------------------------------------------------------------------------


def parse_config(data: Mapping[str, object], source: Path) -> Config:
    """`parse_config_with_warnings` without the warnings."""
    return parse_config_with_warnings(data, source)[0]


def load_config_with_warnings(path: Path) -> tuple[Config, list[ConfigWarning]]:
    """Read, parse and validate a config file.

    Args:
        path: the file, as the user gave it (messages name it exactly so).

    Returns:
        The config and the non-fatal warnings.

    Raises:
        ConfigError: the file is unreadable, not UTF-8, not TOML, or invalid; every problem is
            listed.
    """
    name = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(name, "", "a readable file", _os_reason(exc))]) from exc
    except UnicodeDecodeError as exc:
        problem = ConfigProblem(name, f"byte {exc.start}", "UTF-8 text", "an invalid byte")
        raise ConfigError([problem]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(name, exc)]) from exc
    return parse_config_with_warnings(data, path)


def load_config(path: Path) -> Config:
    """`load_config_with_warnings` without the warnings."""
    return load_config_with_warnings(path)[0]


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _syntax_problem(name: str, exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    # Python 3.11's TOMLDecodeError has no lineno attribute; the position ends the message.
    message = str(exc)
    match = _TOML_POSITION.search(message)
    where = match.group(1) if match else ""
    reason = message[: match.start()] if match else message
    return ConfigProblem(name, where, "valid TOML", f"a syntax error: {reason}")
