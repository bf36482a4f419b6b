"""The certificate tool's library: what it builds, how it writes, what `show` reports.

The certificates are judged by parties we did not write: Python's `ssl` (load_cert_chain and
a real TLS handshake over memory BIOs, hostname checking on) and `openssl x509` / `openssl
verify -x509_strict`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import ssl
import stat
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsgate.certtool import CertToolError, KeyType, ca_init, ca_issue, self_signed, show
from tlsgate.certtool.build import BACKDATE, parse_hosts

NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC)
HOST = "mail.example.com"
# A handshake over memory BIOs needs three flights; the bound only catches a livelock.
MAX_HANDSHAKE_ROUNDS = 10
ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)
requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def load(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def extension(cert: x509.Certificate, kind: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    return cert.extensions.get_extension_for_class(kind)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    ca_init(out=tmp_path / "ca")
    return tmp_path / "ca"


@pytest.fixture
def issued(tmp_path: Path, ca_dir: Path) -> Path:
    ca_issue(ca=ca_dir, hosts=[HOST, "192.0.2.7"], out=tmp_path / "server")
    return tmp_path / "server"


# --- what the certificates contain -------------------------------------------------------------


def test_self_signed_has_the_server_profile(tmp_path: Path) -> None:
    self_signed(hosts=[HOST, "192.0.2.1", "2001:db8::1", "mx.example.com"], out=tmp_path, now=NOW)
    (cert,) = load(tmp_path / "cert.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOST
    assert cert.issuer == cert.subject
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [HOST, "mx.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "192.0.2.1",
        "2001:db8::1",
    ]
    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    usage = extension(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_encipherment  # ECDSA keys do not encipher
    assert not usage.value.key_cert_sign
    eku = extension(cert, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    ski = extension(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public)
    assert cert.not_valid_before_utc == NOW - BACKDATE
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=397)


@pytest.mark.parametrize(("key_type", "bits"), [(KeyType.RSA2048, 2048), (KeyType.RSA4096, 4096)])
def test_rsa_keys_have_their_size_and_key_encipherment(
    tmp_path: Path, key_type: KeyType, bits: int
) -> None:
    self_signed(hosts=[HOST], out=tmp_path, key_type=key_type, days=90, now=NOW)
    (cert,) = load(tmp_path / "cert.pem")
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == bits
    assert extension(cert, x509.KeyUsage).value.key_encipherment
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=90)


def test_ca_is_a_root_that_signs_leaves_only(tmp_path: Path) -> None:
    ca_init(out=tmp_path, name="Example Mail CA", now=NOW)
    (cert,) = load(tmp_path / "ca.pem")
    assert cert.subject.rfc4514_string() == "CN=Example Mail CA"
    assert cert.issuer == cert.subject
    constraints = extension(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = extension(cert, x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=3650)
    cert.verify_directly_issued_by(cert)


def test_issued_certificate_is_the_leaf_then_the_ca(issued: Path, ca_dir: Path) -> None:
    leaf, chain_ca = load(issued / "cert.pem")
    (ca,) = load(ca_dir / "ca.pem")
    assert chain_ca == ca
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    aki = extension(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == extension(ca, x509.SubjectKeyIdentifier).value.digest
    assert not extension(leaf, x509.BasicConstraints).value.ca
    sans = extension(leaf, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [HOST]


def test_issued_validity_ends_with_the_ca(tmp_path: Path) -> None:
    ca_init(out=tmp_path / "ca", days=30, now=NOW)
    lines = ca_issue(ca=tmp_path / "ca", hosts=[HOST], out=tmp_path / "leaf", now=NOW)
    leaf, ca = load(tmp_path / "leaf" / "cert.pem")
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc
    assert "note: the validity was shortened to end when the CA certificate expires" in lines


@pytest.mark.parametrize(("days", "noted"), [(824, False), (825, True), (3650, True)])
def test_a_validity_apple_refuses_gets_a_note(tmp_path: Path, days: int, noted: bool) -> None:
    lines = self_signed(hosts=[HOST], out=tmp_path, days=days)
    note = "note: Apple devices refuse server certificates valid for more than 825 days"
    assert (note in lines) is noted


def test_a_first_host_too_long_for_a_common_name_leaves_the_subject_empty(tmp_path: Path) -> None:
    host = "a" * 60 + ".example.com"
    self_signed(hosts=[host], out=tmp_path, now=NOW)
    (cert,) = load(tmp_path / "cert.pem")
    assert list(cert.subject) == []
    sans = extension(cert, x509.SubjectAlternativeName)
    assert sans.critical  # RFC 5280 §4.2.1.6: required when the subject is empty
    assert sans.value.get_values_for_type(x509.DNSName) == [host]


# --- judged by Python's ssl and by openssl -----------------------------------------------------


def server_context(directory: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str) -> None:
    """A complete TLS handshake over memory BIOs; raises what the client's ssl raises."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    ends = [
        client.wrap_bio(client_in, client_out, server_hostname=server_hostname),
        server.wrap_bio(server_in, server_out, server_side=True),
    ]
    done = [False, False]
    for _ in range(MAX_HANDSHAKE_ROUNDS):
        for index, end in enumerate(ends):
            if not done[index]:
                try:
                    end.do_handshake()
                    done[index] = True
                except ssl.SSLWantReadError:
                    pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if all(done):
            return
    raise AssertionError("the handshake did not finish")


@pytest.mark.parametrize("key_type", [KeyType.ECDSA, KeyType.RSA2048])
def test_every_kind_of_output_loads_into_an_ssl_context(tmp_path: Path, key_type: KeyType) -> None:
    self_signed(hosts=[HOST], out=tmp_path / "self", key_type=key_type)
    ca_init(out=tmp_path / "ca", key_type=key_type)
    ca_issue(ca=tmp_path / "ca", hosts=[HOST], out=tmp_path / "leaf", key_type=key_type)
    server_context(tmp_path / "self")
    server_context(tmp_path / "leaf")
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
        tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "ca-key.pem"
    )


@pytest.mark.parametrize("name", [HOST, "MAIL.Example.COM", "192.0.2.7"])
def test_a_client_trusting_the_ca_verifies_the_issued_certificate(
    issued: Path, ca_dir: Path, name: str
) -> None:
    client = ssl.create_default_context(cafile=ca_dir / "ca.pem")
    handshake(client, server_context(issued), name)


@pytest.mark.parametrize("name", ["other.example.com", "example.com", "192.0.2.8"])
def test_a_client_refuses_the_issued_certificate_for_another_name(
    issued: Path, ca_dir: Path, name: str
) -> None:
    client = ssl.create_default_context(cafile=ca_dir / "ca.pem")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(client, server_context(issued), name)


def test_a_client_trusting_another_ca_refuses_the_issued_certificate(
    tmp_path: Path, issued: Path
) -> None:
    ca_init(out=tmp_path / "other")
    client = ssl.create_default_context(cafile=tmp_path / "other" / "ca.pem")
    with pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate in"):
        handshake(client, server_context(issued), HOST)


def test_a_self_signed_certificate_is_its_own_trust_anchor(tmp_path: Path) -> None:
    self_signed(hosts=[HOST, "127.0.0.1"], out=tmp_path)
    client = ssl.create_default_context(cafile=tmp_path / "cert.pem")
    handshake(client, server_context(tmp_path), HOST)
    handshake(client, server_context(tmp_path), "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(client, server_context(tmp_path), "mx.example.com")


def openssl(*args: str | Path) -> str:
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=True, timeout=20
    )
    return result.stdout


@requires_openssl
def test_openssl_parses_what_the_tool_writes(issued: Path, ca_dir: Path, tmp_path: Path) -> None:
    self_signed(hosts=[HOST, "192.0.2.1"], out=tmp_path / "self", key_type=KeyType.RSA2048)
    text = openssl("x509", "-noout", "-text", "-in", tmp_path / "self" / "cert.pem")
    assert "DNS:mail.example.com, IP Address:192.0.2.1" in text
    assert "CA:FALSE" in text
    assert "Digital Signature, Key Encipherment" in text
    assert "TLS Web Server Authentication" in text
    assert "Public-Key: (2048 bit)" in text
    text = openssl("x509", "-noout", "-text", "-in", ca_dir / "ca.pem")
    assert "CA:TRUE, pathlen:0" in text
    assert "Certificate Sign, CRL Sign" in text
    text = openssl("x509", "-noout", "-text", "-in", issued / "cert.pem")
    assert "Authority Key Identifier" in text
    assert "Issuer: CN = tlsgate private CA" in text
    openssl("pkey", "-noout", "-in", issued / "key.pem")


@requires_openssl
def test_openssl_verifies_the_issued_certificate_strictly(issued: Path, ca_dir: Path) -> None:
    # -x509_strict holds certificates to RFC 5280 (AKI, SKI, key usage on a CA, ...).
    out = openssl(
        "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", ca_dir / "ca.pem",
        issued / "cert.pem",
    )  # fmt: skip
    assert out.strip().endswith(": OK")


# --- how files are written ---------------------------------------------------------------------


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("value", [0o022, 0o000, 0o277], ids=lambda value: f"umask{value:03o}")
def test_keys_are_0600_and_a_new_directory_is_0700_whatever_the_umask(
    tmp_path: Path, value: int
) -> None:
    ca = tmp_path / "ca"
    with umask(value):
        ca_init(out=ca)
        ca_issue(ca=ca, hosts=[HOST], out=ca / "leaf")
    assert mode(ca) == 0o700
    assert mode(ca / "leaf") == 0o700
    assert mode(ca / "ca-key.pem") == 0o600
    assert mode(ca / "leaf" / "key.pem") == 0o600
    assert mode(ca / "ca.pem") == 0o644
    assert mode(ca / "leaf" / "cert.pem") == 0o644


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    self_signed(hosts=[HOST], out=tmp_path)
    assert mode(tmp_path) == 0o755
    assert mode(tmp_path / "key.pem") == 0o600


def test_a_key_is_0600_from_creation_and_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int]] = []
    real_replace: Callable[[str | os.PathLike[str], str | os.PathLike[str]], None] = os.replace

    def spying_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        seen.append((Path(target).name, mode(Path(source))))
        assert Path(source).parent == Path(target).parent
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spying_replace)
    self_signed(hosts=[HOST], out=tmp_path)
    assert seen == [("key.pem", 0o600), ("cert.pem", 0o644)]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cert.pem", "key.pem"]


def test_existing_files_are_refused_and_left_alone(tmp_path: Path) -> None:
    self_signed(hosts=[HOST], out=tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(CertToolError, match="already exist; pass --force to replace them"):
        self_signed(hosts=[HOST], out=tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_force_replaces_existing_files(tmp_path: Path) -> None:
    self_signed(hosts=[HOST], out=tmp_path)
    before = (tmp_path / "key.pem").read_bytes()
    self_signed(hosts=["mx.example.com"], out=tmp_path, force=True)
    assert (tmp_path / "key.pem").read_bytes() != before
    assert mode(tmp_path / "key.pem") == 0o600
    (cert,) = load(tmp_path / "cert.pem")
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mx.example.com"]


def test_a_dangling_symlink_counts_as_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "key.pem").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CertToolError, match=r"key\.pem already exists; pass --force"):
        self_signed(hosts=[HOST], out=tmp_path)
    assert not (tmp_path / "nowhere").exists()


def test_a_failed_write_names_the_target_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(IsADirectoryError) as caught:
        self_signed(hosts=[HOST], out=tmp_path, force=True)
    assert caught.value.filename == str(tmp_path / "cert.pem")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cert.pem", "key.pem"]


def test_an_out_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(CertToolError, match="exists and is not a directory"):
        self_signed(hosts=[HOST], out=tmp_path / "file")


def test_the_snippet_is_toml_naming_the_written_files(tmp_path: Path) -> None:
    out = tmp_path / 'odd "dir" \\ name'
    lines = self_signed(hosts=[HOST], out=out)
    snippet = "\n".join(lines[lines.index("[[certificate]]") :])
    assert tomllib.loads(snippet) == {
        "certificate": [{"cert": str(out / "cert.pem"), "key": str(out / "key.pem")}]
    }


# --- input validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (["Mail.Example.COM."], ["DNS:mail.example.com"]),
        (["*.example.com"], ["DNS:*.example.com"]),
        (["[2001:db8::1]", "10.0.0.1"], ["IP:2001:db8::1", "IP:10.0.0.1"]),
        (["a.example", "A.example", "a.example"], ["DNS:a.example"]),
        (["xn--bcher-kva.example"], ["DNS:xn--bcher-kva.example"]),
    ],
)
def test_hosts_become_san_entries(hosts: list[str], expected: list[str]) -> None:
    names = parse_hosts(hosts)
    prefix = {x509.DNSName: "DNS", x509.IPAddress: "IP"}
    assert [f"{prefix[type(name)]}:{name.value}" for name in names] == expected


@pytest.mark.parametrize(
    "host",
    [
        "",
        "bad..example",
        "-mail.example.com",
        "mail_1.example.com",
        "two words",
        "*.com",
        "mail.*.example.com",
        "a" * 64 + ".example",
        "b\u00fccher.example",
        "300.1.2.3",
        "mail.example.123",
    ],
)
def test_bad_hosts_are_refused(host: str) -> None:
    with pytest.raises(CertToolError, match="--host"):
        parse_hosts([host])


def test_no_host_is_refused() -> None:
    with pytest.raises(CertToolError, match="at least one --host"):
        parse_hosts([])


@pytest.mark.parametrize("days", [0, -1, 36501])
def test_days_out_of_range_are_refused(tmp_path: Path, days: int) -> None:
    with pytest.raises(CertToolError, match="--days must be between 1 and 36500"):
        self_signed(hosts=[HOST], out=tmp_path, days=days)
    assert list(tmp_path.iterdir()) == []


def test_a_ca_name_longer_than_a_common_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertToolError, match="--name must be 1 to 64 characters"):
        ca_init(out=tmp_path, name="x" * 65)


def test_issue_needs_a_ca_directory(tmp_path: Path) -> None:
    with pytest.raises(CertToolError, match=r"no ca\.pem \(make one with `cert ca init`\)"):
        ca_issue(ca=tmp_path, hosts=[HOST], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_issue_refuses_a_certificate_that_is_not_a_ca(tmp_path: Path) -> None:
    self_signed(hosts=[HOST], out=tmp_path)
    (tmp_path / "cert.pem").rename(tmp_path / "ca.pem")
    (tmp_path / "key.pem").rename(tmp_path / "ca-key.pem")
    with pytest.raises(CertToolError, match="not a CA certificate"):
        ca_issue(ca=tmp_path, hosts=[HOST], out=tmp_path / "out")


def test_issue_refuses_a_key_that_does_not_match(tmp_path: Path, ca_dir: Path) -> None:
    ca_init(out=tmp_path / "other")
    (tmp_path / "other" / "ca-key.pem").replace(ca_dir / "ca-key.pem")
    with pytest.raises(CertToolError, match=r"ca-key\.pem: the key does not match"):
        ca_issue(ca=ca_dir, hosts=[HOST], out=tmp_path / "out")


def test_issue_refuses_an_encrypted_ca_key(tmp_path: Path, ca_dir: Path) -> None:
    key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (ca_dir / "ca-key.pem").write_bytes(encrypted)
    with pytest.raises(CertToolError, match="the key is encrypted"):
        ca_issue(ca=ca_dir, hosts=[HOST], out=tmp_path / "out")


def test_issue_refuses_an_expired_ca(tmp_path: Path) -> None:
    ca_init(out=tmp_path / "ca", days=10, now=NOW)
    later = NOW + datetime.timedelta(days=11)
    with pytest.raises(CertToolError, match="the CA certificate is not valid now"):
        ca_issue(ca=tmp_path / "ca", hosts=[HOST], out=tmp_path / "out", now=later)


# --- show --------------------------------------------------------------------------------------


def field(lines: list[str], label: str) -> list[str]:
    prefix = f"  {label}:"
    return [line[len(prefix) :].strip() for line in lines if line.startswith(prefix)]


def test_show_describes_a_self_signed_certificate(tmp_path: Path) -> None:
    self_signed(hosts=[HOST, "192.0.2.1"], out=tmp_path, now=NOW)
    lines = show(tmp_path / "cert.pem", now=NOW + datetime.timedelta(days=1))
    assert lines[:3] == [f"{tmp_path / 'cert.pem'}: 1 certificate", "", "certificate 1 of 1"]
    assert field(lines, "subject") == [f"CN={HOST}"]
    assert field(lines, "SANs") == [f"DNS:{HOST}, IP:192.0.2.1"]
    assert field(lines, "issuer") == [f"CN={HOST} (self-signed)"]
    assert field(lines, "CA") == ["no"]
    assert field(lines, "not before") == ["2030-06-01 11:00:00 UTC"]
    assert field(lines, "not after") == ["2031-07-03 12:00:00 UTC"]
    assert field(lines, "key") == ["ECDSA P-256"]
    (cert,) = load(tmp_path / "cert.pem")
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert field(lines, "SHA-256") == [fingerprint]
    assert field(lines, "status") == ["valid (expires in 396 days)"]


def test_show_describes_each_certificate_of_a_chain(issued: Path) -> None:
    lines = show(issued / "cert.pem")
    assert lines[0] == f"{issued / 'cert.pem'}: 2 certificates"
    assert "certificate 2 of 2" in lines
    assert field(lines, "issuer") == [
        "CN=tlsgate private CA",
        "CN=tlsgate private CA (self-signed)",
    ]
    assert field(lines, "CA") == ["no", "yes, path length 0"]
    assert field(lines, "SANs") == [f"DNS:{HOST}, IP:192.0.2.7", "(none)"]


@pytest.mark.parametrize(
    ("days_after_issue", "status"),
    [
        (-2, "NOT YET VALID (starts in 47 hours)"),
        (-10, "NOT YET VALID (starts in 9 days)"),
        (380, "EXPIRES SOON (in 17 days, within 21 days)"),
        (375, "valid (expires in 22 days)"),
        (376, "EXPIRES SOON (in 21 days, within 21 days)"),
        (396.99, "EXPIRES SOON (in 14 minutes, within 21 days)"),
        (400, "EXPIRED (3 days ago)"),
    ],
)
def test_show_flags_expired_not_yet_valid_and_soon_expiring(
    tmp_path: Path, days_after_issue: float, status: str
) -> None:
    self_signed(hosts=[HOST], out=tmp_path, now=NOW)
    at = NOW + datetime.timedelta(days=days_after_issue)
    assert field(show(tmp_path / "cert.pem", now=at), "status") == [status]


def test_show_flags_a_certificate_made_with_past_validity(tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=40)
    self_signed(hosts=[HOST], out=tmp_path, days=30, now=past)
    assert field(show(tmp_path / "cert.pem"), "status") == ["EXPIRED (10 days ago)"]


def test_show_reads_der(tmp_path: Path) -> None:
    self_signed(hosts=[HOST], out=tmp_path, key_type=KeyType.RSA2048)
    (cert,) = load(tmp_path / "cert.pem")
    (tmp_path / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    lines = show(tmp_path / "cert.der")
    assert field(lines, "key") == ["RSA 2048"]


def test_show_skips_a_key_in_a_combined_file(tmp_path: Path) -> None:
    self_signed(hosts=[HOST], out=tmp_path)
    combined = tmp_path / "both.pem"
    combined.write_bytes((tmp_path / "key.pem").read_bytes() + (tmp_path / "cert.pem").read_bytes())
    assert field(show(combined), "subject") == [f"CN={HOST}"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a certificate: neither PEM nor DER"),
        (b"hello\n", "not a certificate: neither PEM nor DER"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "no readable"),
    ],
)
def test_show_refuses_what_is_not_a_certificate(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "file").write_bytes(content)
    with pytest.raises(CertToolError, match=message):
        show(tmp_path / "file")


def test_show_says_when_the_file_is_a_key(tmp_path: Path) -> None:
    self_signed(hosts=[HOST], out=tmp_path)
    with pytest.raises(CertToolError, match=r"no readable CERTIFICATE block \(it holds a private"):
        show(tmp_path / "key.pem")


def test_show_of_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CertToolError, match="cannot read: No such file or directory"):
        show(tmp_path / "absent.pem")
