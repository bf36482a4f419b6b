"""SMTP reply parsing and EHLO keyword filtering (RFC 5321 §4.2, §4.1.1.1).

PURE.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete, possibly multi-line, SMTP reply exactly as the backend sent it."""

    code: int  # 0 when the backend sent something that is not an SMTP reply
    lines: tuple[bytes, ...]  # each with its line ending

    @property
    def raw(self) -> bytes:
        return b"".join(self.lines)


def _reply_code(line: bytes) -> int:
    return int(line[:3]) if line[:3].isdigit() else 0


def is_final_reply_line(line: bytes) -> bool:
    """RFC 5321 §4.2.1: "NNN-" continues a multi-line reply, "NNN " or "NNN" ends it.

    Anything that is not an SMTP reply line ends the reply too, so a confused backend cannot
    make the mediator wait forever for a last line.
    """
    return not (len(line) > 3 and line[:3].isdigit() and line[3:4] == b"-")


# An EHLO reply lists a few dozen extensions; no legitimate reply comes near this.
MAX_REPLY_LINES = 256


class ReplyTooLongError(Exception):
    """A multi-line reply went on past MAX_REPLY_LINES."""


class ReplyAssembler:
    """Collects reply lines until a final line completes a `Reply`."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: list[bytes] = []

    def add(self, line: bytes) -> Reply | None:
        """Raises: ReplyTooLongError: the reply has too many lines to hold."""
        if len(self._lines) >= MAX_REPLY_LINES:
            raise ReplyTooLongError
        self._lines.append(line)
        if not is_final_reply_line(line):
            return None
        lines, self._lines = tuple(self._lines), []
        return Reply(_reply_code(lines[0]), lines)


def ehlo_keyword(line: bytes) -> bytes:
    """The upper-cased EHLO keyword of a reply line ("250-AUTH=LOGIN PLAIN" -> b"AUTH")."""
    text = line[4:].strip().upper()
    return text.split(None, 1)[0].split(b"=", 1)[0] if text else b""


def rewrite_ehlo_reply(
    reply: Reply, *, remove: frozenset[bytes], add: tuple[bytes, ...] = ()
) -> bytes:
    """Drop the extension lines whose keyword is in `remove`, append `add`, and renumber the
    continuation markers so the result is again one well-formed 250 reply.

    The first line (the server's domain and greeting) is always kept.
    """
    bodies = [reply.lines[0][4:].rstrip(b"\r\n")]
    bodies += [
        line[4:].rstrip(b"\r\n") for line in reply.lines[1:] if ehlo_keyword(line) not in remove
    ]
    bodies += add
    code = str(reply.code).encode()
    last = len(bodies) - 1
    return b"".join(
        code + (b" " if index == last else b"-") + body + b"\r\n"
        for index, body in enumerate(bodies)
    )
