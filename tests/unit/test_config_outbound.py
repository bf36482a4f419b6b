"""The outbound keys of `[[listener]]` (issue 4's contract) and their rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tests.unit.test_config import here, problems, warnings_of, write

__all__ = ["here"]  # the fixture, shared with test_config
from tlsgate.config import load_config
from tlsgate.config.model import BackendTls, Endpoint, TlsFallback, TlsVersion
from tlsgate.tls.contexts import build_tls_snapshot, check_certificates

# Issue 4's example, verbatim but for the comments.
ISSUE_EXAMPLE = """\
[[listener]]
name = "relay-out"
listen = "127.0.0.1:10025"
protocol = "smtp"
tls = "none"
backend = ["smtp.relay.example:465", "smtp2.relay.example:465"]
backend_tls = "implicit"
backend_server_name = "smtp.relay.example"
backend_ca = "system"
backend_verify = true
backend_cert = ""
backend_key = ""
backend_min_version = "TLSv1.2"
backend_tls_fallback = "none"
connect_timeout = 10.0
"""


def outbound(*lines: str) -> str:
    kept = ISSUE_EXAMPLE.splitlines()
    for line in lines:
        key = line.split("=")[0].strip()
        kept = [entry for entry in kept if entry.split("=")[0].strip() != key]
        kept.append(line)
    return "\n".join(kept) + "\n"


@pytest.mark.usefixtures("here")
def test_the_issue_example_loads_with_its_defaults() -> None:
    [listener] = load_config(write(ISSUE_EXAMPLE)).listeners
    assert listener.backend == (
        Endpoint("smtp.relay.example", 465),
        Endpoint("smtp2.relay.example", 465),
    )
    assert listener.backend_tls is BackendTls.IMPLICIT
    assert listener.backend_server_name == "smtp.relay.example"
    assert listener.backend_ca is None  # "system"
    assert listener.backend_verify is True
    assert listener.backend_cert is None
    assert listener.backend_key is None
    assert listener.backend_min_version is TlsVersion.TLSV1_2
    assert listener.backend_tls_fallback is TlsFallback.NONE
    assert listener.connect_timeout == 10.0


@pytest.mark.usefixtures("here")
def test_the_example_gives_no_warning() -> None:
    assert warnings_of(ISSUE_EXAMPLE) == []


def test_paths_resolve_against_the_config_directory(here: Path) -> None:
    text = outbound('backend_ca = "ca/relay.pem"', 'backend_cert = "c.pem"', 'backend_key = "k"')
    [listener] = load_config(write(text, "etc/tlsgate.toml")).listeners
    assert listener.backend_ca == here / "etc" / "ca" / "relay.pem"
    assert listener.backend_cert == here / "etc" / "c.pem"
    assert listener.backend_key == here / "etc" / "k"


@pytest.mark.usefixtures("here")
@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ('protocol = "tcp"', 'backend_tls = "starttls"'),
            'listener[0].backend_tls: expected "none" or "implicit" with protocol "tcp" '
            '(STARTTLS needs smtp or pop3), got "starttls"',
        ),
        (
            ('backend_tls_fallback = "plaintext"',),
            'listener[0].backend_tls_fallback: expected "none" with backend_tls = "implicit" '
            '(fallback needs "starttls"), got "plaintext"',
        ),
        (
            ('backend_key = "relay.key"',),
            "listener[0].backend_cert: expected a certificate for backend_key, got none",
        ),
        (
            ('backend_tls = "ssl"',),
            'listener[0].backend_tls: expected one of "none", "implicit", "starttls", got "ssl"',
        ),
        (
            ('backend_tls_fallback = "clear"',),
            'listener[0].backend_tls_fallback: expected one of "none", "plaintext", '
            '"alternate", got "clear"',
        ),
        (
            ('backend_server_name = "not a name"',),
            "listener[0].backend_server_name: expected a DNS name or an IP address, "
            'got "not a name"',
        ),
        (
            ("backend_ca = 3",),
            'listener[0].backend_ca: expected "system", or the path of a PEM file or '
            "directory of CA certificates, got 3",
        ),
        (
            ('backend_min_version = "SSLv3"',),
            "listener[0].backend_min_version: expected",
        ),
    ],
)
def test_outbound_problems(lines: tuple[str, ...], message: str) -> None:
    found = problems(outbound(*lines))
    assert len(found) == 1, found
    assert found[0].startswith(f"tlsgate.toml: {message}"), found


@pytest.mark.usefixtures("here")
def test_turning_verification_off_warns() -> None:
    assert warnings_of(outbound("backend_verify = false")) == [
        "tlsgate.toml: listener[0].backend_verify: expected backend_verify = true (without it "
        "anyone in the path can read the mail), got false"
    ]


@pytest.mark.usefixtures("here")
def test_outbound_keys_without_backend_tls_warn_as_ignored() -> None:
    text = outbound('backend_tls = "none"')
    found = warnings_of(text)
    assert 'listener[0].backend_ca: expected no backend_ca with backend_tls = "none"' in (
        "\n".join(found)
    )
    assert len(found) == 7, found  # every backend_* TLS key of the example


# ---- contexts: what `check` and `run` judge ------------------------------------------------


def test_a_missing_ca_file_is_a_problem_check_reports(here: Path) -> None:
    config = load_config(write(outbound('backend_ca = "missing.pem"')))
    found, _ = check_certificates(config)
    assert [str(p) for p in found] == [
        'tlsgate.toml: listener[0].backend_ca: expected CA certificates, got "'
        + str(here / "missing.pem")
        + '" (No such file or directory)'
    ]


def test_a_bad_client_certificate_is_a_problem(here: Path) -> None:
    (here / "c.pem").write_text("not a certificate")
    config = load_config(write(outbound('backend_cert = "c.pem"')))
    found, _ = check_certificates(config)
    assert len(found) == 1, found
    assert "listener[0].backend_cert" in str(found[0]), found


def test_the_snapshot_holds_a_verifying_client_context(here: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(here / "ca.pem"))
    leaf = ca.issue_cert("client.example")
    leaf.cert_chain_pems[0].write_to_path(str(here / "c.pem"))
    leaf.private_key_pem.write_to_path(str(here / "c.key"))
    text = outbound('backend_ca = "ca.pem"', 'backend_cert = "c.pem"', 'backend_key = "c.key"')
    snapshot = build_tls_snapshot(load_config(write(text)))
    context = snapshot.backend_context_for("relay-out")
    assert context is not None
    assert context.check_hostname
    assert context.minimum_version.name == "TLSv1_2"
    assert [c["subject"] for c in context.get_ca_certs()] != []
    assert snapshot.context_for("relay-out") is None  # the client side is plaintext
