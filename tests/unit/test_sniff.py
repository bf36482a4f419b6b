"""The TLS sniffer: real ClientHellos, split anywhere, against plaintext mail clients."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.helpers.hello import client_hello
from tlsgate.sniff import Verdict, classify, looks_like_client_hello

VERSIONS = [
    ssl.TLSVersion.TLSv1,
    ssl.TLSVersion.TLSv1_1,
    ssl.TLSVersion.TLSv1_2,
    ssl.TLSVersion.TLSv1_3,
]
HELLOS = {
    (version, sni): client_hello(version, server_name="mail.example.test" if sni else None)
    for version in VERSIONS
    for sni in (True, False)
}

# RFC 5246 Appendix E.2: 2-byte length with the top bit set, MSG-CLIENT-HELLO, version 3.1,
# cipher-spec/session-id/challenge lengths, one cipher spec, a 16-byte challenge.
SSL2_FORMAT_HELLO = (
    bytes([0x80, 0x1C, 0x01, 0x03, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10])
    + bytes([0x00, 0x00, 0x2F])
    + bytes(range(16))
)

PLAINTEXT_OPENERS = [
    b"EHLO client.example.test\r\n",
    b"HELO x\r\n",
    b"QUIT\r\n",
    b"CAPA\r\n",
    b"USER alice\r\n",
    b"a001 CAPABILITY\r\n",
    b"GET / HTTP/1.1\r\n",
    b"\r\n",
    b"\x00",
]


@pytest.mark.parametrize(("version", "sni"), list(HELLOS))
def test_real_hello_is_tls_from_its_first_byte(version: ssl.TLSVersion, sni: bool) -> None:
    hello = HELLOS[version, sni]
    assert classify(hello[:1]) is Verdict.TLS
    assert classify(hello) is Verdict.TLS


@pytest.mark.parametrize(("version", "sni"), list(HELLOS))
def test_real_hello_has_a_client_hello_header(version: ssl.TLSVersion, sni: bool) -> None:
    hello = HELLOS[version, sni]
    for cut in range(6):
        assert looks_like_client_hello(hello[:cut]) is Verdict.NEED_MORE
    assert looks_like_client_hello(hello[:6]) is Verdict.TLS
    assert looks_like_client_hello(hello) is Verdict.TLS


def test_hello_generator_sends_sni_only_when_asked() -> None:
    assert b"mail.example.test" in HELLOS[ssl.TLSVersion.TLSv1_3, True]
    assert b"mail.example.test" not in HELLOS[ssl.TLSVersion.TLSv1_3, False]


def test_empty_prefix_needs_more() -> None:
    assert classify(b"") is Verdict.NEED_MORE
    assert looks_like_client_hello(b"") is Verdict.NEED_MORE


@pytest.mark.parametrize("opener", PLAINTEXT_OPENERS)
def test_plaintext_commands_are_plaintext_on_the_first_byte(opener: bytes) -> None:
    assert classify(opener[:1]) is Verdict.PLAINTEXT
    assert classify(opener) is Verdict.PLAINTEXT
    assert looks_like_client_hello(opener) is Verdict.PLAINTEXT


def test_ssl2_format_hello_is_tls_once_the_third_byte_arrives() -> None:
    assert classify(SSL2_FORMAT_HELLO[:1]) is Verdict.NEED_MORE
    assert classify(SSL2_FORMAT_HELLO[:2]) is Verdict.NEED_MORE
    assert classify(SSL2_FORMAT_HELLO[:3]) is Verdict.TLS
    assert looks_like_client_hello(SSL2_FORMAT_HELLO[:3]) is Verdict.NEED_MORE
    assert looks_like_client_hello(SSL2_FORMAT_HELLO) is Verdict.TLS


def test_high_bit_without_hello_type_is_plaintext() -> None:
    assert classify(b"\x80\x1c\x02") is Verdict.PLAINTEXT
    assert classify("é".encode()) is Verdict.NEED_MORE  # two bytes, both high
    assert classify("éa".encode()) is Verdict.PLAINTEXT


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"\x16\x02\x01\x00\x10\x01", "SSL 2 major version in a TLS record"),
        (b"\x16\x03\x01\x00\x00\x01", "empty record"),
        (b"\x16\x03\x01\xff\xff\x01", "longer than 2^14"),
        (b"\x16\x03\x01\x00\x10\x02", "a ServerHello"),
        (b"\x17\x03\x03\x00\x10\x01", "application data"),
    ],
)
def test_header_that_is_not_a_client_hello(header: bytes, why: str) -> None:
    assert looks_like_client_hello(header) is Verdict.PLAINTEXT, why


@given(
    version=st.sampled_from(VERSIONS),
    sni=st.booleans(),
    cut=st.integers(min_value=0, max_value=300),
)
def test_any_split_of_a_hello_is_tls_as_soon_as_the_first_byte_is_there(
    version: ssl.TLSVersion, sni: bool, cut: int
) -> None:
    head = HELLOS[version, sni][:cut]
    expected = Verdict.TLS if head else Verdict.NEED_MORE
    assert classify(head) is expected
    # looks_like_client_hello never contradicts a real hello, however short the prefix.
    assert looks_like_client_hello(head) is not Verdict.PLAINTEXT


@given(st.binary(max_size=64))
@example(b"\x80")
@example(b"\x16")
@example(b"\xff\xff")
def test_random_bytes_never_raise_and_the_verdict_is_stable(data: bytes) -> None:
    verdict = classify(data)
    header = looks_like_client_hello(data)
    # A decision, once made, does not change as more bytes arrive.
    for extra in (b"\x00", b"\x01", b"\xff"):
        if verdict is not Verdict.NEED_MORE:
            assert classify(data + extra) is verdict
        if header is not Verdict.NEED_MORE:
            assert looks_like_client_hello(data + extra) is header
    # A full ClientHello header is also a TLS verdict.
    if header is Verdict.TLS:
        assert verdict is Verdict.TLS


@given(st.binary(min_size=1).filter(lambda b: b[0] != 0x16 and b[0] < 0x80))
def test_anything_starting_with_ascii_is_plaintext(data: bytes) -> None:
    assert classify(data) is Verdict.PLAINTEXT
