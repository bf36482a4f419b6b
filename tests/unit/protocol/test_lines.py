"""LineBuffer and BodyEndScanner: the two splitters every mediator's correctness rests on."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsgate.protocol.lines import (
    AmbiguousBodyEndError,
    BodyEndScanner,
    LineBuffer,
    LineTooLongError,
)

# ---- LineBuffer ------------------------------------------------------------------------------


def drain(buffer: LineBuffer) -> list[bytes]:
    lines = []
    while (line := buffer.next_line()) is not None:
        lines.append(line)
    return lines


def test_crlf_lines_are_returned_with_their_ending() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"EHLO a\r\nNOOP\r\n")
    assert drain(buffer) == [b"EHLO a\r\n", b"NOOP\r\n"]
    assert len(buffer) == 0


def test_bare_lf_ends_a_line() -> None:
    # CONTRACT.md: a line ending in a bare LF counts as complete, as Postfix accepts it.
    buffer = LineBuffer(100)
    buffer.feed(b"EHLO a\nNOOP\r\nQUIT\n")
    assert drain(buffer) == [b"EHLO a\n", b"NOOP\r\n", b"QUIT\n"]


def test_bare_cr_does_not_end_a_line() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"EHLO a\rNOOP")
    assert buffer.next_line() is None
    buffer.feed(b"\r\n")
    assert buffer.next_line() == b"EHLO a\rNOOP\r\n"


def test_partial_line_waits_for_its_ending() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"EHL")
    assert buffer.next_line() is None
    buffer.feed(b"O a\r")
    assert buffer.next_line() is None
    buffer.feed(b"\nNO")
    assert buffer.next_line() == b"EHLO a\r\n"
    assert buffer.next_line() is None
    assert len(buffer) == 2


def test_line_of_exactly_the_limit_is_accepted() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"12345678\r\n")
    assert buffer.next_line() == b"12345678\r\n"


def test_complete_line_over_the_limit_raises() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"123456789\r\n")
    with pytest.raises(LineTooLongError) as info:
        buffer.next_line()
    assert info.value.limit_bytes == 10


def test_partial_line_over_the_limit_raises_before_its_ending_comes() -> None:
    # Memory stays bounded: a peer that never sends LF is stopped at the limit.
    buffer = LineBuffer(10)
    buffer.feed(b"1234567890")
    assert buffer.next_line() is None
    buffer.feed(b"1")
    with pytest.raises(LineTooLongError):
        buffer.next_line()


def test_partial_line_at_the_limit_then_crlf_is_too_long() -> None:
    # The limit counts the line ending too, whichever chunk it arrives in.
    buffer = LineBuffer(10)
    buffer.feed(b"1234567890")
    assert buffer.next_line() is None
    buffer.feed(b"\r\n")
    with pytest.raises(LineTooLongError):
        buffer.next_line()


def test_short_lines_before_a_long_one_are_still_returned() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"NOOP\r\n" + b"x" * 20)
    assert buffer.next_line() == b"NOOP\r\n"
    with pytest.raises(LineTooLongError):
        buffer.next_line()


def test_limit_can_be_raised_while_a_partial_line_waits() -> None:
    # The mediators raise the limit after the TLS handshake.
    buffer = LineBuffer(10)
    buffer.feed(b"123456")
    assert buffer.next_line() is None
    buffer.max_line_bytes = 100
    buffer.feed(b"7890123456\r\n")
    assert buffer.next_line() == b"1234567890123456\r\n"


def test_take_returns_raw_bytes_up_to_the_count() -> None:
    # BDAT chunks are octet-counted: line endings inside them mean nothing.
    buffer = LineBuffer(100)
    buffer.feed(b"ab\r\ncd\r\nEF")
    assert buffer.take(5) == b"ab\r\nc"
    assert buffer.next_line() == b"d\r\n"
    assert buffer.take(100) == b"EF"
    assert buffer.take(1) == b""
    assert len(buffer) == 0


def test_take_after_a_failed_search_still_finds_later_lines() -> None:
    # take() must reset the remembered search offset, or a line ending could be skipped.
    buffer = LineBuffer(100)
    buffer.feed(b"abcdef")
    assert buffer.next_line() is None
    assert buffer.take(4) == b"abcd"
    buffer.feed(b"\n")
    assert buffer.next_line() == b"ef\n"


def test_take_all_empties_the_buffer() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"MAIL FROM:<x>\r\npartial")
    assert buffer.next_line() == b"MAIL FROM:<x>\r\n"
    assert buffer.next_line() is None  # the search offset now points past "partial"
    assert buffer.take_all() == b"partial"
    assert len(buffer) == 0
    assert buffer.next_line() is None
    buffer.feed(b"QUIT\r\n")
    assert buffer.next_line() == b"QUIT\r\n"


def test_long_partial_line_fed_in_small_pieces_costs_linear_time() -> None:
    # Rescanning the whole buffer on each feed would scan ~2**37 bytes here (tens of seconds);
    # remembering the search offset keeps it to one pass. The bound is generous (CONTRACT.md).
    total_bytes = 4 * 1024 * 1024
    piece = b"x" * 32
    buffer = LineBuffer(2 * total_bytes)
    started = time.perf_counter()
    for _ in range(total_bytes // len(piece)):
        buffer.feed(piece)
        assert buffer.next_line() is None
    buffer.feed(b"\r\n")
    line = buffer.next_line()
    elapsed = time.perf_counter() - started
    assert line is not None
    assert len(line) == total_bytes + 2
    assert elapsed < 2.0


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=20))
def test_lines_do_not_depend_on_how_the_stream_is_split(stream: bytes, cuts: list[int]) -> None:
    points = sorted({min(cut, len(stream)) for cut in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    buffer = LineBuffer(1000)
    lines: list[bytes] = []
    for piece in pieces:
        buffer.feed(piece)
        lines += drain(buffer)
    *complete, rest = stream.split(b"\n")
    assert lines == [line + b"\n" for line in complete]
    assert buffer.take_all() == rest


@given(st.binary(max_size=200), st.integers(1, 50))
def test_random_bytes_either_split_or_raise_line_too_long(stream: bytes, limit: int) -> None:
    buffer = LineBuffer(limit)
    buffer.feed(stream)
    try:
        for line in drain(buffer):
            assert line.endswith(b"\n")
            assert len(line) <= limit
    except LineTooLongError:
        pass
    assert len(buffer) <= len(stream)


# ---- BodyEndScanner ---------------------------------------------------------------------------


AMBIGUOUS = -2  # what end_in_stream and reference_end say for a bare-LF dot line (strict)


def end_in_stream(chunks: list[bytes], *, strict: bool = True) -> int:
    """Feed chunks to a fresh scanner; return the end offset in the joined stream, -1 if there
    is none, or AMBIGUOUS where a strict scanner refuses a bare-LF dot line."""
    scanner = BodyEndScanner(strict=strict)
    consumed = 0
    for chunk in chunks:
        try:
            end = scanner.feed(chunk)
        except AmbiguousBodyEndError:
            return AMBIGUOUS
        if end >= 0:
            assert 0 < end <= len(chunk)
            return consumed + end
        consumed += len(chunk)
    return -1


def reference_end(stream: bytes, *, strict: bool = True) -> int:
    """The body starts right after a CRLF. The first line holding only "." ends it: CRLF "."
    CRLF properly; with a bare LF on either side it is ambiguous (strict) or the end."""
    match = re.search(rb"\n\.(\r\n|\n)", b"\r\n" + stream)
    if match is None:
        return -1
    proper = (
        match.group(1) == b"\r\n" and (b"\r\n" + stream)[match.start() - 1 : match.start()] == b"\r"
    )
    if strict and not proper:
        return AMBIGUOUS
    return match.end() - 2


def test_terminator_at_the_start_is_an_empty_body() -> None:
    assert BodyEndScanner(strict=True).feed(b".\r\nQUIT\r\n") == 3


def test_terminator_inside_a_chunk() -> None:
    body = b"Subject: x\r\n\r\nhello\r\n"
    assert BodyEndScanner(strict=True).feed(body + b".\r\nQUIT\r\n") == len(body) + 3


def test_terminator_after_many_chunks() -> None:
    scanner = BodyEndScanner(strict=True)
    assert scanner.feed(b"line one\r\n") == -1
    assert scanner.feed(b"line two\r\n") == -1
    assert scanner.feed(b".\r\nNOOP\r\n") == 3


def test_dot_stuffed_lines_are_not_the_end() -> None:
    scanner = BodyEndScanner(strict=True)
    assert scanner.feed(b"..\r\n...\r\n..x\r\n.. \r\n") == -1
    assert scanner.feed(b"..\r\n") == -1
    assert scanner.feed(b".\r\n") == 3


@pytest.mark.parametrize("smuggled", [b"a\n.\nb", b"a\r\n.\nb", b"a\n.\r\nb"])
def test_bare_lf_dot_line_is_refused_in_strict_mode(smuggled: bytes) -> None:
    # SMTP smuggling: sendmail-style backends end DATA at these, RFC 5321 §4.1.1.4 does not;
    # a strict scanner refuses to guess (Postfix's smtpd_forbid_bare_newline).
    with pytest.raises(AmbiguousBodyEndError):
        BodyEndScanner(strict=True).feed(smuggled)


@pytest.mark.parametrize(("body", "end"), [(b"a\n.\nb", 4), (b"a\r\n.\nb", 5), (b"a\n.\r\nb", 5)])
def test_bare_lf_dot_line_ends_the_body_in_lenient_mode(body: bytes, end: int) -> None:
    # A POP3 client reading lines stops at a "." line whatever its line ending.
    assert BodyEndScanner(strict=False).feed(body) == end


def test_dot_line_with_text_is_not_the_end() -> None:
    assert BodyEndScanner(strict=True).feed(b"a\r\n.x\r\n. \r\n") == -1


body_with_terminator = b"Subject: t\r\n\r\n..stuffed\r\nlast\r\n.\r\nQUIT\r\n"


@pytest.mark.parametrize("split", range(1, len(body_with_terminator)))
def test_terminator_straddling_any_split_point_is_found(split: int) -> None:
    chunks = [body_with_terminator[:split], body_with_terminator[split:]]
    assert end_in_stream(chunks) == body_with_terminator.index(b"QUIT")


@pytest.mark.parametrize("split", range(1, 3))
def test_empty_body_terminator_split_in_two_is_found(split: int) -> None:
    stream = b".\r\nQUIT\r\n"
    assert end_in_stream([stream[:split], stream[split:]]) == 3


def test_terminator_one_byte_at_a_time() -> None:
    stream = b"x\r\n..\r\n.\r\nrest"
    assert end_in_stream([bytes([byte]) for byte in stream]) == stream.index(b"rest")


def test_empty_chunks_change_nothing() -> None:
    assert end_in_stream([b"", b"a\r", b"", b"\n", b"", b".\r", b"", b"\n"]) == 6


# Bytes that make near-misses likely: CR, LF, dots and one ordinary byte.
near_miss_bytes = st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n"]), max_size=60).map(
    b"".join
)


@settings(max_examples=max(300, settings().max_examples))
@given(near_miss_bytes, st.lists(st.integers(0, 120), max_size=12))
def test_end_offset_does_not_depend_on_how_the_stream_is_split(
    stream: bytes, cuts: list[int]
) -> None:
    points = sorted({min(cut, len(stream)) for cut in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    for strict in (True, False):
        whole = end_in_stream([stream], strict=strict)
        assert end_in_stream(chunks, strict=strict) == reference_end(stream, strict=strict) == whole


@given(near_miss_bytes)
def test_end_offset_one_byte_at_a_time(stream: bytes) -> None:
    for strict in (True, False):
        one_by_one = end_in_stream([bytes([byte]) for byte in stream], strict=strict)
        assert one_by_one == reference_end(stream, strict=strict)
