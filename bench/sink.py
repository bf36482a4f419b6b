"""Plaintext backend for the benchmark, run as a subprocess by ``bench/run.py``.

Four listeners on 127.0.0.1, ports chosen by the kernel and printed as the first JSON line:

* ``bulk``: the first byte chooses the mode. ``U`` (upload): read until EOF, then print one
  JSON line with the bytes received and the time between the first and the last read.
  ``D`` (download): send as fast as the peer takes it, until it goes away.
* ``smtp``: a minimal, fast SMTP server. It greets at once, answers EHLO/HELO/MAIL/RCPT/RSET/
  NOOP/QUIT, and reads a DATA body with ``find`` over whole reads until ``CRLF.CRLF`` (a read
  without a dot is not searched further: memchr). The
  SMTP DATA and NOOP latency tests use it (a thread per session).
* ``greet``: sends the SMTP greeting and closes. The handshake test's backend.
* ``park``: sends the SMTP greeting and holds the connection, without a thread: one selector
  thread serves them all, and only notices the peer going away. The idle-connection tests hold
  their sessions here (9,000 of them would be 9,000 threads on the SMTP side).

The sink shares its CPU with the load client, so it is built to cost little: blocking sockets
with a thread per connection (a Python event loop costs several microseconds per read), and the
download side sends with ``sendfile`` from a memfd. The upload side copies what it reads into
user space, as any real backend and the SMTP side do: with ``MSG_TRUNC`` (the kernel discards
without a copy) the relay's sends cost it less CPU on loopback (tlsgate: ~1.2 against ~1.7 ns
per byte), so the bulk figure was not the work a DATA body costs the relay beside it. The
process exits when its standard input closes, so it never outlives the harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

CHUNK = 256 * 1024
END_OF_DATA = b"\r\n.\r\n"
MAX_LINE = 64 * 1024
GREETING = b"220 sink.bench.invalid ESMTP bench sink\r\n"
EHLO_REPLY = b"250-sink.bench.invalid\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n"

_emit_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    with _emit_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


# --- bulk ------------------------------------------------------------------------------------


def bulk_upload(conn: socket.socket) -> None:
    buf = bytearray(CHUNK)
    total = 0
    first = last = 0.0
    first_size = 0
    while True:
        try:
            n = conn.recv_into(buf, CHUNK)  # copied out, not MSG_TRUNC: see the docstring
        except OSError:
            break
        if n == 0:
            break
        last = time.perf_counter()
        if total == 0:
            first, first_size = last, n
        total += n
    # The first read starts the clock, so its bytes are not part of the timed window.
    emit({"kind": "upload", "bytes": total - first_size, "seconds": last - first})


def bulk_download(conn: socket.socket) -> None:
    size = 16 * 1024 * 1024
    fd = os.memfd_create("bench-source")
    try:
        os.write(fd, bytes(range(256)) * (size // 256))
        while True:  # until the peer goes away (OSError)
            offset = 0
            while offset < size:
                offset += os.sendfile(conn.fileno(), fd, offset, size - offset)
    finally:
        os.close(fd)


def bulk_connection(conn: socket.socket) -> None:
    mode = conn.recv(1)
    if mode == b"U":
        bulk_upload(conn)
    elif mode == b"D":
        bulk_download(conn)


# --- SMTP ------------------------------------------------------------------------------------


def _find_end(tail: bytes, data: bytes | bytearray, n: int) -> int:
    """Where the body ends within ``data[:n]`` (just past CRLF.CRLF), or -1. ``tail`` holds
    the last bytes before ``data``, for a terminator that straddles two reads."""
    j = (tail + bytes(data[: min(4, n)])).find(END_OF_DATA)
    if j >= 0:
        return j + len(END_OF_DATA) - len(tail)
    if data.find(b".", 0, n) < 0:  # memchr: a base64 attachment costs this CPU next to nothing
        return -1
    j = data.find(END_OF_DATA, 0, n)
    return j + len(END_OF_DATA) if j >= 0 else -1


def read_body(conn: socket.socket, pending: bytes) -> tuple[int, bytes]:
    """Consume a DATA body up to and including CRLF.CRLF; return (bytes consumed, leftover).

    Whole reads into one buffer, searched with ``find``: no line splitting, no copy.
    """
    tail = b"\r\n"  # the CRLF that ended the DATA line: an empty body is just ".\r\n"
    cut = _find_end(tail, pending, len(pending))
    if cut >= 0:
        return cut, pending[cut:]
    consumed = len(pending)
    tail = (tail + pending[-4:])[-4:]
    buf = bytearray(CHUNK)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            raise ConnectionError("EOF inside DATA")
        cut = _find_end(tail, buf, n)
        if cut >= 0:
            return consumed + cut, bytes(buf[cut:n])
        consumed += n
        tail = (tail + bytes(buf[max(0, n - 4) : n]))[-4:]


def smtp_connection(conn: socket.socket) -> None:
    conn.sendall(GREETING)
    buf = b""
    while True:
        i = buf.find(b"\n")
        if i < 0:
            if len(buf) > MAX_LINE:
                conn.sendall(b"500 5.5.6 line too long\r\n")
                return
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            continue
        line, buf = buf[: i + 1], buf[i + 1 :]
        verb = line[:4].upper()
        if verb == b"EHLO":
            conn.sendall(EHLO_REPLY)
        elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            conn.sendall(b"250 2.0.0 OK\r\n")
        elif verb == b"DATA":
            conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            size, buf = read_body(conn, buf)
            conn.sendall(b"250 2.0.0 queued %d bytes\r\n" % size)
        elif verb == b"QUIT":
            conn.sendall(b"221 2.0.0 bye\r\n")
            return
        else:
            conn.sendall(b"502 5.5.2 command not implemented\r\n")


def greet_connection(conn: socket.socket) -> None:
    conn.send(GREETING)


def serve_parked(listener: socket.socket) -> None:
    """Greet every connection and keep it open until the peer closes it (a daemon thread)."""
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    while True:
        for key, _mask in sel.select():
            if key.fileobj is listener:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    for _ in range(256):  # bounded: a burst of accepts, then other events
                        conn, _addr = listener.accept()
                        conn.setblocking(False)
                        try:
                            conn.send(GREETING)  # 40 bytes into an empty buffer: never short
                        except OSError:
                            conn.close()
                            continue
                        sel.register(conn, selectors.EVENT_READ)
                continue
            peer = key.fileobj
            assert isinstance(peer, socket.socket)
            try:
                data = peer.recv(65536)  # a parked peer sends nothing; anything is discarded
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(peer)
                peer.close()


# --- serving ---------------------------------------------------------------------------------


def _run(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        handler(conn)


def serve(
    listener: socket.socket, handler: Callable[[socket.socket], None], threaded: bool
) -> None:
    """Accept forever (a daemon thread); each connection in its own thread, if ``threaded``."""
    while True:
        try:
            conn, _addr = listener.accept()
        except OSError:
            time.sleep(0.01)
            continue
        if threaded:
            threading.Thread(target=_run, args=(handler, conn), daemon=True).start()
        else:
            _run(handler, conn)


def main() -> None:
    threading.stack_size(256 * 1024)  # 1,000 idle SMTP sessions hold 1,000 threads
    ports = {}
    for name, handler, threaded in (
        ("bulk", bulk_connection, True),
        ("smtp", smtp_connection, True),
        ("greet", greet_connection, False),
    ):
        listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        ports[name] = listener.getsockname()[1]
        threading.Thread(target=serve, args=(listener, handler, threaded), daemon=True).start()
    parking = socket.create_server(("127.0.0.1", 0), backlog=4096)
    ports["park"] = parking.getsockname()[1]
    threading.Thread(target=serve_parked, args=(parking,), daemon=True).start()
    emit({"kind": "ready", **ports})
    sys.stdin.buffer.read()  # returns when the harness closes our stdin, or exits


if __name__ == "__main__":
    main()
