"""Classify a failed TLS handshake into the fixed `HandshakeFailure` label set.

This is the boundary where OpenSSL's open-ended error reasons become one of the few enum values
that logs and metrics may carry (STYLE.md principle 6; mitmproxy matches OpenSSL reason strings
the same way). Every mapping below was checked against OpenSSL 3.0 by real handshakes
(tests/net/test_tls_stream.py); what each side of a failed handshake reports:

situation                                  side that rejects           the other side
client max TLS 1.1/1.2, server min 1.2/1.3 UNSUPPORTED_PROTOCOL        TLSV1_ALERT_PROTOCOL_VERSION
no common cipher suite                     NO_SHARED_CIPHER            SSLV3_ALERT_HANDSHAKE_FAILURE
client does not trust the server's CA      CERTIFICATE_VERIFY_FAILED   TLSV1_ALERT_UNKNOWN_CA
certificate not valid for the name         CERTIFICATE_VERIFY_FAILED   SSLV3_ALERT_BAD_CERTIFICATE
plaintext ("EHLO", "+OK", random bytes)    WRONG_VERSION_NUMBER        -
"GET / HTTP/1.1", "CONNECT host:443 ..."   HTTP(S)_PROXY_REQUEST       -
0x16 0x03 then an absurd record length     PACKET_LENGTH_TOO_LONG      -
peer closes mid-handshake                  UNEXPECTED_EOF_WHILE_READING -

WRONG_VERSION_NUMBER is ambiguous in name only: in practice OpenSSL 3.0 reports it when the
first bytes are not a TLS record header at all (a plaintext SMTP client on port 465, a TLS client
talking to a plaintext backend), while a real version mismatch arrives as UNSUPPORTED_PROTOCOL or
a protocol_version alert. So when the caller can pass the first bytes it received, the decision
is made on them: a record header (content type 20-23, major version 3) means PROTOCOL_VERSION,
anything else NOT_TLS. Without them we keep the conservative PROTOCOL_VERSION.

SSLV3_ALERT_HANDSHAKE_FAILURE is the peer's generic "we could not agree" alert. OpenSSL sends it
for no shared cipher suite, group or signature algorithm, which is what NO_SHARED_CIPHER means
to an operator; it is also what a TLS 1.2 client sees when it did not send a required client
certificate, which tlsgate never has to do inbound.

CERTIFICATE_VERIFY_FAILED is split by the X.509 verify code: an untrusted or unknown issuer is
UNKNOWN_CA; any other reason (hostname mismatch, expired, not yet valid, bad signature) is
BAD_CERTIFICATE.
"""

from __future__ import annotations

import ssl
from typing import Final

from tlsgate.observe.events import HandshakeFailure

__all__ = ["TlsHandshakeError", "classify_ssl_error", "ssl_error_detail"]


class TlsHandshakeError(Exception):
    """A TLS handshake failed; raised `from` the original `ssl.SSLError`.

    Attributes:
        failure: the classified reason, a metric label value.
        detail: OpenSSL's reason string (e.g. ``"UNSUPPORTED_PROTOCOL"``), for the log line.
    """

    def __init__(self, failure: HandshakeFailure, detail: str) -> None:
        super().__init__(failure, detail)
        self.failure = failure
        self.detail = detail

    def __str__(self) -> str:
        return f"TLS handshake failed ({self.failure}): {self.detail}"


_BY_REASON: Final[dict[str, HandshakeFailure]] = {
    "UNSUPPORTED_PROTOCOL": HandshakeFailure.PROTOCOL_VERSION,
    "TLSV1_ALERT_PROTOCOL_VERSION": HandshakeFailure.PROTOCOL_VERSION,
    "NO_PROTOCOLS_AVAILABLE": HandshakeFailure.PROTOCOL_VERSION,
    "TLSV1_ALERT_INAPPROPRIATE_FALLBACK": HandshakeFailure.PROTOCOL_VERSION,
    "INAPPROPRIATE_FALLBACK": HandshakeFailure.PROTOCOL_VERSION,
    "NO_SHARED_CIPHER": HandshakeFailure.NO_SHARED_CIPHER,
    "NO_CIPHERS_AVAILABLE": HandshakeFailure.NO_SHARED_CIPHER,
    "NO_SHARED_GROUPS": HandshakeFailure.NO_SHARED_CIPHER,
    "NO_SUITABLE_KEY_SHARE": HandshakeFailure.NO_SHARED_CIPHER,
    "NO_SUITABLE_SIGNATURE_ALGORITHM": HandshakeFailure.NO_SHARED_CIPHER,
    "NO_SHARED_SIGNATURE_ALGORITHMS": HandshakeFailure.NO_SHARED_CIPHER,
    "SSLV3_ALERT_HANDSHAKE_FAILURE": HandshakeFailure.NO_SHARED_CIPHER,
    "TLSV1_ALERT_INSUFFICIENT_SECURITY": HandshakeFailure.NO_SHARED_CIPHER,
    "TLSV1_ALERT_UNKNOWN_CA": HandshakeFailure.UNKNOWN_CA,
    "SSLV3_ALERT_BAD_CERTIFICATE": HandshakeFailure.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": HandshakeFailure.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": HandshakeFailure.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_REVOKED": HandshakeFailure.BAD_CERTIFICATE,
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": HandshakeFailure.BAD_CERTIFICATE,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": HandshakeFailure.BAD_CERTIFICATE,
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": HandshakeFailure.BAD_CERTIFICATE,
    "HTTP_REQUEST": HandshakeFailure.NOT_TLS,
    "HTTPS_PROXY_REQUEST": HandshakeFailure.NOT_TLS,
    "PACKET_LENGTH_TOO_LONG": HandshakeFailure.NOT_TLS,
    "RECORD_LENGTH_MISMATCH": HandshakeFailure.NOT_TLS,
    "RECORD_LAYER_FAILURE": HandshakeFailure.NOT_TLS,
    "UNKNOWN_PROTOCOL": HandshakeFailure.NOT_TLS,
    "UNEXPECTED_EOF_WHILE_READING": HandshakeFailure.EOF,
}

# X.509 verify codes (openssl/x509_vfy.h) meaning "we do not know who issued this".
_UNKNOWN_ISSUER_VERIFY_CODES: Final = frozenset(
    {
        2,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        27,  # X509_V_ERR_CERT_UNTRUSTED
    }
)

# TLS record content types 20..23 (RFC 8446 §5.1) followed by major version 3.
_TLS_CONTENT_TYPES: Final = range(20, 24)
_TLS_MAJOR_VERSION: Final = 3


def classify_ssl_error(exc: ssl.SSLError, *, first_bytes: bytes | None = None) -> HandshakeFailure:
    """Map an `ssl.SSLError` raised by a handshake to a `HandshakeFailure`.

    Args:
        exc: the error from `SSLObject.do_handshake`.
        first_bytes: the first bytes received from the peer, if known (two are enough). Only
            used to tell plaintext from a real version mismatch on WRONG_VERSION_NUMBER.

    Returns:
        The failure class; OTHER for reasons not listed in this module.
    """
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return HandshakeFailure.EOF
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _UNKNOWN_ISSUER_VERIFY_CODES:
            return HandshakeFailure.UNKNOWN_CA
        return HandshakeFailure.BAD_CERTIFICATE
    reason = getattr(exc, "reason", None)
    if reason == "WRONG_VERSION_NUMBER":
        if first_bytes is None or _starts_like_tls_record(first_bytes):
            return HandshakeFailure.PROTOCOL_VERSION
        return HandshakeFailure.NOT_TLS
    if reason == "CERTIFICATE_VERIFY_FAILED":  # raised without the verify-error subclass
        return HandshakeFailure.UNKNOWN_CA
    if isinstance(reason, str):
        return _BY_REASON.get(reason, HandshakeFailure.OTHER)
    return HandshakeFailure.OTHER


def ssl_error_detail(exc: ssl.SSLError) -> str:
    """OpenSSL's reason code if it has one, else the message: the `detail` of the log line."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason
    return str(exc)


def _starts_like_tls_record(data: bytes) -> bool:
    # Fewer than two bytes cannot contradict a record header, so they count as one.
    if not data:
        return True
    if data[0] not in _TLS_CONTENT_TYPES:
        return False
    return len(data) < 2 or data[1] == _TLS_MAJOR_VERSION
