"""Every example under `conf/examples/` passes `tlsgate check`, as an admin would first run it.

Like the reference config, examples that serve TLS name `certs/mail.pem` / `certs/mail.key`
next to themselves; the test generates that pair, since the repository ships no key.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tlsgate.demo.selfsigned import write_self_signed

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "conf" / "examples").glob("*.toml"))


def test_there_are_examples() -> None:
    assert any(path.name == "outbound-smarthost.toml" for path in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_passes_check(example: Path, tmp_path: Path) -> None:
    config = tmp_path / example.name
    shutil.copyfile(example, config)
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
    assert result.stdout.startswith("config OK: "), result.stdout
    assert result.stderr == "", result.stderr


def test_the_kubernetes_example_embeds_a_config_that_passes_check(tmp_path: Path) -> None:
    manifest = (REPO / "conf" / "examples" / "kubernetes-sidecar.yaml").read_text()
    embedded = manifest.split("# BEGIN tlsgate.toml\n", 1)[1].split("    # END tlsgate.toml", 1)[0]
    config = tmp_path / "tlsgate.toml"
    config.write_text(textwrap.dedent(embedded))
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o700)
    write_self_signed(certs, stem="mail")
    # Where a kubernetes.io/tls Secret puts them.
    (certs / "mail.pem").rename(certs / "tls.crt")
    (certs / "mail.key").rename(certs / "tls.key")
    result = subprocess.run(
        [sys.executable, "-m", "tlsgate", "check", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config OK: 3 listeners\n", result.stdout
