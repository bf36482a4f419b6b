"""Certificates as tlsgate reads them: every format, every error, and which one serves a name."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from tests.helpers.certs import issue, write_encrypted, write_pair, write_pkcs12
from tlsgate.config import CertificateEntry, Config
from tlsgate.tls.certstore import (
    CertificateInfo,
    KeyType,
    LoadedCertificate,
    Validity,
    load_certificates,
    normalize_name,
    wildcard_for,
)
from tlsgate.tls.selection import select

HOST = "mail.example.test"
NOW = datetime(2030, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def load(*entries: CertificateEntry) -> tuple[list[LoadedCertificate | None], list[str]]:
    loaded, findings = load_certificates(Config(source=Path("tlsgate.toml"), certificates=entries))
    return loaded, [f"{type(f).__name__}: {f}" for f in findings]


def load_one(entry: CertificateEntry) -> LoadedCertificate:
    [loaded], findings = load(entry)
    assert findings == []
    assert loaded is not None
    return loaded


# ---- formats -----------------------------------------------------------------------------


def test_pem_chain_and_key_load_with_the_leaf_first(tmp_path: Path, ca: trustme.CA) -> None:
    loaded = load_one(write_pair(tmp_path, ca.issue_cert(HOST), "mail"))
    assert loaded.info.dns_names == (HOST,)
    assert loaded.info.key_type is KeyType.ECDSA
    assert len(loaded.chain) == 1 + len(ca.issue_cert(HOST).cert_chain_pems) - 1


def test_one_pem_file_may_hold_chain_and_key_without_a_key_entry(
    tmp_path: Path, ca: trustme.CA
) -> None:
    entry = write_pair(tmp_path, ca.issue_cert(HOST), "both", combined=True)
    assert entry.key is None
    assert load_one(entry).info.name == HOST


def test_a_key_first_combined_file_loads_too(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert(HOST)
    path = tmp_path / "both.pem"
    path.write_bytes(leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes())
    path.chmod(0o600)
    load_one(CertificateEntry(cert=path))


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b""])
def test_an_encrypted_key_loads_with_the_first_line_of_its_password_file(
    tmp_path: Path, ca: trustme.CA, line_end: bytes
) -> None:
    entry = write_encrypted(tmp_path, ca.issue_cert(HOST), "enc", b"s3cret pass", line_end=line_end)
    assert load_one(entry).info.dns_names == (HOST,)


def test_a_traditional_encrypted_rsa_key_loads(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert(HOST, key_type=trustme.KeyType.RSA)
    entry = write_encrypted(tmp_path, leaf, "rsa", b"pw")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    assert entry.key is not None
    entry.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    assert b"Proc-Type: 4,ENCRYPTED" in entry.key.read_bytes()
    assert load_one(entry).info.key_type is KeyType.RSA


@pytest.mark.parametrize("password", [b"p12 password", None])
def test_a_pkcs12_file_loads_with_its_chain(
    tmp_path: Path, ca: trustme.CA, password: bytes | None
) -> None:
    leaf = ca.issue_cert(HOST)
    loaded = load_one(write_pkcs12(tmp_path, leaf, "mail", password))
    assert loaded.info.name == HOST
    assert len(loaded.chain) == len(leaf.cert_chain_pems)


def test_what_openssl_gets_is_encrypted(tmp_path: Path, ca: trustme.CA) -> None:
    loaded = load_one(write_pkcs12(tmp_path, ca.issue_cert(HOST), "mail", b"pw"))
    pem = loaded.openssl_pem(b"transit")
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem
    assert b"-----BEGIN PRIVATE KEY-----" not in pem
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")


# ---- names -------------------------------------------------------------------------------


def test_an_entry_is_named_by_its_name_else_first_dns_name_else_file_stem(
    tmp_path: Path, ca: trustme.CA
) -> None:
    named = replace(write_pair(tmp_path, ca.issue_cert("A.Example.Test."), "a"), name="primary")
    by_san = write_pair(tmp_path, ca.issue_cert("B.Example.Test.", "c.example.test"), "b")
    by_stem = write_pair(tmp_path, ca.issue_cert("192.0.2.1"), "by-ip")
    loaded, _ = load(named, by_san, by_stem)
    assert [item.info.name if item else None for item in loaded] == [
        "primary",
        "b.example.test",
        "by-ip",
    ]
    assert [item.info.label if item else None for item in loaded] == [
        "a.example.test",
        "b.example.test",
        "by-ip.pem",
    ]


def test_names_compare_without_case_or_trailing_dot() -> None:
    assert normalize_name("Mail.Example.TEST.") == "mail.example.test"
    assert wildcard_for("a.b.example.test") == "*.b.example.test"
    assert wildcard_for("localhost") is None


# ---- problems ----------------------------------------------------------------------------


def test_a_wrong_password_blames_the_password_file(tmp_path: Path, ca: trustme.CA) -> None:
    entry = write_encrypted(tmp_path, ca.issue_cert(HOST), "enc", b"right")
    assert entry.password_file is not None
    entry.password_file.write_bytes(b"wrong\n")
    assert load(entry)[1] == [
        "ConfigProblem: tlsgate.toml: certificate[0].password_file: expected the password of "
        f'certificate[0].key, got "{entry.password_file}" (wrong password)'
    ]


def test_an_encrypted_key_without_a_password_file_is_an_error(
    tmp_path: Path, ca: trustme.CA
) -> None:
    entry = replace(
        write_encrypted(tmp_path, ca.issue_cert(HOST), "enc", b"pw"), password_file=None
    )
    assert load(entry)[1] == [
        "ConfigProblem: tlsgate.toml: certificate[0].key: expected an unencrypted PEM private key,"
        f' or a password_file, got "{entry.key}" (it is encrypted)'
    ]


def test_a_pkcs12_wrong_password_blames_the_password_file(tmp_path: Path, ca: trustme.CA) -> None:
    entry = write_pkcs12(tmp_path, ca.issue_cert(HOST), "mail", b"right")
    assert entry.password_file is not None
    entry.password_file.write_bytes(b"wrong")
    assert load(entry)[1] == [
        "ConfigProblem: tlsgate.toml: certificate[0].password_file: expected the password of "
        f'certificate[0].pkcs12, got "{entry.password_file}" (wrong password, or a damaged '
        "PKCS#12 file)"
    ]


def test_an_encrypted_pkcs12_without_a_password_file_is_an_error(
    tmp_path: Path, ca: trustme.CA
) -> None:
    entry = replace(write_pkcs12(tmp_path, ca.issue_cert(HOST), "mail", b"pw"), password_file=None)
    assert load(entry)[1] == [
        "ConfigProblem: tlsgate.toml: certificate[0].pkcs12: expected a PKCS#12 file readable "
        f'without a password, or a password_file, got "{entry.pkcs12}" (encrypted, or damaged)'
    ]


def test_a_pem_file_given_as_pkcs12_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    pem = write_pair(tmp_path, ca.issue_cert(HOST), "mail")
    assert load(CertificateEntry(pkcs12=pem.cert))[1] == [
        "ConfigProblem: tlsgate.toml: certificate[0].pkcs12: expected a PKCS#12 file, "
        f'got "{pem.cert}" (not PKCS#12 (DER))'
    ]


def test_a_certificate_file_without_a_key_needs_a_key_entry(tmp_path: Path, ca: trustme.CA) -> None:
    entry = replace(write_pair(tmp_path, ca.issue_cert(HOST), "mail"), key=None)
    assert load(entry)[1] == [
        "ConfigProblem: tlsgate.toml: certificate[0].key: expected a value (key is required "
        "unless cert holds the private key too), got nothing"
    ]


def test_a_chain_in_the_wrong_order_says_to_put_the_leaf_first(
    tmp_path: Path, ca: trustme.CA
) -> None:
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert(HOST)
    entry = write_pair(tmp_path, leaf, "mail")
    assert entry.cert is not None
    blobs = [blob.bytes() for blob in leaf.cert_chain_pems]
    entry.cert.write_bytes(b"".join(reversed(blobs)))
    assert load(entry)[1] == [
        "ConfigProblem: tlsgate.toml: certificate[0].key: expected the private key of "
        f'certificate[0].cert, got "{entry.key}" (it matches certificate {len(blobs)} of the '
        "file: put the leaf first)"
    ]


def test_secret_files_readable_by_others_warn(tmp_path: Path, ca: trustme.CA) -> None:
    entry = write_encrypted(tmp_path, ca.issue_cert(HOST), "enc", b"pw")
    p12 = write_pkcs12(tmp_path, ca.issue_cert(HOST), "p12", None)
    assert entry.password_file is not None
    assert p12.pkcs12 is not None
    entry.password_file.chmod(0o644)
    p12.pkcs12.chmod(0o640)
    assert load(entry, p12)[1] == [
        "ConfigWarning: tlsgate.toml: certificate[0].password_file: expected a password file "
        f'only its owner can read, got "{entry.password_file}" (mode 0644)',
        "ConfigWarning: tlsgate.toml: certificate[1].pkcs12: expected a PKCS#12 file only its "
        f'owner can read, got "{p12.pkcs12}" (mode 0640)',
    ]


# ---- selection ---------------------------------------------------------------------------


def info(
    index: int,
    *names: str,
    days_left: float = 60,
    days_ago: float = 30,
    key_type: KeyType = KeyType.ECDSA,
    default: bool = False,
) -> CertificateInfo:
    return CertificateInfo(
        index=index,
        name=names[0] if names else f"entry{index}",
        label=names[0] if names else f"entry{index}.pem",
        subject=f"CN={names[0]}" if names else "",
        dns_names=names,
        key_type=key_type,
        not_before=NOW - timedelta(days=days_ago),
        not_after=NOW + timedelta(days=days_left),
        fingerprint="",
        default=default,
    )


def test_each_name_is_served_by_the_certificates_naming_it() -> None:
    chosen = select([info(0, "a.test"), info(1, "b.test", "c.test")], NOW)
    assert chosen.by_name == {"a.test": (0,), "b.test": (1,), "c.test": (1,)}
    assert chosen.default == (0,)
    assert chosen.only_expired == {}


def test_the_entry_marked_default_is_the_default_not_the_first() -> None:
    assert select([info(0, "a.test"), info(1, "b.test", default=True)], NOW).default == (1,)


def test_an_expired_certificate_is_not_served_while_a_renewal_is_valid() -> None:
    expired, renewed = info(0, "a.test", days_left=-1), info(1, "a.test", days_left=80)
    chosen = select([expired, renewed], NOW)
    assert chosen.by_name["a.test"] == (1,)
    assert chosen.default == (1,)  # the default entry's renewal takes its place
    assert chosen.served == {1}


def test_a_renewal_that_is_not_valid_yet_waits_for_its_time() -> None:
    current, early = info(0, "a.test", days_left=10), info(1, "a.test", days_ago=-2, days_left=90)
    chosen = select([current, early], NOW)
    assert chosen.by_name["a.test"] == (0,)
    assert chosen.next_change == NOW + timedelta(days=2)  # rebuild then
    assert select([current, early], NOW + timedelta(days=3)).by_name["a.test"] == (1,)


def test_among_valid_certificates_the_one_expiring_last_serves() -> None:
    older, newer = info(0, "a.test", days_left=40), info(1, "a.test", days_left=85)
    assert select([older, newer], NOW).by_name["a.test"] == (1,)
    assert select([newer, older], NOW).by_name["a.test"] == (1,)


def test_an_exact_name_beats_a_wildcard_and_the_wildcard_covers_the_rest() -> None:
    wildcard, exact = info(0, "*.example.test", days_left=300), info(1, "mail.example.test")
    chosen = select([wildcard, exact], NOW)
    assert chosen.by_name == {"*.example.test": (0,), "mail.example.test": (1,)}


def test_a_valid_wildcard_replaces_an_expired_exact_certificate() -> None:
    wildcard, exact = info(0, "*.example.test"), info(1, "mail.example.test", days_left=-1)
    assert select([wildcard, exact], NOW).by_name["mail.example.test"] == (0,)


def test_rsa_and_ecdsa_for_one_name_are_served_together() -> None:
    ecdsa = info(0, "a.test")
    rsa = info(1, "a.test", key_type=KeyType.RSA)
    rsa_renewed = info(2, "a.test", key_type=KeyType.RSA, days_left=90)
    assert select([ecdsa, rsa, rsa_renewed], NOW).by_name["a.test"] == (0, 2)


def test_an_expired_key_type_is_dropped_while_the_other_is_valid() -> None:
    ecdsa, rsa = info(0, "a.test"), info(1, "a.test", key_type=KeyType.RSA, days_left=-1)
    assert select([ecdsa, rsa], NOW).by_name["a.test"] == (0,)


def test_a_name_with_only_expired_certificates_is_reported() -> None:
    chosen = select([info(0, "a.test"), info(1, "b.test", days_left=-1)], NOW)
    assert chosen.only_expired == {"b.test": (1,)}
    assert chosen.by_name["b.test"] == (1,)  # served all the same, if it came to that


def test_validity_is_judged_at_the_moment_given() -> None:
    entry = info(0, "a.test", days_ago=-1, days_left=2)
    assert entry.validity(NOW) is Validity.NOT_YET_VALID
    assert entry.validity(NOW + timedelta(hours=30)) is Validity.VALID
    assert entry.validity(NOW + timedelta(days=2)) is Validity.EXPIRED


def test_a_default_without_dns_names_serves_alone() -> None:
    chosen = select([info(0), info(1, "a.test")], NOW)
    assert chosen.default == (0,)
    assert chosen.served == {0, 1}


def test_validity_helper_makes_what_it_says(ca: trustme.CA, tmp_path: Path) -> None:
    leaf = issue(ca, HOST, days_ago=5, days_left=-1)
    loaded = load_one(write_pair(tmp_path, leaf, "old"))
    assert loaded.info.validity(datetime.now(UTC)) is Validity.EXPIRED
