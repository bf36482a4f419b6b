"""A small typed Playbook for the sans-I/O mediators (after mitmproxy's `tutils.Playbook`).

A test drives a mediator the way the net layer does, one input at a time, and looks at what
comes back:

    script = Script(SmtpServerMediator(policy))
    script.backend(b"220 mail.example ESMTP\\r\\n")
    out = script.client(b"STARTTLS\\r\\n")
    assert_outputs(out, SendToClient(b"220 2.0.0 Ready to start TLS\\r\\n"), StartClientTls())

The mediators merge adjacent sends to the same side, and how they merge is incidental, so
`assert_outputs` compares *normalised* lists (adjacent sends to one side joined, empty sends
dropped) and prints an `ndiff` of the two on mismatch. Where only the bytes matter,
`client_bytes` / `backend_bytes` give the concatenation per side.

`Script` also plays by the net layer's rule: it refuses to feed client input while the
mediator says `client_reading_paused`, because the real driver would not read then. A test
that wants to model bytes that were already in flight says so with `ignore_pause=True`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from tlsgate.observe.events import NoticeKind
from tlsgate.protocol.io_types import (
    BackendData,
    BackendEof,
    ClientData,
    ClientEof,
    ClientTlsEstablished,
    IdleTimeout,
    Input,
    Mediator,
    Notice,
    Output,
    SendToBackend,
    SendToClient,
    Shutdown,
    StartClientTls,
)

__all__ = [
    "Script",
    "Segment",
    "assert_outputs",
    "backend_bytes",
    "client_bytes",
    "controls",
    "normalise",
    "notice_kinds",
    "notices",
    "segments",
]


class Script:
    """Feeds inputs to one mediator and keeps the whole transcript."""

    def __init__(self, mediator: Mediator) -> None:
        self.mediator = mediator
        self.transcript: list[tuple[Input, list[Output]]] = []

    @property
    def outputs(self) -> list[Output]:
        """Every output so far, in order."""
        return [output for _, outs in self.transcript for output in outs]

    def paused(self) -> bool:
        """The mediator's `client_reading_paused` now (a method, so mypy does not narrow it)."""
        return self.mediator.client_reading_paused

    def feed(self, event: Input, *, ignore_pause: bool = False) -> list[Output]:
        """Hand one input to the mediator and return its outputs.

        Raises:
            AssertionError: client input while the mediator has paused client reading (the
                net layer would not have read it), unless `ignore_pause`.
        """
        if (
            isinstance(event, ClientData | ClientEof)
            and self.mediator.client_reading_paused
            and not ignore_pause
        ):
            raise AssertionError(
                f"fed {event!r} while client_reading_paused: the net layer would not read now"
            )
        outs = self.mediator.handle(event)
        self.transcript.append((event, outs))
        return outs

    # Shorthands that read like the conversation.

    def client(self, data: bytes, *, ignore_pause: bool = False) -> list[Output]:
        return self.feed(ClientData(data), ignore_pause=ignore_pause)

    def backend(self, data: bytes) -> list[Output]:
        return self.feed(BackendData(data))

    def client_eof(self) -> list[Output]:
        return self.feed(ClientEof())

    def backend_eof(self) -> list[Output]:
        return self.feed(BackendEof())

    def tls_established(self) -> list[Output]:
        return self.feed(ClientTlsEstablished())

    def idle_timeout(self) -> list[Output]:
        return self.feed(IdleTimeout())

    def shutdown(self) -> list[Output]:
        return self.feed(Shutdown())

    def expect(self, event: Input, *expected: Output) -> list[Output]:
        """Feed `event` and assert its outputs equal `expected` (normalised)."""
        outs = self.feed(event)
        assert_outputs(outs, *expected)
        return outs

    def starttls(self, command: bytes = b"STARTTLS\r\n") -> list[Output]:
        """Send the STARTTLS/STLS command and complete the handshake; return all outputs.

        Raises:
            AssertionError: the mediator did not ask for the handshake.
        """
        outs = self.client(command)
        if not any(isinstance(output, StartClientTls) for output in outs):
            raise AssertionError(f"no StartClientTls after {command!r}:\n{_render(outs)}")
        return outs + self.tls_established()


# ---- looking at outputs ----------------------------------------------------------------------


def client_bytes(outputs: Iterable[Output]) -> bytes:
    """Everything sent to the client, concatenated."""
    return b"".join(output.data for output in outputs if isinstance(output, SendToClient))


def backend_bytes(outputs: Iterable[Output]) -> bytes:
    """Everything sent to the backend, concatenated."""
    return b"".join(output.data for output in outputs if isinstance(output, SendToBackend))


def notices(outputs: Iterable[Output]) -> list[Notice]:
    return [output for output in outputs if isinstance(output, Notice)]


def notice_kinds(outputs: Iterable[Output]) -> list[NoticeKind]:
    return [notice.kind for notice in notices(outputs)]


def controls(outputs: Iterable[Output]) -> list[Output]:
    """The outputs that are not sends (notices, StartClientTls, Close, EOFs, SwitchToRelay)."""
    return [output for output in outputs if not isinstance(output, SendToClient | SendToBackend)]


def normalise(outputs: Iterable[Output]) -> list[Output]:
    """Join adjacent sends to the same side and drop empty ones.

    Only sends are merged, and only while nothing else comes between them, so the position of
    every control output relative to the bytes on each side is preserved.
    """
    result: list[Output] = []
    for output in outputs:
        if isinstance(output, SendToClient | SendToBackend):
            if not output.data:
                continue
            last = result[-1] if result else None
            if isinstance(output, SendToClient) and isinstance(last, SendToClient):
                result[-1] = SendToClient(last.data + output.data)
                continue
            if isinstance(output, SendToBackend) and isinstance(last, SendToBackend):
                result[-1] = SendToBackend(last.data + output.data)
                continue
        result.append(output)
    return result


Segment = tuple[bytes, bytes, Output | None]


def segments(outputs: Iterable[Output]) -> list[Segment]:
    """Cut the outputs at each control output: (to client, to backend, control) per piece.

    Two runs with equal segments sent the same bytes to each side before and after every
    control output, whatever the interleaving of the two sides' sends; the final piece has
    control None.
    """
    result: list[Segment] = []
    to_client: list[bytes] = []
    to_backend: list[bytes] = []
    for output in outputs:
        if isinstance(output, SendToClient):
            to_client.append(output.data)
        elif isinstance(output, SendToBackend):
            to_backend.append(output.data)
        else:
            result.append((b"".join(to_client), b"".join(to_backend), output))
            to_client, to_backend = [], []
    result.append((b"".join(to_client), b"".join(to_backend), None))
    return result


# Longer payloads are shown as head ... tail, so a failing bulk test stays readable.
_SHOWN_BYTES = 120


def _show(output: Output) -> str:
    if isinstance(output, SendToClient | SendToBackend) and len(output.data) > _SHOWN_BYTES:
        half = _SHOWN_BYTES // 2
        data = output.data
        return (
            f"{type(output).__name__}({data[:half]!r} ...{len(data) - 2 * half} bytes... "
            f"{data[-half:]!r}, len={len(data)})"
        )
    return repr(output)


def _render(outputs: Sequence[Output]) -> str:
    return "\n".join(f"  {_show(output)}" for output in outputs) or "  (nothing)"


def assert_outputs(got: Iterable[Output], *expected: Output) -> None:
    """Assert that `got` equals `expected` after `normalise`, with an ndiff on mismatch."""
    got_n = normalise(got)
    expected_n = normalise(expected)
    if got_n == expected_n:
        return
    diff = difflib.ndiff([_show(output) for output in expected_n], [_show(o) for o in got_n])
    raise AssertionError(
        "outputs differ (- expected, + got):\n" + "\n".join(f"  {line}" for line in diff)
    )
