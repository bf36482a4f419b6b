"""TLS profiles end to end: each listener accepts the versions its profile allows, refuses the
others, and the `legacy` profile says so in the log at start.

One gateway, one listener per profile (and one that caps the version), all relaying TCP to the
SMTP backend. `openssl s_client -tls1 / -tls1_1 / -tls1_2 / -tls1_3` and Python's `ssl` are
the clients. OpenSSL 3 refuses TLS 1.0/1.1 at security level 1 and up on the client side as
well, so those clients lower theirs to 0 (`@SECLEVEL=0`), as an old client effectively has.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import trustme
from structlog.testing import capture_logs

from tests.helpers.certs import issue, write_pair
from tests.helpers.gateway import SMTP_BACKEND, Gateway, ListenerSpec, running_gateway
from tests.helpers.tools import requires_openssl, run_tool

HOST = "mail.example.test"
IO_TIMEOUT_SECONDS = 10.0
LogEntries = list[MutableMapping[str, Any]]
RELAY: ListenerSpec = {"protocol": "tcp", "tls": "implicit", "backend": SMTP_BACKEND}
LISTENERS: list[ListenerSpec] = [
    {"name": "intermediate", **RELAY},  # the default profile
    {"name": "modern", **RELAY, "profile": "modern"},
    {"name": "legacy", **RELAY, "profile": "legacy"},
    {"name": "legacy-capped", **RELAY, "profile": "legacy", "max_version": "TLSv1.2"},
]
S_CLIENT_FLAGS = {
    "TLSv1": "-tls1",
    "TLSv1.1": "-tls1_1",
    "TLSv1.2": "-tls1_2",
    "TLSv1.3": "-tls1_3",
}
SSL_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
ACCEPTED = {
    "intermediate": {"TLSv1.2", "TLSv1.3"},
    "modern": {"TLSv1.3"},
    "legacy": {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"},
    "legacy-capped": {"TLSv1", "TLSv1.1", "TLSv1.2"},
}
CASES = [(listener, version) for listener in ACCEPTED for version in SSL_VERSIONS]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def logs() -> Iterator[LogEntries]:
    with capture_logs() as entries:
        yield entries


@pytest.fixture(scope="module")
def gateway(
    ca: trustme.CA, logs: LogEntries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("policy")
    # RSA: the suites of TLS 1.0 clients (ECDHE-RSA, static RSA) need an RSA certificate.
    entry = write_pair(directory, issue(ca, HOST, key_type=trustme.KeyType.RSA), "mail")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    assert entry.cert is not None
    assert entry.key is not None
    with running_gateway(
        LISTENERS,
        cert_file=entry.cert,
        key_file=entry.key,
        ca_file=ca_file,
        source=directory / "tlsgate.toml",
    ) as running:
        yield running


def python_client(ca: trustme.CA, version: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.minimum_version = context.maximum_version = SSL_VERSIONS[version]
    if version in ("TLSv1", "TLSv1.1"):
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def python_negotiates(gateway: Gateway, ca: trustme.CA, listener: str, version: str) -> bool:
    raw = socket.create_connection(("127.0.0.1", gateway.port(listener)), IO_TIMEOUT_SECONDS)
    try:
        with python_client(ca, version).wrap_socket(raw, server_hostname=HOST) as tls:
            assert tls.version() == version
            assert tls.recv(1024).startswith(b"220 ")
    except ssl.SSLError:
        return False
    finally:
        raw.close()
    return True


@pytest.mark.parametrize(("listener", "version"), CASES)
def test_python_clients_get_exactly_the_profiles_versions(
    gateway: Gateway, ca: trustme.CA, listener: str, version: str
) -> None:
    assert python_negotiates(gateway, ca, listener, version) is (version in ACCEPTED[listener])


@requires_openssl
@pytest.mark.parametrize(("listener", "version"), CASES)
def test_openssl_s_client_gets_exactly_the_profiles_versions(
    gateway: Gateway, listener: str, version: str
) -> None:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.port(listener)}", "-brief"]
    argv += [S_CLIENT_FLAGS[version], "-servername", HOST]
    if version in ("TLSv1", "TLSv1.1"):
        argv += ["-cipher", "DEFAULT:@SECLEVEL=0"]
    result = run_tool(argv)
    if "no protocols available" in result.stderr:  # a build without TLS 1.0/1.1 at all
        pytest.skip(f"this OpenSSL cannot speak {version} even at @SECLEVEL=0")
    succeeded = result.returncode == 0 and f"Protocol version: {version}" in result.stderr
    assert succeeded is (version in ACCEPTED[listener]), result.stderr


def test_the_legacy_profile_is_logged_as_a_warning_at_start(
    gateway: Gateway, logs: LogEntries
) -> None:
    warned = [e for e in logs if e["event"] == "tls_legacy_profile"]
    assert sorted(e["listener"] for e in warned) == ["legacy", "legacy-capped"]
    assert {e["log_level"] for e in warned} == {"warning"}


def test_tls_established_logs_the_negotiated_version(
    gateway: Gateway, ca: trustme.CA, logs: LogEntries
) -> None:
    assert python_negotiates(gateway, ca, "legacy", "TLSv1")
    versions = {e["version"] for e in logs if e["event"] == "tls_established"}
    assert "TLSv1" in versions
