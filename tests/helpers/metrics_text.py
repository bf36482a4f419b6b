"""Reading the Prometheus text format back: every sample by name and labels."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

# (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

SCRAPE_TIMEOUT_SECONDS = 10.0


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of one series, or None when it is not exported."""
    return samples.get((name, tuple(sorted(labels.items()))))


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every series of one sample name: label pairs -> value."""
    return {
        labels: value for (sample_name, labels), value in samples.items() if sample_name == name
    }


def label_values(samples: Samples) -> Mapping[str, set[str]]:
    """Every label name with all the values it takes across the exposition."""
    values: dict[str, set[str]] = {}
    for _name, labels in samples:
        for key, value in labels:
            values.setdefault(key, set()).add(value)
    return values


def scrape(url: str) -> tuple[str, str]:
    """GET the endpoint over real HTTP: (Content-Type, body)."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
        content_type = str(response.headers.get("Content-Type", ""))
        body: bytes = response.read()
    return content_type, body.decode("utf-8")
