"""`tlsgate cert ...` from the command line: output, exit codes (0 / 1 / 2), and the round trip
into `tlsgate check`.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tlsgate.cli import main

HOST = "mail.example.com"
# Key generation and a Python start-up; the bound only catches a hang.
SUBPROCESS_TIMEOUT_SECONDS = 60.0
FINGERPRINT = r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}"
DATE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"

LISTENER = """
[[listener]]
name = "submission"
listen = "127.0.0.1:0"
protocol = "smtp"
tls = "starttls"
backend = "127.0.0.1:2525"
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main(["cert", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def snippet_lines(out: Path) -> list[str]:
    return [
        "Paste into tlsgate.toml:",
        "",
        "[[certificate]]",
        f'cert = "{out / "cert.pem"}"',
        f'key = "{out / "key.pem"}"',
    ]


def test_self_signed_prints_what_it_wrote_and_the_snippet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    code, stdout, stderr = run(
        capsys, "self-signed", "--host", HOST, "--host", "192.0.2.1", "--out", out
    )
    assert (code, stderr) == (0, "")
    lines = stdout.splitlines()
    assert lines[0] == f"wrote {out / 'key.pem'} (ECDSA P-256 private key, mode 0600)"
    assert re.fullmatch(
        rf"wrote {re.escape(str(out / 'cert.pem'))} \(self-signed certificate for "
        rf"{HOST}, 192\.0\.2\.1; valid until {DATE}\)",
        lines[1],
    )
    assert lines[2:4] == [
        "",
        "Clients trust it only if they are given cert.pem itself as a trusted certificate.",
    ]
    assert lines[4:] == ["", *snippet_lines(out)]


def test_ca_init_issue_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, leaf = tmp_path / "ca", tmp_path / "leaf"
    code, stdout, stderr = run(capsys, "ca", "init", "--out", ca, "--name", "Example CA")
    assert (code, stderr) == (0, "")
    lines = stdout.splitlines()
    assert lines[0] == (
        f"wrote {ca / 'ca-key.pem'} (ECDSA P-256 private key, mode 0600; "
        "it can sign for any name, keep it private)"
    )
    assert re.fullmatch(
        rf'wrote {re.escape(str(ca / "ca.pem"))} \(CA certificate "Example CA"; '
        rf"valid until {DATE}\)",
        lines[1],
    )
    assert re.fullmatch(f"SHA-256 {FINGERPRINT}", lines[2])
    assert lines[-1] == f"    tlsgate cert ca issue --ca {ca} --host mail.example.com --out DIR"

    code, stdout, stderr = run(
        capsys, "ca", "issue", "--ca", ca, "--host", HOST, "--key", "rsa2048", "--out", leaf
    )
    assert (code, stderr) == (0, "")
    lines = stdout.splitlines()
    assert lines[0] == f"wrote {leaf / 'key.pem'} (RSA 2048 private key, mode 0600)"
    assert re.fullmatch(
        rf"wrote {re.escape(str(leaf / 'cert.pem'))} \(certificate for {HOST}, then the CA "
        rf"certificate; issued by CN=Example CA; valid until {DATE}\)",
        lines[1],
    )
    assert lines[2:] == ["", *snippet_lines(leaf)]

    code, stdout, stderr = run(capsys, "show", leaf / "cert.pem")
    assert (code, stderr) == (0, "")
    lines = stdout.splitlines()
    assert lines[0] == f"{leaf / 'cert.pem'}: 2 certificates"
    labels = [line.split(":")[0].strip() for line in lines[3:12]]
    assert labels == [
        "subject", "SANs", "issuer", "CA", "not before", "not after", "key", "SHA-256", "status",
    ]  # fmt: skip
    assert lines[3:6] == [
        f"  subject:     CN={HOST}",
        f"  SANs:        DNS:{HOST}",
        "  issuer:      CN=Example CA",
    ]
    assert re.fullmatch(rf"  SHA-256:     {FINGERPRINT}", lines[10])
    assert lines[11] == "  status:      valid (expires in 396 days)"


def test_the_snippet_passes_tlsgate_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    code, stdout, _ = run(capsys, "self-signed", "--host", HOST, "--out", out)
    assert code == 0
    snippet = stdout[stdout.index("[[certificate]]") :]
    config = tmp_path / "tlsgate.toml"
    config.write_text(snippet + LISTENER, encoding="utf-8")
    assert main(["check", "-c", str(config)]) == 0
    assert capsys.readouterr() == ("config OK: 1 listener\n", "")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["self-signed", "--out", "x"],
        ["self-signed", "--host", HOST],
        ["self-signed", "--host", HOST, "--out", "x", "--key", "dsa"],
        ["self-signed", "--host", HOST, "--out", "x", "--days", "soon"],
        ["ca"],
        ["ca", "issue", "--host", HOST, "--out", "x"],
        ["show"],
    ],
    ids=lambda argv: " ".join(argv) or "nothing",
)
def test_usage_errors_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["cert", *argv]) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["self-signed", "--host", "bad..name", "--out", "x"], "--host 'bad..name': not a DNS"),
        (["self-signed", "--host", HOST, "--days", "0", "--out", "x"], "--days must be between"),
        (["ca", "init", "--name", "", "--out", "x"], "--name must be 1 to 64 characters"),
        (
            ["ca", "issue", "--ca", "nowhere", "--host", HOST, "--out", "x"],
            "--ca nowhere: no ca.pem",
        ),
        (["show", "absent.pem"], "absent.pem: cannot read: No such file or directory"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run(capsys, *argv)
    assert (code, stdout) == (2, "")
    assert stderr.startswith(f"error: {message}")
    assert len(stderr.splitlines()) == 1


def test_show_of_something_that_is_not_a_certificate_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    code, stdout, stderr = run(capsys, "show", tmp_path / "notes.txt")
    assert (code, stdout) == (2, "")
    assert stderr == f"error: {tmp_path / 'notes.txt'}: not a certificate: neither PEM nor DER\n"


def test_overwriting_is_refused_with_2_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "self-signed", "--host", HOST, "--out", tmp_path)[0] == 0
    before = (tmp_path / "key.pem").read_bytes()
    code, stdout, stderr = run(capsys, "self-signed", "--host", HOST, "--out", tmp_path)
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"error: {tmp_path / 'key.pem'}, {tmp_path / 'cert.pem'} already exist; "
        "pass --force to replace them\n"
    )
    assert (tmp_path / "key.pem").read_bytes() == before
    code, _, stderr = run(capsys, "self-signed", "--host", HOST, "--out", tmp_path, "--force")
    assert (code, stderr) == (0, "")
    assert (tmp_path / "key.pem").read_bytes() != before


def test_an_output_directory_that_cannot_be_made_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    code, stdout, stderr = run(
        capsys, "self-signed", "--host", HOST, "--out", tmp_path / "file" / "certs"
    )
    assert (code, stdout) == (1, "")
    assert stderr == f"error: {tmp_path / 'file' / 'certs'}: Not a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_output_directory_that_cannot_be_written_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path.chmod(0o500)
    try:
        code, _, stderr = run(capsys, "self-signed", "--host", HOST, "--out", tmp_path)
    finally:
        tmp_path.chmod(0o700)
    assert code == 1
    assert stderr == f"error: {tmp_path / 'key.pem'}: Permission denied\n"
    assert list(tmp_path.iterdir()) == []


def test_python_m_tlsgate_cert_self_signed(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = subprocess.run(
        [sys.executable, "-m", "tlsgate", "cert", "self-signed", "--host", HOST,
         "--key", "rsa2048", "--days", "30", "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=SUBPROCESS_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == (
        f"wrote {out / 'key.pem'} (RSA 2048 private key, mode 0600)"
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    assert (out / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----\n")
