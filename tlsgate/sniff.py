"""Tell a TLS ClientHello from a plaintext client by the first bytes it sends.

PURE: bytes in, a verdict out; no I/O, no clock. The auto-detecting listener (CONTRACT.md,
"Auto-detection") waits up to `detect_timeout` for the FIRST byte only and then asks `classify`:

- 0x16 (a TLS handshake record, RFC 8446 §5.1) commits the connection to TLS at once. The rest
  of the ClientHello, however slowly or finely split it arrives, is the handshake's business
  under `handshake_timeout`; a wrong second byte is reported by the handshake as NOT_TLS.
- A first byte with the high bit set may start an SSLv2-format ClientHello (RFC 5246 Appendix
  E.2: a 2-byte length with the top bit set, then message type 1). Old clients still send this
  format to offer TLS, so it counts as TLS once the third byte confirms it. sslh calls it "not
  TLS"; we do not (STYLE.md, "things not to copy").
- Anything else is an early talker: a plaintext client that spoke first. SMTP and POP3 commands
  are ASCII, so their first byte never has the high bit set.

Unlike mitmproxy's `starts_like_tls_record`, which says "not TLS" on fewer than 3 bytes, the
answer has three values, so a hello split after its first byte is still recognised.
`looks_like_client_hello` checks the whole record header; it is for logs and tests, not for the
decision.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

__all__ = ["Verdict", "classify", "looks_like_client_hello"]


class Verdict(Enum):
    NEED_MORE = "need_more"
    TLS = "tls"
    PLAINTEXT = "plaintext"


_HANDSHAKE_RECORD: Final = 0x16  # RFC 8446 §5.1 ContentType.handshake
_SSL2_LENGTH_HIGH_BIT: Final = 0x80  # RFC 5246 E.2: msg_length with the top bit set
_CLIENT_HELLO: Final = 0x01  # HandshakeType.client_hello, and SSLv2's MSG-CLIENT-HELLO
_TLS_MAJOR_VERSION: Final = 0x03  # SSL 3.0 and every TLS version are 3.x on the wire
_RECORD_HEADER_BYTES: Final = 5  # type, version (2), length (2)
# RFC 8446 §5.1: a record's plaintext is at most 2^14 bytes, and a ClientHello is never empty
# (its handshake header alone is 4 bytes).
_MIN_HELLO_RECORD_BYTES: Final = 4
_MAX_RECORD_BYTES: Final = 2**14
# RFC 5246 E.2: an SSLv2-format hello carries at least type, version and three 2-byte lengths.
_MIN_SSL2_HELLO_BYTES: Final = 9


def classify(prefix: bytes | bytearray) -> Verdict:
    """Decide TLS or plaintext from the first bytes a client sent.

    Args:
        prefix: everything received so far (only the first three bytes are looked at).

    Returns:
        NEED_MORE for no bytes, or for a first byte with the high bit set until the third byte
        arrives; TLS for 0x16 or an SSLv2-format ClientHello; PLAINTEXT otherwise.
    """
    if not prefix:
        return Verdict.NEED_MORE
    first = prefix[0]
    if first == _HANDSHAKE_RECORD:
        return Verdict.TLS
    if first & _SSL2_LENGTH_HIGH_BIT:
        if len(prefix) < 3:
            return Verdict.NEED_MORE
        return Verdict.TLS if prefix[2] == _CLIENT_HELLO else Verdict.PLAINTEXT
    return Verdict.PLAINTEXT


def looks_like_client_hello(prefix: bytes | bytearray) -> Verdict:
    """Check the record header and handshake type of a ClientHello, byte by byte.

    Returns:
        PLAINTEXT as soon as a byte contradicts a ClientHello, NEED_MORE while every byte so far
        fits but the header is incomplete, TLS once the header is complete and fits.
    """
    if not prefix:
        return Verdict.NEED_MORE
    if prefix[0] & _SSL2_LENGTH_HIGH_BIT:
        return _looks_like_ssl2_hello(prefix)
    if prefix[0] != _HANDSHAKE_RECORD:
        return Verdict.PLAINTEXT
    if len(prefix) < 2:
        return Verdict.NEED_MORE
    if prefix[1] != _TLS_MAJOR_VERSION:
        return Verdict.PLAINTEXT
    if len(prefix) < _RECORD_HEADER_BYTES:
        return Verdict.NEED_MORE
    length = int.from_bytes(prefix[3:5])
    if not _MIN_HELLO_RECORD_BYTES <= length <= _MAX_RECORD_BYTES:
        return Verdict.PLAINTEXT
    if len(prefix) == _RECORD_HEADER_BYTES:
        return Verdict.NEED_MORE
    return Verdict.TLS if prefix[5] == _CLIENT_HELLO else Verdict.PLAINTEXT


def _looks_like_ssl2_hello(prefix: bytes | bytearray) -> Verdict:
    # Byte 0-1: length (top bit set), byte 2: MSG-CLIENT-HELLO, byte 3: version major 3.
    if len(prefix) < 2:
        return Verdict.NEED_MORE
    length = int.from_bytes(prefix[:2]) & 0x7FFF
    if length < _MIN_SSL2_HELLO_BYTES:
        return Verdict.PLAINTEXT
    if len(prefix) < 3:
        return Verdict.NEED_MORE
    if prefix[2] != _CLIENT_HELLO:
        return Verdict.PLAINTEXT
    if len(prefix) < 4:
        return Verdict.NEED_MORE
    return Verdict.TLS if prefix[3] == _TLS_MAJOR_VERSION else Verdict.PLAINTEXT
