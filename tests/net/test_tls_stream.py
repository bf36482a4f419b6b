"""TlsStream: trio's stream conformance kit, split invariance, half-close, failures, OpenSSL.

Memory streams stand in for sockets everywhere except the half-close-over-TCP test and the
tests against the `openssl` command-line tools.
"""

from __future__ import annotations

import functools
import random
import re
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.hello import client_hello
from tlsgate.net.tls_stream import TlsStream
from tlsgate.observe.events import HandshakeFailure
from tlsgate.sniff import Verdict, classify
from tlsgate.tls.failures import TlsHandshakeError, classify_ssl_error

SERVER_NAME = "mail.example.test"
VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
VERSION_IDS = ["tls12", "tls13"]
TIMEOUT_SECONDS = 10  # generous: these machines are small and shared (CONTRACT.md)

TransportPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


@functools.cache
def _ca() -> trustme.CA:
    return trustme.CA()


@functools.cache
def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _ca().issue_cert(SERVER_NAME).configure_cert(context)
    return context


@functools.cache
def _client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _ca().configure_trust(context)
    context.minimum_version = context.maximum_version = version
    return context


@pytest.fixture(params=VERSIONS, ids=VERSION_IDS)
def version(request: pytest.FixtureRequest) -> ssl.TLSVersion:
    result: ssl.TLSVersion = request.param
    return result


def _unhandshaken_pair(
    version: ssl.TLSVersion, transports: TransportPair = trio.testing.memory_stream_pair
) -> tuple[TlsStream, TlsStream]:
    client_transport, server_transport = transports()
    client = TlsStream(
        client_transport,
        _client_context(version),
        server_side=False,
        server_hostname=SERVER_NAME,
    )
    server = TlsStream(server_transport, _server_context(), server_side=True)
    return client, server


async def _handshake_both(client: TlsStream, server: TlsStream) -> None:
    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)


async def _pair(
    version: ssl.TLSVersion, transports: TransportPair = trio.testing.memory_stream_pair
) -> tuple[TlsStream, TlsStream]:
    client, server = _unhandshaken_pair(version, transports)
    await _handshake_both(client, server)
    return client, server


async def _receive_until_eof(stream: trio.abc.ReceiveStream, max_bytes: int | None = None) -> bytes:
    received = bytearray()
    while chunk := await stream.receive_some(max_bytes):
        received += chunk
    return bytes(received)


# ---- trio's conformance kit ----


async def test_conforms_to_trio_half_closeable_stream(version: ssl.TLSVersion) -> None:
    # check_half_closeable_stream runs check_two_way_stream (and so check_one_way_stream)
    # first, in both directions; lockstep transports make the "clogged" cases.
    async def stream_maker() -> tuple[TlsStream, TlsStream]:
        return await _pair(version)

    async def clogged_stream_maker() -> tuple[TlsStream, TlsStream]:
        return await _pair(version, trio.testing.lockstep_stream_pair)

    await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


# ---- any split of the byte stream gives the same plaintext ----


class _ChoppyStream(trio.abc.HalfCloseableStream):
    """Passes a transport through, but delivers received bytes in reads of the given sizes."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, sizes: list[int]) -> None:
        self._inner = inner
        self._sizes = sizes
        self._reads = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        size = self._sizes[self._reads % len(self._sizes)]
        self._reads += 1
        return await self._inner.receive_some(size if max_bytes is None else min(size, max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


read_sizes = st.lists(
    st.one_of(st.integers(1, 8), st.integers(1, 600), st.integers(1, 70_000)),
    min_size=1,
    max_size=12,
)


@given(
    version=st.sampled_from(VERSIONS),
    server_reads=read_sizes,
    client_reads=read_sizes,
    messages=st.lists(st.binary(min_size=0, max_size=40_000), max_size=6),
    max_bytes=st.one_of(st.none(), st.integers(1, 70_000)),
)
async def test_any_split_of_the_tls_byte_stream_gives_the_same_plaintext(
    version: ssl.TLSVersion,
    server_reads: list[int],
    client_reads: list[int],
    messages: list[bytes],
    max_bytes: int | None,
) -> None:
    def choppy_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = trio.testing.memory_stream_pair()
        return _ChoppyStream(client, client_reads), _ChoppyStream(server, server_reads)

    client, server = _unhandshaken_pair(version, choppy_pair)
    sent = b"".join(messages)
    reply = sent[::-1] + b"end"

    async def run_client() -> None:
        for message in messages:
            await client.send_all(message)
        await client.send_eof()
        assert await _receive_until_eof(client, max_bytes) == reply

    async def run_server() -> None:
        assert await _receive_until_eof(server, max_bytes) == sent
        await server.send_all(reply)
        await server.send_eof()

    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_client)
            nursery.start_soon(run_server)
    assert not client.closed_abruptly
    assert not server.closed_abruptly
    await client.aclose()
    await server.aclose()


# ---- behaviour the relay relies on ----


@pytest.mark.parametrize("sniffed_bytes", [1, 5, 100, 100_000])
async def test_handshake_starts_from_bytes_the_sniffer_already_read(
    version: ssl.TLSVersion, sniffed_bytes: int
) -> None:
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = TlsStream(
        client_transport, _client_context(version), server_side=False, server_hostname=SERVER_NAME
    )
    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            sniffed = await server_transport.receive_some(sniffed_bytes)
            assert classify(sniffed[:1]) is Verdict.TLS
            server = TlsStream(
                server_transport, _server_context(), server_side=True, initial_data=sniffed
            )
            await server.do_handshake()
        await client.send_all(b"EHLO client.example.test\r\n")
        assert await server.receive_some() == b"EHLO client.example.test\r\n"
        await server.send_all(b"250 ok\r\n")
        assert await client.receive_some() == b"250 ok\r\n"
    assert server.ssl_object.server_hostname is None  # server side; SNI is in the callback
    assert (
        client.ssl_object.version()
        == {
            ssl.TLSVersion.TLSv1_2: "TLSv1.2",
            ssl.TLSVersion.TLSv1_3: "TLSv1.3",
        }[version]
    )


async def test_client_eof_still_lets_the_server_reply(version: ssl.TLSVersion) -> None:
    client, server = await _pair(version)
    with trio.fail_after(TIMEOUT_SECONDS):
        await client.send_all(b"QUIT\r\n")
        await client.send_eof()
        assert await server.receive_some() == b"QUIT\r\n"
        assert await server.receive_some() == b""
        assert not server.closed_abruptly
        await server.send_all(b"221 2.0.0 bye\r\n")
        await server.send_eof()
        assert await client.receive_some() == b"221 2.0.0 bye\r\n"
        assert await client.receive_some() == b""
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"more")
    await client.aclose()
    await server.aclose()


async def test_half_close_over_tcp_shuts_the_write_side(version: ssl.TLSVersion) -> None:
    def socket_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        a, b = trio.socket.socketpair()
        return trio.SocketStream(a), trio.SocketStream(b)

    client, server = await _pair(version, socket_pair)
    with trio.fail_after(TIMEOUT_SECONDS):
        await client.send_eof()
        assert await server.receive_some() == b""
        # After close_notify the TCP stream itself is at EOF: send_eof shut the write side.
        assert await server.transport_stream.receive_some() == b""
        await server.send_all(b"late reply")
        assert await client.receive_some() == b"late reply"
    await client.aclose()
    await server.aclose()


async def test_send_eof_keeps_records_that_were_not_read_yet(version: ssl.TLSVersion) -> None:
    client, server = await _pair(version)
    with trio.fail_after(TIMEOUT_SECONDS):
        await server.send_all(b"hello")
        await server.send_all(b"world")
        await trio.testing.wait_all_tasks_blocked()
        assert await client.receive_some(3) == b"hel"  # both records came in one read
        await client.send_eof()  # must not swallow "lo" or "world"
        await server.send_eof()
        assert await _receive_until_eof(client) == b"loworld"
        assert await server.receive_some() == b""
    await client.aclose()
    await server.aclose()


async def test_one_receive_returns_many_records(version: ssl.TLSVersion) -> None:
    client, server = await _pair(version)
    payload = random.Random(1).randbytes(100 * 1024)
    with trio.fail_after(TIMEOUT_SECONDS):
        await client.send_all(payload)
        await trio.testing.wait_all_tasks_blocked()
        first = await server.receive_some(1 << 20)
        assert len(first) > 16 * 1024  # more than one TLS record's worth
        rest = await server.receive_some(1 << 20) if len(first) < len(payload) else b""
        assert first + rest == payload


async def test_max_bytes_leaves_the_rest_for_the_next_call(version: ssl.TLSVersion) -> None:
    client, server = await _pair(version)
    payload = bytes(range(256)) * 200
    with trio.fail_after(TIMEOUT_SECONDS):
        await client.send_all(payload)
        await client.send_eof()
        await trio.testing.wait_all_tasks_blocked()
        chunks = []
        while chunk := await server.receive_some(1000):
            assert len(chunk) <= 1000
            chunks.append(chunk)
    assert b"".join(chunks) == payload


@pytest.mark.parametrize("graceful", [True, False], ids=["close_notify", "tcp_eof_only"])
async def test_abrupt_close_is_reported(version: ssl.TLSVersion, graceful: bool) -> None:
    client, server = await _pair(version)
    with trio.fail_after(TIMEOUT_SECONDS):
        if graceful:
            await client.aclose()
        else:
            await client.transport_stream.aclose()
        assert await server.receive_some() == b""
        assert await server.receive_some() == b""  # and it stays at EOF
    assert server.closed_abruptly is not graceful
    await server.aclose()


async def test_send_without_explicit_handshake(version: ssl.TLSVersion) -> None:
    client, server = _unhandshaken_pair(version)
    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"ping")
            assert await server.receive_some() == b"ping"
    await client.aclose()
    await server.aclose()


# ---- handshake failures, classified ----


async def _attempt_handshake(stream: TlsStream) -> BaseException | None:
    try:
        await stream.do_handshake()
    except (TlsHandshakeError, trio.BrokenResourceError) as exc:
        await stream.aclose()  # so the peer sees EOF instead of waiting forever
        return exc
    return None


async def _failed_handshakes(
    client: TlsStream, server: TlsStream
) -> tuple[BaseException | None, BaseException | None]:
    results: dict[str, BaseException | None] = {}

    async def attempt(name: str, stream: TlsStream) -> None:
        results[name] = await _attempt_handshake(stream)

    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "client", client)
            nursery.start_soon(attempt, "server", server)
    await client.aclose()
    await server.aclose()
    return results["client"], results["server"]


def _failure(exc: BaseException | None) -> tuple[HandshakeFailure, str]:
    assert isinstance(exc, TlsHandshakeError), repr(exc)
    assert isinstance(exc.__cause__, ssl.SSLError)
    return exc.failure, exc.detail


def _client(context: ssl.SSLContext, transport: trio.abc.Stream, name: str) -> TlsStream:
    return TlsStream(transport, context, server_side=False, server_hostname=name)


def _context_with(
    build: Callable[[ssl.SSLContext], None], *, server: bool = False
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    if server:
        _ca().issue_cert(SERVER_NAME).configure_cert(context)
    build(context)
    return context


def _tls12_only(context: ssl.SSLContext) -> None:
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    _ca().configure_trust(context)


def _tls11_only(context: ssl.SSLContext) -> None:
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    _ca().configure_trust(context)


def _tls13_only(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    ("client_setup", "server_setup"),
    [(_tls12_only, _tls13_only), (_tls11_only, lambda context: None)],
    ids=["tls12_vs_tls13_only", "tls11_vs_default"],
)
async def test_version_mismatch_is_protocol_version(
    client_setup: Callable[[ssl.SSLContext], None],
    server_setup: Callable[[ssl.SSLContext], None],
) -> None:
    a, b = trio.testing.memory_stream_pair()
    client = _client(_context_with(client_setup), a, SERVER_NAME)
    server = TlsStream(b, _context_with(server_setup, server=True), server_side=True)
    client_exc, server_exc = await _failed_handshakes(client, server)
    assert _failure(server_exc) == (HandshakeFailure.PROTOCOL_VERSION, "UNSUPPORTED_PROTOCOL")
    assert _failure(client_exc) == (
        HandshakeFailure.PROTOCOL_VERSION,
        "TLSV1_ALERT_PROTOCOL_VERSION",
    )


async def test_no_common_cipher_is_no_shared_cipher() -> None:
    def client_setup(context: ssl.SSLContext) -> None:
        _tls12_only(context)
        context.set_ciphers("AES128-SHA")  # RSA key exchange; the certificate is ECDSA

    a, b = trio.testing.memory_stream_pair()
    client = _client(_context_with(client_setup), a, SERVER_NAME)
    server = TlsStream(b, _context_with(_tls12_only, server=True), server_side=True)
    client_exc, server_exc = await _failed_handshakes(client, server)
    assert _failure(server_exc) == (HandshakeFailure.NO_SHARED_CIPHER, "NO_SHARED_CIPHER")
    assert _failure(client_exc) == (
        HandshakeFailure.NO_SHARED_CIPHER,
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
    )


async def test_untrusted_ca_is_unknown_ca_on_both_sides(version: ssl.TLSVersion) -> None:
    def client_setup(context: ssl.SSLContext) -> None:
        context.maximum_version = version
        trustme.CA().configure_trust(context)  # not the CA that signed the server

    a, b = trio.testing.memory_stream_pair()
    client = _client(_context_with(client_setup), a, SERVER_NAME)
    server = TlsStream(b, _server_context(), server_side=True)
    client_exc, server_exc = await _failed_handshakes(client, server)
    assert _failure(client_exc) == (HandshakeFailure.UNKNOWN_CA, "CERTIFICATE_VERIFY_FAILED")
    assert _failure(server_exc) == (HandshakeFailure.UNKNOWN_CA, "TLSV1_ALERT_UNKNOWN_CA")


async def test_wrong_name_is_bad_certificate(version: ssl.TLSVersion) -> None:
    a, b = trio.testing.memory_stream_pair()
    client = _client(_client_context(version), a, "other.example.test")
    server = TlsStream(b, _server_context(), server_side=True)
    client_exc, server_exc = await _failed_handshakes(client, server)
    assert _failure(client_exc) == (
        HandshakeFailure.BAD_CERTIFICATE,
        "CERTIFICATE_VERIFY_FAILED",
    )
    assert _failure(server_exc) == (
        HandshakeFailure.BAD_CERTIFICATE,
        "SSLV3_ALERT_BAD_CERTIFICATE",
    )


@pytest.mark.parametrize(
    ("first_flight", "expected"),
    [
        (b"EHLO client.example.test\r\n", (HandshakeFailure.NOT_TLS, "WRONG_VERSION_NUMBER")),
        (b"USER alice\r\n", (HandshakeFailure.NOT_TLS, "WRONG_VERSION_NUMBER")),
        (bytes(range(200, 250)), (HandshakeFailure.NOT_TLS, "WRONG_VERSION_NUMBER")),
        (b"\x16\x02\x00\x00\x05hello", (HandshakeFailure.NOT_TLS, "WRONG_VERSION_NUMBER")),
        (b"GET / HTTP/1.1\r\n\r\n", (HandshakeFailure.NOT_TLS, "HTTP_REQUEST")),
        (b"\x16\x03\x01\xff\xff" + b"x" * 40, (HandshakeFailure.NOT_TLS, "PACKET_LENGTH_TOO_LONG")),
        (b"", (HandshakeFailure.EOF, "UNEXPECTED_EOF_WHILE_READING")),
    ],
    ids=["ehlo", "pop3_user", "random", "tls_type_ssl2_version", "http", "huge_record", "eof"],
)
async def test_server_classifies_what_is_not_a_client_hello(
    first_flight: bytes, expected: tuple[HandshakeFailure, str]
) -> None:
    peer, ours = trio.testing.memory_stream_pair()
    server = TlsStream(ours, _server_context(), server_side=True)
    await peer.send_all(first_flight)
    await peer.send_eof()
    with trio.fail_after(TIMEOUT_SECONDS), pytest.raises(TlsHandshakeError) as caught:
        await server.do_handshake()
    assert (caught.value.failure, caught.value.detail) == expected
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    await server.aclose()
    await peer.aclose()


@pytest.mark.parametrize("cut", [1, 5, 60])
async def test_peer_closing_mid_hello_is_eof(version: ssl.TLSVersion, cut: int) -> None:
    hello = client_hello(version)
    peer, ours = trio.testing.memory_stream_pair()
    # The sniffer took the first byte; the client sends a little more and gives up.
    server = TlsStream(ours, _server_context(), server_side=True, initial_data=hello[:1])
    await peer.send_all(hello[1:cut])
    await peer.send_eof()
    with trio.fail_after(TIMEOUT_SECONDS), pytest.raises(TlsHandshakeError) as caught:
        await server.do_handshake()
    assert (caught.value.failure, caught.value.detail) == (
        HandshakeFailure.EOF,
        "UNEXPECTED_EOF_WHILE_READING",
    )
    await server.aclose()
    await peer.aclose()


async def test_peer_leaving_before_our_reply_is_eof(version: ssl.TLSVersion) -> None:
    peer, ours = trio.testing.memory_stream_pair()
    server = TlsStream(ours, _server_context(), server_side=True)
    await peer.send_all(client_hello(version))
    await peer.aclose()  # our ServerHello will find the connection gone
    with trio.fail_after(TIMEOUT_SECONDS), pytest.raises(TlsHandshakeError) as caught:
        await server.do_handshake()
    assert (caught.value.failure, caught.value.detail) == (HandshakeFailure.EOF, "TRANSPORT_BROKEN")
    assert isinstance(caught.value.__cause__, trio.BrokenResourceError)
    await server.aclose()


async def test_client_talking_to_a_plaintext_server_is_not_tls() -> None:
    ours, peer = trio.testing.memory_stream_pair()
    client = _client(_client_context(ssl.TLSVersion.TLSv1_3), ours, SERVER_NAME)
    await peer.send_all(b"220 mail.example.test ESMTP\r\n")
    with trio.fail_after(TIMEOUT_SECONDS), pytest.raises(TlsHandshakeError) as caught:
        await client.do_handshake()
    assert (caught.value.failure, caught.value.detail) == (
        HandshakeFailure.NOT_TLS,
        "WRONG_VERSION_NUMBER",
    )
    await client.aclose()
    await peer.aclose()


def test_classification_without_context_and_unknown_reasons() -> None:
    exc = ssl.SSLError(1, "wrong version number")
    exc.reason = "WRONG_VERSION_NUMBER"
    assert classify_ssl_error(exc) is HandshakeFailure.PROTOCOL_VERSION
    assert classify_ssl_error(exc, first_bytes=b"\x16\x03") is HandshakeFailure.PROTOCOL_VERSION
    assert classify_ssl_error(exc, first_bytes=b"EH") is HandshakeFailure.NOT_TLS
    exc.reason = "SOMETHING_NEW_IN_OPENSSL_4"
    assert classify_ssl_error(exc) is HandshakeFailure.OTHER
    assert classify_ssl_error(ssl.SSLEOFError(8, "eof")) is HandshakeFailure.EOF


# ---- against the real OpenSSL command-line tools ----

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


@pytest.fixture
def pem_files(tmp_path: Path) -> tuple[Path, Path]:
    """(CA file, server cert+key file) for the openssl tools, matching _server_context()."""
    ca_file = tmp_path / "ca.pem"
    server_file = tmp_path / "server.pem"
    _ca().cert_pem.write_to_path(str(ca_file))
    _ca().issue_cert(SERVER_NAME).private_key_and_cert_chain_pem.write_to_path(str(server_file))
    return ca_file, server_file


class _Tool:
    """An interactive `openssl` subprocess: type lines into it, wait for text from it."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = bytearray()

    async def type(self, line: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line)

    async def wait_for(self, text: bytes) -> None:
        await self.wait_for_match(re.escape(text))

    async def wait_for_match(self, pattern: bytes) -> bytes:
        """Read output until `pattern` matches; return its first group (or the whole match)."""
        assert self.process.stdout is not None
        with trio.fail_after(TIMEOUT_SECONDS):
            while (match := re.search(pattern, self.output)) is None:
                chunk = await self.process.stdout.receive_some()
                assert chunk, f"openssl exited before {pattern!r}: {bytes(self.output)!r}"
                self.output += chunk
        return match.group(1) if match.groups() else match.group(0)

    async def end_input(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                await pipe.aclose()


async def _start_tool(*args: str) -> _Tool:
    assert OPENSSL is not None
    process = await trio.lowlevel.open_process(
        [OPENSSL, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return _Tool(process)


# With -msg the tools log every handshake message; this line is the peer receiving our
# KeyUpdate, which OpenSSL queues while it processes the peer's KeyUpdate(update_requested).
PEER_GOT_OUR_KEY_UPDATE = b"<<< TLS 1.3, Handshake [length 0005], KeyUpdate"


async def _receive_into(stream: TlsStream, received: list[bytes]) -> None:
    received.append(await stream.receive_some())


async def _s_client_session(tool: _Tool, server: TlsStream, key_update: bool) -> None:
    await server.do_handshake()
    await tool.type(b"hello one\n")
    assert await server.receive_some() == b"hello one\n"
    await server.send_all(b"pong one\n")
    await tool.wait_for(b"pong one")
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_receive_into, server, received)
        if key_update:
            # "K": a KeyUpdate asking us to update too. We are only receiving, so our
            # reply can only have come from receive_some flushing the outgoing BIO.
            await tool.type(b"K\n")
            await tool.wait_for(PEER_GOT_OUR_KEY_UPDATE)
        await tool.type(b"hello two\n")
    assert received == [b"hello two\n"]
    await server.send_all(b"pong two\n")  # under our new keys, for TLS 1.3
    await tool.wait_for(b"pong two")
    await tool.end_input()
    assert await server.receive_some() == b""  # s_client sends close_notify at EOF
    assert not server.closed_abruptly


@needs_openssl
@pytest.mark.parametrize(("flag", "key_update"), [("-tls1_3", True), ("-tls1_2", False)])
async def test_openssl_s_client_talks_to_our_server(
    pem_files: tuple[Path, Path], flag: str, key_update: bool
) -> None:
    ca_file, _ = pem_files
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    tool = await _start_tool(
        "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SERVER_NAME,
        "-CAfile", str(ca_file), "-verify_return_error", "-msg", flag,
    )  # fmt: skip
    try:
        with trio.fail_after(TIMEOUT_SECONDS):
            transport = await listeners[0].accept()
            async with TlsStream(transport, _server_context(), server_side=True) as server:
                await _s_client_session(tool, server, key_update)
    finally:
        await tool.close()
        for listener in listeners:
            await listener.aclose()


async def _s_server_session(tool: _Tool, client: TlsStream) -> None:
    await client.do_handshake()
    await client.send_all(b"hello server\n")
    await tool.wait_for(b"hello server")
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_receive_into, client, received)
        await tool.type(b"K\n")  # s_server: KeyUpdate(update_requested)
        await tool.wait_for(PEER_GOT_OUR_KEY_UPDATE)
        await tool.type(b"after update\n")
    assert received == [b"after update\n"]
    await client.send_all(b"we updated too\n")
    await tool.wait_for(b"we updated too")
    await client.send_eof()
    await tool.wait_for(b"CLOSED")


@needs_openssl
async def test_our_client_talks_to_openssl_s_server_through_a_key_update(
    pem_files: tuple[Path, Path],
) -> None:
    _, server_file = pem_files
    tool = await _start_tool(
        "s_server", "-accept", "127.0.0.1:0", "-cert", str(server_file), "-naccept", "1",
        "-tls1_3", "-msg",
    )  # fmt: skip
    try:
        port = int(await tool.wait_for_match(rb"ACCEPT 127\.0\.0\.1:(\d+)\r?\n"))
        with trio.fail_after(TIMEOUT_SECONDS):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            async with _client(_client_context(ssl.TLSVersion.TLSv1_3), tcp, SERVER_NAME) as client:
                await _s_server_session(tool, client)
    finally:
        await tool.close()
