"""The demo's self-signed certificate: private key file, names, and a verifying handshake."""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tlsgate.demo.selfsigned import SelfSignedPaths, write_self_signed


@pytest.fixture
def paths(tmp_path: Path) -> SelfSignedPaths:
    return write_self_signed(tmp_path)


def test_key_file_is_private(paths: SelfSignedPaths) -> None:
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600


def test_existing_key_is_never_overwritten(paths: SelfSignedPaths) -> None:
    with pytest.raises(FileExistsError):
        write_self_signed(paths.key.parent)


def test_certificate_is_p256_for_the_loopback_names(paths: SelfSignedPaths) -> None:
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1", "::1"])
def test_certificate_verifies_as_its_own_ca(paths: SelfSignedPaths, server_hostname: str) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.cert, paths.key)
    client_ctx = ssl.create_default_context(cafile=str(paths.cert))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):  # the peer's answer is not in yet
                end.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert client.version() is not None
    peer = client.getpeercert()
    assert peer is not None
    assert peer["subject"] == ((("commonName", "localhost"),),)
