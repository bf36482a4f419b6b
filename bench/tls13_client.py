"""A minimal TLS 1.3 client handshake, to generate handshake load. Not a secure client.

Why: on two cores the load client and the proxy each get one. A standard OpenSSL 3.0 client
spends more CPU per handshake than an OpenSSL server does (it parses the certificate, builds a
chain even with CERT_NONE, verifies the ECDSA signature, and OpenSSL 3.0's client path is slow):
here about 600 µs against about 350 µs. Such a client saturates before any efficient proxy does.

This client does only what the proxy needs from a peer to complete a full handshake: an
X25519 ClientHello offering TLS_AES_256_GCM_SHA384 and ECDSA signatures, the key schedule, the
check of the server's Finished MAC (so the keys are known right), and the client Finished. It does
not parse the certificate nor verify the CertificateVerify signature. Its ephemeral X25519 keys
come from a small pool made before the run: the proxy's work per handshake does not change (it
makes its own key share and computes the shared secret every time), and the client saves a
key generation. Each handshake is a new, full one: no PSK is offered.

A handshake counts as complete when the first application-data record arrives through the
proxy (the backend's greeting). The client then sends close_notify and reads until EOF.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HASH = "sha384"
HASH_LEN = 48
KEY_LEN = 32
IV_LEN = 12
EMPTY_HASH = hashlib.sha384(b"").digest()
ZEROS = bytes(HASH_LEN)
DRAIN_SECONDS = 3.0  # after the window, time for the connections in flight to finish
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

REC_CCS, REC_ALERT, REC_HANDSHAKE, REC_APPDATA = 20, 21, 22, 23
HS_SERVER_HELLO, HS_CERT_VERIFY, HS_FINISHED = 2, 15, 20


class HandshakeError(Exception):
    pass


# --- key schedule (RFC 8446 section 7.1) -------------------------------------------------------


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, ikm, HASH)


def _expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + bytes([len(context)]) + context
    # length <= HASH_LEN everywhere here, so HKDF-Expand is a single HMAC block.
    return hmac.digest(secret, info + b"\x01", HASH)[:length]


def _traffic(secret: bytes) -> tuple[AESGCM, bytes]:
    key = _expand_label(secret, b"key", b"", KEY_LEN)
    return AESGCM(key), _expand_label(secret, b"iv", b"", IV_LEN)


EARLY_SECRET = _extract(ZEROS, ZEROS)
DERIVED_FROM_EARLY = _expand_label(EARLY_SECRET, b"derived", EMPTY_HASH, HASH_LEN)


def _nonce(iv: bytes, seq: int) -> bytes:
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(IV_LEN, "big")


# --- messages --------------------------------------------------------------------------------


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def client_hello(public_key: bytes) -> bytes:
    """The ClientHello handshake message (type and length included)."""
    extensions = b"".join(
        [
            _ext(0x002B, b"\x02\x03\x04"),  # supported_versions: TLS 1.3
            _ext(0x000A, b"\x00\x02\x00\x1d"),  # supported_groups: x25519
            _ext(0x000D, b"\x00\x08\x04\x03\x08\x04\x08\x05\x05\x03"),  # signature_algorithms
            _ext(0x002D, b"\x01\x01"),  # psk_key_exchange_modes: psk_dhe_ke (tickets, as usual)
            _ext(0x0033, b"\x00\x24\x00\x1d\x00\x20" + public_key),  # key_share: x25519
        ]
    )
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + b"\x00"  # legacy_session_id: empty, so no middlebox-compatibility CCS either way
        + b"\x00\x02\x13\x02"  # cipher_suites: TLS_AES_256_GCM_SHA384
        + b"\x01\x00"  # legacy_compression_methods: null
        + struct.pack("!H", len(extensions))
        + extensions
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _server_key_share(server_hello: bytes) -> bytes:
    """The server's x25519 public key from a ServerHello message (with its 4-byte header)."""
    body = memoryview(server_hello)[4:]
    if bytes(body[2:34]) == HRR_RANDOM:
        raise HandshakeError("HelloRetryRequest: the server did not take the x25519 key share")
    pos = 34
    pos += 1 + body[pos]  # legacy_session_id_echo
    if bytes(body[pos : pos + 2]) != b"\x13\x02":
        raise HandshakeError(f"unexpected cipher suite {bytes(body[pos : pos + 2]).hex()}")
    pos += 3  # cipher suite, compression
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    while pos + 4 <= end:
        kind, length = struct.unpack_from("!HH", body, pos)
        pos += 4
        if kind == 0x0033:
            return bytes(body[pos + 4 : pos + length])  # group(2), key length(2), key
        pos += length
    raise HandshakeError("ServerHello without key_share")


# --- one connection ----------------------------------------------------------------------------


class Tls13Handshake:
    """The client side of one TLS 1.3 handshake, fed with bytes as they arrive."""

    def __init__(self, key: X25519PrivateKey, public_key: bytes) -> None:
        self.key = key
        self.hello = client_hello(public_key)
        self.transcript = hashlib.sha384(self.hello)
        self.buf = b""
        self.hs_buf = b""
        self.server_aead: AESGCM | None = None
        self.server_iv = b""
        self.server_seq = 0
        self.client_hs: bytes = b""
        self.server_hs: bytes = b""
        self.handshake_secret = b""
        self.client_app: tuple[AESGCM, bytes] | None = None
        self.app_data_seen = False
        self.out = b""

    def first_flight(self) -> bytes:
        return b"\x16\x03\x01" + struct.pack("!H", len(self.hello)) + self.hello

    def feed(self, data: bytes) -> None:
        """Process bytes from the server; queue what to send in ``self.out``."""
        self.buf += data
        while len(self.buf) >= 5:
            kind = self.buf[0]
            length = int.from_bytes(self.buf[3:5], "big")
            if len(self.buf) < 5 + length:
                return
            header, record = self.buf[:5], self.buf[5 : 5 + length]
            self.buf = self.buf[5 + length :]
            if kind == REC_HANDSHAKE and self.server_aead is None:
                self._handshake_bytes(record)
            elif kind == REC_APPDATA and self.server_aead is not None:
                self._protected(header, record)
            elif kind == REC_ALERT:
                raise HandshakeError(f"alert from the server: {record.hex()}")
            elif kind != REC_CCS:
                raise HandshakeError(f"unexpected record type {kind}")

    def _protected(self, header: bytes, record: bytes) -> None:
        assert self.server_aead is not None
        nonce = _nonce(self.server_iv, self.server_seq)
        self.server_seq += 1
        inner = self.server_aead.decrypt(nonce, record, header).rstrip(b"\x00")
        kind, content = inner[-1], inner[:-1]
        if self.client_app is not None:  # application traffic: tickets, data, alerts
            if kind == REC_APPDATA:
                self.app_data_seen = True
            elif kind == REC_ALERT and content[:1] == b"\x02":
                raise HandshakeError(f"fatal alert from the server: {content.hex()}")
            return
        if kind != REC_HANDSHAKE:
            raise HandshakeError(f"record type {kind} during the handshake")
        self._handshake_bytes(content)

    def _handshake_bytes(self, data: bytes) -> None:
        self.hs_buf += data
        while len(self.hs_buf) >= 4:
            length = int.from_bytes(self.hs_buf[1:4], "big")
            if len(self.hs_buf) < 4 + length:
                return
            msg, self.hs_buf = self.hs_buf[: 4 + length], self.hs_buf[4 + length :]
            self._message(msg)

    def _message(self, msg: bytes) -> None:
        kind = msg[0]
        if kind == HS_SERVER_HELLO:
            self.transcript.update(msg)
            shared = self.key.exchange(X25519PublicKey.from_public_bytes(_server_key_share(msg)))
            self.handshake_secret = _extract(DERIVED_FROM_EARLY, shared)
            th = self.transcript.digest()
            self.client_hs = _expand_label(self.handshake_secret, b"c hs traffic", th, HASH_LEN)
            self.server_hs = _expand_label(self.handshake_secret, b"s hs traffic", th, HASH_LEN)
            self.server_aead, self.server_iv = _traffic(self.server_hs)
            self.server_seq = 0
        elif kind == HS_FINISHED:
            finished_key = _expand_label(self.server_hs, b"finished", b"", HASH_LEN)
            expected = hmac.digest(finished_key, self.transcript.digest(), HASH)
            if not hmac.compare_digest(expected, msg[4:]):
                raise HandshakeError("the server's Finished does not verify")
            self.transcript.update(msg)
            self._client_finished()
        else:  # EncryptedExtensions, Certificate, CertificateVerify: taken on trust
            self.transcript.update(msg)

    def _client_finished(self) -> None:
        th = self.transcript.digest()  # ClientHello .. server Finished
        finished_key = _expand_label(self.client_hs, b"finished", b"", HASH_LEN)
        verify = hmac.digest(finished_key, th, HASH)
        msg = b"\x14" + len(verify).to_bytes(3, "big") + verify
        master = _extract(
            _expand_label(self.handshake_secret, b"derived", EMPTY_HASH, HASH_LEN), ZEROS
        )
        client_ap = _expand_label(master, b"c ap traffic", th, HASH_LEN)
        server_ap = _expand_label(master, b"s ap traffic", th, HASH_LEN)
        self.out += _seal(_traffic(self.client_hs), 0, msg + b"\x16")
        self.client_app = _traffic(client_ap)
        self.server_aead, self.server_iv = _traffic(server_ap)
        self.server_seq = 0

    def close_notify(self) -> bytes:
        assert self.client_app is not None
        return _seal(self.client_app, 0, b"\x01\x00\x15")


def _seal(keys: tuple[AESGCM, bytes], seq: int, inner: bytes) -> bytes:
    aead, iv = keys
    header = b"\x17\x03\x03" + struct.pack("!H", len(inner) + 16)
    return header + aead.encrypt(_nonce(iv, seq), inner, header)


# --- the load loop ----------------------------------------------------------------------------


@dataclass
class _Conn:
    sock: socket.socket
    hs: Tls13Handshake
    started: float
    events: int
    done: bool = False


@dataclass
class LoadResult:
    completed: int = 0  # inside the measurement window
    failed: int = 0
    window: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.completed / self.window if self.window > 0 else 0.0


def run_load(
    port: int,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    on_window: Callable[[str], None] | None = None,
    io_timeout: float = 10.0,
) -> LoadResult:
    """Keep ``concurrency`` handshakes in flight against 127.0.0.1:``port`` for ``warmup`` +
    ``seconds``; count those completed in the window after the warmup, and call
    ``on_window("start")`` and ``on_window("end")`` at its edges. Then let the connections in
    flight finish (uncounted), so that the relay sees no aborted handshakes."""
    pool = [X25519PrivateKey.generate() for _ in range(16)]
    pool_pub = [k.public_key().public_bytes_raw() for k in pool]
    sel = selectors.DefaultSelector()
    result = LoadResult()
    t0 = time.perf_counter()
    window_start, window_end = t0 + warmup, t0 + warmup + seconds
    in_window = ended = False
    next_sweep = t0
    n = 0

    def start() -> None:
        nonlocal n
        i = n % len(pool)
        n += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        rc = sock.connect_ex(("127.0.0.1", port))
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            fail(f"connect: {os.strerror(rc)}")
            return
        conn = _Conn(sock, Tls13Handshake(pool[i], pool_pub[i]), time.perf_counter(), 0)
        conn.events = selectors.EVENT_WRITE
        sel.register(sock, conn.events, conn)

    def fail(reason: str) -> None:
        result.failed += 1
        result.errors[reason] = result.errors.get(reason, 0) + 1

    def finish(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()
        if time.perf_counter() < window_end:
            start()

    try:
        for _ in range(concurrency):
            start()
        while sel.get_map():
            now = time.perf_counter()
            if not in_window and now >= window_start:
                in_window = True
                if on_window:
                    on_window("start")
            if now >= window_end and not ended:
                ended = True  # no new connections; those in flight finish, uncounted
                result.window = now - window_start
                if on_window:
                    on_window("end")
            if now >= window_end + DRAIN_SECONDS:
                break
            for key, _mask in sel.select(timeout=0.2):
                conn = key.data
                try:
                    if conn.events == selectors.EVENT_WRITE:  # connected: say hello
                        conn.sock.send(conn.hs.first_flight())
                        conn.events = selectors.EVENT_READ
                        sel.modify(conn.sock, conn.events, conn)
                        continue
                    data = conn.sock.recv(65536)
                    if not data:
                        if not conn.done:
                            fail("EOF before the backend's greeting")
                        finish(conn)
                        continue
                    if conn.done:
                        continue  # the server's close_notify; wait for its EOF
                    conn.hs.feed(data)
                    if conn.hs.app_data_seen:
                        conn.done = True
                        if in_window and time.perf_counter() < window_end:
                            result.completed += 1
                        conn.hs.out += conn.hs.close_notify()
                    if conn.hs.out:
                        conn.sock.send(conn.hs.out)
                        conn.hs.out = b""
                except Exception as exc:  # OSError, HandshakeError, InvalidTag, ...
                    if not conn.done:  # after the greeting, a reset is just a fast goodbye
                        fail(f"{type(exc).__name__}: {exc}")
                    finish(conn)
            if now >= next_sweep:  # connections stuck for io_timeout are dropped
                next_sweep = now + 0.5
                for key in list(sel.get_map().values()):
                    if now - key.data.started > io_timeout:
                        fail("timeout")
                        finish(key.data)
        if not ended:  # every connection failed before the window ended
            result.window = time.perf_counter() - window_start
            if on_window:
                on_window("end")
    finally:
        for key in list(sel.get_map().values()):
            key.data.sock.close()
        sel.close()
    return result


# --- idle sessions ----------------------------------------------------------------------------


@dataclass
class IdleResult:
    held: list[socket.socket] = field(default_factory=list)
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def open_idle(port: int, count: int, *, concurrency: int, max_seconds: float = 120.0) -> IdleResult:
    """Open ``count`` TLS sessions to 127.0.0.1:``port``, ``concurrency`` handshakes at a
    time, and keep each one open, idle, once the backend's greeting has come through.

    The lean handshake keeps the client side small: a held session is just its socket (an
    OpenSSL client would keep an SSL object of tens of KiB per session, 9,000 times, in the
    harness), and a handshake costs the client CPU a fraction of what it costs the relay. The
    caller closes ``result.held``; a failed session is dropped and counted, not retried.
    """
    pool = [X25519PrivateKey.generate() for _ in range(16)]
    pool_pub = [k.public_key().public_bytes_raw() for k in pool]
    sel = selectors.DefaultSelector()
    result = IdleResult()
    deadline = time.perf_counter() + max_seconds
    started = 0

    def start() -> None:
        nonlocal started
        i = started % len(pool)
        started += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        rc = sock.connect_ex(("127.0.0.1", port))
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            fail(f"connect: {os.strerror(rc)}")
            return
        conn = _Conn(sock, Tls13Handshake(pool[i], pool_pub[i]), time.perf_counter(), 0)
        conn.events = selectors.EVENT_WRITE
        sel.register(sock, conn.events, conn)

    def fail(reason: str) -> None:
        result.failed += 1
        result.errors[reason] = result.errors.get(reason, 0) + 1

    def next_one() -> None:
        if started < count:
            start()

    try:
        for _ in range(min(concurrency, count)):
            start()
        while sel.get_map():
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"{len(result.held)} of {count} sessions open after {max_seconds:.0f} s"
                )
            for key, _mask in sel.select(timeout=0.2):
                conn = key.data
                try:
                    if conn.events == selectors.EVENT_WRITE:  # connected: say hello
                        conn.sock.send(conn.hs.first_flight())
                        conn.events = selectors.EVENT_READ
                        sel.modify(conn.sock, conn.events, conn)
                        continue
                    data = conn.sock.recv(65536)
                    if not data:
                        raise ConnectionError("EOF before the backend's greeting")
                    conn.hs.feed(data)
                    if conn.hs.out:  # the client Finished
                        conn.sock.send(conn.hs.out)
                        conn.hs.out = b""
                    if conn.hs.app_data_seen:  # the relay is done and the backend connected
                        sel.unregister(conn.sock)
                        result.held.append(conn.sock)  # the handshake state is dropped
                        next_one()
                except Exception as exc:  # OSError, HandshakeError, InvalidTag, ...
                    sel.unregister(conn.sock)
                    conn.sock.close()
                    fail(f"{type(exc).__name__}: {exc}")
                    next_one()
    except BaseException:
        for sock in result.held:
            sock.close()
        result.held.clear()
        raise
    finally:
        for key in list(sel.get_map().values()):
            key.data.sock.close()
        sel.close()
    return result
