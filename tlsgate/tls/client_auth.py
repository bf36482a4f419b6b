"""Client certificates: the CAs a listener trusts, and who a verified client is."""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

_PEM = serialization.Encoding.PEM


def read_ca_certificates(path: Path) -> str:
    """The PEM certificates in a file, or in every file of a directory (no c_rehash needed).

    Raises:
        ValueError: unreadable, or no PEM certificate found.
    """
    try:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        blobs = [file.read_bytes() for file in files]
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from exc
    pem: list[str] = []
    for blob in blobs:
        try:
            certificates = x509.load_pem_x509_certificates(blob)
        except ValueError:
            continue  # a README, a CRL, a key: not a CA certificate
        pem += [cert.public_bytes(_PEM).decode("ascii") for cert in certificates]
    if not pem:
        raise ValueError("no PEM certificate found")
    return "".join(pem)


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """A client certificate that passed verification against the listener's `client_ca`."""

    subject: str  # RFC 4514, e.g. "CN=alice,O=Example"
    fingerprint: str  # SHA-256 of the DER certificate, hex pairs joined by ":"


def client_identity(ssl_object: ssl.SSLObject) -> ClientIdentity | None:
    """The verified client certificate after a handshake; None when the client sent none.

    With `client_auth` set, OpenSSL fails the handshake on a certificate that does not verify,
    so any certificate present here has been verified.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return ClientIdentity(subject, hashlib.sha256(der).digest().hex(":").upper())
