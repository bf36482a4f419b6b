"""Certificates on disk in every format tlsgate reads, and in-memory handshakes to inspect them.

The leaves come from a trustme CA (chosen names, validity and key type); this module writes
them as a `[[certificate]]` entry would point at them: PEM chain + key, both in one file, an
encrypted key with a password file, or PKCS#12.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from tlsgate.config import CertificateEntry

__all__ = [
    "handshake",
    "handshake_sides",
    "issue",
    "leaf_names",
    "peer_leaf",
    "validity",
    "write_encrypted",
    "write_pair",
    "write_pkcs12",
]

SECRET_MODE = 0o600
HANDSHAKE_ROUNDS = 10


def validity(days_ago: float, days_left: float) -> tuple[datetime, datetime]:
    """(not_before, not_after): valid from `days_ago` days ago for `days_left` more days
    (negative: expired that many days ago; `days_ago` negative: not valid yet)."""
    now = datetime.now(UTC)
    return now - timedelta(days=days_ago), now + timedelta(days=days_left)


def issue(
    ca: trustme.CA,
    *names: str,
    days_ago: float = 30,
    days_left: float = 60,
    key_type: trustme.KeyType = trustme.KeyType.ECDSA,
) -> trustme.LeafCert:
    """A leaf for `names` with the validity asked for."""
    not_before, not_after = validity(days_ago, days_left)
    return ca.issue_cert(*names, not_before=not_before, not_after=not_after, key_type=key_type)


def _chain_pem(leaf: trustme.LeafCert) -> bytes:
    return b"".join(blob.bytes() for blob in leaf.cert_chain_pems)


def _secret(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(SECRET_MODE)
    return path


def write_pair(
    directory: Path,
    leaf: trustme.LeafCert,
    stem: str,
    *,
    combined: bool = False,
    name: str | None = None,
    default: bool = False,
) -> CertificateEntry:
    """PEM chain in `stem.pem`, key in `stem.key` (or after the chain, with `combined`)."""
    cert = directory / f"{stem}.pem"
    if combined:
        _secret(cert, _chain_pem(leaf) + leaf.private_key_pem.bytes())
        return CertificateEntry(cert=cert, name=name, default=default)
    cert.write_bytes(_chain_pem(leaf))
    key = _secret(directory / f"{stem}.key", leaf.private_key_pem.bytes())
    return CertificateEntry(cert=cert, key=key, name=name, default=default)


def _key(leaf: trustme.LeafCert) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


def write_password(directory: Path, stem: str, password: bytes, *, line_end: bytes) -> Path:
    """A password file: the password on the first line, then a second line that must be
    ignored (CONTRACT.md: the first line, trailing CR/LF stripped)."""
    rest = line_end + b"not the password\n" if line_end else b""
    return _secret(directory / f"{stem}.pass", password + rest)


def write_encrypted(
    directory: Path, leaf: trustme.LeafCert, stem: str, password: bytes, *, line_end: bytes = b"\n"
) -> CertificateEntry:
    """PEM chain, PKCS#8 key encrypted with `password`, and the password file."""
    cert = directory / f"{stem}.pem"
    cert.write_bytes(_chain_pem(leaf))
    encrypted = _key(leaf).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    key = _secret(directory / f"{stem}.key", encrypted)
    password_file = write_password(directory, stem, password, line_end=line_end)
    return CertificateEntry(cert=cert, key=key, password_file=password_file)


def write_pkcs12(
    directory: Path, leaf: trustme.LeafCert, stem: str, password: bytes | None
) -> CertificateEntry:
    """A PKCS#12 file with the key, the leaf and its chain (and the password file)."""
    chain = [x509.load_pem_x509_certificate(blob.bytes()) for blob in leaf.cert_chain_pems]
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password is not None
        else serialization.NoEncryption()
    )
    data = pkcs12.serialize_key_and_certificates(
        stem.encode(), _key(leaf), chain[0], chain[1:] or None, encryption
    )
    path = _secret(directory / f"{stem}.p12", data)
    if password is None:
        return CertificateEntry(pkcs12=path)
    password_file = write_password(directory, stem, password, line_end=b"\n")
    return CertificateEntry(pkcs12=path, password_file=password_file)


def handshake_sides(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    server_name: str | None,
    *,
    session: ssl.SSLSession | None = None,
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Complete a handshake in memory; returns (client side, server side) to inspect.

    Raises:
        ssl.SSLError: the handshake failed (on either side).
    """
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname=server_name, session=session)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(HANDSHAKE_ROUNDS):
        done = 0
        for side in (client_side, server_side):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            return client_side, server_side
    raise AssertionError("handshake did not finish")


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_name: str | None
) -> ssl.SSLObject:
    """`handshake_sides`, the client's side only."""
    return handshake_sides(server, client, server_name)[0]


def peer_leaf(side: ssl.SSLObject | ssl.SSLSocket) -> x509.Certificate:
    der = side.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def leaf_names(side: ssl.SSLObject | ssl.SSLSocket) -> list[str]:
    """The DNS names in the certificate the server presented."""
    san = peer_leaf(side).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(name) for name in san.value.get_values_for_type(x509.DNSName)]
