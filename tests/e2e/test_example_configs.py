"""Every example under `conf/examples/` passes `tlsgate check`, as an admin would first run it.

Like the reference config, examples that serve TLS name `certs/mail.pem` / `certs/mail.key`
next to themselves; the test generates that pair, since the repository ships no key.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.e2e.test_reference_config import check_beside_a_certificate

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "conf" / "examples").glob("*.toml"))


def test_there_are_examples() -> None:
    assert any(path.name == "outbound-smarthost.toml" for path in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_passes_check(example: Path, tmp_path: Path) -> None:
    result = check_beside_a_certificate(example.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK: "), result.stdout
    assert result.stderr == "", result.stderr


def test_the_kubernetes_example_embeds_a_config_that_passes_check(tmp_path: Path) -> None:
    manifest = (REPO / "conf" / "examples" / "kubernetes-sidecar.yaml").read_text()
    embedded = manifest.split("# BEGIN tlsgate.toml\n", 1)[1].split("    # END tlsgate.toml", 1)[0]
    # The certificate where a kubernetes.io/tls Secret puts it.
    result = check_beside_a_certificate(
        textwrap.dedent(embedded), tmp_path, cert="tls.crt", key="tls.key"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config OK: 3 listeners\n", result.stdout
