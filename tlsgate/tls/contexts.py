"""Server-side `ssl.SSLContext`s built from the config, and the certificate checks behind them.

`check_certificates` is what `tlsgate check` runs; `build_server_context` runs the same checks
first and raises `ConfigError` with the same lines, so `tlsgate run` refuses exactly what
`check` rejects. Each certificate entry is read twice, on purpose: with `cryptography`, whose
errors can be told apart (no certificate, no key, key of another certificate, expiry), and
then with `ssl` itself, which catches what OpenSSL alone refuses (a key too small for the
security level, a digest too weak).
"""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tlsgate.config.load import ConfigError, ConfigProblem, ConfigWarning
from tlsgate.config.model import CertificateEntry, Config, TlsSettings, TlsVersion
from tlsgate.config.parse import quote

# Warn this long before a certificate expires: ACME clients renew at 30 days left, so a
# certificate under 21 days means renewal has failed at least once (and gives three weeks to act).
EXPIRY_WARNING_DAYS = 21
# Permission bits that let anyone but the owner read or change a private key file.
KEY_MODE_NOT_OWNER = 0o077
# CONTRACT.md: without a configured min_version the floor is TLS 1.2 until profiles (issue 3).
DEFAULT_MIN_VERSION = ssl.TLSVersion.TLSv1_2

_SSL_VERSIONS = {
    TlsVersion.TLSV1: ssl.TLSVersion.TLSv1,
    TlsVersion.TLSV1_1: ssl.TLSVersion.TLSv1_1,
    TlsVersion.TLSV1_2: ssl.TLSVersion.TLSv1_2,
    TlsVersion.TLSV1_3: ssl.TLSVersion.TLSv1_3,
}
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

Finding = ConfigProblem | ConfigWarning


def build_server_context(config: Config) -> ssl.SSLContext:
    """The context every TLS listener serves with (one for all until SNI, issue 3).

    Several `[[certificate]]` entries are accepted and all are checked, but until SNI
    selection exists the first one serves every client (CONTRACT.md).

    Raises:
        ConfigError: a certificate or key is unusable (the `check_certificates` problems), or
            no certificate is configured.
    """
    problems, _ = check_certificates(config)
    if not config.certificates:
        problems.append(
            ConfigProblem(str(config.source), "certificate", "at least one [[certificate]]", "none")
        )
    if problems:
        raise ConfigError(problems)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_versions(context, config.tls)
    # Compression invites CRIME; client-initiated renegotiation is a CPU-exhaustion lever and
    # TLS 1.3 has none anyway; the server's cipher order beats a client's odd preferences.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", ssl.Options(0))
    # Ciphers stay Python's defaults (forward-secret AEAD suites only); the modern /
    # intermediate / legacy profiles that choose them come with issue 3.
    first = config.certificates[0]
    try:
        context.load_cert_chain(first.cert, first.key, password=_no_password)
    except (OSError, ssl.SSLError) as exc:  # the files changed since the check just now
        got = f"{quote(str(first.cert))} ({exc})"
        problem = ConfigProblem(str(config.source), "certificate[0].cert", "a usable pair", got)
        raise ConfigError([problem]) from exc
    return context


def _apply_versions(context: ssl.SSLContext, tls: TlsSettings) -> None:
    # Python deprecates TLSv1 and TLSv1.1 with a DeprecationWarning when they are set here;
    # the config asked for them explicitly, so the warning is left to the interpreter's filters.
    low = DEFAULT_MIN_VERSION if tls.min_version is None else _SSL_VERSIONS[tls.min_version]
    context.minimum_version = low
    if tls.max_version is not None:
        context.maximum_version = _SSL_VERSIONS[tls.max_version]


def _no_password() -> bytes:
    # Never let OpenSSL prompt on a terminal for an encrypted key: a daemon has none.
    return b""


def check_certificates(
    config: Config, *, now: datetime | None = None
) -> tuple[list[ConfigProblem], list[ConfigWarning]]:
    """Load every `[[certificate]]` entry the way the server will, and judge it.

    Args:
        config: a validated config.
        now: the time to judge expiry against (tests); defaults to the current time.

    Returns:
        The problems (unreadable file, not a PEM certificate, not a private key, key not
        matching the certificate, OpenSSL refusing the pair, certificate expired) and the
        warnings (expires within `EXPIRY_WARNING_DAYS`, not valid yet, key file accessible
        by group or others). Each names `certificate[N].cert` or `.key` and the file.
    """
    when = now or datetime.now(UTC)
    findings: list[Finding] = []
    for index, entry in enumerate(config.certificates):
        findings += _check_entry(_Entry(str(config.source), f"certificate[{index}]", entry), when)
    problems = [f for f in findings if isinstance(f, ConfigProblem)]
    warnings = [f for f in findings if isinstance(f, ConfigWarning)]
    return problems, warnings


class _Unusable(Exception):
    def __init__(self, expected: str, detail: str) -> None:
        super().__init__(detail)
        self.expected = expected
        self.detail = detail


class _Entry:
    """One certificate entry and how its findings are worded."""

    def __init__(self, file: str, path: str, entry: CertificateEntry) -> None:
        self.file, self.path, self.entry = file, path, entry

    def problem(self, field: str, expected: str, detail: str) -> ConfigProblem:
        return ConfigProblem(self.file, f"{self.path}.{field}", expected, self._got(field, detail))

    def warning(self, field: str, expected: str, detail: str) -> ConfigWarning:
        return ConfigWarning(self.file, f"{self.path}.{field}", expected, self._got(field, detail))

    def _got(self, field: str, detail: str) -> str:
        path = self.entry.cert if field == "cert" else self.entry.key
        return f"{quote(str(path))} ({detail})"


def _check_entry(entry: _Entry, now: datetime) -> list[Finding]:
    findings: list[Finding] = []
    chain: list[x509.Certificate] = []
    key: PrivateKeyTypes | None = None
    try:
        chain = _load_chain(entry.entry.cert)
    except _Unusable as exc:
        findings.append(entry.problem("cert", exc.expected, exc.detail))
    try:
        key = _load_key(entry.entry.key)
    except _Unusable as exc:
        findings.append(entry.problem("key", exc.expected, exc.detail))
    findings += _key_mode(entry)
    if chain:
        findings += _validity(entry, chain[0], now)
    if chain and key is not None:
        findings += _pair(entry, chain[0], key)
    return findings


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _Unusable("a readable file", exc.strerror or str(exc)) from exc


def _load_chain(path: Path) -> list[x509.Certificate]:
    data = _read(path)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise _Unusable("a PEM certificate", "no PEM certificate found") from exc


def _load_key(path: Path) -> PrivateKeyTypes:
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's way of saying "encrypted, password needed"
        raise _Unusable("an unencrypted PEM private key", "it is encrypted") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _Unusable("a PEM private key", "no usable PEM private key found") from exc


def _key_mode(entry: _Entry) -> list[Finding]:
    try:
        mode = os.stat(entry.entry.key).st_mode
    except OSError:
        return []  # unreadable is already a problem of its own
    if mode & KEY_MODE_NOT_OWNER:
        detail = f"mode {mode & 0o777:04o}"
        return [entry.warning("key", "a key file only its owner can read", detail)]
    return []


def _validity(entry: _Entry, leaf: x509.Certificate, now: datetime) -> list[Finding]:
    not_after, not_before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    if not_after <= now:
        detail = f"expired {_when(not_after)}"
        return [entry.problem("cert", "a certificate that has not expired", detail)]
    if not_before > now:
        detail = f"not valid before {_when(not_before)}"
        return [entry.warning("cert", "a certificate that is already valid", detail)]
    left = not_after - now
    if left < timedelta(days=EXPIRY_WARNING_DAYS):
        expected = f"a certificate valid for at least {EXPIRY_WARNING_DAYS} more days"
        detail = f"expires {_when(not_after)}, in {left.days} days"
        return [entry.warning("cert", expected, detail)]
    return []


def _pair(entry: _Entry, leaf: x509.Certificate, key: PrivateKeyTypes) -> list[Finding]:
    expected = f"the private key of {entry.path}.cert"
    try:
        matches = leaf.public_key().public_bytes(*_SPKI) == key.public_key().public_bytes(*_SPKI)
    except (ValueError, UnsupportedAlgorithm):
        matches = False
    if not matches:
        return [entry.problem("key", expected, "it does not match the certificate")]
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_cert_chain(entry.entry.cert, entry.entry.key, password=_no_password)
    except (OSError, ssl.SSLError) as exc:
        return [entry.problem("cert", "a certificate and key OpenSSL accepts", str(exc))]
    return []


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
