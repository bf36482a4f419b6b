"""Certificates: read, judged and indexed by name, before any `SSLContext` sees them.

Theory of operation. `load_certificates` reads every `[[certificate]]` entry's files ONCE, with
`cryptography`: a PEM chain with a PEM key (separate, or both in the `cert` file), encrypted
keys and PKCS#12 files with their `password_file`. Its errors can be told apart (not a
certificate, wrong password, key of another certificate), so each becomes one `ConfigProblem`
naming the entry's key and file. What OpenSSL is later given is re-serialised from these same
parsed objects (`openssl_pem`), so a file replaced between two reads can never pair one
version's certificate with another's key.

Which certificate then serves which name is `tlsgate.tls.selection`'s business.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from tlsgate.config.load import ConfigProblem, ConfigWarning
from tlsgate.config.model import CertificateEntry, Config
from tlsgate.config.parse import quote

# Permission bits that let anyone but the owner read or change a key or password file.
SECRET_MODE_NOT_OWNER = 0o077

Finding = ConfigProblem | ConfigWarning
PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_PEM_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----\r?\n.*?-----END \1-----", re.DOTALL
)
_DER_SEQUENCE = 0x30  # a PKCS#12 file, like every DER structure, starts with an ASN.1 SEQUENCE


class KeyType(enum.StrEnum):
    """OpenSSL holds one certificate per key type in a context (its "slots")."""

    RSA = "rsa"
    ECDSA = "ecdsa"
    ED25519 = "ed25519"
    ED448 = "ed448"
    DSA = "dsa"


class Validity(enum.IntEnum):
    """Ordered from best to worst: the ranking `select` applies first."""

    VALID = 0
    NOT_YET_VALID = 1
    EXPIRED = 2


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What tlsgate knows about one loaded entry, without the key: safe to keep and show."""

    index: int  # position in `config.certificates`
    name: str  # the entry's `name`, else its first DNS name, else its file's stem
    label: str  # metrics label (CONTRACT.md): first DNS SAN, else the file name
    subject: str  # the leaf's subject, RFC 4514 (e.g. "CN=mail.example.com"): a metrics label
    dns_names: tuple[str, ...]  # SAN DNS names, lower case, without a trailing dot
    key_type: KeyType
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 of the leaf, hex pairs joined by ":", as openssl prints it
    default: bool

    def validity(self, now: datetime) -> Validity:
        if self.not_after <= now:
            return Validity.EXPIRED
        return Validity.NOT_YET_VALID if self.not_before > now else Validity.VALID


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    info: CertificateInfo
    chain: tuple[x509.Certificate, ...]  # leaf first
    key: PrivateKey = field(repr=False)

    def openssl_pem(self, password: bytes) -> bytes:
        """The chain, then the key encrypted with `password`, as one PEM file for OpenSSL."""
        encryption = serialization.BestAvailableEncryption(password)
        key = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        pem = serialization.Encoding.PEM
        return b"".join(cert.public_bytes(pem) for cert in self.chain) + key


class _Unusable(Exception):
    """One problem with one key of an entry: `field` is the TOML key to blame."""

    def __init__(self, field: str, expected: str, path: Path | None, detail: str) -> None:
        super().__init__(detail)
        self.field, self.expected, self.path, self.detail = field, expected, path, detail


class EntryFindings:
    """How the findings about one `[[certificate]]` entry are worded."""

    def __init__(self, file: str, index: int, entry: CertificateEntry) -> None:
        self.file, self.path, self.entry = file, f"certificate[{index}]", entry
        self.found: list[Finding] = []

    def problem(self, field: str, expected: str, path: Path | None, detail: str) -> None:
        self.found.append(ConfigProblem(self.file, self._key(field), expected, _got(path, detail)))

    def warning(self, field: str, expected: str, path: Path | None, detail: str) -> None:
        self.found.append(ConfigWarning(self.file, self._key(field), expected, _got(path, detail)))

    def _key(self, field: str) -> str:
        return f"{self.path}.{field}"

    @property
    def source_field(self) -> str:
        return "cert" if self.entry.cert is not None else "pkcs12"


def _got(path: Path | None, detail: str) -> str:
    return detail if path is None else f"{quote(str(path))} ({detail})"


def load_certificates(config: Config) -> tuple[list[LoadedCertificate | None], list[Finding]]:
    """Read and check every entry.

    Returns:
        One item per entry, None for an entry with a problem, and the findings: problems
        (unreadable file, not a certificate, no key, key of another certificate, wrong or
        missing password) and warnings (a key, PKCS#12 or password file others can read).
    """
    loaded: list[LoadedCertificate | None] = []
    findings: list[Finding] = []
    for index, entry in enumerate(config.certificates):
        report = EntryFindings(str(config.source), index, entry)
        try:
            loaded.append(_load_entry(index, entry, report))
        except _Unusable as exc:
            report.problem(exc.field, exc.expected, exc.path, exc.detail)
            loaded.append(None)
        findings += report.found
    return loaded, findings


def _load_entry(index: int, entry: CertificateEntry, report: EntryFindings) -> LoadedCertificate:
    password = _password(entry, report)
    if entry.pkcs12 is not None:
        chain, key = _load_pkcs12(entry.pkcs12, password, report)
    else:
        assert entry.cert is not None, "the loader guarantees cert or pkcs12"
        chain, key = _load_pem(entry.cert, entry.key, password, report)
    _check_pair(chain, key, report)
    return LoadedCertificate(_info(index, entry, chain, key), chain, key)


def _read(field: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _Unusable(field, "a readable file", path, exc.strerror or str(exc)) from exc


def _check_secret_mode(field: str, path: Path, report: EntryFindings, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # unreadable is a problem of its own
    if mode & SECRET_MODE_NOT_OWNER:
        expected = f"a {what} file only its owner can read"
        report.warning(field, expected, path, f"mode {mode & 0o777:04o}")


def _password(entry: CertificateEntry, report: EntryFindings) -> bytes | None:
    if entry.password_file is None:
        return None
    data = _read("password_file", entry.password_file)
    _check_secret_mode("password_file", entry.password_file, report, "password")
    # CONTRACT.md: the first line, trailing CR/LF stripped.
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def _load_pkcs12(
    path: Path, password: bytes | None, report: EntryFindings
) -> tuple[tuple[x509.Certificate, ...], PrivateKey]:
    data = _read("pkcs12", path)
    if not data or data[0] != _DER_SEQUENCE:
        raise _Unusable("pkcs12", "a PKCS#12 file", path, "not PKCS#12 (DER)")
    _check_secret_mode("pkcs12", path, report, "PKCS#12")
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        if password is None:
            expected = "a PKCS#12 file readable without a password, or a password_file"
            raise _Unusable("pkcs12", expected, path, "encrypted, or damaged") from exc
        expected = f"the password of {report.path}.pkcs12"
        detail = "wrong password, or a damaged PKCS#12 file"
        raise _Unusable("password_file", expected, report.entry.password_file, detail) from exc
    if cert is None:
        raise _Unusable("pkcs12", "a PKCS#12 file with a certificate", path, "none in it")
    if not isinstance(key, _KEY_TYPES):
        raise _Unusable("pkcs12", "a PKCS#12 file with a private key", path, "none in it")
    return (cert, *extra), key


def _load_pem(
    cert: Path, key_path: Path | None, password: bytes | None, report: EntryFindings
) -> tuple[tuple[x509.Certificate, ...], PrivateKey]:
    data = _read("cert", cert)
    try:
        chain = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise _Unusable("cert", "a PEM certificate", cert, "no PEM certificate found") from exc
    if key_path is None:
        if not _PEM_KEY_BLOCK.search(data):
            expected = "a value (key is required unless cert holds the private key too)"
            raise _Unusable("key", expected, None, "nothing")
        _check_secret_mode("cert", cert, report, "certificate and key")
        return chain, _parse_key("cert", cert, data, password, report)
    key_data = _read("key", key_path)
    _check_secret_mode("key", key_path, report, "key")
    return chain, _parse_key("key", key_path, key_data, password, report)


def _parse_key(
    field: str, path: Path, data: bytes, password: bytes | None, report: EntryFindings
) -> PrivateKey:
    block = _PEM_KEY_BLOCK.search(data)
    if block is None:
        raise _Unusable(field, "a PEM private key", path, "no PEM private key found")
    pem = block.group(0)
    encrypted = block.group(1) == b"ENCRYPTED PRIVATE KEY" or b"ENCRYPTED" in pem.split(b"\n")[1]
    try:
        key = serialization.load_pem_private_key(pem, password if encrypted else None)
    except TypeError as exc:  # cryptography's way of saying "encrypted, password needed"
        expected = "an unencrypted PEM private key, or a password_file"
        raise _Unusable(field, expected, path, "it is encrypted") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if encrypted and password is not None:
            expected = f"the password of {report.path}.{field}"
            password_file = report.entry.password_file
            raise _Unusable("password_file", expected, password_file, "wrong password") from exc
        raise _Unusable(
            field, "a PEM private key", path, "no usable PEM private key found"
        ) from exc
    if not isinstance(key, _KEY_TYPES):
        raise _Unusable(field, "an RSA, ECDSA or EdDSA private key", path, type(key).__name__)
    return key


def _check_pair(chain: Sequence[x509.Certificate], key: PrivateKey, report: EntryFindings) -> None:
    entry = report.entry
    try:
        public = key.public_key().public_bytes(*_SPKI)
        spkis = [cert.public_key().public_bytes(*_SPKI) for cert in chain]
    except (ValueError, UnsupportedAlgorithm):
        spkis, public = [], b""
    if spkis and spkis[0] == public:
        return
    if public in spkis:
        detail = f"it matches certificate {spkis.index(public) + 1} of the file: put the leaf first"
    else:
        detail = "it does not match the certificate"
    if entry.pkcs12 is not None:
        raise _Unusable("pkcs12", "a key matching the certificate", entry.pkcs12, detail)
    if entry.key is None:
        raise _Unusable("cert", "the private key of its certificate", entry.cert, detail)
    raise _Unusable("key", f"the private key of {report.path}.cert", entry.key, detail)


def _info(
    index: int, entry: CertificateEntry, chain: Sequence[x509.Certificate], key: PrivateKey
) -> CertificateInfo:
    leaf = chain[0]
    dns_names = tuple(dict.fromkeys(normalize_name(name) for name in _san_dns_names(leaf)))
    return CertificateInfo(
        index=index,
        name=entry.name or (dns_names[0] if dns_names else entry.source.stem),
        label=dns_names[0] if dns_names else entry.source.name,
        subject=leaf.subject.rfc4514_string(),
        dns_names=dns_names,
        key_type=_key_type(key),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
        default=entry.default,
    )


def _san_dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in san.value.get_values_for_type(x509.DNSName)]


def _key_type(key: object) -> KeyType:
    if isinstance(key, rsa.RSAPrivateKey):
        return KeyType.RSA
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return KeyType.ECDSA
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return KeyType.ED25519
    if isinstance(key, ed448.Ed448PrivateKey):
        return KeyType.ED448
    return KeyType.DSA


def normalize_name(name: str) -> str:
    """DNS names compare case-insensitively, and a trailing dot (the root) changes nothing."""
    return name.lower().removesuffix(".")


def wildcard_for(name: str) -> str | None:
    """The one wildcard pattern that covers `name` (RFC 6125 §6.4.3: the leftmost label only)."""
    dot = name.find(".")
    return "*" + name[dot:] if dot > 0 else None
