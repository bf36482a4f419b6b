"""Load clients built on Python's ssl module: bulk, idle connections, SMTP sessions, and the
``--hs-client openssl`` handshake load (the default handshake load is ``tls13_client.py``).

They run in the harness process, pinned to the client CPU. All use TLS 1.3 and skip certificate
verification (``CERT_NONE``), to keep the client's CPU cost low. Every socket has a timeout or
sits behind a bounded select loop, and every loop is bounded in time and count.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import random
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

HOST = "127.0.0.1"
IO_TIMEOUT = 20.0
SEND_CHUNK = 256 * 1024
CLOSE_TIMEOUT = 5.0  # for the relay to close after our close_notify
DRAIN_SECONDS = 3.0  # after a handshake window, time for the connections in flight to finish
MAX_MESSAGES_PER_SESSION = 1000  # bounds smtp_data's loop whatever ``seconds`` says


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


@dataclass
class TlsInfo:
    version: str
    cipher: str


# --- bulk -----------------------------------------------------------------------------------
#
# The bulk clients drive ssl.SSLObject over MemoryBIOs, the way a fast relay does: one large
# socket send per 256 KiB of plaintext, and one large socket read feeding every record it holds.
# An SSLSocket would make one send per 16 KiB record, and two reads per record (header, body),
# which costs the client CPU more than the relay under test.


class _TlsPipe:
    """A blocking TLS client connection over a plain socket, driven through MemoryBIOs."""

    def __init__(self, port: int, sock: socket.socket | None = None) -> None:
        """Connect to ``port`` and start TLS, or start TLS on ``sock`` (after STARTTLS)."""
        self.sock = sock or socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = client_context().wrap_bio(self.incoming, self.outgoing)
        self.rbuf = bytearray(SEND_CHUNK)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()
        self.flush()

    def info(self) -> TlsInfo:
        cipher = self.tls.cipher()
        return TlsInfo(self.tls.version() or "?", cipher[0] if cipher else "?")

    def flush(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def fill(self) -> int:
        n = self.sock.recv_into(self.rbuf)
        if n == 0:
            raise ConnectionError("EOF from the relay")
        self.incoming.write(memoryview(self.rbuf)[:n])
        return n

    def send(self, data: bytes | memoryview) -> None:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def send_chunked(self, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), SEND_CHUNK):
            self.send(view[i : i + SEND_CHUNK])

    def recv(self) -> bytes:
        """Plaintext that is available now, or wait for more; b"" after close_notify."""
        while True:
            try:
                return self.tls.read(SEND_CHUNK)
            except ssl.SSLWantReadError:
                self.fill()

    def close(self, graceful: bool) -> None:
        """Graceful: close_notify, then FIN, then read until the relay closes too (so nothing
        unread makes the close a reset). Otherwise just close."""
        try:
            if graceful:
                with contextlib.suppress(ssl.SSLError):
                    self.tls.unwrap()  # queues close_notify; the peer's comes with its EOF
                self.flush()
                self.sock.shutdown(socket.SHUT_WR)
                self.sock.settimeout(CLOSE_TIMEOUT)
                for _ in range(100_000):
                    if not self.sock.recv_into(self.rbuf):
                        break
        except OSError:
            pass
        finally:
            self.sock.close()


def bulk_upload(port: int, seconds: float) -> TlsInfo:
    """Send as fast as possible for ``seconds``; the sink measures what it receives."""
    payload = bytes(range(256)) * (SEND_CHUNK // 256)
    pipe = _TlsPipe(port)
    try:
        info = pipe.info()
        pipe.send(b"U")
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            pipe.send(payload)
    finally:
        pipe.close(graceful=True)
    return info


def bulk_download(port: int, seconds: float) -> tuple[float, TlsInfo]:
    """Receive for ``seconds`` from the first byte on; return (MB/s, TLS info)."""
    pipe = _TlsPipe(port)
    out = bytearray(SEND_CHUNK)
    read = pipe.tls.read
    try:
        info = pipe.info()
        pipe.send(b"D")
        t0 = time.perf_counter()
        start: float | None = None
        total = 0
        while True:
            pipe.fill()
            now = time.perf_counter()
            got = 0
            with contextlib.suppress(ssl.SSLWantReadError):
                while True:
                    n = cast(int, read(SEND_CHUNK, out))  # with a buffer: a count
                    if n == 0:
                        raise ConnectionError("download: close_notify during the run")
                    got += n
            if start is None:  # the clock starts with the first plaintext
                if got:
                    start = now
                elif now - t0 > IO_TIMEOUT:
                    raise TimeoutError("download: no data from the source")
                continue
            total += got
            if now - start >= seconds:
                break
    finally:
        pipe.close(graceful=False)  # abrupt on purpose: the source never stops by itself
    return total / (now - start) / 1e6, info


# --- handshakes and idle connections ---------------------------------------------------------


@dataclass
class _Conn:
    sock: ssl.SSLSocket
    events: int
    started: float


@dataclass
class HandshakeResult:
    completed: int = 0  # inside the measurement window
    failed: int = 0
    window: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    held: list[ssl.SSLSocket] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.completed / self.window if self.window > 0 else 0.0

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.errors[reason] = self.errors.get(reason, 0) + 1


def run_handshakes(
    port: int,
    *,
    concurrency: int,
    seconds: float = 0.0,
    warmup: float = 0.0,
    hold: int = 0,
    on_window: Callable[[str], None] | None = None,
    max_seconds: float = 120.0,
) -> HandshakeResult:
    """Keep ``concurrency`` connections in flight, each a full TLS 1.3 handshake with Python's
    ssl module (no session is offered for resumption), then reading the backend's first bytes
    through the relay.

    With ``hold == 0``: a finished connection sends close_notify and closes, and a new one
    starts; completions are counted for ``seconds`` after ``warmup``, and ``on_window("start")``
    and ``on_window("end")`` are called at the window's edges (the caller samples CPU there).
    With ``hold > 0``: finished connections stay open and idle until ``hold`` of them exist;
    they are returned in ``result.held``, and the caller closes them.
    """
    ctx = client_context()
    sel = selectors.DefaultSelector()
    result = HandshakeResult()
    t0 = time.perf_counter()
    window_start = t0 + warmup
    window_end = window_start + seconds
    hard_stop = t0 + max_seconds
    in_window = ended = False
    next_sweep = t0
    started = 0

    def start_one() -> None:
        nonlocal started
        started += 1
        sock = ctx.wrap_socket(
            socket.socket(socket.AF_INET, socket.SOCK_STREAM), do_handshake_on_connect=False
        )
        sock.setblocking(False)
        rc = sock.connect_ex((HOST, port))
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            result.fail(f"connect: {os.strerror(rc)}")
            return
        conn = _Conn(sock, selectors.EVENT_WRITE, time.perf_counter())
        sel.register(sock, conn.events, conn)

    def want_more() -> bool:
        return started < hold if hold else time.perf_counter() < window_end

    def drop(conn: _Conn, reason: str) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()
        result.fail(reason)

    try:
        for _ in range(concurrency):
            if want_more():
                start_one()
        while sel.get_map():
            now = time.perf_counter()
            if now > hard_stop:
                raise TimeoutError(f"the handshake load did not finish in {max_seconds:.0f} s")
            if not hold:
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
                conn: _Conn = key.data
                sock = conn.sock
                try:
                    if sock.version() is None:  # None until the handshake is done
                        sock.do_handshake()
                    data = sock.recv(4096)
                    if not data:
                        raise ConnectionError("EOF before the backend's greeting")
                except ssl.SSLWantReadError:
                    if conn.events != selectors.EVENT_READ:
                        conn.events = selectors.EVENT_READ
                        sel.modify(sock, conn.events, conn)
                    continue
                except ssl.SSLWantWriteError:
                    if conn.events != selectors.EVENT_WRITE:
                        conn.events = selectors.EVENT_WRITE
                        sel.modify(sock, conn.events, conn)
                    continue
                except (OSError, ValueError) as exc:
                    drop(conn, f"{type(exc).__name__}: {exc}")
                else:
                    sel.unregister(sock)
                    if hold:
                        result.held.append(sock)
                    else:
                        if in_window and time.perf_counter() < window_end:
                            result.completed += 1
                        _close_nonblocking(sock)
                if want_more():
                    start_one()
            if now >= next_sweep:  # connections stuck for IO_TIMEOUT are dropped
                next_sweep = now + 0.5
                for key in list(sel.get_map().values()):
                    if now - key.data.started > IO_TIMEOUT:
                        drop(key.data, "timeout")
        if not hold and not ended:  # every connection failed before the window ended
            result.window = time.perf_counter() - window_start
            if on_window:
                on_window("end")
    finally:
        for key in list(sel.get_map().values()):
            key.data.sock.close()
        sel.close()
    return result


def _close_nonblocking(sock: ssl.SSLSocket) -> None:
    try:
        sock.unwrap()  # writes close_notify; does not wait for the peer's
    except (OSError, ValueError):
        pass
    finally:
        sock.close()


def close_all(socks: list[ssl.SSLSocket]) -> None:
    for sock in socks:
        _close_nonblocking(sock)
    socks.clear()


# --- SMTP ------------------------------------------------------------------------------------


def _dot_stuff(body: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency, and the terminator: ``body`` must end with CRLF."""
    stuffed = (b"." + body if body.startswith(b".") else body).replace(b"\r\n.", b"\r\n..")
    return stuffed + b".\r\n"


def make_message(size: int) -> bytes:
    """A dot-stuffed DATA payload of about ``size`` bytes of text, ending with CRLF.CRLF.

    Every line is text, so the mediator's end-of-body search has to look at every line start:
    the costly case. Every 16th line starts with a dot, so that dot-stuffing is exercised. The
    stuffing is done here, before any timing.
    """
    lines = []
    for i in range(4096):
        text = f"line {i:05d} " + "the quick brown fox jumps over the lazy dog 0123456789 "
        lines.append(("." if i % 16 == 0 else "") + text[:70] + "\r\n")
    block = "".join(lines).encode("ascii")
    return _dot_stuff(block * max(1, size // len(block)))


def make_mime_message(size: int) -> bytes:
    """A dot-stuffed DATA payload of about ``size`` bytes shaped as large mail is: headers, a
    short text part (with a line that starts with a dot) and an attachment in base64 (RFC 2045:
    lines of 76 characters). The attachment is random bytes from a fixed seed."""
    raw = random.Random(2045).randbytes(size * 3 // 4)
    encoded = base64.encodebytes(raw).replace(b"\n", b"\r\n")  # 76 characters a line
    boundary = b"=_bench_boundary_7f3a"
    head = b"\r\n".join(
        [
            b"From: Bench Client <bench@client.invalid>",
            b"To: <sink@sink.invalid>",
            b"Subject: quarterly figures, as promised",
            b"MIME-Version: 1.0",
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"',
            b"",
            b"--" + boundary,
            b"Content-Type: text/plain; charset=us-ascii",
            b"",
            b"Hello. The figures are attached, see figures.bin.",
            b".. and a line that starts with a dot, so the body is dot-stuffed.",
            b"Regards, the bench.",
            b"",
            b"--" + boundary,
            b'Content-Type: application/octet-stream; name="figures.bin"',
            b"Content-Transfer-Encoding: base64",
            b"",
            b"",
        ]
    )
    return _dot_stuff(head + encoded + b"--" + boundary + b"--\r\n")


class _SmtpLink:
    """An SMTP client connection: plaintext first, TLS from the start or after STARTTLS."""

    def __init__(self, port: int, implicit_tls: bool) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
        self.pipe = _TlsPipe(port, self.sock) if implicit_tls else None
        self.buf = b""

    def start_tls(self) -> None:
        if self.buf:
            raise ConnectionError("SMTP: bytes after the STARTTLS reply")
        self.pipe = _TlsPipe(0, self.sock)

    def send(self, data: bytes) -> None:
        if self.pipe:
            self.pipe.send_chunked(data)
        else:
            self.sock.sendall(data)

    def read_reply(self) -> tuple[int, list[bytes]]:
        lines: list[bytes] = []
        for _ in range(1000):
            i = self.buf.find(b"\r\n")
            if i < 0:
                data = self.pipe.recv() if self.pipe else self.sock.recv(65536)
                if not data:
                    raise ConnectionError("SMTP: connection closed")
                self.buf += data
                continue
            line, self.buf = self.buf[:i], self.buf[i + 2 :]
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), lines
        raise ValueError("SMTP: reply too long")

    def command(self, line: bytes, code: int) -> list[bytes]:
        if line:
            self.send(line + b"\r\n")
        got, lines = self.read_reply()
        if got != code:
            what = line.decode() or "greeting"
            raise ConnectionError(f"SMTP {what}: expected {code}, got {b' | '.join(lines)!r}")
        return lines

    def close(self) -> None:
        if self.pipe:
            self.pipe.close(graceful=True)
        else:
            self.sock.close()


def smtp_data(
    port: int,
    message: bytes,
    *,
    starttls: bool,
    seconds: float = 0.0,
    on_window: Callable[[str], None] | None = None,
) -> float:
    """One SMTP session carrying ``message`` (dot-stuffed, with its terminator), again and
    again until the DATA phases add up to ``seconds`` (at least once). Return MB/s of the DATA
    phases: each from the first body byte sent to the 250 reply received.

    ``starttls=True``: a plaintext session that upgrades with STARTTLS (submission, port 587).
    ``starttls=False``: TLS from the first byte (SMTPS, port 465). ``on_window("start")`` and
    ``on_window("end")`` are called before the first DATA and after the last 250.
    """
    link = _SmtpLink(port, implicit_tls=not starttls)
    try:
        link.command(b"", 220)
        ehlo = link.command(b"EHLO bench.client.invalid", 250)
        if starttls:
            if not any(line[4:].upper().startswith(b"STARTTLS") for line in ehlo):
                raise ConnectionError("SMTP: STARTTLS not offered")
            link.command(b"STARTTLS", 220)
            link.start_tls()
            link.command(b"EHLO bench.client.invalid", 250)
        if on_window:
            on_window("start")
        elapsed = 0.0
        sent = 0
        for _ in range(MAX_MESSAGES_PER_SESSION):
            link.command(b"MAIL FROM:<bench@client.invalid>", 250)
            link.command(b"RCPT TO:<sink@sink.invalid>", 250)
            link.command(b"DATA", 354)
            start = time.perf_counter()
            link.send(message)
            lines = link.command(b"", 250)
            elapsed += time.perf_counter() - start
            if str(len(message)).encode() not in lines[-1]:
                raise ConnectionError(f"SMTP: the sink got a different size: {lines[-1]!r}")
            sent += len(message)
            if elapsed >= seconds:
                break
        if on_window:
            on_window("end")
        link.command(b"QUIT", 221)
    finally:
        link.close()
    return sent / elapsed / 1e6
