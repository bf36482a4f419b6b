"""Results of a bench run: the table with ratios to stunnel, the bottleneck check, JSON."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from procs import CpuUse

SATURATED_PCT = 90.0  # a side that uses this much of its core is what limits a figure
OTHER_LOAD_PCT = 10.0  # CPU taken by other processes on the machine that disturbs a figure


@dataclass
class Series:
    """The runs of one metric for one relay."""

    values: list[float] = field(default_factory=list)
    cpu: list[CpuUse] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def median_cpu(self) -> CpuUse | None:
        if not self.cpu:
            return None
        return CpuUse(
            statistics.median(c.proxy_pct for c in self.cpu),
            statistics.median(c.proxy_cpu_seconds for c in self.cpu),
            statistics.median(c.client_cpu_pct for c in self.cpu),
            statistics.median(c.other_pct for c in self.cpu),
            statistics.median(c.client_side_pct for c in self.cpu),
        )


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True
    target: float | None = None  # issue 2's target for tlsgate, as a ratio to stunnel
    ratio_to: str | None = None  # the stunnel metric the ratio divides by, if another one
    cpu_bound: bool = True  # whether the bottleneck check applies
    cpu_of: str | None = None  # the metric whose runs' CPU use this one shares


METRICS = (
    Metric("bulk_c2b", "bulk, 1 connection, client→backend", "MB/s", target=0.45),
    Metric("bulk_b2c", "bulk, 1 connection, backend→client", "MB/s", target=0.45),
    Metric("handshakes", "full TLS handshakes/s, 50 concurrent", "1/s", target=0.80),
    Metric(
        "hs_per_cpu",
        "  handshakes per proxy CPU-second",
        "1/s",
        cpu_bound=False,
        cpu_of="handshakes",
    ),
    Metric(
        "idle_rss",
        "RSS per idle TLS connection (1,000)",
        "KiB",
        higher_is_better=False,
        target=0.50,
        cpu_bound=False,
    ),
    Metric(
        "smtp_starttls",
        "SMTP DATA via STARTTLS (587)",
        "MB/s",
        target=0.40,
        ratio_to="bulk_c2b",
    ),
    Metric("smtp_implicit", "SMTP DATA via implicit TLS (465)", "MB/s"),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


class Results:
    def __init__(self) -> None:
        self.series: dict[str, dict[str, Series]] = {m.key: {} for m in METRICS}
        self.tls: dict[str, str] = {}

    def of(self, metric: str, relay: str) -> Series:
        return self.series[metric].setdefault(relay, Series())

    def median(self, metric: str, relay: str) -> float | None:
        s = self.series[metric].get(relay)
        return s.median if s else None

    def as_json(self) -> dict[str, Any]:
        return {
            key: {name: asdict(s) | {"median": s.median} for name, s in per.items()}
            for key, per in self.series.items()
        }


def verdict(cpu: CpuUse) -> str:
    """Which side limited a measurement, from the CPU use during it."""
    if cpu.other_pct >= OTHER_LOAD_PCT:
        return "DISTURBED: other processes took CPU time"
    client = max(cpu.client_cpu_pct, cpu.client_side_pct)
    if cpu.proxy_pct >= SATURATED_PCT and client >= SATURATED_PCT:
        return "both CPUs saturated: the relay's figure may be understated"
    if cpu.proxy_pct >= SATURATED_PCT:
        return "proxy-bound"
    if client >= SATURATED_PCT:
        return "CLIENT-BOUND: measures the client, not the relay"
    return "neither CPU saturated"


def cpu_note(cpu: CpuUse) -> str:
    note = f"proxy CPU {cpu.proxy_pct:.0f}%, client CPU {cpu.client_cpu_pct:.0f}%"
    if cpu.other_pct >= OTHER_LOAD_PCT:
        note += f", OTHER LOAD {cpu.other_pct:.0f}%"
    return note


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}" if unit == "KiB" else f"{value:,.0f}"


def _ratio(value: float | None, ref: float | None) -> float | None:
    return value / ref if value is not None and ref else None


def _markdown(rows: list[list[str]], left: int) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            c.ljust(w) if j < left else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def table(results: Results, names: list[str]) -> str:
    """Absolute medians, each relay's ratio to stunnel, and issue 2's target for tlsgate."""
    others = [n for n in names if n != "stunnel"]
    head = ["metric", "unit", "stunnel"]
    for n in others:
        head += [n, f"{n}/stunnel"]
        if n == "tlsgate":
            head.append("target")
    rows = [head]
    for m in METRICS:
        if all(results.median(m.key, n) is None for n in names):
            continue  # a test that was not run
        ref = results.median(m.ratio_to or m.key, "stunnel")
        row = [m.label, m.unit, _cell(results, m, "stunnel")]
        for n in others:
            ratio = _ratio(results.median(m.key, n), ref)
            mark = "*" if m.ratio_to and ratio is not None else ""
            row += [_cell(results, m, n), f"{ratio:.2f}x{mark}" if ratio is not None else "—"]
            if n == "tlsgate":
                disturbed = _disturbed(results, m, n) or _disturbed(
                    results, METRIC_BY_KEY[m.ratio_to or m.key], "stunnel"
                )
                row.append(_target(m, ratio) + (" (disturbed)" if disturbed and ratio else ""))
        rows.append(row)
    return _markdown(rows, left=2)


def _disturbed(results: Results, m: Metric, relay: str) -> bool:
    s = results.series[m.cpu_of or m.key].get(relay)
    cpu = s.median_cpu() if s else None
    return cpu is not None and cpu.other_pct >= OTHER_LOAD_PCT


def _cell(results: Results, m: Metric, relay: str) -> str:
    """The median, marked with "!" when other processes disturbed the runs."""
    mark = " !" if _disturbed(results, m, relay) else ""
    return _fmt(results.median(m.key, relay), m.unit) + mark


def _target(m: Metric, ratio: float | None) -> str:
    if m.target is None:
        return ""
    sign = ">=" if m.higher_is_better else "<="
    if ratio is None:
        return f"{sign} {m.target:.2f}x"
    met = ratio >= m.target if m.higher_is_better else ratio <= m.target
    return f"{sign} {m.target:.2f}x {'met' if met else 'MISSED'}"


def notes(results: Results) -> list[str]:
    out = []
    if any(
        (cpu := s.median_cpu()) is not None and cpu.other_pct >= OTHER_LOAD_PCT
        for per in results.series.values()
        for s in per.values()
    ):
        out.append(
            f"! other processes on this machine used >= {OTHER_LOAD_PCT:.0f}% of a core during "
            "these runs: the figure is disturbed (see below); run again on a quiet machine."
        )
    if results.median("smtp_starttls", "tlsgate") is not None:
        out.append(
            "* ratio to stunnel's bulk client→backend relay: stunnel cannot mediate STARTTLS "
            "in front of a plaintext backend."
        )
    own = results.median("bulk_c2b", "tlsgate")
    starttls = results.median("smtp_starttls", "tlsgate")
    if own and starttls:
        out.append(
            f"tlsgate DATA via STARTTLS / tlsgate's own bulk client→backend: "
            f"{starttls / own:.2f}x (issue 7 target: >= 0.80x)"
        )
    return out


def bottlenecks(results: Results, names: list[str]) -> str:
    """Per measured figure: CPU of the proxy, of the client CPU, and of other processes."""
    rows = [["figure", "relay", "relay CPU", "client+sink CPU", "other processes", "verdict"]]
    for m in METRICS:
        if not m.cpu_bound:
            continue
        for n in names:
            s = results.series[m.key].get(n)
            cpu = s.median_cpu() if s else None
            if cpu is None:
                continue
            rows.append(
                [
                    m.label.strip(),
                    n,
                    f"{cpu.proxy_pct:.0f}%",
                    f"{cpu.client_side_pct:.0f}%",
                    f"{cpu.other_pct:.0f}%",
                    verdict(cpu),
                ]
            )
    return _markdown(rows, left=2) if len(rows) > 1 else ""


def run_details(results: Results, names: list[str]) -> list[str]:
    out = []
    for m in METRICS:
        for n in names:
            s = results.series[m.key].get(n)
            if not s:
                continue
            parts = []
            if len(s.values) > 1:
                parts.append("runs " + ", ".join(_fmt(v, m.unit) for v in s.values))
            parts += s.errors
            if parts:
                out.append(f"- {m.key} / {n}: " + "; ".join(parts))
    return out
