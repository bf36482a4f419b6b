"""The log, end to end: real logins leave no secret in it, and every line speaks the vocabulary.

The gateway runs in-process under `structlog.testing.capture_logs()`, which records every
event at every level, debug included, as the code emits it: before the redaction processor of
`tlsgate.observe.logs`, so these tests prove that no secret is ever *handed* to the logger,
not only that one is masked on the way out.
"""

from __future__ import annotations

import base64
import poplib
import smtplib
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import CertFiles
from tests.e2e.test_attacks import Wire, greet
from tests.helpers.gateway import POP3_BACKEND, SMTP_BACKEND, running_gateway
from tlsgate.observe.events import NoticeKind

USER = "alice"
# Distinctive, so that finding it anywhere in a log can only mean it leaked.
PASSWORD = "Xy7-never-log-me-3Qz"
SECRETS = [
    PASSWORD,
    base64.b64encode(PASSWORD.encode()).decode(),  # AUTH LOGIN's password line
    base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),  # AUTH PLAIN
    base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode()).decode(),
]
LISTENERS: list[dict[str, object]] = [
    {"name": "submission", "protocol": "smtp", "tls": "starttls", "backend": SMTP_BACKEND},
    {"name": "pop3", "protocol": "pop3", "tls": "starttls", "backend": POP3_BACKEND},
]
# What a session line must carry to be traced back to its connection and client.
SESSION_FIELDS = ("conn_id", "listener", "peer")


@pytest.fixture(scope="module")
def session_logs(
    cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """Every event of a gateway that saw SMTP logins (refused in the clear, accepted after
    STARTTLS, PLAIN and LOGIN) and a POP3 USER/PASS after STLS, at every level."""
    users = {USER: PASSWORD}
    context = cert_files.client_context()
    with (
        capture_logs() as logs,
        running_gateway(
            LISTENERS,
            **cert_files.gateway_files(),
            source=tmp_path_factory.mktemp("logs") / "tlsgate.toml",
            smtp_options={"users": users},
            pop3_options={"users": users},
        ) as gateway,
    ):
        with Wire(gateway.port("submission"), context) as wire:  # the password in the clear
            greet(wire)
            assert wire.smtp(b"EHLO leak.test").startswith(b"250")
            plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
            assert wire.smtp(b"AUTH PLAIN " + plain).startswith(b"538")
            assert wire.smtp(b"QUIT").startswith(b"221")
        for mechanism in ("PLAIN", "LOGIN"):
            with smtplib.SMTP("127.0.0.1", gateway.port("submission"), timeout=10) as smtp:
                smtp.starttls(context=context)
                smtp.ehlo()
                smtp.user, smtp.password = USER, PASSWORD
                authobject = getattr(smtp, f"auth_{mechanism.lower()}")
                code, _ = smtp.auth(mechanism, authobject, initial_response_ok=False)
                assert code == 235
                smtp.sendmail(f"{USER}@localhost", ["demo@localhost"], "Subject: x\r\n\r\nbody")
        pop3 = poplib.POP3("127.0.0.1", gateway.port("pop3"), timeout=10)
        pop3.stls(context=context)
        assert pop3.user(USER).startswith(b"+OK")
        assert pop3.pass_(PASSWORD).startswith(b"+OK")
        pop3.quit()
    return [dict(event) for event in logs]


def test_no_password_or_auth_payload_reaches_any_log_event(
    session_logs: list[dict[str, Any]],
) -> None:
    text = "\n".join(repr(event) for event in session_logs)
    assert [secret for secret in SECRETS if secret in text] == []
    # The sessions did happen: the check above looked at real logins.
    names = [event["event"] for event in session_logs]
    assert names.count("starttls") == 3
    assert names.count("auth_before_tls_refused") == 1


def test_every_event_name_is_in_the_vocabulary(session_logs: list[dict[str, Any]]) -> None:
    vocabulary = {kind.value for kind in NoticeKind}
    assert {event["event"] for event in session_logs} - vocabulary == set()


def test_every_session_line_names_its_connection_listener_and_peer(
    session_logs: list[dict[str, Any]],
) -> None:
    session_lines = [event for event in session_logs if "conn_id" in event]
    assert len(session_lines) > 10
    for event in session_lines:
        assert all(event.get(field) for field in SESSION_FIELDS), event
        assert event["peer"].startswith("127.0.0.1:")


def test_a_session_logs_accepted_first_and_closed_last(
    session_logs: list[dict[str, Any]],
) -> None:
    by_connection: dict[str, list[str]] = {}
    for event in session_logs:
        if "conn_id" in event:
            by_connection.setdefault(event["conn_id"], []).append(event["event"])
    assert len(by_connection) == 4
    for names in by_connection.values():
        assert names[0] == "accepted"
        assert names[-1] == "closed"
        assert names.count("closed") == 1
