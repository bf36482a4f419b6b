"""Certificate checks and the server context: what `check` reports is what `run` refuses."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tlsgate.config import CertificateEntry, Config, ConfigError, TlsSettings, TlsVersion
from tlsgate.tls.contexts import build_server_context, check_certificates

HOSTNAME = "mail.example.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(directory: Path, leaf: trustme.LeafCert, name: str = "mail") -> CertificateEntry:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    return CertificateEntry(cert=cert, key=key)


def self_signed(directory: Path, *, not_before: datetime, not_after: datetime) -> CertificateEntry:
    """A certificate with the validity we ask for, which trustme's CA would not sign."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOSTNAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    entry = CertificateEntry(cert=directory / "self.pem", key=directory / "self.key")
    entry.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    entry.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    entry.key.chmod(0o600)
    return entry


def config_with(*entries: CertificateEntry, tls: TlsSettings | None = None) -> Config:
    return Config(source=Path("tlsgate.toml"), certificates=entries, tls=tls or TlsSettings())


def problem_lines(config: Config) -> list[str]:
    problems, _ = check_certificates(config)
    return [str(problem) for problem in problems]


def warning_lines(config: Config) -> list[str]:
    _, warnings = check_certificates(config)
    return [str(warning) for warning in warnings]


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """Complete a handshake in memory; returns the client's side to inspect."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname=HOSTNAME)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
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
            return client_side
    raise AssertionError("handshake did not finish")


# ---- good certificates -------------------------------------------------------------------


def test_a_good_certificate_passes_and_serves_a_handshake(tmp_path: Path, ca: trustme.CA) -> None:
    config = config_with(write_pair(tmp_path, ca.issue_cert(HOSTNAME)))
    assert check_certificates(config) == ([], [])
    server = build_server_context(config)
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2  # the floor before profiles
    assert server.options & ssl.OP_NO_COMPRESSION
    assert server.options & ssl.OP_NO_RENEGOTIATION
    assert server.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    client = ssl.create_default_context()
    ca.configure_trust(client)
    assert handshake(server, client).version() == "TLSv1.3"


def test_configured_versions_bound_the_handshake(tmp_path: Path, ca: trustme.CA) -> None:
    tls = TlsSettings(min_version=TlsVersion.TLSV1_2, max_version=TlsVersion.TLSV1_2)
    server = build_server_context(
        config_with(write_pair(tmp_path, ca.issue_cert(HOSTNAME)), tls=tls)
    )
    assert server.maximum_version is ssl.TLSVersion.TLSv1_2
    client = ssl.create_default_context()
    ca.configure_trust(client)
    assert handshake(server, client).version() == "TLSv1.2"


def test_the_first_of_several_entries_serves_every_client(tmp_path: Path, ca: trustme.CA) -> None:
    first = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "first")
    second = write_pair(tmp_path, ca.issue_cert("other.example.test"), "second")
    server = build_server_context(config_with(first, second))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    peer = handshake(server, client).getpeercert()
    assert peer is not None
    assert ("DNS", HOSTNAME) in peer["subjectAltName"]


def test_a_combined_pem_with_certificate_and_key_is_accepted(
    tmp_path: Path, ca: trustme.CA
) -> None:
    leaf = ca.issue_cert(HOSTNAME)
    combined = tmp_path / "combined.pem"
    combined.write_bytes(leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes())
    combined.chmod(0o600)
    assert check_certificates(config_with(CertificateEntry(cert=combined, key=combined))) == (
        [],
        [],
    )


# ---- problems ----------------------------------------------------------------------------


def test_a_key_of_another_certificate_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    mine = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mine")
    other = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "other")
    config = config_with(CertificateEntry(cert=mine.cert, key=other.key))
    expected = (
        "tlsgate.toml: certificate[0].key: expected the private key of certificate[0].cert, "
        f'got "{other.key}" (it does not match the certificate)'
    )
    assert problem_lines(config) == [expected]
    with pytest.raises(ConfigError) as caught:
        build_server_context(config)
    assert [str(problem) for problem in caught.value.problems] == [expected]


def test_garbage_instead_of_a_certificate_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME))
    entry.cert.write_bytes(b"not a certificate\n")
    assert problem_lines(config_with(entry)) == [
        "tlsgate.toml: certificate[0].cert: expected a PEM certificate, "
        f'got "{entry.cert}" (no PEM certificate found)'
    ]


def test_a_certificate_where_the_key_should_be_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME))
    config = config_with(CertificateEntry(cert=entry.cert, key=entry.cert))
    assert problem_lines(config) == [
        "tlsgate.toml: certificate[0].key: expected a PEM private key, "
        f'got "{entry.cert}" (no usable PEM private key found)'
    ]


def test_an_encrypted_key_is_an_error_until_password_files_exist(
    tmp_path: Path, ca: trustme.CA
) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME))
    key = serialization.load_pem_private_key(entry.key.read_bytes(), password=None)
    entry.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert problem_lines(config_with(entry)) == [
        "tlsgate.toml: certificate[0].key: expected an unencrypted PEM private key, "
        f'got "{entry.key}" (it is encrypted)'
    ]


def test_missing_files_are_errors_naming_each_file(tmp_path: Path) -> None:
    entry = CertificateEntry(cert=tmp_path / "none.pem", key=tmp_path / "none.key")
    assert problem_lines(config_with(entry)) == [
        "tlsgate.toml: certificate[0].cert: expected a readable file, "
        f'got "{entry.cert}" (No such file or directory)',
        "tlsgate.toml: certificate[0].key: expected a readable file, "
        f'got "{entry.key}" (No such file or directory)',
    ]


def test_every_entry_is_checked_not_only_the_first(tmp_path: Path, ca: trustme.CA) -> None:
    good = write_pair(tmp_path, ca.issue_cert(HOSTNAME))
    bad = CertificateEntry(cert=good.cert, key=tmp_path / "absent.key")
    assert [line.split(": ")[1] for line in problem_lines(config_with(good, bad))] == [
        "certificate[1].key"
    ]


def test_an_expired_certificate_is_an_error(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    entry = self_signed(
        tmp_path, not_before=now - timedelta(days=90), not_after=now - timedelta(days=1)
    )
    config = config_with(entry)
    [line] = problem_lines(config)
    assert line.startswith(
        "tlsgate.toml: certificate[0].cert: expected a certificate that has not expired, "
        f'got "{entry.cert}" (expired '
    )
    with pytest.raises(ConfigError):
        build_server_context(config)


def test_no_certificate_at_all_cannot_build_a_context() -> None:
    with pytest.raises(ConfigError) as caught:
        build_server_context(config_with())
    assert str(caught.value) == (
        "tlsgate.toml: certificate: expected at least one [[certificate]], got none"
    )


# ---- warnings ----------------------------------------------------------------------------


def test_a_certificate_expiring_within_21_days_only_warns(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    entry = self_signed(
        tmp_path, not_before=now - timedelta(days=80), not_after=now + timedelta(days=10, hours=1)
    )
    config = config_with(entry)
    assert problem_lines(config) == []
    [line] = warning_lines(config)
    assert line.startswith(
        "tlsgate.toml: certificate[0].cert: expected a certificate valid for at least 21 more "
        f'days, got "{entry.cert}" (expires '
    )
    assert line.endswith(", in 10 days)")
    build_server_context(config)  # a warning does not stop the server


def test_a_certificate_not_valid_yet_warns(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    entry = self_signed(
        tmp_path, not_before=now + timedelta(hours=1), not_after=now + timedelta(days=90)
    )
    assert check_certificates(config_with(entry))[0] == []
    [line] = warning_lines(config_with(entry))
    assert "certificate[0].cert: expected a certificate that is already valid" in line
    # Judged at a given moment instead, it is simply valid.
    assert check_certificates(config_with(entry), now=now + timedelta(days=1)) == ([], [])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_readable_by_group_or_others_warns(tmp_path: Path, ca: trustme.CA, mode: int) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME))
    entry.key.chmod(mode)
    assert warning_lines(config_with(entry)) == [
        "tlsgate.toml: certificate[0].key: expected a key file only its owner can read, "
        f'got "{entry.key}" (mode {mode:04o})'
    ]
