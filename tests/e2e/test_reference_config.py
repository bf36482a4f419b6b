"""`conf/tlsgate.toml`, the documented reference, passes `tlsgate check` once it has a cert.

The repository ships no key (CONTRACT.md), so the test copies the file next to a freshly
generated `certs/mail.pem` / `certs/mail.key`, exactly where its relative paths point.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tlsgate.demo.selfsigned import write_self_signed

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "conf" / "tlsgate.toml"


def test_reference_config_passes_check_with_a_certificate(tmp_path: Path) -> None:
    config = tmp_path / "tlsgate.toml"
    shutil.copyfile(REFERENCE, config)
    (tmp_path / "certs").mkdir(mode=0o700)
    write_self_signed(tmp_path / "certs", stem="mail")
    result = subprocess.run(
        [sys.executable, "-m", "tlsgate", "check", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config OK: 5 listeners\n"
    assert result.stderr == ""


def test_repository_ships_no_private_key() -> None:
    keys = [p for p in (REPO / "conf").rglob("*") if p.suffix in {".key", ".p12", ".pfx"}]
    assert keys == []
