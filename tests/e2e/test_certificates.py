"""Certificates end to end: SNI, the default, wildcards, renewals, PKCS#12 and encrypted keys,
RSA beside ECDSA, listeners restricted to some certificates, and client certificates.

One gateway serves the module, with every certificate format at once. Clients are Python's
`ssl` and `openssl s_client`; each checks which certificate it was given (its DNS names, key
type or expiry). The log is captured for the module, and a test finds its session in it by
the client's local port.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from structlog.testing import capture_logs

from tests.helpers.certs import issue, write_encrypted, write_pair, write_pkcs12
from tests.helpers.gateway import SMTP_BACKEND, Gateway, ListenerSpec, running_gateway
from tests.helpers.tools import requires_openssl, run_tool
from tlsgate.cli import main
from tlsgate.config import CertificateEntry

IO_TIMEOUT_SECONDS = 10.0
LOG_WAIT_SECONDS = 5.0
MAIL, POP, DUAL, RENEWED = (
    "mail.example.test",
    "pop.example.test",
    "dual.example.test",
    "renew.example.test",
)
LogEntries = list[MutableMapping[str, Any]]


class Site:
    """The CAs and files of the module's gateway."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.clients = trustme.CA(organization_name="Client CA")
        self.client_ca_file = directory / "clients.pem"
        self.clients.cert_pem.write_to_path(str(self.client_ca_file))
        ca = self.ca
        self.entries: list[CertificateEntry] = [
            write_pair(directory, issue(ca, MAIL), "mail"),  # the first: the default
            write_pkcs12(directory, issue(ca, POP, "pop3.example.test"), "pop", b"p12 secret"),
            write_encrypted(directory, issue(ca, "*.example.org"), "wildcard", b"pem secret"),
            write_pair(directory, issue(ca, RENEWED, days_ago=90, days_left=-1), "expired"),
            write_pair(directory, issue(ca, RENEWED, days_ago=1, days_left=89), "renewed"),
            write_pair(directory, issue(ca, DUAL, key_type=trustme.KeyType.RSA), "dual-rsa"),
            write_pair(directory, issue(ca, DUAL), "dual-ecdsa"),
        ]

    def certificate_tables(self) -> list[dict[str, object]]:
        tables: list[dict[str, object]] = []
        for entry in self.entries:
            keys = ("cert", "key", "pkcs12", "password_file")
            tables.append({k: str(v) for k in keys if (v := getattr(entry, k)) is not None})
        return tables


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def logs() -> Iterator[LogEntries]:
    with capture_logs() as entries:
        yield entries


@pytest.fixture(scope="module")
def gateway(site: Site, logs: LogEntries) -> Iterator[Gateway]:
    relay: ListenerSpec = {"protocol": "tcp", "tls": "implicit", "backend": SMTP_BACKEND}
    listeners: list[ListenerSpec] = [
        {"name": "all", **relay},
        {"name": "pop-only", **relay, "certificates": [POP]},
        {
            "name": "clients-required",
            **relay,
            "client_auth": "required",
            "client_ca": str(site.client_ca_file),
        },
        {
            "name": "clients-optional",
            **relay,
            "client_auth": "optional",
            "client_ca": str(site.client_ca_file),
        },
    ]
    first = site.entries[0]
    assert first.cert is not None
    assert first.key is not None
    with running_gateway(
        listeners,
        cert_file=first.cert,
        key_file=first.key,
        ca_file=site.ca_file,
        source=site.directory / "tlsgate.toml",
        extra={"certificate": site.certificate_tables()},
    ) as running:
        yield running


def client_context(site: Site, *, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(site.ca_file))
    context.check_hostname = check_hostname
    return context


def connect(
    gateway: Gateway, listener: str, context: ssl.SSLContext, server_name: str | None
) -> ssl.SSLSocket:
    """A TLS connection through the relay; the backend's greeting proves the session works."""
    raw = socket.create_connection(("127.0.0.1", gateway.port(listener)), IO_TIMEOUT_SECONDS)
    tls = context.wrap_socket(raw, server_hostname=server_name)
    assert tls.recv(1024).startswith(b"220 ")
    return tls


def served_leaf(gateway: Gateway, site: Site, server_name: str) -> x509.Certificate:
    """The certificate served for `server_name`, verified for that name."""
    with connect(gateway, "all", client_context(site), server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(name) for name in san.value.get_values_for_type(x509.DNSName)]


def session_log(logs: LogEntries, sock: socket.socket, *, until: str) -> LogEntries:
    peer = f"127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        entries = list(logs)
        ids = [e["conn_id"] for e in entries if e["event"] == "accepted" and e["peer"] == peer]
        if ids:
            mine = [e for e in entries if e.get("conn_id") == ids[-1]]
            if any(e["event"] == until for e in mine):
                return mine
        assert time.monotonic() < deadline, f"no {until!r} for {peer}: {entries[-10:]}"
        time.sleep(0.01)


def only(events: LogEntries, name: str) -> MutableMapping[str, Any]:
    found = [e for e in events if e["event"] == name]
    assert len(found) == 1, f"{name}: {events}"
    return found[0]


# ---- SNI with Python's ssl ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sni", "names"),
    [
        (MAIL, [MAIL]),
        (POP, [POP, "pop3.example.test"]),  # from the PKCS#12 file
        ("pop3.example.test", [POP, "pop3.example.test"]),
        ("imap.example.org", ["*.example.org"]),  # the wildcard, from the encrypted key
        (RENEWED, [RENEWED]),
    ],
)
def test_sni_picks_the_certificate_for_the_name(
    gateway: Gateway, site: Site, sni: str, names: list[str]
) -> None:
    assert dns_names(served_leaf(gateway, site, sni)) == names


@pytest.mark.parametrize("sni", [None, "unknown.example.net"])
def test_no_sni_or_an_unknown_name_gets_the_default(
    gateway: Gateway, site: Site, sni: str | None
) -> None:
    context = client_context(site, check_hostname=False)
    with connect(gateway, "all", context, sni) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    assert dns_names(x509.load_der_x509_certificate(der)) == [MAIL]


def test_the_renewed_certificate_is_served_not_the_expired_one(
    gateway: Gateway, site: Site
) -> None:
    # Certificate verification itself would refuse the expired one; check the dates anyway.
    assert served_leaf(gateway, site, RENEWED).not_valid_after_utc > datetime.now(UTC)


@pytest.mark.parametrize(
    ("suite", "key_type"),
    [
        ("ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey),
        ("ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey),
    ],
)
def test_rsa_and_ecdsa_clients_each_get_the_certificate_they_can_use(
    gateway: Gateway, site: Site, suite: str, key_type: type
) -> None:
    context = client_context(site)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite)
    with connect(gateway, "all", context, DUAL) as tls:
        der = tls.getpeercert(binary_form=True)
        assert tls.cipher() is not None
    assert der is not None
    assert isinstance(x509.load_der_x509_certificate(der).public_key(), key_type)


def test_a_listener_serves_only_its_certificates(gateway: Gateway, site: Site) -> None:
    for sni in (MAIL, None):  # the name does not match: the client must not check it
        with connect(gateway, "pop-only", client_context(site, check_hostname=False), sni) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert dns_names(x509.load_der_x509_certificate(der)) == [POP, "pop3.example.test"]


def test_tls_established_logs_the_sni(gateway: Gateway, site: Site, logs: LogEntries) -> None:
    with connect(gateway, "all", client_context(site), POP) as tls:
        established = only(session_log(logs, tls, until="tls_established"), "tls_established")
    assert established["sni"] == POP
    assert "client_subject" not in established


# ---- SNI with openssl s_client -----------------------------------------------------------


def s_client_leaf(port: int, ca_file: Path, *options: str) -> x509.Certificate:
    result = run_tool(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca_file), *options]
    )
    match = re.search(
        r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", result.stdout, re.DOTALL
    )
    assert match, result.stdout + result.stderr
    return x509.load_pem_x509_certificate(match.group(0).encode())


@requires_openssl
@pytest.mark.parametrize(
    ("options", "names"),
    [
        (["-servername", POP], [POP, "pop3.example.test"]),
        (["-servername", "smtp.example.org"], ["*.example.org"]),
        (["-servername", MAIL], [MAIL]),
        (["-noservername"], [MAIL]),
        (["-servername", "nobody.example.net"], [MAIL]),
    ],
)
def test_openssl_s_client_sees_the_certificate_for_its_servername(
    gateway: Gateway, site: Site, options: list[str], names: list[str]
) -> None:
    leaf = s_client_leaf(gateway.port("all"), site.ca_file, *options)
    assert dns_names(leaf) == names


@requires_openssl
@pytest.mark.parametrize(
    ("cipher", "key_type"),
    [
        ("ECDHE-ECDSA-AES256-GCM-SHA384", ec.EllipticCurvePublicKey),
        ("ECDHE-RSA-AES256-GCM-SHA384", rsa.RSAPublicKey),
    ],
)
def test_openssl_tls12_client_by_cipher_gets_ecdsa_or_rsa(
    gateway: Gateway, site: Site, cipher: str, key_type: type
) -> None:
    leaf = s_client_leaf(
        gateway.port("all"), site.ca_file, "-tls1_2", "-cipher", cipher, "-servername", DUAL
    )
    assert isinstance(leaf.public_key(), key_type)


# ---- client certificates -----------------------------------------------------------------


def with_client_certificate(site: Site, authority: trustme.CA) -> ssl.SSLContext:
    context = client_context(site)
    authority.issue_cert("alice@example.test", common_name="alice").configure_cert(context)
    return context


@pytest.mark.parametrize("listener", ["clients-required", "clients-optional"])
def test_a_verified_client_certificate_is_logged_with_subject_and_fingerprint(
    gateway: Gateway, site: Site, logs: LogEntries, listener: str
) -> None:
    context = with_client_certificate(site, site.clients)
    with connect(gateway, listener, context, MAIL) as tls:
        events = session_log(logs, tls, until="tls_established")
    established = only(events, "tls_established")
    assert "CN=alice" in established["client_subject"]
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", established["client_fingerprint"])


def test_the_logged_fingerprint_is_the_sha256_of_the_certificate(
    gateway: Gateway, site: Site, logs: LogEntries
) -> None:
    context = client_context(site)
    alice = site.clients.issue_cert("alice@example.test", common_name="alice")
    alice.configure_cert(context)
    leaf = x509.load_pem_x509_certificate(alice.cert_chain_pems[0].bytes())
    with connect(gateway, "clients-required", context, MAIL) as tls:
        established = only(session_log(logs, tls, until="tls_established"), "tls_established")
    assert established["client_fingerprint"] == leaf.fingerprint(hashes.SHA256()).hex(":").upper()


def test_optional_lets_a_client_without_a_certificate_in(
    gateway: Gateway, site: Site, logs: LogEntries
) -> None:
    with connect(gateway, "clients-optional", client_context(site), MAIL) as tls:
        established = only(session_log(logs, tls, until="tls_established"), "tls_established")
    assert "client_subject" not in established


def test_required_refuses_a_client_without_a_certificate_with_an_alert(
    gateway: Gateway, site: Site, logs: LogEntries
) -> None:
    raw = socket.create_connection(
        ("127.0.0.1", gateway.port("clients-required")), IO_TIMEOUT_SECONDS
    )
    # TLS 1.3: the client finishes its side first and reads the server's alert after.
    with client_context(site).wrap_socket(raw, server_hostname=MAIL) as tls:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            tls.recv(1024)
        events = session_log(logs, tls, until="closed")
    assert only(events, "handshake_failed")["reason"] == "bad_certificate"
    assert only(events, "closed")["reason"] == "handshake_failed"


def test_required_refuses_a_certificate_from_another_ca(
    gateway: Gateway, site: Site, logs: LogEntries
) -> None:
    context = with_client_certificate(site, trustme.CA(organization_name="Stranger"))
    raw = socket.create_connection(
        ("127.0.0.1", gateway.port("clients-required")), IO_TIMEOUT_SECONDS
    )
    with context.wrap_socket(raw, server_hostname=MAIL) as tls:
        with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
            tls.recv(1024)
        events = session_log(logs, tls, until="closed")
    assert only(events, "handshake_failed")["reason"] == "unknown_ca"


# ---- tlsgate check -----------------------------------------------------------------------


def check_config(directory: Path, *entries: CertificateEntry) -> Path:
    lines = [f'[[certificate]]\ncert = "{entry.cert}"\nkey = "{entry.key}"\n' for entry in entries]
    lines.append(
        '[[listener]]\nname = "smtps"\nlisten = "127.0.0.1:0"\nprotocol = "smtp"\n'
        'tls = "implicit"\nbackend = "127.0.0.1:2525"\n'
    )
    path = directory / "tlsgate.toml"
    path.write_text("\n".join(lines))
    return path


def test_check_warns_about_a_certificate_expiring_within_21_days(
    tmp_path: Path, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    soon = write_pair(tmp_path, issue(site.ca, MAIL, days_left=5), "soon")
    assert main(["check", "-c", str(check_config(tmp_path, soon))]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err
    assert "certificate[0].cert: expected a certificate valid for at least 21 more days" in err


def test_check_fails_on_a_name_with_only_expired_certificates(
    tmp_path: Path, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_pair(tmp_path, issue(site.ca, MAIL), "good")
    old = write_pair(tmp_path, issue(site.ca, POP, days_ago=90, days_left=-2), "old")
    assert main(["check", "-c", str(check_config(tmp_path, good, old))]) == 2
    err = capsys.readouterr().err
    assert "error: " in err
    assert "certificate[1].cert: expected a certificate that has not expired" in err


def test_check_accepts_an_expired_certificate_next_to_its_renewal(
    tmp_path: Path, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write_pair(tmp_path, issue(site.ca, MAIL, days_ago=90, days_left=-2), "old")
    new = write_pair(tmp_path, issue(site.ca, MAIL, days_ago=5, days_left=85), "new")
    assert main(["check", "-c", str(check_config(tmp_path, old, new))]) == 0
    assert "not served, a valid one is" in capsys.readouterr().err
