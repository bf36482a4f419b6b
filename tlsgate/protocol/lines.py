"""Bounded line splitting and dot-terminated body scanning, shared by the mediators.

PURE. Both are built for the bulk path: `LineBuffer` remembers where it stopped searching so a
long partial line costs O(n) overall, and `BodyEndScanner` looks for the end of a DATA body or a
POP3 multi-line response with one `bytes.find` per chunk instead of splitting lines.
"""

from __future__ import annotations

# RFC 5321 §4.5.3.1.5 and RFC 1939 §3: the terminator of a dot-stuffed body is CRLF "." CRLF,
# where the first CRLF ends the body's last line (or the command/status line itself).
BODY_TERMINATOR = b"\r\n.\r\n"
_TAIL_BYTES = len(BODY_TERMINATOR) - 1


class LineTooLongError(Exception):
    """A peer sent more than the allowed bytes without a line ending."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"line longer than {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class LineBuffer:
    """Accumulates bytes and hands out complete lines (LF-terminated, CR optional).

    A line ending in a bare LF counts as complete (CONTRACT.md, as Postfix accepts it): a
    mediator must never wait for a CR that does not come.
    """

    __slots__ = ("_buffer", "_scan_from", "max_line_bytes")

    def __init__(self, max_line_bytes: int) -> None:
        self._buffer = bytearray()
        self._scan_from = 0
        self.max_line_bytes = max_line_bytes

    def __len__(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """Return the next complete line including its ending, or None if there is none yet.

        Raises:
            LineTooLongError: the next line (complete or not) exceeds `max_line_bytes`.
        """
        end = self._buffer.find(b"\n", self._scan_from)
        if end < 0:
            self._scan_from = len(self._buffer)
            if len(self._buffer) > self.max_line_bytes:
                raise LineTooLongError(self.max_line_bytes)
            return None
        if end + 1 > self.max_line_bytes:
            raise LineTooLongError(self.max_line_bytes)
        line = bytes(self._buffer[: end + 1])
        # CPython's bytearray deletes from the front without moving the rest.
        del self._buffer[: end + 1]
        self._scan_from = 0
        return line

    def take(self, max_bytes: int) -> bytes:
        """Remove and return up to `max_bytes` raw bytes (a BDAT chunk)."""
        taken = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        self._scan_from = 0
        return taken

    def take_all(self) -> bytes:
        taken = bytes(self._buffer)
        self._buffer.clear()
        self._scan_from = 0
        return taken


class BodyEndScanner:
    """Finds the end of a dot-terminated body across chunk boundaries.

    Only the last four bytes seen are remembered, so a 50 MiB body costs one `find` per chunk
    and no copies. Create one right after the line that starts the body (DATA's 354 reply's
    command, a POP3 `+OK` line): that line's CRLF counts as the start of the terminator, so an
    empty body ("." CRLF straight away) is found too.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b"\r\n"

    def feed(self, chunk: bytes) -> int:
        """Return the offset in `chunk` just past the terminator, or -1 if it is not complete.

        Once it returns an offset the scanner is spent; make a new one for the next body.
        """
        # A terminator straddling the boundary starts earlier than any inside the chunk.
        straddling = (self._tail + chunk[:_TAIL_BYTES]).find(BODY_TERMINATOR)
        if straddling >= 0:
            return straddling + len(BODY_TERMINATOR) - len(self._tail)
        inside = chunk.find(BODY_TERMINATOR)
        if inside >= 0:
            return inside + len(BODY_TERMINATOR)
        self._tail = (self._tail + chunk[-_TAIL_BYTES:])[-_TAIL_BYTES:]
        return -1
