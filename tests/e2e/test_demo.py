"""`tlsgate demo`, run as a user runs it: a real subprocess, real ports, real clients."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_LISTENERS = ("smtps", "submission", "smtp-auto", "pop3s", "pop3")
# The demo generates a key, starts six servers and runs seven client sessions: about a second
# here, so this bound only catches a hang.
DEMO_TIMEOUT_SECONDS = 60.0


def _env() -> dict[str, str]:
    """Import tlsgate from this checkout even when it is not installed."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def test_demo_check_reports_ok_for_every_listener() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tlsgate", "demo", "--check"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", name] for name in DEMO_LISTENERS]
    assert "STARTTLS TLSv1." in lines[1]
    assert "byte-identical" in lines[4]
    assert "Traceback" not in result.stderr


@pytest.fixture
def busy_submission_port() -> Iterator[int]:
    """Occupy the demo's submission port (10587) if it is free, so the demo must fall back."""
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", 10587))
            holder.listen()
        except OSError:
            pass  # already busy: the fallback is exercised all the same
        yield 10587


def test_demo_falls_back_from_a_busy_port_and_stops_cleanly_on_ctrl_c(
    busy_submission_port: int,
) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "tlsgate", "demo"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as demo:
        assert demo.stdout is not None
        shown: list[str] = []
        for line in demo.stdout:
            shown.append(line)
            if "Press Ctrl-C" in line:
                break
        demo.send_signal(signal.SIGINT)
        rest, errors = demo.communicate(timeout=DEMO_TIMEOUT_SECONDS)
    announcement = "".join(shown)
    row = re.search(r"^  submission +587 +127\.0\.0\.1:(\d+)", announcement, re.MULTILINE)
    assert row is not None, announcement + errors
    assert int(row.group(1)) != busy_submission_port
    assert f"-starttls smtp -connect 127.0.0.1:{row.group(1)} " in announcement
    config = re.search(r"^  config +(\S+)$", announcement, re.MULTILINE)
    assert config is not None
    assert not Path(config.group(1)).exists()  # the temporary directory is gone
    assert demo.returncode == 0
    assert "stopped" in rest
    assert "Traceback" not in errors
