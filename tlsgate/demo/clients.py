"""`tlsgate demo --check`: one real client session per listener, with Python's smtplib/poplib.

These functions block (stdlib clients); the runner calls them in worker threads so the event
loop serving tlsgate and the legacy backend keeps running. Each returns a short description of
what happened, or raises `CheckFailedError` (or whatever the client raised) with the reason.
Every session verifies the server certificate against the demo's own certificate, checks the
capabilities tlsgate is responsible for (STARTTLS/STLS offered before TLS and never after,
AUTH/USER hidden before TLS), and moves a message.
"""

from __future__ import annotations

import poplib
import smtplib
import ssl
from dataclasses import dataclass
from pathlib import Path

# Per socket operation; generous for loopback, short enough that a hung check fails visibly.
CLIENT_TIMEOUT_SECONDS = 10.0
HOST = "127.0.0.1"
MAIL_FROM = "demo-check@localhost"
RCPT_TO = "demo@localhost"
USER = "demo"
# smtplib.SMTP.login's order of preference.
_SMTP_AUTH_PREFERENCE = ("CRAM-MD5", "PLAIN", "LOGIN")


class CheckFailedError(Exception):
    """A session worked technically but tlsgate did not behave as it should."""


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise CheckFailedError(reason)


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how a check connects."""

    port: int
    cafile: Path
    password: str

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))


def demo_message(via: str) -> bytes:
    """A message whose dot lines exercise SMTP dot-stuffing and POP3 byte-stuffing."""
    return (
        f"From: <{MAIL_FROM}>\r\n"
        f"To: <{RCPT_TO}>\r\n"
        f"Subject: tlsgate demo check via {via}\r\n"
        "\r\n"
        "Hello from tlsgate demo --check.\r\n"
        ".This line starts with a dot and must arrive unchanged.\r\n"
        ".\r\n"
        "The end.\r\n"
    ).encode()


def _tls_version(sock: object) -> str:
    version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
    return version or "no TLS"


def _smtp_login_and_send(smtp: smtplib.SMTP, target: Target, message: bytes) -> str:
    """EHLO has been done inside TLS: require AUTH, log in, send; returns the mechanism."""
    _require(not smtp.has_extn("starttls"), "STARTTLS advertised inside TLS")
    _require(smtp.has_extn("auth"), "AUTH not advertised inside TLS")
    offered = smtp.esmtp_features["auth"].upper().split()
    mechanism = next((m for m in _SMTP_AUTH_PREFERENCE if m in offered), "?")
    smtp.login(USER, target.password)
    refused = smtp.sendmail(MAIL_FROM, [RCPT_TO], message)
    _require(not refused, f"recipients refused: {refused}")
    return mechanism


def smtp_implicit(target: Target, message: bytes) -> str:
    """SMTPS: TLS from the first byte, then EHLO, AUTH, one message."""
    with smtplib.SMTP_SSL(
        HOST, target.port, timeout=CLIENT_TIMEOUT_SECONDS, context=target.context()
    ) as smtp:
        smtp.ehlo("demo-check.localhost")
        version = _tls_version(smtp.sock)
        mechanism = _smtp_login_and_send(smtp, target, message)
    return f"implicit {version}, AUTH {mechanism}, sent 1 message"


def smtp_starttls(target: Target, message: bytes) -> str:
    """Plaintext EHLO (STARTTLS offered, AUTH hidden), STARTTLS, EHLO, AUTH, one message."""
    with smtplib.SMTP(HOST, target.port, timeout=CLIENT_TIMEOUT_SECONDS) as smtp:
        smtp.ehlo("demo-check.localhost")
        _require(smtp.has_extn("starttls"), "STARTTLS not advertised before TLS")
        _require(not smtp.has_extn("auth"), "AUTH advertised before TLS")
        smtp.starttls(context=target.context())
        smtp.ehlo("demo-check.localhost")
        version = _tls_version(smtp.sock)
        mechanism = _smtp_login_and_send(smtp, target, message)
    return f"STARTTLS {version}, AUTH {mechanism} (hidden before TLS), sent 1 message"


def smtp_auto(target: Target, messages: tuple[bytes, bytes]) -> str:
    """Both paths of an auto port: a TLS client first, then a plaintext one using STARTTLS."""
    implicit = smtp_implicit(target, messages[0]).split(",")[0]
    starttls = smtp_starttls(target, messages[1]).split(",")[0]
    return f"{implicit} + {starttls}, sent 2 messages"


def _pop3_login_and_retrieve(pop: poplib.POP3, target: Target, expected: bytes) -> str:
    capabilities = pop.capa()
    _require("STLS" not in capabilities, "STLS advertised inside TLS")
    _require("USER" in capabilities, "USER not advertised inside TLS")
    pop.user(USER)
    pop.pass_(target.password)
    count, octets = pop.stat()
    _require(count >= 1, "the mailbox is empty")
    lines = pop.retr(1)[1]
    _require(b"\r\n".join(lines) + b"\r\n" == expected, "RETR 1 differs from what SMTP sent")
    pop.quit()
    return f"USER/PASS, RETR 1 of {count} ({octets} octets) byte-identical"


def pop3_implicit(target: Target, expected: bytes) -> str:
    """POP3S: TLS from the first byte, CAPA, USER/PASS, RETR 1 compared with the sent bytes."""
    pop = poplib.POP3_SSL(
        HOST, target.port, timeout=CLIENT_TIMEOUT_SECONDS, context=target.context()
    )
    try:
        version = _tls_version(pop.sock)
        return f"implicit {version}, " + _pop3_login_and_retrieve(pop, target, expected)
    finally:
        pop.close()


def pop3_stls(target: Target, expected: bytes) -> str:
    """CAPA (STLS offered, USER/SASL hidden), STLS, then as `pop3_implicit`."""
    pop = poplib.POP3(HOST, target.port, timeout=CLIENT_TIMEOUT_SECONDS)
    try:
        capabilities = pop.capa()
        _require("STLS" in capabilities, "STLS not advertised before TLS")
        _require("USER" not in capabilities, "USER advertised before TLS")
        _require("SASL" not in capabilities, "SASL advertised before TLS")
        pop.stls(context=target.context())
        version = _tls_version(pop.sock)
        return f"STLS {version}, " + _pop3_login_and_retrieve(pop, target, expected)
    finally:
        pop.close()
