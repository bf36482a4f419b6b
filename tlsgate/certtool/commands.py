"""The four certificate tool commands: validate, build, write, and say what was written.

Each command returns the lines the CLI prints on stdout. Inputs are validated, and existing
outputs refused, before any key is generated or any file written, so a refused command leaves
the disk as it was (apart from a missing `--out` directory, which it creates).
"""

from __future__ import annotations

import datetime
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tlsgate.certtool.build import (
    APPLE_MAX_LEAF_DAYS,
    DEFAULT_CA_DAYS,
    DEFAULT_CA_NAME,
    DEFAULT_LEAF_DAYS,
    KeyType,
    PrivateKey,
    Validity,
    build_ca,
    build_leaf,
    build_self_signed,
    generate_key,
    host_text,
    parse_hosts,
)
from tlsgate.certtool.errors import CertToolError
from tlsgate.certtool.output import OutputFile, prepare_directory, refuse_existing, write_files
from tlsgate.certtool.show import format_summaries, key_description, load_certificates, summarize

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"


def self_signed(
    *,
    hosts: Sequence[str],
    out: Path,
    key_type: KeyType = KeyType.ECDSA,
    days: int = DEFAULT_LEAF_DAYS,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> list[str]:
    """Write `cert.pem` and `key.pem`: a self-signed server certificate for `hosts`.

    Raises:
        CertToolError: a bad host or day count, or existing files without `force`.
        OSError: the files could not be written.
    """
    names = parse_hosts(hosts)
    validity = Validity.starting(_now(now), days)
    directory = prepare_directory(out)
    files = _pair(directory, CERT_FILE, KEY_FILE)
    refuse_existing(files, force=force)
    key = generate_key(key_type)
    cert = build_self_signed(key, names, validity)
    written = _written(files, _cert_pem(cert), key)
    write_files(written, force=force)
    what = f"self-signed certificate for {_hosts(names)}; valid until {_utc(cert)}"
    return [
        _wrote(written[0], f"{key_description(key.public_key())} private key, mode 0600"),
        _wrote(written[1], what),
        *_apple_note(validity),
        "",
        "Clients trust it only if they are given cert.pem itself as a trusted certificate.",
        *_certificate_snippet(written[1].path, written[0].path),
    ]


def ca_init(
    *,
    out: Path,
    name: str = DEFAULT_CA_NAME,
    key_type: KeyType = KeyType.ECDSA,
    days: int = DEFAULT_CA_DAYS,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> list[str]:
    """Write `ca.pem` and `ca-key.pem`: a private root CA that signs server certificates.

    Raises:
        CertToolError: a bad name or day count, or existing files without `force`.
        OSError: the files could not be written.
    """
    validity = Validity.starting(_now(now), days)
    directory = prepare_directory(out)
    files = _pair(directory, CA_CERT_FILE, CA_KEY_FILE)
    refuse_existing(files, force=force)
    key = generate_key(key_type)
    cert = build_ca(key, name, validity)
    written = _written(files, _cert_pem(cert), key)
    write_files(written, force=force)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    issue = shlex.join(
        ["tlsgate", "cert", "ca", "issue", "--ca", str(directory), "--host", "mail.example.com"]
    )
    return [
        _wrote(
            written[0],
            f"{key_description(key.public_key())} private key, mode 0600; "
            "it can sign for any name, keep it private",
        ),
        _wrote(written[1], f'CA certificate "{name}"; valid until {_utc(cert)}'),
        f"SHA-256 {fingerprint}",
        "",
        "Give ca.pem to your users to import as a trusted root; the fingerprint above lets",
        "them check that they import the right one. Then issue the server certificate:",
        "",
        f"    {issue} --out DIR",
    ]


def ca_issue(
    *,
    ca: Path,
    hosts: Sequence[str],
    out: Path,
    key_type: KeyType = KeyType.ECDSA,
    days: int = DEFAULT_LEAF_DAYS,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> list[str]:
    """Write `cert.pem` (the leaf, then the CA certificate) and `key.pem`, signed by the CA in `ca`.

    The validity ends at the CA's own expiry if `days` would take it past that.

    Raises:
        CertToolError: a bad host or day count; a CA directory without a usable, valid CA
            certificate and matching unencrypted key; existing files without `force`.
        OSError: the files could not be written.
    """
    names = parse_hosts(hosts)
    moment = _now(now)
    validity = Validity.starting(moment, days)
    ca_cert, ca_key = _load_ca(ca, moment)
    notes: list[str] = []
    if validity.not_after > ca_cert.not_valid_after_utc:
        validity = Validity(validity.not_before, ca_cert.not_valid_after_utc)
        notes.append("note: the validity was shortened to end when the CA certificate expires")
    notes += _apple_note(validity)
    directory = prepare_directory(out)
    files = _pair(directory, CERT_FILE, KEY_FILE)
    refuse_existing(files, force=force)
    key = generate_key(key_type)
    cert = build_leaf(key, names, validity, ca_cert, ca_key)
    written = _written(files, _cert_pem(cert) + _cert_pem(ca_cert), key)
    write_files(written, force=force)
    issuer = ca_cert.subject.rfc4514_string()
    what = (
        f"certificate for {_hosts(names)}, then the CA certificate; "
        f"issued by {issuer}; valid until {_utc(cert)}"
    )
    return [
        _wrote(written[0], f"{key_description(key.public_key())} private key, mode 0600"),
        _wrote(written[1], what),
        *notes,
        *_certificate_snippet(written[1].path, written[0].path),
    ]


def show(path: Path, *, now: datetime.datetime | None = None) -> list[str]:
    """Describe every certificate in the PEM or DER file at `path`.

    Raises:
        CertToolError: the file cannot be read or holds no certificate.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertToolError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        certs = load_certificates(data)
    except CertToolError as exc:
        raise CertToolError(f"{path}: {exc}") from None
    moment = _now(now)
    return format_summaries(str(path), [summarize(cert, moment) for cert in certs])


def _load_ca(directory: Path, now: datetime.datetime) -> tuple[x509.Certificate, PrivateKey]:
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not cert_path.exists():
        raise CertToolError(f"--ca {directory}: no {CA_CERT_FILE} (make one with `cert ca init`)")
    data = _read(cert_path)
    try:
        cert = load_certificates(data)[0]
    except CertToolError as exc:
        raise CertToolError(f"{cert_path}: {exc}") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = x509.BasicConstraints(ca=False, path_length=None)
    if not constraints.ca:
        raise CertToolError(f"{cert_path}: not a CA certificate (basicConstraints CA:FALSE)")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertToolError(
            f"{cert_path}: the CA certificate is not valid now (valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    key = _load_key(key_path)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CertToolError(f"{key_path}: the key does not match {cert_path}")
    return cert, key


def _load_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise CertToolError(
            f"{path}: the key is encrypted; the tool reads unencrypted keys only"
        ) from None
    except ValueError:
        raise CertToolError(f"{path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertToolError(f"{path}: {type(key).__name__} keys are not supported")
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertToolError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _spki(public: object) -> bytes:
    assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pair(directory: Path, cert_name: str, key_name: str) -> list[OutputFile]:
    # Placeholders for the existence check; _written fills in the bytes.
    return [
        OutputFile(directory / key_name, b"", private=True),
        OutputFile(directory / cert_name, b"", private=False),
    ]


def _written(files: Sequence[OutputFile], cert_pem: bytes, key: PrivateKey) -> list[OutputFile]:
    # The key is renamed into place first: a reload that sees the new certificate then always
    # finds its key already there.
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file, cert_file = files
    return [
        OutputFile(key_file.path, key_pem, private=True),
        OutputFile(cert_file.path, cert_pem, private=False),
    ]


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _certificate_snippet(cert: Path, key: Path) -> list[str]:
    # json.dumps produces a valid TOML basic string: the same quote and backslash escapes.
    return [
        "",
        "Paste into tlsgate.toml:",
        "",
        "[[certificate]]",
        f"cert = {json.dumps(str(cert), ensure_ascii=False)}",
        f"key = {json.dumps(str(key), ensure_ascii=False)}",
    ]


def _apple_note(validity: Validity) -> list[str]:
    # Apple counts from notBefore, so the backdating counts too: --days 825 is already over.
    if validity.not_after - validity.not_before <= datetime.timedelta(days=APPLE_MAX_LEAF_DAYS):
        return []
    limit = APPLE_MAX_LEAF_DAYS
    return [f"note: Apple devices refuse server certificates valid for more than {limit} days"]


def _wrote(file: OutputFile, what: str) -> str:
    return f"wrote {file.path} ({what})"


def _hosts(names: Sequence[x509.GeneralName]) -> str:
    return ", ".join(host_text(name) for name in names)


def _utc(cert: x509.Certificate) -> str:
    return f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)
