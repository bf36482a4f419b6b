"""A throwaway self-signed certificate for the demo: ECDSA P-256 for localhost, 127.0.0.1, ::1.

The certificate is its own trust anchor: clients verify the demo listeners by passing the
certificate file as their CA file (`openssl -CAfile`, `curl --cacert`, `ssl.create_default_context
(cafile=...)`). It is an end-entity certificate (CA:FALSE) with the extensions strict X.509
verification expects (SKI, AKI, key usage, serverAuth), so OpenSSL 3 and Python 3.13's
`VERIFY_X509_STRICT` accept it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for any demo session, short enough that a copied file is useless soon.
VALIDITY_DAYS = 30
# Tolerates a client clock a little behind ours.
BACKDATE = datetime.timedelta(hours=1)
DNS_NAMES = ("localhost",)
IP_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class SelfSignedPaths:
    cert: Path
    key: Path


def _build(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsgate demo (self-signed, not secret)"),
        ]
    )
    public = key.public_key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in IP_ADDRESSES]
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def write_self_signed(directory: Path, *, stem: str = "demo") -> SelfSignedPaths:
    """Generate a key and certificate and write them as `<stem>.pem` / `<stem>.key`.

    The key file is created with mode 0600 (never briefly wider) and must not exist yet.

    Args:
        directory: an existing directory, ideally private (0700).
        stem: the file name without extension.

    Returns:
        The paths of the certificate and of the key.

    Raises:
        FileExistsError: the key file already exists.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build(key, datetime.datetime.now(datetime.UTC))
    paths = SelfSignedPaths(cert=directory / f"{stem}.pem", key=directory / f"{stem}.key")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as key_file:
        key_file.write(key_pem)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths
