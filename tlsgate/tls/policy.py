"""TLS protocol policy: Mozilla's server-side profiles applied to an `ssl.SSLContext`.

Profiles follow Mozilla's Server Side TLS guidelines, version 5.7
(https://wiki.mozilla.org/Security/Server_Side_TLS, https://ssl-config.mozilla.org):

- `modern`: TLS 1.3 only.
- `intermediate` (the default): TLS 1.2 and 1.3; for TLS 1.2 only forward-secret AEAD suites
  (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305); the client picks among them.
- `legacy` (Mozilla's "old"): TLS 1.0 to 1.3 with CBC and 3DES suites for clients of the
  Windows XP / Outlook 2007 era; the server picks, and OpenSSL's security level is lowered to 0
  (`@SECLEVEL=0`), without which OpenSSL 3 refuses TLS 1.0/1.1 and SHA-1 signatures outright.

`min_version`, `max_version` and `ciphers` set in `[tls]` or on a listener replace the
profile's values. TLS 1.3 suites cannot be chosen: Python's `ssl` has no API for
`SSL_CTX_set_ciphersuites`, so the loader rejects `ciphersuites` (`config.parse`). OpenSSL's
default TLS 1.3 suites are exactly the three AEAD suites every profile lists.

Whatever the profile: TLS compression is off (CRIME), client-initiated renegotiation is off
(a CPU-exhaustion lever; TLS 1.3 has none anyway), and session tickets are on. OpenSSL makes
random ticket keys when a context is created and keeps them for the context's lifetime: the
keys rotate whenever the contexts are rebuilt (`build_tls_snapshot`, on every reload), and
tickets issued under older keys then fall back to a full handshake (CONTRACT.md).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from tlsgate.config.model import Profile, TlsSettings, TlsVersion

TLS13_TICKETS_PER_HANDSHAKE = 1  # see build_context

# Mozilla intermediate v5.7, TLS 1.2 suites. DHE suites take effect only with DH parameters,
# which tlsgate does not load (ssl.SSLContext.load_dh_params): ECDHE serves everyone who needs
# them. They stay listed so that the string matches Mozilla's and an audit can diff it.
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
# Mozilla old v5.7: the intermediate suites first, then CBC with SHA-2 and SHA-1, then static
# RSA key exchange and 3DES for clients that know nothing newer (Windows XP's SChannel).
LEGACY_CIPHERS = ":".join(
    (
        INTERMEDIATE_CIPHERS,
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-RSA-AES256-SHA384",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA",
        "DHE-RSA-AES128-SHA256",
        "DHE-RSA-AES256-SHA256",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA256",
        "AES256-SHA256",
        "AES128-SHA",
        "AES256-SHA",
        "DES-CBC3-SHA",
    )
)
# OpenSSL 3 refuses TLS 1.0/1.1 (their handshake signatures use SHA-1 / MD5) and keys under
# 1024 bits from security level 1 up; Debian's openssl.cnf sets level 2. Level 0 is Mozilla's
# choice for "old" on OpenSSL 3.
LEGACY_SECURITY_LEVEL = "@SECLEVEL=0"

_SSL_VERSIONS = {
    TlsVersion.TLSV1: ssl.TLSVersion.TLSv1,
    TlsVersion.TLSV1_1: ssl.TLSVersion.TLSv1_1,
    TlsVersion.TLSV1_2: ssl.TLSVersion.TLSv1_2,
    TlsVersion.TLSV1_3: ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    """What one context gets: the profile with every override applied. Hashable, so contexts
    with equal policies (and certificates) are built once and shared."""

    profile: Profile
    min_version: TlsVersion
    max_version: TlsVersion
    ciphers: str  # TLS 1.2 and below
    server_preference: bool  # the server's cipher order beats the client's


def ssl_version(version: TlsVersion) -> ssl.TLSVersion:
    return _SSL_VERSIONS[version]


def resolve(settings: TlsSettings) -> ResolvedPolicy:
    """The profile's values, replaced by whatever `settings` sets."""
    low, high = settings.versions
    legacy = settings.profile is Profile.LEGACY
    if settings.ciphers is not None:
        ciphers = settings.ciphers
        # legacy lowers the security level explicitly, also under a cipher string of the
        # operator's own, unless that string says which level it wants.
        if legacy and "@SECLEVEL" not in ciphers:
            ciphers = f"{ciphers}:{LEGACY_SECURITY_LEVEL}"
    elif legacy:
        ciphers = f"{LEGACY_CIPHERS}:{LEGACY_SECURITY_LEVEL}"
    else:
        # modern has no TLS 1.2 suites; should min_version reopen TLS 1.2, it gets these.
        ciphers = INTERMEDIATE_CIPHERS
    return ResolvedPolicy(
        profile=settings.profile,
        min_version=low,
        max_version=high,
        ciphers=ciphers,
        # Mozilla: with only strong suites the client knows best (it knows whether it has AES
        # hardware); among old suites the server must choose.
        server_preference=legacy,
    )


def new_server_context(policy: ResolvedPolicy) -> ssl.SSLContext:
    """A server context with `policy` applied and no certificate yet.

    The policy comes first on purpose: OpenSSL judges a certificate's key against the
    context's security level when it is loaded, so a legacy context accepts what a strict one
    refuses.

    Raises:
        ssl.SSLError: OpenSSL selects no cipher from `policy.ciphers`.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers(policy.ciphers)
    # Python deprecates TLSv1 and TLSv1.1 with a DeprecationWarning when they are set here; the
    # config asked for them (legacy, or min_version), so the warning is the interpreter's.
    context.minimum_version = _SSL_VERSIONS[policy.min_version]
    context.maximum_version = _SSL_VERSIONS[policy.max_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_NO_TICKET  # tickets on: resumption spares a full handshake
    # OpenSSL issues two TLS 1.3 tickets per full handshake by default, for clients that open
    # parallel connections; each costs ~85 us of server CPU (measured, OpenSSL 3.0, P-256), a
    # fifth of the handshake. A mail client resumes one connection at a time, and every
    # resumption hands out a fresh ticket, so one is enough (nginx and Postfix make it tunable).
    context.num_tickets = TLS13_TICKETS_PER_HANDSHAKE
    if policy.server_preference:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    return context
