"""A throwaway self-signed certificate for the demo: ECDSA P-256 for localhost, 127.0.0.1, ::1.

The certificate is its own trust anchor: clients verify the demo listeners by passing the
certificate file as their CA file (`openssl -CAfile`, `curl --cacert`, `ssl.create_default_context
(cafile=...)`). It is made by the same builder as `tlsgate cert self-signed`: an end-entity
certificate (CA:FALSE) with the extensions strict X.509 verification expects (SKI, AKI, key usage,
serverAuth), so OpenSSL 3 and Python 3.13's `VERIFY_X509_STRICT` accept it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tlsgate.certtool.build import (
    KeyType,
    Validity,
    build_self_signed,
    generate_key,
    parse_hosts,
)

# Long enough for any demo session, short enough that a copied file is useless soon.
VALIDITY_DAYS = 30
HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class SelfSignedPaths:
    cert: Path
    key: Path


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
    key = generate_key(KeyType.ECDSA)
    validity = Validity.starting(datetime.datetime.now(datetime.UTC), VALIDITY_DAYS)
    cert = build_self_signed(key, parse_hosts(HOSTS), validity)
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
