"""Keys and certificates for the certificate tool, built in memory with `cryptography`.

Nothing here touches the file system: `output.py` writes, `commands.py` wires the two
together. Every builder takes `now` so that tests can make certificates with any validity
(an expired one, a not-yet-valid one) without waiting or patching the clock.

The profile follows what verifiers expect of a server certificate today (RFC 5280, the CA/B
Forum baseline requirements, OpenSSL 3's `-x509_strict`):

- leaf: basicConstraints CA:FALSE (critical), keyUsage digitalSignature, plus keyEncipherment
  for RSA keys, which TLS 1.2's RSA key exchange uses (critical), extendedKeyUsage serverAuth,
  subjectAltName with every host (DNS names and IP addresses), SKI and AKI;
- CA: basicConstraints CA:TRUE, pathlen 0 (it signs leaves only), keyUsage keyCertSign and
  cRLSign (critical), SKI and AKI.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsgate.certtool.errors import CertToolError

# Browsers and Apple refuse publicly trusted server certificates valid for more than 398 days;
# 397 leaves a day's margin for the backdating below, so the tool's output follows the same
# habits as a public CA's.
DEFAULT_LEAF_DAYS = 397
# Apple (iOS 13, macOS 10.15 and later) refuses any TLS server certificate valid for more than
# 825 days, even one from a private or self-signed root; a longer --days gets a note.
APPLE_MAX_LEAF_DAYS = 825
# A private root is imported by hand into every user's mail program; ten years keeps that chore
# rare. Its key stays in a 0700 directory and signs only leaves (pathlen 0).
DEFAULT_CA_DAYS = 3650
# Upper bound on --days: 100 years is already absurd, and it keeps dates inside what
# X.509's GeneralizedTime and Python's datetime handle.
MAX_DAYS = 36500
# Tolerates a client whose clock runs a little behind ours (the demo does the same).
BACKDATE = datetime.timedelta(hours=1)
# RFC 5280 appendix A: ub-common-name is 64 characters.
MAX_COMMON_NAME_CHARS = 64
# RFC 1035 §2.3.4: 63 octets per label, 255 for a name on the wire, which is 253 written out.
MAX_DNS_LABEL_CHARS = 63
MAX_DNS_NAME_CHARS = 253
DEFAULT_CA_NAME = "tlsgate private CA"
# RFC 952/1123 letters, digits and hyphens; not starting or ending with a hyphen. Underscores
# are refused: public CAs no longer issue for them and some verifiers reject them.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(enum.StrEnum):
    """The key types `--key` offers; the value is what the user types."""

    ECDSA = "ecdsa"  # P-256: every mail client of the last decade, smallest handshakes
    RSA2048 = "rsa2048"  # for the oldest clients, which know no ECDSA
    RSA4096 = "rsa4096"


@dataclass(frozen=True, slots=True)
class Validity:
    not_before: datetime.datetime
    not_after: datetime.datetime

    @classmethod
    def starting(cls, now: datetime.datetime, days: int) -> Validity:
        """`days` from `now`, backdated by BACKDATE for clock skew."""
        check_days(days)
        return cls(now - BACKDATE, now + datetime.timedelta(days=days))


def check_days(days: int) -> None:
    """Raise CertToolError unless 1 <= days <= MAX_DAYS."""
    if not 1 <= days <= MAX_DAYS:
        raise CertToolError(f"--days must be between 1 and {MAX_DAYS}, got {days}")


def generate_key(key_type: KeyType) -> PrivateKey:
    """A fresh private key of the given type."""
    if key_type is KeyType.ECDSA:
        return ec.generate_private_key(ec.SECP256R1())
    size = 2048 if key_type is KeyType.RSA2048 else 4096
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


def parse_hosts(hosts: Iterable[str]) -> tuple[x509.GeneralName, ...]:
    """Turn `--host` values into SAN entries, in order, without duplicates.

    A value that parses as an IPv4 or IPv6 address (brackets allowed: `[::1]`) becomes an
    IPAddress entry; anything else must be a DNS name, optionally with a leading `*.` wildcard
    label. DNS names are lower-cased.

    Raises:
        CertToolError: no host, or a value that is neither an address nor a valid DNS name.
    """
    names: list[x509.GeneralName] = []
    for raw in hosts:
        name = _parse_host(raw.strip())
        if name not in names:
            names.append(name)
    if not names:
        raise CertToolError("at least one --host is required")
    return tuple(names)


def _parse_host(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if not host.isascii():
        raise CertToolError(
            f"--host {host!r}: write internationalised names in their ASCII form (xn--...)"
        )
    name = host.lower().removesuffix(".")
    if not _is_dns_name(name):
        raise CertToolError(f"--host {host!r}: not a DNS name or an IP address")
    return x509.DNSName(name)


def _is_dns_name(name: str) -> bool:
    labels = name.split(".")
    # RFC 6125 §6.4.3: a wildcard is a whole leftmost label, and never stands for a whole
    # registered domain such as `*.com`.
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    # RFC 3696 §2: a top-level domain is never all digits, so `300.1.2.3` is a mistyped
    # address, not a name.
    return (
        0 < len(name) <= MAX_DNS_NAME_CHARS
        and not labels[-1].isdigit()
        and all(
            len(label) <= MAX_DNS_LABEL_CHARS and _LDH_LABEL.fullmatch(label) for label in labels
        )
    )


def host_text(name: x509.GeneralName) -> str:
    """The host as the user would type it: `mail.example.com`, `192.0.2.1`, `2001:db8::1`."""
    return str(name.value)


def build_self_signed(
    key: PrivateKey, hosts: Sequence[x509.GeneralName], validity: Validity
) -> x509.Certificate:
    """A self-signed server certificate: its own trust anchor, CN = first host."""
    subject = _leaf_subject(hosts)
    public = key.public_key()
    builder = _leaf_extensions(
        _base(subject, subject, public, validity), key, hosts, subject_is_empty=not subject
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
    return builder.add_extension(aki, critical=False).sign(key, hashes.SHA256())


def build_ca(key: PrivateKey, name: str, validity: Validity) -> x509.Certificate:
    """A private root CA that may sign leaf certificates only (pathlen 0)."""
    if not 1 <= len(name) <= MAX_COMMON_NAME_CHARS:
        raise CertToolError(
            f"--name must be 1 to {MAX_COMMON_NAME_CHARS} characters, got {len(name)}"
        )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = key.public_key()
    usage = _key_usage(digital_signature=False, key_encipherment=False, ca=True)
    return (
        _base(subject, subject, public, validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def build_leaf(
    key: PrivateKey,
    hosts: Sequence[x509.GeneralName],
    validity: Validity,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
) -> x509.Certificate:
    """A server certificate signed by `ca_cert`/`ca_key`, with the CA's key id as AKI."""
    subject = _leaf_subject(hosts)
    builder = _leaf_extensions(
        _base(subject, ca_cert.subject, key.public_key(), validity),
        key,
        hosts,
        subject_is_empty=not subject,
    )
    return builder.add_extension(_authority_key_id(ca_cert), critical=False).sign(
        ca_key, hashes.SHA256()
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # RFC 5280 §4.2.1.1: the AKI carries the issuer's SKI; a CA made elsewhere without one
    # gets the key id computed from its public key, the same method ours uses.
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_public_key(ca_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CertToolError(f"the CA's key type {type(public).__name__} is not supported")
    return public


def _leaf_subject(hosts: Sequence[x509.GeneralName]) -> x509.Name:
    # The CN is a courtesy for humans and old software; verifiers match the SANs. A first host
    # longer than X.509 allows for a CN leaves the subject empty, which RFC 5280 §4.2.1.6
    # permits when the SAN extension is marked critical (done in _leaf_extensions).
    first = host_text(hosts[0])
    if len(first) > MAX_COMMON_NAME_CHARS:
        return x509.Name([])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)])


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    validity: Validity,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
    )


def _leaf_extensions(
    builder: x509.CertificateBuilder,
    key: PrivateKey,
    hosts: Sequence[x509.GeneralName],
    *,
    subject_is_empty: bool,
) -> x509.CertificateBuilder:
    public = key.public_key()
    usage = _key_usage(
        digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey), ca=False
    )
    return (
        builder.add_extension(x509.SubjectAlternativeName(hosts), critical=subject_is_empty)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _key_usage(*, digital_signature: bool, key_encipherment: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
