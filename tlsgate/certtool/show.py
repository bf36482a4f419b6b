"""`tlsgate cert show`: what is in a certificate file, in the words an administrator checks.

Every certificate in the file is described in order (a chain file: the leaf first, then its
issuers). The status line uses the same 21-day horizon as `tlsgate check` (issue 3).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.extensions import ExtensionNotFound

from tlsgate.certtool.errors import CertToolError

# Issue 3: `tlsgate check` warns about certificates that expire within 21 days; `show` flags
# the same ones, so the two never disagree about what "soon" means.
EXPIRY_WARNING_DAYS = 21
# NIST names, which is what administrators and Mozilla's guidelines use.
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_LABEL_WIDTH = 12


class Status(enum.StrEnum):
    VALID = "valid"
    EXPIRES_SOON = "expires soon"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"


@dataclass(frozen=True, slots=True)
class CertificateSummary:
    """The facts `show` prints about one certificate."""

    subject: str
    sans: tuple[str, ...]
    issuer: str
    self_signed: bool
    ca: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    key: str
    sha256: str
    status: Status
    status_detail: str


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM file (other PEM blocks are skipped), or the one in a DER file.

    Raises:
        CertToolError: the data holds no certificate.
    """
    if b"-----BEGIN" in data:
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            hint = " (it holds a private key)" if b"PRIVATE KEY-----" in data else ""
            raise CertToolError(f"not a certificate: no readable CERTIFICATE block{hint}") from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertToolError("not a certificate: neither PEM nor DER") from None


def summarize(cert: x509.Certificate, now: datetime.datetime) -> CertificateSummary:
    """Describe `cert` as seen at `now` (an aware UTC datetime)."""
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    status, detail = _status(not_before, not_after, now)
    return CertificateSummary(
        subject=cert.subject.rfc4514_string() or "(empty)",
        sans=_sans(cert),
        issuer=cert.issuer.rfc4514_string() or "(empty)",
        self_signed=_is_self_signed(cert),
        ca=_ca(cert),
        not_before=not_before,
        not_after=not_after,
        key=key_description(cert.public_key()),
        sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        status=status,
        status_detail=detail,
    )


def format_summaries(source: str, summaries: Sequence[CertificateSummary]) -> list[str]:
    """The lines `show` prints: a header naming the file, then one block per certificate."""
    count = len(summaries)
    lines = [f"{source}: {count} certificate{'' if count == 1 else 's'}"]
    for index, summary in enumerate(summaries, start=1):
        issuer = summary.issuer + (" (self-signed)" if summary.self_signed else "")
        lines.append("")
        lines.append(f"certificate {index} of {count}")
        fields = [
            ("subject", summary.subject),
            ("SANs", ", ".join(summary.sans) or "(none)"),
            ("issuer", issuer),
            ("CA", summary.ca),
            ("not before", _utc(summary.not_before)),
            ("not after", _utc(summary.not_after)),
            ("key", summary.key),
            ("SHA-256", summary.sha256),
            ("status", summary.status_detail),
        ]
        lines.extend(f"  {label + ':':<{_LABEL_WIDTH}} {value}" for label, value in fields)
    return lines


def key_description(public: object) -> str:
    """`ECDSA P-256`, `RSA 2048`, `Ed25519`, ... for a public key."""
    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA {public.key_size}"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"ECDSA {_CURVE_NAMES.get(public.curve.name, public.curve.name)}"
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(public, dsa.DSAPublicKey):
        return f"DSA {public.key_size}"
    return type(public).__name__


def _status(
    not_before: datetime.datetime, not_after: datetime.datetime, now: datetime.datetime
) -> tuple[Status, str]:
    if now < not_before:
        return Status.NOT_YET_VALID, f"NOT YET VALID (starts in {_span(not_before - now)})"
    if now > not_after:
        return Status.EXPIRED, f"EXPIRED ({_span(now - not_after)} ago)"
    left = not_after - now
    if left <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return (
            Status.EXPIRES_SOON,
            f"EXPIRES SOON (in {_span(left)}, within {EXPIRY_WARNING_DAYS} days)",
        )
    return Status.VALID, f"valid (expires in {_span(left)})"


def _span(delta: datetime.timedelta) -> str:
    """A rough human duration: days when there are two or more, else hours, else minutes."""
    if delta.days >= 2:
        return f"{delta.days} days"
    hours = int(delta.total_seconds() // 3600)
    if hours >= 2:
        return f"{hours} hours"
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} minute{'' if minutes == 1 else 's'}"


def _utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except ExtensionNotFound:
        return ()
    return tuple(_general_name(name) for name in names)


def _general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    return f"{type(name).__name__}:{name.value}"


def _ca(cert: x509.Certificate) -> str:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except ExtensionNotFound:
        return "no"
    if not constraints.ca:
        return "no"
    if constraints.path_length is None:
        return "yes"
    return f"yes, path length {constraints.path_length}"


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
