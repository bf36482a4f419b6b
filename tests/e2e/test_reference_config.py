"""`conf/tlsgate.toml`, the documented reference, passes `tlsgate check` once it has a cert.

The repository ships no key (CONTRACT.md), so the test copies the file next to a freshly
generated `certs/mail.pem` / `certs/mail.key`, exactly where its relative paths point.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import fields
from pathlib import Path

from tests.e2e.test_daemon import tlsgate
from tlsgate.config.model import CertificateEntry, Config, ListenerConfig, LogConfig, TlsSettings
from tlsgate.demo.selfsigned import write_self_signed

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "conf" / "tlsgate.toml"


def check_beside_a_certificate(
    config_text: str, directory: Path, *, cert: str = "mail.pem", key: str = "mail.key"
) -> subprocess.CompletedProcess[str]:
    """`tlsgate check` on `config_text` written to `directory`, next to a fresh self-signed
    `certs/<cert>` and `certs/<key>` (where the shipped configs' relative paths point)."""
    config = directory / "tlsgate.toml"
    config.write_text(config_text)
    certs = directory / "certs"
    certs.mkdir(mode=0o700)
    write_self_signed(certs, stem="mail")
    (certs / "mail.pem").rename(certs / cert)
    (certs / "mail.key").rename(certs / key)
    return tlsgate("check", "-c", str(config), cwd=REPO)


def test_reference_config_passes_check_with_a_certificate(tmp_path: Path) -> None:
    result = check_beside_a_certificate(REFERENCE.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config OK: 6 listeners\n"
    assert result.stderr == ""


def test_repository_ships_no_private_key() -> None:
    keys = [p for p in (REPO / "conf").rglob("*") if p.suffix in {".key", ".p12", ".pfx"}]
    assert keys == []


def test_reference_config_names_every_key() -> None:
    # Issue 5: "a complete, commented reference of every key". Commented-out keys count: some
    # have no default (min_version, max_connections) or need files (client_ca).
    text = REFERENCE.read_text()
    written = set(re.findall(r"^#? ?(\w+) *=", text, flags=re.MULTILINE))
    model_keys = {f.name for cls in (Config, ListenerConfig) for f in fields(cls)} - {"source"}
    model_keys -= {"log", "metrics", "tls", "certificates", "listeners"}  # tables, not keys
    model_keys |= {
        f.name for cls in (CertificateEntry, LogConfig, TlsSettings) for f in fields(cls)
    }
    assert model_keys - written == set()
