"""TLS profiles after Mozilla's guidelines, their overrides, and the versions each one accepts.

Handshakes run in memory (two `MemoryBIO` pairs), so every version check is a real TLS
negotiation with OpenSSL on both sides, without sockets.
"""

from __future__ import annotations

import ssl

import pytest
import trustme

from tests.helpers.certs import handshake
from tlsgate.config.model import Profile, TlsSettings, TlsVersion
from tlsgate.tls.policy import (
    INTERMEDIATE_CIPHERS,
    LEGACY_SECURITY_LEVEL,
    ResolvedPolicy,
    new_server_context,
    resolve,
)

HOST = "mail.example.test"
VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    # RSA: old clients' cipher suites (TLS 1.0 with static RSA or ECDHE-RSA) need it.
    return ca.issue_cert(HOST, key_type=trustme.KeyType.RSA)


def server(leaf: trustme.LeafCert, settings: TlsSettings) -> ssl.SSLContext:
    context = new_server_context(resolve(settings))
    leaf.configure_cert(context)
    return context


def client(ca: trustme.CA, version: str) -> ssl.SSLContext:
    """A client that speaks exactly `version`; below TLS 1.2 at security level 0, as OpenSSL 3
    refuses TLS 1.0/1.1 otherwise, on the client side too."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    context.minimum_version = context.maximum_version = VERSIONS[version]
    if version in ("TLSv1", "TLSv1.1"):
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def negotiates(server_context: ssl.SSLContext, ca: trustme.CA, version: str) -> bool:
    try:
        side = handshake(server_context, client(ca, version), HOST)
    except ssl.SSLError:
        return False
    assert side.version() == version
    return True


def test_intermediate_is_the_default_profile() -> None:
    assert TlsSettings().profile is Profile.INTERMEDIATE
    assert resolve(TlsSettings()) == ResolvedPolicy(
        profile=Profile.INTERMEDIATE,
        min_version=TlsVersion.TLSV1_2,
        max_version=TlsVersion.TLSV1_3,
        ciphers=INTERMEDIATE_CIPHERS,
        server_preference=False,
    )


@pytest.mark.parametrize(
    ("profile", "accepted"),
    [
        (Profile.MODERN, {"TLSv1.3"}),
        (Profile.INTERMEDIATE, {"TLSv1.2", "TLSv1.3"}),
        (Profile.LEGACY, {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}),
    ],
)
def test_each_profile_accepts_its_versions_and_refuses_the_rest(
    ca: trustme.CA, leaf: trustme.LeafCert, profile: Profile, accepted: set[str]
) -> None:
    context = server(leaf, TlsSettings(profile=profile))
    assert {version for version in VERSIONS if negotiates(context, ca, version)} == accepted


def test_intermediate_offers_only_forward_secret_aead_suites_below_tls13(
    leaf: trustme.LeafCert,
) -> None:
    context = server(leaf, TlsSettings())
    below_13 = [c for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert below_13
    assert all(c["aead"] and c["kea"] in ("kx-ecdhe", "kx-dhe") for c in below_13)


def test_legacy_lowers_the_security_level_explicitly() -> None:
    policy = resolve(TlsSettings(profile=Profile.LEGACY))
    assert policy.ciphers.endswith(LEGACY_SECURITY_LEVEL)
    assert policy.server_preference
    own = resolve(TlsSettings(profile=Profile.LEGACY, ciphers="AES128-SHA"))
    assert own.ciphers == f"AES128-SHA:{LEGACY_SECURITY_LEVEL}"
    chosen = resolve(TlsSettings(profile=Profile.LEGACY, ciphers="AES128-SHA:@SECLEVEL=1"))
    assert chosen.ciphers == "AES128-SHA:@SECLEVEL=1"


def test_legacy_serves_cbc_suites_to_a_tls10_client(ca: trustme.CA, leaf: trustme.LeafCert) -> None:
    context = server(leaf, TlsSettings(profile=Profile.LEGACY))
    old = client(ca, "TLSv1")
    old.set_ciphers("AES128-SHA:@SECLEVEL=0")  # static RSA, as Windows XP offers
    side = handshake(context, old, HOST)
    cipher = side.cipher()
    assert cipher is not None
    assert (side.version(), cipher[0]) == ("TLSv1", "AES128-SHA")


def test_versions_set_override_the_profile(ca: trustme.CA, leaf: trustme.LeafCert) -> None:
    only_12 = server(leaf, TlsSettings(max_version=TlsVersion.TLSV1_2))
    assert [v for v in VERSIONS if negotiates(only_12, ca, v)] == ["TLSv1.2"]
    modern_with_12 = server(
        leaf, TlsSettings(profile=Profile.MODERN, min_version=TlsVersion.TLSV1_2)
    )
    assert [v for v in VERSIONS if negotiates(modern_with_12, ca, v)] == ["TLSv1.2", "TLSv1.3"]


def test_a_cipher_string_overrides_the_profiles_tls12_suites(
    ca: trustme.CA, leaf: trustme.LeafCert
) -> None:
    settings = TlsSettings(max_version=TlsVersion.TLSV1_2, ciphers="ECDHE-RSA-CHACHA20-POLY1305")
    side = handshake(server(leaf, settings), client(ca, "TLSv1.2"), HOST)
    assert side.cipher() == ("ECDHE-RSA-CHACHA20-POLY1305", "TLSv1.2", 256)


@pytest.mark.parametrize("profile", list(Profile))
def test_compression_and_renegotiation_are_off_and_tickets_on(profile: Profile) -> None:
    context = new_server_context(resolve(TlsSettings(profile=profile)))
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert not context.options & ssl.OP_NO_TICKET
    # Mozilla: the client chooses among strong suites; the server among old ones.
    assert bool(context.options & ssl.OP_CIPHER_SERVER_PREFERENCE) is (profile is Profile.LEGACY)


def test_a_cipher_string_selecting_nothing_is_refused_by_openssl() -> None:
    with pytest.raises(ssl.SSLError, match="No cipher can be selected"):
        new_server_context(resolve(TlsSettings(ciphers="NOTHING-LIKE-THIS")))
