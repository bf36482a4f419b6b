"""conf/prometheus/: the scrape snippet and the alerting rules pass `promtool`, and the
certificate alerts fire when they should (`promtool test rules`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.metrics_text import parse_samples
from tlsgate.observe.metrics import Metrics

CONF = Path(__file__).resolve().parents[2] / "conf" / "prometheus"
SCRAPE = CONF / "scrape.yml"
ALERTS = CONF / "tlsgate-alerts.yml"
PROMTOOL_TIMEOUT_SECONDS = 60
DAY_SECONDS = 86400

# CONTRACT.md: .ci/run installs Debian's `prometheus`, so this skips only on a bare machine.
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool not installed (apt-get install prometheus)"
)


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run(
        [promtool, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
        check=False,
    )


@needs_promtool
def test_alerting_rules_pass_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS), cwd=CONF)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_a_prometheus_config_with_the_scrape_snippet_passes_promtool_check_config(
    tmp_path: Path,
) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: 15s\nrule_files:\n  - {ALERTS}\n" + SCRAPE.read_text()
    )
    result = run_promtool("check", "config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


EXPIRY = "tlsgate_certificate_expiry_timestamp_seconds"
# Prometheus's clock starts at 0 in a rules test, so a timestamp is "seconds from now".
RULES_TEST = f"""\
rule_files:
  - {ALERTS}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: '{EXPIRY}{{certificate="soon.test",subject="CN=soon.test"}}'
        values: '{10 * DAY_SECONDS}x120'
      - series: '{EXPIRY}{{certificate="fine.test",subject="CN=fine.test"}}'
        values: '{60 * DAY_SECONDS}x120'
      - series: '{EXPIRY}{{certificate="gone.test",subject="CN=gone.test"}}'
        values: '0x120'
    alert_rule_test:
      - eval_time: 90m
        alertname: TlsgateCertificateExpiringSoon
        exp_alerts:
          - exp_labels:
              severity: warning
              certificate: soon.test
              subject: CN=soon.test
            exp_annotations:
              summary: Certificate soon.test expires in less than 14 days
              description: >-
                CN=soon.test on  expires in 9d 22h 30m 0s. Renew it and reload tlsgate (SIGHUP).
      - eval_time: 5m
        alertname: TlsgateCertificateExpired
        exp_alerts:
          - exp_labels:
              severity: critical
              certificate: gone.test
              subject: CN=gone.test
            exp_annotations:
              summary: Certificate gone.test has expired
              description: >-
                CN=gone.test on  is past its expiry. tlsgate serves an expired certificate
                only when no valid one exists for the name.
"""


@needs_promtool
def test_certificate_alerts_fire_for_the_expiring_and_the_expired_certificate(
    tmp_path: Path,
) -> None:
    tests = tmp_path / "tlsgate-alerts.test.yml"
    tests.write_text(RULES_TEST)
    result = run_promtool("test", "rules", str(tests), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_use_only_metrics_tlsgate_exports() -> None:
    exported = {name for name, _labels in parse_samples(Metrics().exposition().decode())}
    exported |= {
        match.group(1)
        for match in re.finditer(r"^# TYPE (\S+) ", Metrics().exposition().decode(), re.MULTILINE)
    }
    used = set(re.findall(r"\btlsgate_[a-z_]+\b", ALERTS.read_text()))
    assert used - exported == set()
