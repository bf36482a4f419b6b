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
    target: float | None = None  # issue 7's target for tlsgate, as a ratio to stunnel
    ratio_to: str | None = None  # the stunnel metric the ratio divides by, if another one
    cpu_bound: bool = True  # whether the bottleneck check applies
    cpu_of: str | None = None  # the metric whose runs' CPU use this one shares
    own_ratio_to: str | None = None  # the target is on tlsgate's ratio to this figure of its own
    limit: float | None = None  # the target is an absolute ceiling on tlsgate's figure
    section: str = "relays"  # "workers": tlsgate workers = 1 vs 2, a table of its own


def _latency(key: str, label: str, limit: float, cpu_of: str | None = None) -> Metric:
    return Metric(
        key, label, "µs", higher_is_better=False, limit=limit, cpu_bound=False, cpu_of=cpu_of
    )


METRICS = (
    Metric("bulk_c2b", "bulk, 1 connection, client→backend", "MB/s", target=0.95),
    Metric("bulk_b2c", "bulk, 1 connection, backend→client", "MB/s", target=1.00),
    Metric("handshakes", "full TLS handshakes/s, 50 concurrent", "1/s", target=1.00),
    Metric(
        "hs_per_cpu",
        "  handshakes per proxy CPU-second",
        "1/s",
        target=1.00,
        cpu_bound=False,
        cpu_of="handshakes",
    ),
    Metric(
        "idle_rss",
        "RSS per idle TLS connection (1,000)",
        "KiB",
        higher_is_better=False,
        target=0.40,
        cpu_bound=False,
    ),
    Metric(
        "idle9000_rss",
        "total RSS, 9,000 idle TLS sessions",
        "MB",
        higher_is_better=False,
        limit=400.0,
        cpu_bound=False,
    ),
    Metric(
        "smtp_starttls",
        "SMTP DATA via STARTTLS (587), text",
        "MB/s",
        target=0.80,
        ratio_to="bulk_c2b",
        own_ratio_to="bulk_c2b",
    ),
    Metric(
        "smtp_starttls_mime",
        "  the same, MIME with a base64 attachment",
        "MB/s",
        target=0.80,
        ratio_to="bulk_c2b",
        own_ratio_to="bulk_c2b",
    ),
    Metric("smtp_implicit", "SMTP DATA via implicit TLS (465), text", "MB/s"),
    _latency("lat1_p50", "added latency per NOOP, 1 session, median", 100.0),
    _latency("lat1_p99", "  1 session, p99", 1000.0, cpu_of="lat1_p50"),
    _latency("lat200_p50", "  200 sessions at 1 NOOP/s each, median", 100.0),
    _latency("lat200_p99", "  200 sessions at 1 NOOP/s each, p99", 1000.0, cpu_of="lat200_p50"),
    Metric("workers_hs", "full TLS handshakes/s, 50 concurrent", "1/s", section="workers"),
    Metric(
        "workers_hs_cpu",
        "  handshakes per proxy CPU-second",
        "1/s",
        cpu_of="workers_hs",
        section="workers",
    ),
    Metric(
        "workers_bulk4",
        "bulk client→backend, 4 connections, aggregate",
        "MB/s",
        section="workers",
    ),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}
WORKER_COUNTS = (1, 2)


class Results:
    def __init__(self) -> None:
        self.series: dict[str, dict[str, Series]] = {m.key: {} for m in METRICS}
        self.tls: dict[str, str] = {}
        self.details: list[str] = []  # what a figure does not say: raw percentiles, limits
        self.workers_note = ""  # why workers = 2 was not measured, if it was not
        self.raw: list[dict[str, Any]] = []  # per-run percentiles, for the JSON only
        self.durations: dict[str, float] = {}  # seconds each test took, waits and repeats included

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
    if value is None or value != value:  # None or NaN
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
    """Absolute medians, each relay's ratio to stunnel, and issue 7's target for tlsgate."""
    others = [n for n in names if n != "stunnel"]
    head = ["metric", "unit", "stunnel"]
    for n in others:
        head += [n, f"{n}/stunnel"]
        if n == "tlsgate":
            head.append("target (issue 7)")
    rows = [head]
    for m in METRICS:
        if m.section != "relays" or all(results.median(m.key, n) is None for n in names):
            continue  # a test that was not run
        ref = results.median(m.ratio_to or m.key, "stunnel")
        row = [m.label, m.unit, _cell(results, m, "stunnel")]
        for n in others:
            ratio = _ratio(results.median(m.key, n), ref)
            mark = "*" if m.ratio_to and ratio is not None else ""
            row += [_cell(results, m, n), f"{ratio:.2f}x{mark}" if ratio is not None else "—"]
            if n == "tlsgate":
                row.append(_tlsgate_target(results, m, ratio))
        rows.append(row)
    return _markdown(rows, left=2)


def _tlsgate_target(results: Results, m: Metric, ratio: float | None) -> str:
    """The target column: issue 7's target, whether tlsgate met it, and if disturbed."""
    value = results.median(m.key, "tlsgate")
    compared = [m.key]
    if m.limit is not None:
        text = f"< {m.limit:,.0f} {m.unit}"
        met = value is not None and value < m.limit
        known = value is not None and value == value
    elif m.own_ratio_to is not None:
        own = _ratio(value, results.median(m.own_ratio_to, "tlsgate"))
        compared.append(m.own_ratio_to)
        text = (f"{own:.2f}x own bulk; " if own is not None else "") + f">= {m.target:.2f}x"
        met = own is not None and m.target is not None and own >= m.target
        known = own is not None
    elif m.target is not None:
        text = f"{'>=' if m.higher_is_better else '<='} {m.target:.2f}x"
        met = ratio is not None and (ratio >= m.target if m.higher_is_better else ratio <= m.target)
        known = ratio is not None
        compared.append(m.ratio_to or m.key)
    else:
        return ""
    if not known:
        return text
    text += " met" if met else " MISSED"
    disturbed = any(
        _disturbed(results, METRIC_BY_KEY[key], relay)
        for key in compared
        for relay in ("tlsgate", "stunnel")
    )
    return text + (" (disturbed)" if disturbed else "")


def workers_table(results: Results) -> str:
    """tlsgate with workers = 1 and workers = 2, side by side."""
    names = [f"workers={n}" for n in WORKER_COUNTS]
    rows = [["metric", "unit", *names, f"{names[1]}/{names[0]}"]]
    for m in METRICS:
        if m.section != "workers" or all(results.median(m.key, n) is None for n in names):
            continue
        ratio = _ratio(results.median(m.key, names[1]), results.median(m.key, names[0]))
        cells = [_cell(results, m, n) for n in names]
        rows.append([m.label, m.unit, *cells, f"{ratio:.2f}x" if ratio is not None else "—"])
    return _markdown(rows, left=2) if len(rows) > 1 else ""


def _disturbed(results: Results, m: Metric, relay: str) -> bool:
    s = results.series[m.cpu_of or m.key].get(relay)
    cpu = s.median_cpu() if s else None
    return cpu is not None and cpu.other_pct >= OTHER_LOAD_PCT


def _cell(results: Results, m: Metric, relay: str) -> str:
    """The median, marked with "!" when other processes disturbed the runs."""
    mark = " !" if _disturbed(results, m, relay) else ""
    return _fmt(results.median(m.key, relay), m.unit) + mark


def notes(results: Results, floor: str = "") -> list[str]:
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
    if results.median("lat1_p50", "tlsgate") is not None:
        out.append(
            "Latency: tlsgate through its STARTTLS submission listener, the other relays through"
            " implicit TLS (465); each minus the same percentile of a plaintext session straight"
            " to the sink, measured interleaved with it."
        )
    if floor and results.median("lat1_p50", floor) is not None:
        out.append(
            f"Latency floor of this machine, {floor} (no TLS, one run): adds "
            + "; ".join(
                f"{label} {_fmt(results.median(key, floor), 'µs')} µs"
                for key, label in (
                    ("lat1_p50", "1 session median"),
                    ("lat1_p99", "p99"),
                    ("lat200_p50", "200 sessions median"),
                    ("lat200_p99", "p99"),
                )
            )
        )
    return out


def bottlenecks(results: Results, names: list[str]) -> str:
    """Per measured figure: CPU of the proxy, of the client CPU, and of other processes."""
    rows = [["figure", "relay", "relay CPU", "client+sink CPU", "other processes", "verdict"]]
    for m in METRICS:
        if not m.cpu_bound or m.section != "relays":
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


def paired_ratios(results: Results) -> list[str]:
    """tlsgate/stunnel run by run, for each figure both have several runs of.

    Within a run the relays are measured one after the other, so the two values of a run share
    the machine's state of the moment. The median of the per-run ratios moves less with the
    machine's drift than the table's ratio of two medians; both are honest, and they differ by
    what the machine did.
    """
    out = []
    for m in METRICS:
        ours, ref = results.series[m.key].get("tlsgate"), results.series[m.key].get("stunnel")
        if m.section != "relays" or not ours or not ref or len(ours.values) < 2:
            continue
        if len(ours.values) != len(ref.values):
            continue  # a failed run on one side: the runs no longer pair up
        ratios = [a / b for a, b in zip(ours.values, ref.values, strict=True) if b]
        if ratios:
            runs = ", ".join(f"{r:.2f}" for r in ratios)
            out.append(f"- {m.label.strip()}: {statistics.median(ratios):.2f}x (runs {runs})")
    return out


def run_details(results: Results, names: list[str]) -> list[str]:
    out = []
    for m in METRICS:
        relays = names if m.section == "relays" else [f"workers={n}" for n in WORKER_COUNTS]
        for n in relays:
            s = results.series[m.key].get(n)
            if not s:
                continue
            parts = []
            if len(s.values) > 1:
                parts.append("runs " + ", ".join(_fmt(v, m.unit) for v in s.values))
            parts += s.errors
            if parts:
                out.append(f"- {m.key} / {n}: " + "; ".join(parts))
    return out + [f"- {line}" for line in results.details]
