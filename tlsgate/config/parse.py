"""Small parsers for single config values: raw TOML value in, typed value out.

PURE: no I/O, no clock. Every parser takes the raw value as `object` (type checks included, so
`listen = 587` fails the same way `listen = "x"` does) and either returns the typed value or
raises `Invalid(expected)`. `expected` completes the sentence "expected ..."; the loader adds
the file, the key path and the rendered value (`render`) to make the one-line message
`tlsgate.toml: listener[1].backend: expected HOST:PORT, got "localhost"`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from tlsgate.config.model import Endpoint, IPNetwork, TlsVersion

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

# A rendered value longer than this is cut: one problem must stay one readable line.
MAX_RENDERED_CHARS = 60

MAX_PORT = 65535
# RFC 1035 §2.3.4: 63 octets per label, 255 per name on the wire (253 as text without the
# trailing dot). Underscores are allowed: legal in DNS, and common in container service names.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
MAX_DNS_NAME_CHARS = 253
_PORT = re.compile(r"[0-9]{1,5}")  # not str.isdigit(): that accepts "²" and other digits
# Listener names appear in log events, metric labels and systemd FileDescriptorName=.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# shadow-utils' rule (a trailing "$" is a Samba machine account); not all digits, which would
# read as a numeric id.
_ACCOUNT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,30}\$?")


class Invalid(ValueError):
    """A raw value that does not parse.

    Attributes:
        expected: completes "expected ..." in the problem line.
        items: for a list, every bad item as (index, item, why); the loader reports each one
            at `key[index]` and ignores `expected`.
    """

    def __init__(
        self, expected: str, *, items: tuple[tuple[int, object, Invalid], ...] = ()
    ) -> None:
        super().__init__(expected)
        self.expected = expected
        self.items = items


def quote(text: str) -> str:
    """A string in double quotes, escaped as TOML (and JSON) would, never cut."""
    return json.dumps(text, ensure_ascii=False)


def render(value: object) -> str:
    """Render a raw TOML value the way it would be written in the file, cut to one short line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = quote(value)
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, datetime.date | datetime.time):  # TOML dates and times
        text = value.isoformat()
    elif isinstance(value, list):
        text = "[" + ", ".join(render(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = repr(value)
    if len(text) > MAX_RENDERED_CHARS:
        text = text[: MAX_RENDERED_CHARS - 1] + "…"
    return text


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise Invalid("true or false")


def parse_duration(value: object) -> float:
    """A positive, finite number of seconds; TOML integers are accepted (`idle_timeout = 300`)."""
    # bool is a subclass of int: `timeout = true` must not read as 1 second.
    expected = "a number of seconds greater than 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(expected)
    if value > 0 and math.isfinite(value):
        return float(value)
    raise Invalid(expected)


def parse_count(value: object) -> int:
    """A whole number greater than 0 (a limit, a number of processes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise Invalid("a whole number greater than 0")


def parse_workers(value: object) -> int | None:
    """A number of worker processes, or "auto" (None: one per CPU this process may use)."""
    if value == "auto":
        return None
    try:
        return parse_count(value)
    except Invalid:
        raise Invalid('a whole number greater than 0, or "auto"') from None


def parse_name(value: object) -> str:
    if isinstance(value, str) and _NAME.fullmatch(value):
        return value
    raise Invalid('a name of up to 64 letters, digits, ".", "_" or "-"')


def parse_account_name(value: object) -> str:
    """A user or group name as useradd/groupadd accept them (`user`, `group`)."""
    if isinstance(value, str) and _ACCOUNT_NAME.fullmatch(value):
        return value
    raise Invalid('a user or group name of up to 32 letters, digits, "_", "." or "-"')


def parse_path(value: object, *, base: Path) -> Path:
    """A file path; a relative one is taken relative to `base` (the config file's directory)."""
    if isinstance(value, str) and value and "\0" not in value:
        return base / value
    raise Invalid("a file path")


def parse_optional_path(value: object, *, base: Path) -> Path | None:
    """A file path, or "" for none (how the reference config shows an unset path)."""
    if value == "":
        return None
    return parse_path(value, base=base)


def parse_backend_ca(value: object, *, base: Path) -> Path | None:
    """The string "system" (None: the system's trust store), or a PEM file or directory."""
    if value == "system":
        return None
    if isinstance(value, str) and value and "\0" not in value:
        return base / value
    raise Invalid('"system", or the path of a PEM file or directory of CA certificates')


def parse_server_name(value: object) -> str | None:
    """A DNS name or IP address to verify a relay's certificate against; "" for the default."""
    if value == "":
        return None
    if isinstance(value, str) and is_host(value):
        return value.removesuffix(".")
    raise Invalid("a DNS name or an IP address")


def enum_parser(cls: type[E], aliases: Mapping[str, E] | None = None) -> Callable[[object], E]:
    """A parser accepting exactly the values of `cls` (plus `aliases`), listed in the message."""
    extra = dict(aliases or {})
    expected = "one of " + ", ".join(f'"{member.value}"' for member in cls)

    def parse(value: object) -> E:
        if isinstance(value, str):
            if value in extra:
                return extra[value]
            for member in cls:
                if member.value == value:
                    return member
        raise Invalid(expected)

    return parse


parse_tls_version = enum_parser(TlsVersion)

# A certificate name: a DNS name (wildcards included) or a file stem, so no spaces or controls.
_CERTIFICATE_NAME = re.compile(r"[!-~]{1,253}")
# An OpenSSL cipher string: names joined by ":" "," or " ", with "!" "+" "-" "@" modifiers.
# Whether it selects any cipher only OpenSSL can say, when the context is built.
_CIPHER_STRING = re.compile(r"[A-Za-z0-9_:@=+!.,\- ]{1,2000}")


def parse_certificate_name(value: object) -> str:
    if isinstance(value, str) and _CERTIFICATE_NAME.fullmatch(value):
        return value
    raise Invalid("a certificate name (printable, no spaces)")


def parse_certificate_names(value: object) -> tuple[str, ...]:
    """A non-empty list of certificate names (a listener's `certificates`)."""
    if isinstance(value, list) and value:
        return _items(value, parse_certificate_name)
    raise Invalid("a non-empty list of certificate names")


def parse_cipher_string(value: object) -> str:
    if isinstance(value, str) and _CIPHER_STRING.fullmatch(value) and value.strip():
        return value
    raise Invalid('an OpenSSL cipher string such as "ECDHE+AESGCM:ECDHE+CHACHA20"')


def parse_ciphersuites(value: object) -> str:
    """Always invalid: Python's `ssl` has no API for TLS 1.3 cipher suites.

    `SSL_CTX_set_ciphersuites` is not exposed (Python 3.11 to 3.13), so accepting the key would
    mean ignoring it. OpenSSL's default TLS 1.3 suites are the three AEAD suites every Mozilla
    profile lists, so there is nothing to tighten.
    """
    del value
    raise Invalid(
        "no ciphersuites key (not supported by Python's ssl, which cannot choose TLS 1.3 "
        "suites; OpenSSL's defaults, all AEAD, are used)"
    )


def parse_interval_or_off(value: object) -> float | None:
    """Seconds between periodic checks; 0 turns them off (None)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return None
    try:
        return parse_duration(value)
    except Invalid:
        raise Invalid("a number of seconds greater than 0, or 0 for off") from None


def is_host(text: str) -> bool:
    """An IP literal (v4, or v6 without brackets) or a syntactically valid DNS name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return True
    name = text.removesuffix(".")
    labels = name.split(".")
    return (
        0 < len(name) <= MAX_DNS_NAME_CHARS
        and all(_LABEL.fullmatch(label) for label in labels)
        # RFC 3696 §2: a top-level domain is never all-numeric, so "300.1.1.1" is a bad
        # IPv4 address, not a name.
        and not labels[-1].isdigit()
    )


def parse_endpoint(value: object, *, min_port: int = 1) -> Endpoint:
    """HOST:PORT or [V6]:PORT with PORT in min_port..65535.

    `listen` passes `min_port=0`: port 0 asks the kernel for a free port (tests use it).
    """
    if not isinstance(value, str):
        raise Invalid("HOST:PORT")
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]:")
        if not bracket:
            raise Invalid("[V6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid("[V6]:PORT with an IPv6 address inside the brackets") from None
    else:
        host, colon, port = value.rpartition(":")
        if not colon:
            raise Invalid("HOST:PORT")
        if ":" in host:
            raise Invalid("[V6]:PORT (an IPv6 address needs brackets)")
        if not is_host(host):
            raise Invalid("HOST:PORT with HOST an IP address or a DNS name")
    if not _PORT.fullmatch(port) or not min_port <= int(port) <= MAX_PORT:
        raise Invalid(f"HOST:PORT with PORT from {min_port} to {MAX_PORT}")
    return Endpoint(host=host, port=int(port))


def parse_listen(value: object) -> Endpoint:
    return parse_endpoint(value, min_port=0)


def parse_backends(value: object) -> tuple[Endpoint, ...]:
    """One HOST:PORT, or a non-empty list of them tried in order."""
    if isinstance(value, str):
        return (parse_endpoint(value),)
    if isinstance(value, list) and value:
        return _items(value, parse_endpoint)
    raise Invalid("HOST:PORT or a non-empty list of HOST:PORT")


def parse_network(value: object) -> IPNetwork:
    """A CIDR network; an address with host bits set (10.0.0.1/8) is an error, not rounded."""
    expected = "a CIDR network such as 192.168.0.0/16"
    if not isinstance(value, str):
        raise Invalid(expected)
    try:
        return ipaddress.ip_network(value)  # strict: host bits set raise
    except ValueError:
        pass
    try:
        rounded = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Invalid(expected) from None
    raise Invalid(f"a network address without host bits set (did you mean {rounded}?)")


def parse_networks(value: object) -> tuple[IPNetwork, ...]:
    if isinstance(value, list):
        return _items(value, parse_network)
    raise Invalid("a list of CIDR networks")


def _items(values: list[object], parse: Callable[[object], T]) -> tuple[T, ...]:
    """Parse every item; one `Invalid` lists all the bad ones, not just the first."""
    parsed: list[T] = []
    bad: list[tuple[int, object, Invalid]] = []
    for index, item in enumerate(values):
        try:
            parsed.append(parse(item))
        except Invalid as exc:
            bad.append((index, item, exc))
    if bad:
        raise Invalid(bad[0][2].expected, items=tuple(bad))
    return tuple(parsed)
