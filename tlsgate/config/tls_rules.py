"""The rules of the certificate and TLS policy keys (issue 3), as the loader applies them.

`[[certificate]]` tables; at most one default certificate; the effective TLS version range of
`[tls]` and of each listener (profile defaults included, see `model.PROFILE_VERSIONS`); and
`client_auth` with `client_ca`. Whether files exist and hold what they should is
`tlsgate.tls`'s business, checked by `tlsgate check` and at start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

from tlsgate.config import parse
from tlsgate.config.model import ClientAuth, Profile, TlsSettings, TlsVersion
from tlsgate.config.walk import Parser, Walk, join

# The keys that make up a TLS policy, in [tls] and on a listener.
POLICY_KEYS = ("profile", "min_version", "max_version", "ciphers")
_VERSION_ORDER = tuple(TlsVersion)


def certificate_entry(walk: Walk, path: str, raw: object, base: Path) -> dict[str, object]:
    """One [[certificate]]: `cert` (with `key` unless cert holds it too) or `pkcs12`."""
    at_base = partial(parse.parse_path, base=base)
    parsers: Mapping[str, Parser] = {
        "name": parse.parse_certificate_name,
        "cert": at_base,
        "key": at_base,
        "pkcs12": at_base,
        "password_file": at_base,
        "default": parse.parse_bool,
    }
    values = walk.table(path, raw, parsers)
    if not isinstance(raw, Mapping):
        return values
    if "cert" not in raw and "pkcs12" not in raw:
        walk.error(join(path, "cert"), "a value (cert, or else pkcs12, is required)", "nothing")
    if "cert" in raw and "pkcs12" in raw:
        expected = "no pkcs12 next to cert (one or the other)"
        walk.error(join(path, "pkcs12"), expected, parse.render(raw["pkcs12"]))
    if "key" in raw and "pkcs12" in raw and "cert" not in raw:
        expected = "no key with pkcs12 (the PKCS#12 file holds the key)"
        walk.error(join(path, "key"), expected, parse.render(raw["key"]))
    return values


def check_defaults(walk: Walk, certificates: Sequence[Mapping[str, object]]) -> None:
    first: int | None = None
    for index, values in enumerate(certificates):
        if values.get("default") is not True:
            continue
        if first is None:
            first = index
            continue
        got = f"true (also certificate[{first}])"
        walk.error(f"certificate[{index}].default", "at most one default certificate", got)


def check_versions(
    walk: Walk, path: str, values: Mapping[str, object], defaults: Mapping[str, object]
) -> None:
    """The effective min_version must not exceed max_version, profile defaults included.

    `values` are the keys set at `path`; `defaults` those of `[tls]` that a listener inherits.
    Only a table that sets one of the policy keys is judged, so `[tls]`'s own mistake is
    reported once, at `tls`, not again at every listener.
    """
    if not any(key in values for key in POLICY_KEYS):
        return
    merged = {**defaults, **values}
    profile, low, high = (merged.get(k) for k in ("profile", "min_version", "max_version"))
    profile = profile if isinstance(profile, Profile) else Profile.INTERMEDIATE
    settings = TlsSettings(
        profile=profile,
        min_version=low if isinstance(low, TlsVersion) else None,
        max_version=high if isinstance(high, TlsVersion) else None,
    )
    effective_low, effective_high = settings.versions

    def origin(key: str) -> str:  # where the effective value of `key` comes from
        if key in values:
            return join(path, key)
        return f"tls.{key}" if key in defaults else f'profile "{profile}"'

    low_index, high_index = (_VERSION_ORDER.index(v) for v in (effective_low, effective_high))
    if low_index > high_index:
        # Blame a key this table set: the floor, else the ceiling, else the profile.
        if "min_version" in values:
            expected = f'a version no higher than {origin("max_version")} ("{effective_high}")'
            walk.error(join(path, "min_version"), expected, parse.render(str(effective_low)))
        elif "max_version" in values:
            expected = f'a version no lower than {origin("min_version")} ("{effective_low}")'
            walk.error(join(path, "max_version"), expected, parse.render(str(effective_high)))
        elif "profile" in values:
            expected = f'a profile allowing {origin("max_version")} ("{effective_high}")'
            walk.error(join(path, "profile"), expected, parse.render(str(profile)))
    elif (
        low_index < _VERSION_ORDER.index(TlsVersion.TLSV1_2)
        and profile is not Profile.LEGACY
        and "ciphers" not in merged
        and "min_version" in values
    ):
        expected = (
            f'profile = "legacy" for versions below TLSv1.2 (profile "{profile}" has no cipher '
            "for them)"
        )
        walk.warn(join(path, "min_version"), expected, parse.render(str(effective_low)))


def check_client_auth(
    walk: Walk, path: str, values: Mapping[str, object], raw: Mapping[str, object]
) -> None:
    auth = values.get("client_auth", ClientAuth.NONE)
    if auth is not ClientAuth.NONE and "client_ca" not in values:
        expected = f'a CA file or directory (client_auth = "{auth}" verifies clients with it)'
        walk.error(f"{path}.client_ca", expected, "nothing")
    if auth is ClientAuth.NONE and "client_ca" in values:
        expected = 'client_auth = "optional" or "required" with client_ca (ignored without)'
        walk.warn(f"{path}.client_ca", expected, parse.render(raw["client_ca"]))
