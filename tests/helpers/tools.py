"""The real clients of the end-to-end tests: `openssl s_client`, swaks and curl.

Every run has a timeout, so a gateway that hangs fails a test instead of the whole session.
The `requires_*` markers skip a test with a clear reason when a tool is not installed; `.ci/run`
installs all three, so in CI nothing skips. Each helper verifies the gateway's certificate
against the test CA, so a client that succeeds has also checked who it talked to.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tlsgate.demo.legacy import DEMO_USERS, Delivery, MailStore

__all__ = [
    "DEMO_PASSWORD",
    "DEMO_USER",
    "TOOL_TIMEOUT_SECONDS",
    "curl",
    "deliveries_containing",
    "requires_curl",
    "requires_openssl",
    "requires_swaks",
    "run_tool",
    "s_client",
    "swaks",
]

# A client session on loopback takes well under a second; this bound only catches a hang.
TOOL_TIMEOUT_SECONDS = 20.0

DEMO_USER, DEMO_PASSWORD = next(iter(DEMO_USERS.items()))


def _requires(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(tool) is None,
        reason=f"`{tool}` is not installed (Debian: apt-get install {tool}); .ci/run installs it",
    )


requires_openssl = _requires("openssl")
requires_swaks = _requires("swaks")
requires_curl = _requires("curl")


def run_tool(
    argv: Sequence[str],
    *,
    stdin: str = "",
    timeout: float = TOOL_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion with `stdin` as its input; never raises on a non-zero exit.

    Output is decoded without newline translation, so a CRLF the tool printed stays a CRLF.

    Raises:
        subprocess.TimeoutExpired: the tool ran longer than `timeout` (it is killed first).
    """
    done = subprocess.run(
        list(argv),
        input=stdin.encode(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def s_client(
    port: int,
    ca_file: Path,
    commands: Sequence[str],
    *,
    starttls: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`openssl s_client` to 127.0.0.1:`port`, verifying the certificate, sending `commands`.

    `-quiet` keeps the session summary out of stdout and, like `-ign_eof`, waits for the server
    to close after stdin ends (so the last command should be QUIT); it also stops s_client from
    taking lines that start with Q or R as its own commands. `-crlf` ends each line with CRLF.
    With `starttls` ("smtp", "pop3") s_client speaks the plaintext phase itself, so stdout holds
    only what came back inside TLS.
    """
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-CAfile",
        str(ca_file),
        "-verify_return_error",
        "-verify_ip",
        "127.0.0.1",
        "-quiet",
        "-crlf",
    ]
    if starttls is not None:
        argv += ["-starttls", starttls]
    return run_tool(argv, stdin="".join(f"{command}\n" for command in commands))


def swaks(
    port: int,
    ca_file: Path,
    *options: str,
    to: str,
    subject: str,
) -> subprocess.CompletedProcess[str]:
    """One swaks transaction as the demo user, with certificate verification.

    `options` selects the TLS mode: `--tls` (STARTTLS, required) or `--tls-on-connect`.
    """
    argv = [
        "swaks",
        "--server",
        "127.0.0.1",
        "--port",
        str(port),
        *options,
        "--tls-verify",
        "--tls-ca-path",
        str(ca_file),
        "--auth",
        "PLAIN",
        "--auth-user",
        DEMO_USER,
        "--auth-password",
        DEMO_PASSWORD,
        "--from",
        "swaks@example.test",
        "--to",
        to,
        "--header",
        f"Subject: {subject}",
        "--timeout",
        str(int(TOOL_TIMEOUT_SECONDS / 2)),
    ]
    return run_tool(argv)


def curl(
    url: str, ca_file: Path, *options: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """curl as the demo user, verifying against `ca_file`; stdout is what it retrieved.

    For SMTP, pass `--upload-file -` and the message as `stdin`.
    """
    argv = [
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        str(int(TOOL_TIMEOUT_SECONDS / 2)),
        "--cacert",
        str(ca_file),
        "--user",
        f"{DEMO_USER}:{DEMO_PASSWORD}",
        *options,
        url,
    ]
    return run_tool(argv, stdin=stdin)


def deliveries_containing(store: MailStore, marker: str) -> list[Delivery]:
    """The messages the backend accepted whose body contains `marker` (a test's unique tag)."""
    needle = marker.encode()
    return [delivery for delivery in store.messages if needle in delivery.body]
