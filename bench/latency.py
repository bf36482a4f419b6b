"""The latency a relay adds to one SMTP command round trip: NOOPs inside an established session.

Each measurement runs sessions through the relay and, at the same time, plaintext sessions
straight to the sink's SMTP port (the "direct" path). Both kinds are driven by the same loop in
the same process, interleaved, so that whatever the machine does during the run hits both alike;
the added latency is a percentile through the relay minus the same percentile direct.

* ``single``: one session through the relay and one direct, alternately, one NOOP at a time,
  a pause between round trips (the relay is otherwise idle: this is one session alone).
* ``busy``: ``sessions`` through the relay and as many direct, each sending one NOOP a second
  (open loop: a NOOP goes at its time, whether or not the previous reply came back), their
  sending times spread evenly over the second.

A round trip is timed with ``perf_counter_ns`` from just before the client encrypts the NOOP to
just after it has decrypted the reply line, so the client's own TLS record work (a few µs) counts
as the relay's. The loop is a bare epoll selector over non-blocking sockets with ``SSLObject``
over ``MemoryBIO``s: a few µs per event, far below what an asyncio or trio loop adds, and the
same for both paths; at 400 NOOPs/s it keeps the client CPU about 2% busy.
"""

from __future__ import annotations

import contextlib
import math
import selectors
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

from clients import _SmtpLink

NOOP = b"NOOP\r\n"
EHLO = b"EHLO bench.client.invalid"
DRAIN_SECONDS = 2.0  # after the last NOOP, for the replies in flight
WARM_UP = 50  # round trips per session before the single-session figures are taken


class NoopSession:
    """An SMTP session ready for NOOPs: plaintext, implicit TLS, or upgraded with STARTTLS.

    ``mode`` is "plain", "implicit" or "starttls". The set-up (greeting, EHLO, STARTTLS, EHLO)
    runs blocking; ``nonblocking()`` then hands the socket to a selector loop.
    """

    def __init__(self, port: int, mode: str) -> None:
        self.link = _SmtpLink(port, implicit_tls=mode == "implicit")
        try:
            self.link.command(b"", 220)
            ehlo = self.link.command(EHLO, 250)
            if mode == "starttls":
                if not any(line[4:].upper().startswith(b"STARTTLS") for line in ehlo):
                    raise ConnectionError("SMTP: STARTTLS not offered")
                self.link.command(b"STARTTLS", 220)
                self.link.start_tls()
                self.link.command(EHLO, 250)
        except BaseException:
            self.link.close()
            raise
        if self.link.buf:
            raise ConnectionError(f"SMTP: unexpected bytes after EHLO: {self.link.buf!r}")
        self.sock = self.link.sock
        pipe = self.link.pipe
        self.tls = pipe.tls if pipe else None
        self.incoming = pipe.incoming if pipe else None
        self.outgoing = pipe.outgoing if pipe else None
        self.buf = b""
        self.sent: deque[int] = deque()  # send times of the NOOPs not yet answered
        self.samples: list[int] = []  # round trips, ns

    def nonblocking(self) -> None:
        self.sock.setblocking(False)

    def send_noop(self) -> None:
        sent = time.perf_counter_ns()
        if self.tls is not None and self.outgoing is not None:
            self.tls.write(NOOP)
            data = self.outgoing.read()
        else:
            data = NOOP
        # A NOOP record is under 100 bytes and the socket buffer is empty: one send takes it
        # all, blocking or not.
        if self.sock.send(data) != len(data):
            raise ConnectionError("a short send of a NOOP")
        self.sent.append(sent)

    def on_readable(self) -> None:
        """Take what arrived; every complete reply line closes the oldest NOOP."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the relay closed the session")
        if self.tls is not None and self.incoming is not None:
            self.incoming.write(data)
            data = b""
            with contextlib.suppress(ssl.SSLWantReadError):  # a partial record, or a ticket
                while chunk := self.tls.read(65536):
                    data += chunk
        now = time.perf_counter_ns()
        self.buf += data
        while (end := self.buf.find(b"\r\n")) >= 0:
            line, self.buf = self.buf[:end], self.buf[end + 2 :]
            if not line.startswith(b"250 "):
                raise ConnectionError(f"NOOP: expected 250, got {line!r}")
            if not self.sent:
                raise ConnectionError(f"a reply without a NOOP: {line!r}")
            self.samples.append(now - self.sent.popleft())

    def round_trip(self) -> None:
        """One NOOP and its reply, blocking."""
        before = len(self.samples)
        self.send_noop()
        for _ in range(1000):
            if len(self.samples) > before:
                return
            self.on_readable()
        raise ConnectionError("NOOP: no reply line")

    def close(self) -> None:
        self.sock.setblocking(True)
        self.link.close()


@dataclass
class Latency:
    """Round trips through the relay and direct to the sink, in µs."""

    relayed: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)
    late_sends: int = 0  # busy only: NOOPs that went more than 5 ms after their time

    def added(self, q: float) -> float:
        """Percentile ``q`` (0-100) through the relay minus the same percentile direct."""
        return percentile(self.relayed, q) - percentile(self.direct, q)

    def as_json(self) -> dict[str, float | int]:
        return {
            f"{path}_{name}": percentile(values, q)
            for path, values in (("relayed", self.relayed), ("direct", self.direct))
            for name, q in (("p50", 50), ("p99", 99))
        } | {"round_trips": len(self.relayed), "late_sends": self.late_sends}

    def summary(self) -> str:
        return (
            f"direct p50 {percentile(self.direct, 50):.0f} / p99 {percentile(self.direct, 99):.0f}"
            f" µs; relayed p50 {percentile(self.relayed, 50):.0f} / p99 "
            f"{percentile(self.relayed, 99):.0f} µs; {len(self.relayed)} + {len(self.direct)}"
            " round trips"
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _open(port: int, mode: str, count: int) -> list[NoopSession]:
    sessions: list[NoopSession] = []
    try:  # extend appends as it goes: the sessions opened before a failure are closed
        sessions.extend(NoopSession(port, mode) for _ in range(count))
    except BaseException:
        close_all(sessions)
        raise
    return sessions


def close_all(sessions: list[NoopSession]) -> None:
    for s in sessions:
        with contextlib.suppress(OSError):
            s.close()
    sessions.clear()


def single(relay_port: int, mode: str, direct_port: int, count: int, gap: float) -> Latency:
    """``count`` round trips through the relay and as many direct, alternately, with ``gap``
    seconds of quiet after each pair (which of the two goes first alternates too)."""
    relayed, direct = NoopSession(relay_port, mode), NoopSession(direct_port, "plain")
    try:
        for _ in range(WARM_UP):
            relayed.round_trip()
            direct.round_trip()
        relayed.samples.clear()
        direct.samples.clear()
        for i in range(count):
            first, second = (relayed, direct) if i % 2 else (direct, relayed)
            first.round_trip()
            second.round_trip()
            time.sleep(gap)
    finally:
        relayed.close()
        direct.close()
    return Latency([ns / 1000 for ns in relayed.samples], [ns / 1000 for ns in direct.samples])


def busy(relay_port: int, mode: str, direct_port: int, sessions: int, seconds: float) -> Latency:
    """``sessions`` through the relay and as many direct, each one NOOP a second, open loop,
    for ``seconds``. Relayed session i sends at i/n of each second, direct session i half a
    slot later."""
    relayed = _open(relay_port, mode, sessions)
    try:
        direct = _open(direct_port, "plain", sessions)
    except BaseException:
        close_all(relayed)
        raise
    everyone = relayed + direct
    sel = selectors.DefaultSelector()
    result = Latency()
    try:
        for s in everyone:
            s.nonblocking()
            sel.register(s.sock, selectors.EVENT_READ, s)
        # One second's sending order, by phase: relayed i at i/n, direct i at (i + 0.5)/n.
        slot = 1.0 / sessions
        order = sorted(
            [(i * slot, s) for i, s in enumerate(relayed)]
            + [((i + 0.5) * slot, s) for i, s in enumerate(direct)],
            key=lambda pair: pair[0],
        )
        rounds = max(1, round(seconds))
        total = rounds * len(order)
        start = time.perf_counter() + 0.05
        sent = 0

        def due(k: int) -> float:
            return start + k // len(order) + order[k % len(order)][0]

        hard_stop = start + rounds + DRAIN_SECONDS
        while time.perf_counter() < hard_stop:
            now = time.perf_counter()
            while sent < total and due(sent) <= now:
                if now - due(sent) > 0.005:
                    result.late_sends += 1
                order[sent % len(order)][1].send_noop()
                sent += 1
            if sent == total and not any(s.sent for s in everyone):
                break
            wait = due(sent) - time.perf_counter() if sent < total else 0.05
            for key, _mask in sel.select(timeout=max(wait, 0.0)):
                key.data.on_readable()
        unanswered = sum(len(s.sent) for s in everyone)
        if unanswered:
            raise TimeoutError(f"{unanswered} NOOPs unanswered {DRAIN_SECONDS:.0f} s after the run")
    finally:
        sel.close()
        close_all(everyone)
    result.relayed = [ns / 1000 for s in relayed for ns in s.samples]
    result.direct = [ns / 1000 for s in direct for ns in s.samples]
    return result
