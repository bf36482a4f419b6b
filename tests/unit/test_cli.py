"""`tlsgate check` / `run` / `demo`: output lines and exit codes (CONTRACT.md: 0, 1, 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

import tlsgate
from tlsgate.cli import main
from tlsgate.config import Config

VALID = """
[[certificate]]
cert = "mail.pem"
key = "mail.key"

[[listener]]
name = "submission"
listen = "127.0.0.1:0"
protocol = "smtp"
tls = "starttls"
backend = "127.0.0.1:2525"
"""

PLAINTEXT_LISTENER = """
[[listener]]
name = "plain"
listen = "127.0.0.1:0"
protocol = "smtp"
tls = "none"
backend = "127.0.0.1:2525"
"""

BAD_BACKEND = VALID.replace('"127.0.0.1:2525"', '"localhost"')
BAD_BACKEND_LINE = 'tlsgate.toml: listener[0].backend: expected HOST:PORT, got "localhost"'


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory, holding a good certificate pair."""
    monkeypatch.chdir(tmp_path)
    leaf = trustme.CA().issue_cert("mail.example.test")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "mail.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "mail.key"))
    (tmp_path / "mail.key").chmod(0o600)
    return tmp_path


def write(text: str) -> str:
    Path("tlsgate.toml").write_text(text, encoding="utf-8")
    return "tlsgate.toml"


@pytest.mark.usefixtures("here")
def test_check_accepts_a_valid_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", write(VALID)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("config OK: 1 listener\n", "")


@pytest.mark.usefixtures("here")
def test_check_prints_one_error_line_per_problem_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = BAD_BACKEND + "idle_timeout = 0\n"
    assert main(["check", "-c", write(text)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"error: {BAD_BACKEND_LINE}",
        "error: tlsgate.toml: listener[0].idle_timeout: expected a number of seconds greater "
        "than 0, got 0",
    ]


def test_check_reports_certificate_problems(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "mail.pem").write_text("garbage\n")
    assert main(["check", "-c", write(VALID)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: tlsgate.toml: certificate[0].cert: expected a PEM certificate, "
        f'got "{here / "mail.pem"}" (no PEM certificate found)'
    ]


def test_check_prints_warnings_and_still_exits_0(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "mail.key").chmod(0o640)
    text = VALID + PLAINTEXT_LISTENER + "require_tls = true\n"
    assert main(["check", "-c", write(text)]) == 0
    out, err = capsys.readouterr()
    assert out == "config OK: 2 listeners\n"
    assert err.splitlines() == [
        'warning: tlsgate.toml: listener[1].require_tls: expected no require_tls on a tls = "none" '
        "listener (it is ignored there), got true",
        "warning: tlsgate.toml: certificate[0].key: expected a key file only its owner can read, "
        f'got "{here / "mail.key"}" (mode 0640)',
    ]


@pytest.mark.usefixtures("here")
def test_check_of_a_missing_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", "absent.toml"]) == 2
    assert capsys.readouterr().err == (
        "error: absent.toml: expected a readable file, got No such file or directory\n"
    )


@pytest.mark.usefixtures("here")
def test_run_refuses_an_invalid_config_with_the_same_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "-c", write(BAD_BACKEND)]) == 2
    assert capsys.readouterr().err == f"error: {BAD_BACKEND_LINE}\n"


@pytest.mark.usefixtures("here")
def test_run_hands_the_validated_config_to_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Config] = []

    def fake_daemon(config: Config) -> int:
        started.append(config)
        return 1

    monkeypatch.setattr("tlsgate.net.daemon.run_daemon", fake_daemon)
    assert main(["run", "-c", write(VALID)]) == 1
    assert [config.listeners[0].name for config in started] == ["submission"]


@pytest.mark.parametrize(("argv", "flag"), [(["demo"], False), (["demo", "--check"], True)])
def test_demo_passes_its_flag_on(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], flag: bool
) -> None:
    seen: list[bool] = []

    def fake_demo(*, check: bool = False) -> int:
        seen.append(check)
        return 0

    monkeypatch.setattr("tlsgate.demo.main", fake_demo)
    assert main(argv) == 0
    assert seen == [flag]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"tlsgate {tlsgate.__version__}\n"


@pytest.mark.parametrize("argv", [[], ["check"], ["frobnicate"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: tlsgate" in capsys.readouterr().err


def test_python_m_tlsgate_check_exits_2_with_the_message(here: Path) -> None:
    write(BAD_BACKEND)
    repo = Path(tlsgate.__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tlsgate", "check", "-c", "tlsgate.toml"],
        cwd=here,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"error: {BAD_BACKEND_LINE}\n"
    assert done.stdout == ""
