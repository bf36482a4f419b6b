"""The TLS snapshot: what `check` reports is what `run` refuses, and which certificate a
handshake gets (SNI, default, restrictions, client certificates, resumption).

Handshakes run in memory against the contexts `build_tls_snapshot` made, so the SNI callback,
the context swap and client verification are OpenSSL's real ones.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.helpers.certs import (
    handshake,
    handshake_sides,
    leaf_names,
    peer_leaf,
    write_encrypted,
    write_pair,
)
from tlsgate.config import (
    CertificateEntry,
    Config,
    ConfigError,
    Endpoint,
    ListenerConfig,
    Protocol,
    TlsMode,
    TlsSettings,
    TlsVersion,
)
from tlsgate.config.model import ClientAuth, Profile
from tlsgate.tls.client_auth import client_identity
from tlsgate.tls.contexts import (
    TlsSnapshot,
    build_tls_snapshot,
    check_certificates,
    tls_file_stamps,
    tls_files,
)

HOSTNAME = "mail.example.test"
LISTENER = ListenerConfig(
    name="imaps",
    listen=Endpoint("127.0.0.1", 0),
    protocol=Protocol.TCP,
    tls=TlsMode.IMPLICIT,
    backend=(Endpoint("127.0.0.1", 1143),),
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


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
    assert entry.cert is not None
    assert entry.key is not None
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


def config_with(
    *entries: CertificateEntry,
    tls: TlsSettings | None = None,
    listeners: tuple[ListenerConfig, ...] = (LISTENER,),
) -> Config:
    return Config(
        source=Path("tlsgate.toml"),
        certificates=entries,
        tls=tls or TlsSettings(),
        listeners=listeners,
    )


def problem_lines(config: Config) -> list[str]:
    problems, _ = check_certificates(config)
    return [str(problem) for problem in problems]


def warning_lines(config: Config) -> list[str]:
    _, warnings = check_certificates(config)
    return [str(warning) for warning in warnings]


def front(config: Config, listener: str = LISTENER.name) -> ssl.SSLContext:
    context = build_tls_snapshot(config).context_for(listener)
    assert context is not None
    return context


def client(ca: trustme.CA, *, check_hostname: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = check_hostname
    return context


def served(server: ssl.SSLContext, ca: trustme.CA, name: str | None) -> list[str]:
    """The DNS names of the certificate a client asking for `name` is given."""
    return leaf_names(handshake(server, client(ca), name))


# ---- good certificates -------------------------------------------------------------------


def test_a_good_certificate_passes_and_serves_a_handshake(tmp_path: Path, ca: trustme.CA) -> None:
    config = config_with(write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"))
    assert check_certificates(config) == ([], [])
    server = front(config)
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2  # intermediate
    assert server.options & ssl.OP_NO_COMPRESSION
    assert server.options & ssl.OP_NO_RENEGOTIATION
    assert handshake(server, client(ca, check_hostname=True), HOSTNAME).version() == "TLSv1.3"


def test_the_snapshot_has_a_context_per_tls_listener_only(tmp_path: Path, ca: trustme.CA) -> None:
    plain = replace(LISTENER, name="plain", tls=TlsMode.NONE)
    config = config_with(
        write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"), listeners=(LISTENER, plain)
    )
    snapshot = build_tls_snapshot(config)
    assert snapshot.context_for("imaps") is not None
    assert snapshot.context_for("plain") is None
    assert snapshot.context_for("no such listener") is None
    [info] = snapshot.certificates
    assert info.name == HOSTNAME


def test_without_tls_listeners_no_certificate_is_needed() -> None:
    config = config_with(listeners=(replace(LISTENER, tls=TlsMode.NONE),))
    assert build_tls_snapshot(config).contexts == {}


def test_listeners_with_the_same_settings_share_one_context(tmp_path: Path, ca: trustme.CA) -> None:
    other = replace(LISTENER, name="pop3s")
    legacy = replace(LISTENER, name="old", profile=Profile.LEGACY)
    config = config_with(
        write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"), listeners=(LISTENER, other, legacy)
    )
    snapshot = build_tls_snapshot(config)
    assert snapshot.context_for("imaps") is snapshot.context_for("pop3s")
    assert snapshot.context_for("old") is not snapshot.context_for("imaps")
    assert snapshot.legacy_listeners == ("old",)


def test_a_listener_policy_overlays_the_tls_table(tmp_path: Path, ca: trustme.CA) -> None:
    strict = replace(LISTENER, name="strict", profile=Profile.MODERN)
    capped = replace(LISTENER, name="capped", max_version=TlsVersion.TLSV1_2)
    config = config_with(
        write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"),
        tls=TlsSettings(profile=Profile.LEGACY),
        listeners=(strict, capped),
    )
    snapshot = build_tls_snapshot(config)
    strict_context, capped_context = snapshot.context_for("strict"), snapshot.context_for("capped")
    assert strict_context is not None
    assert capped_context is not None
    assert strict_context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert capped_context.minimum_version is ssl.TLSVersion.TLSv1  # legacy from [tls]
    assert capped_context.maximum_version is ssl.TLSVersion.TLSv1_2
    assert snapshot.legacy_listeners == ("capped",)


# ---- SNI ---------------------------------------------------------------------------------


@pytest.fixture
def three_names(tmp_path: Path, ca: trustme.CA) -> Config:
    return config_with(
        write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"),
        write_pair(tmp_path, ca.issue_cert("pop.example.test", "pop3.example.test"), "pop"),
        write_pair(tmp_path, ca.issue_cert("*.example.org"), "wildcard"),
    )


@pytest.mark.parametrize(
    ("sni", "names"),
    [
        ("pop.example.test", ["pop.example.test", "pop3.example.test"]),
        ("pop3.example.test", ["pop.example.test", "pop3.example.test"]),
        ("POP.Example.Test", ["pop.example.test", "pop3.example.test"]),
        ("pop.example.test.", ["pop.example.test", "pop3.example.test"]),
        ("imap.example.org", ["*.example.org"]),
        ("IMAP.EXAMPLE.ORG.", ["*.example.org"]),
        (HOSTNAME, [HOSTNAME]),
        (None, [HOSTNAME]),  # no SNI: the default, the first entry
        ("unknown.example.net", [HOSTNAME]),
        ("example.org", [HOSTNAME]),  # a wildcard covers one label, not the bare domain
        ("a.b.example.org", [HOSTNAME]),  # nor two
    ],
)
def test_sni_picks_the_certificate_naming_the_host(
    three_names: Config, ca: trustme.CA, sni: str | None, names: list[str]
) -> None:
    assert served(front(three_names), ca, sni) == names


def test_the_entry_marked_default_serves_clients_without_sni(
    tmp_path: Path, ca: trustme.CA
) -> None:
    first = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    second = write_pair(tmp_path, ca.issue_cert("other.example.test"), "other", default=True)
    server = front(config_with(first, second))
    assert served(server, ca, None) == ["other.example.test"]
    assert served(server, ca, HOSTNAME) == [HOSTNAME]


def test_a_listener_serves_only_the_certificates_it_names(tmp_path: Path, ca: trustme.CA) -> None:
    mail = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    pop = write_pair(tmp_path, ca.issue_cert("pop.example.test"), "pop", name="pop")
    only_pop = replace(LISTENER, name="pop3s", certificates=("pop",))
    config = config_with(mail, pop, listeners=(LISTENER, only_pop))
    assert served(front(config, "pop3s"), ca, HOSTNAME) == ["pop.example.test"]
    assert served(front(config, "imaps"), ca, HOSTNAME) == [HOSTNAME]


def test_a_listener_naming_an_unknown_certificate_is_an_error(
    tmp_path: Path, ca: trustme.CA
) -> None:
    mail = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    typo = replace(LISTENER, certificates=(HOSTNAME, "mial"))
    assert problem_lines(config_with(mail, listeners=(typo,))) == [
        "tlsgate.toml: listener[0].certificates[1]: expected the name of a [[certificate]] (one "
        f'of "{HOSTNAME}"), got "mial"'
    ]


def test_rsa_and_ecdsa_for_one_name_each_reach_the_client_that_can_use_it(
    tmp_path: Path, ca: trustme.CA
) -> None:
    rsa_entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME, key_type=trustme.KeyType.RSA), "rsa")
    ecdsa_entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "ecdsa")
    server = front(config_with(rsa_entry, ecdsa_entry))
    for suite, key_type in [
        ("ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey),
        ("ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey),
    ]:
        tls12 = client(ca)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        tls12.set_ciphers(suite)
        for sni in (HOSTNAME, None):
            side = handshake(server, tls12, sni)
            assert isinstance(peer_leaf(side).public_key(), key_type)


# ---- expiry ------------------------------------------------------------------------------


def test_a_renewed_certificate_replaces_the_expired_one(tmp_path: Path, ca: trustme.CA) -> None:
    now = datetime.now(UTC)
    old = ca.issue_cert(
        HOSTNAME, not_before=now - timedelta(days=90), not_after=now - timedelta(days=1)
    )
    new = ca.issue_cert(
        HOSTNAME, not_before=now - timedelta(days=2), not_after=now + timedelta(days=88)
    )
    config = config_with(write_pair(tmp_path, old, "old"), write_pair(tmp_path, new, "new"))
    assert problem_lines(config) == []
    [warning] = warning_lines(config)
    assert warning.startswith("tlsgate.toml: certificate[0].cert: expected a certificate that")
    assert warning.endswith("; not served, a valid one is)")
    for sni in (HOSTNAME, None):
        side = handshake(front(config), client(ca, check_hostname=sni is not None), sni)
        assert peer_leaf(side).not_valid_after_utc > now


def test_an_expired_certificate_alone_for_its_name_is_an_error(tmp_path: Path) -> None:
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
        build_tls_snapshot(config)


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
    build_tls_snapshot(config)  # a warning does not stop the server


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
    assert build_tls_snapshot(config_with(entry)).next_change == entry_start(entry)


def entry_start(entry: CertificateEntry) -> datetime:
    assert entry.cert is not None
    return x509.load_pem_x509_certificate(entry.cert.read_bytes()).not_valid_before_utc


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
        build_tls_snapshot(config)
    assert [str(problem) for problem in caught.value.problems] == [expected]


def test_garbage_instead_of_a_certificate_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    assert entry.cert is not None
    entry.cert.write_bytes(b"not a certificate\n")
    assert problem_lines(config_with(entry)) == [
        "tlsgate.toml: certificate[0].cert: expected a PEM certificate, "
        f'got "{entry.cert}" (no PEM certificate found)'
    ]


def test_a_certificate_where_the_key_should_be_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    config = config_with(CertificateEntry(cert=entry.cert, key=entry.cert))
    assert problem_lines(config) == [
        "tlsgate.toml: certificate[0].key: expected a PEM private key, "
        f'got "{entry.cert}" (no PEM private key found)'
    ]


def test_missing_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    entry = CertificateEntry(cert=tmp_path / "none.pem", key=tmp_path / "none.key")
    assert problem_lines(config_with(entry)) == [
        "tlsgate.toml: certificate[0].cert: expected a readable file, "
        f'got "{entry.cert}" (No such file or directory)',
    ]


def test_every_entry_is_checked_not_only_the_first(tmp_path: Path, ca: trustme.CA) -> None:
    good = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    bad = CertificateEntry(cert=good.cert, key=tmp_path / "absent.key")
    assert [line.split(": ")[1] for line in problem_lines(config_with(good, bad))] == [
        "certificate[1].key"
    ]


def test_no_certificate_for_a_tls_listener_cannot_build_a_snapshot() -> None:
    with pytest.raises(ConfigError) as caught:
        build_tls_snapshot(config_with())
    assert str(caught.value) == (
        "tlsgate.toml: certificate: expected at least one [[certificate]], got none"
    )


def test_a_cipher_string_openssl_cannot_use_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    odd = replace(LISTENER, ciphers="NO-SUCH-CIPHER")
    assert problem_lines(config_with(entry, listeners=(odd,))) == [
        'tlsgate.toml: listener[0].ciphers: expected a cipher string OpenSSL can use, got "NO-'
        'SUCH-CIPHER" (No cipher can be selected.)'
    ]


def test_snapshot_errors_carry_the_warnings_found(tmp_path: Path, ca: trustme.CA) -> None:
    good = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    assert good.key is not None
    good.key.chmod(0o644)
    bad = CertificateEntry(cert=tmp_path / "absent.pem", key=good.key)
    with pytest.raises(ConfigError) as caught:
        build_tls_snapshot(config_with(good, bad))
    assert [w.key for w in caught.value.warnings] == ["certificate[0].key"]


# ---- warnings ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_readable_by_group_or_others_warns(tmp_path: Path, ca: trustme.CA, mode: int) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    assert entry.key is not None
    entry.key.chmod(mode)
    assert warning_lines(config_with(entry)) == [
        "tlsgate.toml: certificate[0].key: expected a key file only its owner can read, "
        f'got "{entry.key}" (mode {mode:04o})'
    ]


def test_a_certificate_no_client_can_reach_warns(tmp_path: Path, ca: trustme.CA) -> None:
    mail = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    by_ip = write_pair(tmp_path, ca.issue_cert("192.0.2.7"), "by-ip")
    assert warning_lines(config_with(mail, by_ip)) == [
        "tlsgate.toml: certificate[1].cert: expected a certificate with a DNS name in its "
        f'subjectAltName, or default = true, got "{by_ip.cert}" (no DNS name: never served)'
    ]


# ---- keys on their way to OpenSSL ----------------------------------------------------------


def test_no_key_file_is_left_behind(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    transit = tmp_path / "transit"
    transit.mkdir()
    monkeypatch.setenv("TMPDIR", str(transit))
    monkeypatch.setattr("tempfile.tempdir", None)
    config = config_with(write_encrypted(tmp_path, ca.issue_cert(HOSTNAME), "enc", b"pw"))
    build_tls_snapshot(config)
    assert list(transit.iterdir()) == []


def test_keys_pass_through_a_private_directory_encrypted(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, bytes]] = []
    original = ssl.SSLContext.load_cert_chain

    def spy(
        self: ssl.SSLContext, certfile: str, keyfile: str | None = None, password: object = None
    ) -> None:
        path = Path(certfile)
        seen.append(
            (path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777, path.read_bytes())
        )
        original(self, certfile, keyfile, password)  # type: ignore[arg-type]  # spy passes through

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    build_tls_snapshot(config_with(write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")))
    assert seen
    for directory_mode, file_mode, content in seen:
        assert (directory_mode, file_mode) == (0o700, 0o600)
        assert b"BEGIN ENCRYPTED PRIVATE KEY" in content
        assert b"BEGIN PRIVATE KEY" not in content


# ---- client certificates -----------------------------------------------------------------


@pytest.fixture
def client_ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    authority = trustme.CA(organization_name="Clients")
    path = tmp_path / "clients.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


@pytest.mark.parametrize("auth", [ClientAuth.OPTIONAL, ClientAuth.REQUIRED])
def test_a_verified_client_certificate_gives_subject_and_fingerprint(
    tmp_path: Path, ca: trustme.CA, client_ca: tuple[trustme.CA, Path], auth: ClientAuth
) -> None:
    authority, path = client_ca
    listener = replace(LISTENER, client_auth=auth, client_ca=path)
    config = config_with(
        write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"),
        write_pair(tmp_path, ca.issue_cert("other.example.test"), "other"),
        listeners=(listener,),
    )
    alice = authority.issue_cert("alice@example.test", common_name="alice")
    # Through the SNI swap too: the per-name context must verify clients the same way.
    for sni in (None, "other.example.test"):
        user = client(ca)
        alice.configure_cert(user)
        _, server_side = handshake_sides(front(config), user, sni)
        identity = client_identity(server_side)
        assert identity is not None
        assert "CN=alice" in identity.subject
        expected = peer_leaf(server_side).fingerprint(hashes.SHA256()).hex(":").upper()
        assert identity.fingerprint == expected


def test_client_ca_may_be_a_directory_of_pem_files(
    tmp_path: Path, ca: trustme.CA, client_ca: tuple[trustme.CA, Path]
) -> None:
    _, path = client_ca
    directory = tmp_path / "cas"
    directory.mkdir()
    (directory / "README").write_text("not a certificate\n")
    os.link(path, directory / "clients.crt")
    listener = replace(LISTENER, client_auth=ClientAuth.REQUIRED, client_ca=directory)
    config = config_with(
        write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"), listeners=(listener,)
    )
    assert check_certificates(config) == ([], [])
    assert directory in tls_files(config)
    assert directory / "clients.crt" in tls_files(config)


def test_a_client_ca_without_certificates_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing\n")
    listener = replace(LISTENER, client_auth=ClientAuth.OPTIONAL, client_ca=empty)
    config = config_with(
        write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"), listeners=(listener,)
    )
    assert problem_lines(config) == [
        f'tlsgate.toml: listener[0].client_ca: expected CA certificates, got "{empty}" (no PEM '
        "certificate found)"
    ]


def test_no_client_certificate_gives_no_identity(tmp_path: Path, ca: trustme.CA) -> None:
    config = config_with(write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"))
    _, server_side = handshake_sides(front(config), client(ca), HOSTNAME)
    assert client_identity(server_side) is None


# ---- resumption --------------------------------------------------------------------------


def test_a_session_resumes_with_a_ticket_through_the_sni_swap(
    tmp_path: Path, ca: trustme.CA
) -> None:
    config = config_with(
        write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"),
        write_pair(tmp_path, ca.issue_cert("other.example.test"), "other"),
    )
    server = front(config)
    user = client(ca)
    user.maximum_version = ssl.TLSVersion.TLSv1_2  # the session is there right after it
    for sni in ("other.example.test", HOSTNAME):
        first = handshake(server, user, sni)
        assert first.session is not None
        again, _ = handshake_sides(server, user, sni, session=first.session)
        assert again.session_reused


# ---- the files a config depends on ----------------------------------------------------------


def test_tls_files_lists_every_file_once(tmp_path: Path, ca: trustme.CA) -> None:
    encrypted = write_encrypted(tmp_path, ca.issue_cert(HOSTNAME), "enc", b"pw")
    combined = write_pair(tmp_path, ca.issue_cert("b.example.test"), "both", combined=True)
    config = config_with(encrypted, combined, combined)
    assert tls_files(config) == (
        encrypted.cert,
        encrypted.key,
        encrypted.password_file,
        combined.cert,
    )


def test_file_stamps_change_when_a_file_is_replaced(tmp_path: Path, ca: trustme.CA) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail")
    config = config_with(entry)
    before = tls_file_stamps(config)
    assert entry.cert is not None
    assert entry.key is not None
    replacement = tmp_path / "new.pem"
    replacement.write_bytes(entry.cert.read_bytes())
    replacement.replace(entry.cert)  # as an ACME client does: rename over the old file
    after = tls_file_stamps(config)
    assert after[entry.key] == before[entry.key]
    assert after[entry.cert] != before[entry.cert]
    entry.key.unlink()
    assert tls_file_stamps(config)[entry.key] is None


def test_a_snapshot_is_immutable(tmp_path: Path, ca: trustme.CA) -> None:
    snapshot: TlsSnapshot = build_tls_snapshot(
        config_with(write_pair(tmp_path, ca.issue_cert(HOSTNAME), "mail"))
    )
    with pytest.raises(TypeError):
        snapshot.contexts["x"] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # type: ignore[index]
