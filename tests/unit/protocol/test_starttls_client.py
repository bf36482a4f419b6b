"""The client side of STARTTLS / STLS towards a relay, without sockets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tlsgate.observe.events import BackendFailureReason
from tlsgate.protocol.starttls_client import (
    MAX_REPLY_LINE_BYTES,
    Pop3StartTlsClient,
    Ready,
    Refused,
    SmtpStartTlsClient,
    StartTlsClient,
)

GREETING = b"220-relay.example ESMTP\r\n220 no UCE\r\n"
EHLO_REPLY = b"250-relay.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
EHLO_WITHOUT_STARTTLS = b"250-relay.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def smtp() -> SmtpStartTlsClient:
    return SmtpStartTlsClient("[192.0.2.1]")


def refusal(client: StartTlsClient) -> Refused:
    assert isinstance(client.verdict, Refused), client.verdict
    return client.verdict


def test_smtp_greeting_ehlo_starttls_220_is_ready_with_the_original_greeting() -> None:
    client = smtp()
    assert client.receive(GREETING) == b"EHLO [192.0.2.1]\r\n"
    assert client.verdict is None
    assert client.receive(EHLO_REPLY) == b"STARTTLS\r\n"
    assert client.receive(b"220 2.0.0 Ready to start TLS\r\n") == b""
    assert client.verdict == Ready(GREETING)


def test_smtp_relay_without_starttls_is_refused_and_the_plaintext_session_is_usable() -> None:
    client = smtp()
    client.receive(GREETING)
    assert client.receive(EHLO_WITHOUT_STARTTLS) == b""
    verdict = refusal(client)
    assert verdict.reason is BackendFailureReason.STARTTLS_NOT_OFFERED
    assert verdict.plaintext_usable
    assert verdict.greeting == GREETING


def test_starttls_in_the_greeting_text_does_not_count_as_offered() -> None:
    client = smtp()
    client.receive(b"220 relay STARTTLS ready\r\n")
    client.receive(b"250-relay says STARTTLS\r\n250 SIZE 10\r\n")
    assert refusal(client).reason is BackendFailureReason.STARTTLS_NOT_OFFERED


def test_smtp_starttls_answered_454_is_refused() -> None:
    client = smtp()
    client.receive(GREETING)
    client.receive(EHLO_REPLY)
    client.receive(b"454 4.7.0 TLS not available due to temporary reason\r\n")
    verdict = refusal(client)
    assert verdict.reason is BackendFailureReason.STARTTLS_REFUSED
    assert "454" in verdict.detail
    assert not verdict.plaintext_usable


def test_response_injected_after_the_220_to_starttls_is_refused() -> None:
    # The man in the middle's trick: a reply planted behind "220 go ahead" would be read as if
    # it came through TLS.
    client = smtp()
    client.receive(GREETING)
    client.receive(EHLO_REPLY)
    client.receive(b"220 go ahead\r\n250 injected\r\n")
    assert refusal(client).reason is BackendFailureReason.RESPONSE_INJECTION


def test_an_ehlo_reply_ahead_of_our_ehlo_is_refused() -> None:
    client = smtp()
    assert client.receive(GREETING + EHLO_REPLY) == b""  # no EHLO goes out after it
    assert refusal(client).reason is BackendFailureReason.RESPONSE_INJECTION


def test_replies_the_relay_sends_before_being_asked_are_refused() -> None:
    client = smtp()
    client.receive(GREETING)
    client.receive(EHLO_REPLY + b"220 ready before STARTTLS was sent\r\n")
    assert refusal(client).reason is BackendFailureReason.RESPONSE_INJECTION


def test_partial_injection_after_220_is_refused() -> None:
    client = smtp()
    client.receive(GREETING)
    client.receive(EHLO_REPLY)
    client.receive(b"220 go ahead\r\n250 inj")
    assert refusal(client).reason is BackendFailureReason.RESPONSE_INJECTION


def test_a_greeting_other_than_220_is_refused() -> None:
    client = smtp()
    client.receive(b"554 5.3.2 no service here\r\n")
    verdict = refusal(client)
    assert verdict.reason is BackendFailureReason.PROTOCOL_ERROR
    assert "554" in verdict.detail


def test_ehlo_refused_is_a_protocol_error() -> None:
    client = smtp()
    client.receive(GREETING)
    client.receive(b"502 5.5.1 EHLO not implemented\r\n")
    assert refusal(client).reason is BackendFailureReason.PROTOCOL_ERROR


def test_relay_closing_mid_dialogue_is_refused() -> None:
    client = smtp()
    client.receive(GREETING)
    client.receive_eof()
    assert refusal(client).reason is BackendFailureReason.PROTOCOL_ERROR


def test_an_endless_reply_line_is_refused_not_buffered() -> None:
    client = smtp()
    client.receive(b"220 " + b"x" * (MAX_REPLY_LINE_BYTES + 1))
    assert refusal(client).reason is BackendFailureReason.PROTOCOL_ERROR


def test_an_endless_multiline_reply_is_refused() -> None:
    client = smtp()
    client.receive(GREETING)
    client.receive(b"250-x\r\n" * 1000)
    assert refusal(client).reason is BackendFailureReason.PROTOCOL_ERROR


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_any_split_of_the_relay_bytes_gives_the_same_dialogue(cuts: list[int]) -> None:
    # The relay speaks only when spoken to, so each reply arrives whole or in pieces, never
    # ahead of our command; split every reply at arbitrary points.
    replies = [GREETING, EHLO_REPLY, b"220 go\r\n"]
    client = smtp()
    sent = []
    sizes = iter(cuts)
    for reply in replies:
        rest = reply
        while rest:
            size = next(sizes, len(rest))
            piece, rest = rest[:size], rest[size:]
            if out := client.receive(piece):
                sent.append(out)
    assert sent == [b"EHLO [192.0.2.1]\r\n", b"STARTTLS\r\n"]
    assert client.verdict == Ready(GREETING)


# ---- POP3 ----------------------------------------------------------------------------------


def test_pop3_greeting_stls_ok_is_ready_with_the_greeting() -> None:
    client = Pop3StartTlsClient()
    greeting = b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n"
    assert client.receive(greeting) == b"STLS\r\n"
    assert client.receive(b"+OK Begin TLS negotiation\r\n") == b""
    assert client.verdict == Ready(greeting)


def test_pop3_stls_err_is_not_offered_and_the_session_is_usable() -> None:
    client = Pop3StartTlsClient()
    client.receive(b"+OK ready\r\n")
    client.receive(b"-ERR unknown command\r\n")
    verdict = refusal(client)
    assert verdict.reason is BackendFailureReason.STARTTLS_NOT_OFFERED
    assert verdict.plaintext_usable


def test_pop3_injection_after_stls_ok_is_refused() -> None:
    client = Pop3StartTlsClient()
    client.receive(b"+OK ready\r\n")
    client.receive(b"+OK Begin TLS\r\n+OK injected\r\n")
    assert refusal(client).reason is BackendFailureReason.RESPONSE_INJECTION


def test_pop3_negative_greeting_is_refused() -> None:
    client = Pop3StartTlsClient()
    client.receive(b"-ERR [SYS/TEMP] busy\r\n")
    assert refusal(client).reason is BackendFailureReason.PROTOCOL_ERROR
