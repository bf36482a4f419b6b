"""Bounded line splitting and dot-terminated body scanning, shared by the mediators.

PURE. Both are built for the bulk path: `LineBuffer` remembers where it stopped searching so a
long partial line costs O(n) overall, and `BodyEndScanner` looks for the end of a DATA body or a
POP3 multi-line response with one `bytes.find` per chunk instead of splitting lines.
"""

from __future__ import annotations

import re

# RFC 5321 §4.5.2 and RFC 1939 §3: a dot-stuffed body ends with a line holding only ".",
# properly CRLF "." CRLF, where the first CRLF ends the body's last line (or the command or
# status line itself).
BODY_TERMINATOR = b"\r\n.\r\n"
# The first dot line that ends a body or could: "." then CRLF or LF, or cut off at the end.
_DOT_LINE = re.compile(rb"\n\.(\r\n|\n|\r?\Z)")
_CR = 0x0D


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


class AmbiguousBodyEndError(Exception):
    """A dot line with a bare LF: some servers end the body there, others do not.

    Such a body is how SMTP smuggling works (CVE-2023-51764 and friends): the proxy and the
    backend would disagree on where the body ends, and whatever follows would reach the
    backend as commands the proxy never saw.
    """


class BodyEndScanner:
    """Finds the end of a dot-terminated body across chunk boundaries.

    One regex pass per chunk that holds a dot at all, no copies of
    the chunk except when it starts right after an unfinished dot line (a few bytes carried
    over). Create one right after the line that starts the body (the DATA command, a POP3
    `+OK` line): that line's CRLF counts, so an empty body ("." CRLF straight away) is found.

    Args:
        strict: for bodies from a client (SMTP DATA): a dot line with a bare LF before or
            after it raises `AmbiguousBodyEndError`. Not strict (a POP3 response from the
            backend): such a line ends the body, as it does for a line-based mail client.
    """

    __slots__ = ("_carry", "_strict")

    def __init__(self, *, strict: bool) -> None:
        self._strict = strict
        self._carry = b"\r\n"

    def feed(self, chunk: bytes) -> int:
        """Return the offset in `chunk` just past the end of the body, or -1 if not there yet.

        Once it returns an offset the scanner is spent; make a new one for the next body.

        Raises:
            AmbiguousBodyEndError: (strict only) a bare-LF dot line.
        """
        carried = len(self._carry)
        data = self._carry + chunk if carried else chunk
        # A dot line needs a dot. Base64 attachments, the bulk of large mail, have none, and
        # memchr finds that out at ~70 GB/s. Otherwise one regex pass finds the first dot line
        # that matters, in C, stepping over dot-stuffed lines ("..") that a find() loop would
        # stop at one by one: 1.7-3 GB/s on text against ~1 GB/s.
        match = _DOT_LINE.search(data) if b"." in data else None
        if match is not None:
            ending = match.group(1)
            if ending == b"\r\n" and match.start() > 0 and data[match.start() - 1] == _CR:
                return match.end() - carried  # CRLF "." CRLF: the end of the body
            if ending in (b"\n", b"\r\n"):  # a bare LF before or after the dot
                if self._strict:
                    raise AmbiguousBodyEndError
                return match.end() - carried
            # Otherwise a dot line cut off at the end of the data: decided with the next chunk.
        # Carry the last bytes only when an unfinished dot line, or the CR before one, could
        # be among them; a dot line at the start of a chunk without a carry had no CR before it.
        self._carry = data[-4:] if b"\n" in data[-3:] or data[-1:] == b"\r" else b""
        return -1
