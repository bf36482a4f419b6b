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

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tlsgate.config import parse
from tlsgate.config.model import (
    CertificateEntry,
    Config,
    Endpoint,
    ListenerConfig,
    LogConfig,
    LogFormat,
    LogLevel,
    Protocol,
    TlsMode,
    TlsSettings,
    TlsVersion,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
Parser = Callable[[object], object]


@dataclass(frozen=True, slots=True)
class _Finding:
    file: str  # the config file as the user named it
    key: str  # key path such as `listener[0].tls`; empty for the file as a whole
    expected: str
    got: str  # already rendered for display

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: expected {self.expected}, got {self.got}"


@dataclass(frozen=True, slots=True)
class ConfigProblem(_Finding):
    """An error: the config must not be used."""


@dataclass(frozen=True, slots=True)
class ConfigWarning(_Finding):
    """Worth telling the operator, but the config is usable (`check` still exits 0)."""


class ConfigError(Exception):
    """The config is invalid; `problems` holds every problem found.

    Problems with single values come first, in file order, then those across fields.
    """

    def __init__(
        self, problems: Sequence[ConfigProblem], warnings: Sequence[ConfigWarning] = ()
    ) -> None:
        self.problems = tuple(problems)
        self.warnings = tuple(warnings)  # found on the way; still worth printing
        super().__init__("\n".join(str(problem) for problem in self.problems))


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
}
_LOG_KEYS: Mapping[str, Parser] = {
    "format": parse.enum_parser(LogFormat),
    "level": parse.enum_parser(LogLevel, aliases={"warn": LogLevel.WARNING}),
}
_TLS_KEYS: Mapping[str, Parser] = {
    "min_version": parse.parse_tls_version,
    "max_version": parse.parse_tls_version,
}
# Nested tables pass through unparsed here; each is walked with its own key table below.
_TOP_KEYS: Mapping[str, Parser] = {
    "shutdown_timeout": parse.parse_duration,
    "log": lambda raw: raw,
    "tls": lambda raw: raw,
    "certificate": lambda raw: raw,
    "listener": lambda raw: raw,
}
_PKCS12_UNSUPPORTED = "cert and key (PKCS#12 is not supported yet)"
# CONTRACT.md: these act only with tls = "starttls" or "auto"; set on tls = "none", they warn.
_IGNORED_WITHOUT_TLS = ("auth_requires_tls", "require_tls")
_CERTIFICATE_MODES = (TlsMode.IMPLICIT, TlsMode.STARTTLS, TlsMode.AUTO)
_TCP_MODES = (TlsMode.IMPLICIT, TlsMode.AUTO, TlsMode.NONE)
_VERSION_ORDER = tuple(TlsVersion)
_TOML_POSITION = re.compile(r"\s*\(at (line \d+, column \d+|end of document)\)$")


def _required(cls: type[DataclassInstance]) -> tuple[str, ...]:
    """The dataclass fields without a default, in field order: the keys a table must have."""
    return tuple(
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    )


class _Walk:
    """Collects findings for one file while tables are parsed."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigWarning] = []

    def error(self, key: str, expected: str, got: str) -> None:
        self.problems.append(ConfigProblem(self.file, key, expected, got))

    def warn(self, key: str, expected: str, got: str) -> None:
        self.warnings.append(ConfigWarning(self.file, key, expected, got))

    def unknown(self, path: str, key: str, known: Collection[str]) -> None:
        close = difflib.get_close_matches(key, known, n=1)
        hint = (
            f'a known key (did you mean "{close[0]}"?)' if close else "one of " + ", ".join(known)
        )
        self.error(_join(path, key), hint, f"unknown key {parse.render(key)}")

    def table(
        self,
        path: str,
        raw: object,
        parsers: Mapping[str, Parser],
        required: Collection[str] = (),
    ) -> dict[str, object]:
        """Parse one table; returns the keys that parsed (problems recorded, not raised)."""
        if not isinstance(raw, Mapping):
            self.error(path, "a table", parse.render(raw))
            return {}
        values: dict[str, object] = {}
        for key, value in raw.items():
            if key not in parsers:
                self.unknown(path, key, parsers)
                continue
            try:
                values[key] = parsers[key](value)
            except parse.Invalid as exc:
                for index, item, why in exc.items:
                    self.error(f"{_join(path, key)}[{index}]", why.expected, parse.render(item))
                if not exc.items:
                    self.error(_join(path, key), exc.expected, parse.render(value))
        for key in required:
            if key not in raw:
                self.error(_join(path, key), "a value (the key is required)", "nothing")
        return values

    def array(self, key: str, raw: object) -> list[object]:
        """An array of tables (`[[key]]`); anything else is one problem."""
        if isinstance(raw, list) and all(isinstance(item, Mapping) for item in raw):
            return list(raw)
        self.error(key, f"an array of tables ([[{key}]])", parse.render(raw))
        return []


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


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
    walk = _Walk(str(source))
    top = walk.table("", data, _TOP_KEYS)
    log = walk.table("log", top.get("log", {}), _LOG_KEYS)
    tls = walk.table("tls", top.get("tls", {}), _TLS_KEYS)
    _check_versions(walk, tls)
    base = source.absolute().parent
    certificates = [
        _certificate(walk, f"certificate[{index}]", raw, base)
        for index, raw in enumerate(walk.array("certificate", top.get("certificate", [])))
    ]
    listeners = [
        walk.table(f"listener[{index}]", raw, _LISTENER_KEYS, _required(ListenerConfig))
        for index, raw in enumerate(walk.array("listener", top.get("listener", [])))
    ]
    if not listeners and isinstance(top.get("listener", []), list):
        walk.error("listener", "at least one [[listener]]", "none")
    _check_listeners(walk, listeners, have_certificates=bool(certificates))
    if walk.problems:
        raise ConfigError(walk.problems, walk.warnings)
    settings = {key: top[key] for key in ("shutdown_timeout",) if key in top}
    config = _build(
        Config,
        {
            "source": source,
            "log": _build(LogConfig, log),
            "tls": _build(TlsSettings, tls),
            "certificates": tuple(_build(CertificateEntry, values) for values in certificates),
            "listeners": tuple(_build(ListenerConfig, values) for values in listeners),
            **settings,
        },
    )
    return config, walk.warnings


def _certificate(walk: _Walk, path: str, raw: object, base: Path) -> dict[str, object]:
    at_base = partial(parse.parse_path, base=base)
    if isinstance(raw, Mapping) and "pkcs12" in raw:
        walk.error(_join(path, "pkcs12"), _PKCS12_UNSUPPORTED, parse.render(raw["pkcs12"]))
        rest = {k: v for k, v in raw.items() if k != "pkcs12"}
        return walk.table(path, rest, {"cert": at_base, "key": at_base})
    return walk.table(path, raw, {"cert": at_base, "key": at_base}, _required(CertificateEntry))


def _check_versions(walk: _Walk, tls: Mapping[str, object]) -> None:
    low, high = tls.get("min_version"), tls.get("max_version")
    if (
        isinstance(low, TlsVersion)
        and isinstance(high, TlsVersion)
        and _VERSION_ORDER.index(low) > _VERSION_ORDER.index(high)
    ):
        expected = f'a version no higher than tls.max_version ("{high}")'
        walk.error("tls.min_version", expected, parse.render(str(low)))


def _check_listeners(
    walk: _Walk, listeners: Sequence[Mapping[str, object]], *, have_certificates: bool
) -> None:
    """Rules across fields and across listeners, run on whatever keys parsed."""
    claimed: dict[tuple[str, object], int] = {}  # (key, identity) -> first listener index
    for index, values in enumerate(listeners):
        path = f"listener[{index}]"
        _check_listener(walk, path, values, have_certificates=have_certificates)
        for key, identity in _claims(values):
            first = claimed.setdefault((key, identity), index)
            if first != index:
                got = f"{parse.render(str(values[key]))} (also listener[{first}])"
                walk.error(f"{path}.{key}", _UNIQUE[key], got)


def _check_listener(
    walk: _Walk, path: str, values: Mapping[str, object], *, have_certificates: bool
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
                walk.warn(f"{path}.{key}", expected, parse.render(values[key]))


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
