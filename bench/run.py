"""tlsgate's performance bench: tlsgate beside stunnel4 and HAProxy (issue 7, section 4).

    python bench/run.py                  # the full run, about 5 minutes
    python bench/run.py --quick          # a smoke run, about a minute
    python bench/run.py --only bulk --seconds 5 --runs 3
    python bench/run.py --only idle9000  # 9,000 idle sessions held by tlsgate

Every relay terminates implicit TLS (TLS 1.3, ECDSA P-256) on 127.0.0.1 in front of the same
plaintext sink. The relay runs on one CPU, the load client and the sink on the other. The run
prints a table of medians with ratios to stunnel and issue 7's targets, tlsgate workers = 1
beside workers = 2, and a check of which side limited each figure. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import queue
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import clients
import latency
import tls13_client
from certs import make_p256_cert
from procs import (
    Child,
    CpuSample,
    CpuUse,
    Meter,
    cpu_busy_jiffies,
    nofile_limit,
    open_fds,
    rss_kib,
    spawn,
    thread_count,
)
from proxies import (
    BENCH_DIR,
    REPO_ROOT,
    Backends,
    Proxy,
    await_ready,
    haproxy_version,
    start_baseline,
    start_haproxy,
    start_stunnel,
    start_tlsgate,
    tlsgate_accepts_workers,
)
from report import (
    OTHER_LOAD_PCT,
    WORKER_COUNTS,
    Results,
    bottlenecks,
    cpu_note,
    notes,
    paired_ratios,
    run_details,
    table,
    workers_table,
)

# The order the tests run in. The idle tests come first, on relays that have not yet served
# anything else: memory that earlier tests freed would otherwise be reused and hide the cost of
# an idle connection (by half, for the baseline).
TESTS = ("idle", "idle9000", "bulk", "handshakes", "smtp", "latency", "workers")
QUICK_TESTS = ("idle", "bulk", "handshakes", "smtp", "latency", "workers")
WARM_UP = 20  # connections opened and closed before the idle test's "before"
RELAYS = ("stunnel", "tlsgate", "haproxy", "baseline")
DEFAULT_RELAYS = ("stunnel", "tlsgate", "haproxy")  # issue 7's three; the baseline on request
BULK_CONNECTIONS = 4  # the workers test's aggregate throughput
PLAIN_FLOOR = "plaintext haproxy"  # the latency test's reference relay without TLS
LAT_ALONE = ("lat1_p50", "lat1_p99")  # the metrics of one latency measurement, 1 session
LAT_BUSY = ("lat200_p50", "lat200_p99")  # and with --lat-sessions sessions


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the sink --------------------------------------------------------------------------------


class Sink:
    """The plaintext backend subprocess (bench/sink.py); its JSON reports arrive on a queue."""

    def __init__(self, tmp: Path, cpu: int) -> None:
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        self.child: Child = spawn(
            "sink",
            [sys.executable, str(BENCH_DIR / "sink.py")],
            cpu=cpu,
            log=tmp / "sink.log",
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.next_report("ready", timeout=15.0)
        self.backends = Backends(
            int(ready["bulk"]), int(ready["smtp"]), int(ready["greet"]), int(ready["park"])
        )

    def _read(self) -> None:
        stdout = self.child.popen.stdout
        assert stdout is not None
        for line in stdout:
            with contextlib.suppress(ValueError):
                self.reports.put(json.loads(line))

    def drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.reports.get_nowait()

    def next_report(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                report = self.reports.get(timeout=min(left, 0.5))
            except queue.Empty:
                if not self.child.alive():
                    raise RuntimeError(f"the sink died:\n{self.child.log_tail()}") from None
                continue
            if report.get("kind") == kind:
                return report
        raise TimeoutError(f"no {kind!r} report from the sink within {timeout:.0f} s")


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    sink: Sink
    relays: list[Proxy]
    results: Results
    quiet_budget: float  # seconds left to wait for other processes to go quiet
    retry_budget: int  # repeats left for measurements that other processes disturbed
    tmp: Path  # configs and logs of this run
    cert: Path
    key: Path
    stack: contextlib.ExitStack  # stops the processes started during the run

    def live(self) -> Iterator[Proxy]:
        """The relays still running (one that died is reported, and skipped from then on)."""
        for p in self.relays:
            if p.ok and p.child is not None and not p.child.alive():
                p.error = f"exited during the run with status {p.child.popen.returncode}"
                tail = p.child.log_tail()
                p.error += f"; its log ends with:\n{tail}" if tail else ""
                log(f"{p.name}: {p.error}")
            if p.ok:
                yield p

    def sample(self, p: Proxy) -> CpuSample:
        client_side = (os.getpid(), self.sink.child.pid)
        return Meter(p.pid, client_side, self.args.proxy_cpu, self.args.client_cpu).sample()

    def wait_quiet(self) -> None:
        """Wait, within the run's budget, until other processes leave both CPUs nearly idle."""
        cpus = (self.args.proxy_cpu, self.args.client_cpu)
        for _ in range(1000):
            started = time.monotonic()
            a = [cpu_busy_jiffies(c) for c in cpus]
            time.sleep(0.2)
            b = [cpu_busy_jiffies(c) for c in cpus]
            busy = sum(100.0 * (b[i][0] - a[i][0]) / max(b[i][1] - a[i][1], 1) for i in (0, 1))
            if busy < OTHER_LOAD_PCT or self.quiet_budget <= 0:
                return
            time.sleep(0.3)
            self.quiet_budget -= time.monotonic() - started

    def measure(
        self, metric: str, p: Proxy, fn: Callable[[], tuple[float, CpuUse | None]]
    ) -> CpuUse | None:
        """Run one measurement of one metric; see ``measure_group``."""

        def one() -> tuple[dict[str, float], CpuUse | None]:
            value, cpu = fn()
            return {metric: value}, cpu

        return self.measure_group(metric, (metric,), p, one)

    def measure_group(
        self,
        label: str,
        metrics: tuple[str, ...],
        p: Proxy,
        fn: Callable[[], tuple[dict[str, float], CpuUse | None]],
        series_name: str | None = None,
    ) -> CpuUse | None:
        """Run one measurement and record its values (one per metric) and CPU use, or its error
        under each of ``metrics``.

        ``fn`` returns the values, and the CPU use if it sampled it itself (else it is sampled
        around the call). A run that other processes disturbed is repeated while the run's
        retry budget lasts. The values are recorded under ``series_name`` (default: the relay's
        name).
        """
        name = series_name or p.name
        while True:  # bounded: each repeat spends the retry budget
            self.wait_quiet()
            before = self.sample(p)
            try:
                values, sampled = fn()
            except Exception as exc:  # a failed run is reported, and the bench goes on
                for metric in metrics:
                    self.results.of(metric, name).errors.append(f"{type(exc).__name__}: {exc}")
                log(f"  {name:8} {label}: FAILED {type(exc).__name__}: {exc}")
                time.sleep(0.5)
                return None
            cpu = sampled or CpuUse.between(before, self.sample(p))
            time.sleep(0.3)  # let the relay finish closing before the next measurement
            shown = ", ".join(f"{v:,.1f}" for v in values.values())
            if cpu.other_pct < OTHER_LOAD_PCT or self.retry_budget <= 0:
                break
            self.retry_budget -= 1
            log(f"  {name:8} {label}: {shown} disturbed ({cpu_note(cpu)}); again")
        for metric, value in values.items():
            series = self.results.of(metric, name)
            series.cpu.append(cpu)
            series.values.append(value)
        log(f"  {name:8} {label}: {shown}  ({cpu_note(cpu)})")
        return cpu


# --- the tests -------------------------------------------------------------------------------


def test_bulk(b: Bench) -> None:
    """One connection, ``--seconds`` each way; the receiving side measures."""
    seconds = b.args.seconds

    def upload(p: Proxy) -> tuple[float, None]:
        b.sink.drain()
        info = clients.bulk_upload(p.ports["bulk"], seconds)
        b.results.tls[p.name] = f"{info.version} {info.cipher}"
        report = b.sink.next_report("upload", timeout=30.0)
        return float(report["bytes"]) / float(report["seconds"]) / 1e6, None

    def download(p: Proxy) -> tuple[float, None]:
        mbps, info = clients.bulk_download(p.ports["bulk"], seconds)
        b.results.tls[p.name] = f"{info.version} {info.cipher}"
        return mbps, None

    for metric, fn in (("bulk_c2b", upload), ("bulk_b2c", download)):
        log(f"{metric}: {b.args.runs} run(s) of {seconds:g} s per relay")
        for _ in range(b.args.runs):
            for p in b.live():
                b.measure(metric, p, partial(fn, p))


def test_handshakes(b: Bench) -> None:
    """``--concurrency`` clients, each a new full handshake, for ``--hs-seconds``."""
    seconds, conc = b.args.hs_seconds, b.args.concurrency
    log(
        f"handshakes: {b.args.runs} run(s) of {seconds:g} s per relay, {conc} concurrent, "
        f"{b.args.hs_client} client"
    )
    completed: dict[str, int] = {}

    def run(p: Proxy) -> tuple[float, CpuUse]:
        marks: dict[str, CpuSample] = {}

        def mark(edge: str) -> None:
            marks[edge] = b.sample(p)

        load = tls13_client.run_load if b.args.hs_client == "lean" else clients.run_handshakes
        res = load(p.ports["greet"], concurrency=conc, seconds=seconds, warmup=0.5, on_window=mark)
        if res.failed:
            reasons = ", ".join(f"{n} x {why}" for why, n in sorted(res.errors.items()))
            b.results.of("handshakes", p.name).errors.append(
                f"{res.failed} connections failed ({reasons})"
            )
        completed[p.name] = res.completed
        return res.rate, CpuUse.between(marks["start"], marks["end"])

    for _ in range(b.args.runs):
        for p in b.live():
            cpu = b.measure("handshakes", p, partial(run, p))
            if cpu and cpu.proxy_cpu_seconds > 0:
                per_cpu = completed[p.name] / cpu.proxy_cpu_seconds
                b.results.of("hs_per_cpu", p.name).values.append(per_cpu)
            time.sleep(0.7)  # the connections cut at the end close


def test_smtp(b: Bench) -> None:
    """DATA of ``--smtp-mib`` messages for ``--smtp-seconds`` per session: SMTPS on every relay,
    STARTTLS on tlsgate, with a text message and (STARTTLS only) a MIME one."""
    size = int(b.args.smtp_mib * 1024 * 1024)
    text, mime = clients.make_message(size), clients.make_mime_message(size)
    log(
        f"smtp: {b.args.runs} run(s) per listener of {b.args.smtp_seconds:g} s of DATA, "
        f"{len(text) / 2**20:.0f} MiB messages"
    )

    def session(p: Proxy, port: int, message: bytes, starttls: bool) -> tuple[float, CpuUse]:
        marks: dict[str, CpuSample] = {}

        def mark(edge: str) -> None:
            marks[edge] = b.sample(p)

        mbps = clients.smtp_data(
            port, message, starttls=starttls, seconds=b.args.smtp_seconds, on_window=mark
        )
        return mbps, CpuUse.between(marks["start"], marks["end"])  # the DATA phases only

    for _ in range(b.args.runs):
        for p in b.live():
            b.measure("smtp_implicit", p, partial(session, p, p.ports["smtps"], text, False))
            if "submission" in p.ports:
                port = p.ports["submission"]
                b.measure("smtp_starttls", p, partial(session, p, port, text, True))
                b.measure("smtp_starttls_mime", p, partial(session, p, port, mime, True))


def test_idle(b: Bench) -> None:
    """RSS of the relay's processes before and after ``--idle-conns`` idle TLS connections."""
    n = b.args.idle_conns
    log(f"idle: RSS of each relay before and after opening {n} idle TLS connections")
    for p in b.live():
        series = b.results.of("idle_rss", p.name)
        held: list[ssl.SSLSocket] = []
        try:
            # A few connections first, so that one-time set-up is not counted per connection.
            warm = clients.run_handshakes(p.ports["hold"], concurrency=WARM_UP, hold=WARM_UP)
            clients.close_all(warm.held)
            time.sleep(0.5)
            before, threads_before = rss_kib(p.pid), thread_count(p.pid)
            res = clients.run_handshakes(
                p.ports["hold"], concurrency=b.args.concurrency, hold=n, max_seconds=90.0
            )
            held = res.held
            if len(held) < n:
                raise RuntimeError(f"only {len(held)} of {n} connections were established")
            time.sleep(1.0)  # let every relay-side task or thread settle in its idle state
            after, threads_after = rss_kib(p.pid), thread_count(p.pid)
        except Exception as exc:
            series.errors.append(f"{type(exc).__name__}: {exc}")
            log(f"  {p.name:8} idle: FAILED {type(exc).__name__}: {exc}")
            continue
        finally:
            clients.close_all(held)
        series.values.append((after - before) / n)
        log(
            f"  {p.name:8} idle: RSS {before / 1024:.1f} → {after / 1024:.1f} MiB, "
            f"{(after - before) / n:.1f} KiB per connection; threads {threads_before} → "
            f"{threads_after}"
        )
        time.sleep(1.0)


def test_idle9000(b: Bench) -> None:
    """Total RSS of tlsgate holding ``--idle9000-conns`` idle TLS sessions (issue 7: 9,000 in
    < 400 MB). tlsgate only: stunnel would need a thread per session."""
    n = b.args.idle9000_conns
    p = next((r for r in b.live() if r.name == "tlsgate"), None)
    if p is None:
        log("idle9000: skipped, tlsgate is not running")
        return
    log(f"idle9000: total RSS of tlsgate holding {n:,} idle TLS sessions")
    series = b.results.of("idle9000_rss", p.name)
    # Each session is two descriptors in the relay (client and backend), one in the harness
    # and one in the sink. The relay inherits the harness's limit (prepare_process raises it to
    # the hard limit); tlsgate may also raise its own soft limit, so check what it has now.
    relay_limit = nofile_limit(p.pid)
    own_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if relay_limit < 2 * n + 100 or own_limit < n + 100:
        why = (
            f"RLIMIT_NOFILE too low for {n:,} sessions: tlsgate has {relay_limit:,} (needs "
            f"{2 * n + 100:,}), the harness {own_limit:,} (needs {n + 100:,}); see ulimit -Hn"
        )
        series.errors.append(why)
        log(f"  {p.name:8} idle9000: FAILED {why}")
        return
    fds_before = open_fds(p.pid)
    before = rss_kib(p.pid)
    held: list[socket.socket] = []
    started = time.monotonic()
    try:
        res = tls13_client.open_idle(
            p.ports["hold"], n, concurrency=b.args.concurrency, max_seconds=120.0
        )
        held = res.held
        if len(held) < n:
            reasons = ", ".join(f"{k} x {why}" for why, k in sorted(res.errors.items()))
            raise RuntimeError(f"only {len(held):,} of {n:,} sessions opened ({reasons})")
        opened = time.monotonic() - started
        time.sleep(2.0)  # let every session settle in its idle state
        after, fds = rss_kib(p.pid), open_fds(p.pid)
    except Exception as exc:
        series.errors.append(f"{type(exc).__name__}: {exc}")
        log(f"  {p.name:8} idle9000: FAILED {type(exc).__name__}: {exc}")
        return
    finally:
        for sock in held:
            sock.close()
        _wait_for_fds(p.pid, fds_before + 100, timeout=30.0)
    series.values.append(after * 1024 / 1e6)
    detail = (
        f"idle9000 / tlsgate: RSS {before / 1024:.1f} → {after / 1024:.1f} MiB, "
        f"{(after - before) / n:.1f} KiB per session; {fds:,} descriptors open "
        f"(RLIMIT_NOFILE {relay_limit:,}); {n:,} sessions opened in {opened:.1f} s"
    )
    b.results.details.append(detail)
    log(f"  {p.name:8} idle9000: {after * 1024 / 1e6:,.0f} MB; " + detail.split(": ", 1)[1])


def _wait_for_fds(pid: int, at_most: int, timeout: float) -> None:
    """Wait, up to ``timeout`` s, until the relay has closed the sessions the client closed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and open_fds(pid) > at_most:
        time.sleep(0.2)


def test_latency(b: Bench) -> None:
    """Latency added to one NOOP round trip, beside a plaintext session straight to the sink:
    one session alone, then ``--lat-sessions`` at one NOOP a second each."""
    direct = b.sink.backends.smtp
    count, sessions, seconds = b.args.lat_count, b.args.lat_sessions, b.args.lat_seconds
    log(
        f"latency: {b.args.runs} run(s) per relay of {count} NOOPs in 1 session, then "
        f"{sessions} sessions x 1 NOOP/s for {seconds:g} s; tlsgate via STARTTLS"
    )

    def listener(p: Proxy) -> tuple[int, str]:
        if "submission" in p.ports:  # issue 7 asks for a STARTTLS session through tlsgate
            return p.ports["submission"], "starttls"
        return p.ports["smtps"], "implicit"  # stunnel and HAProxy cannot do STARTTLS

    def alone(name: str, port: int, mode: str) -> tuple[dict[str, float], None]:
        lat = latency.single(port, mode, direct, count, gap=0.001)
        b.results.raw.append({"test": "latency, 1 session", "relay": name, **lat.as_json()})
        log(f"    {name}, 1 session: {lat.summary()}")
        return {"lat1_p50": lat.added(50), "lat1_p99": lat.added(99)}, None

    def crowd(name: str, port: int, mode: str) -> tuple[dict[str, float], None]:
        lat = latency.busy(port, mode, direct, sessions, seconds)
        b.results.raw.append({"test": "latency, busy", "relay": name, **lat.as_json()})
        late = f"; {lat.late_sends} NOOPs sent > 5 ms late" if lat.late_sends else ""
        log(f"    {name}, {sessions} sessions: {lat.summary()}{late}")
        return {"lat200_p50": lat.added(50), "lat200_p99": lat.added(99)}, None

    for run in range(b.args.runs):
        for p in b.live():
            port, mode = listener(p)
            b.measure_group("latency, 1 session", LAT_ALONE, p, partial(alone, p.name, port, mode))
            b.measure_group("latency, busy", LAT_BUSY, p, partial(crowd, p.name, port, mode))
            if "plain" in p.ports and run == 0:
                # The machine's floor, once: HAProxy relaying plaintext (no TLS). What it adds
                # is the relay hop itself (wake-ups across CPUs, two more socket round trips).
                floor = partial(alone, PLAIN_FLOOR, p.ports["plain"], "plain")
                b.measure_group("latency, 1 session", LAT_ALONE, p, floor, series_name=PLAIN_FLOOR)
                floor = partial(crowd, PLAIN_FLOOR, p.ports["plain"], "plain")
                b.measure_group("latency, busy", LAT_BUSY, p, floor, series_name=PLAIN_FLOOR)


def test_workers(b: Bench) -> None:
    """tlsgate with workers = 1 and workers = 2: handshakes/s and the aggregate throughput of
    4 bulk connections. Both instances run on both CPUs (no ratio target: the load client
    shares the client CPU with the second worker)."""
    if "tlsgate" not in b.args.names:
        return
    why_not = tlsgate_accepts_workers(b.tmp, b.cert, b.key, b.sink.backends, b.args.tlsgate_cmd)
    if why_not:
        b.results.workers_note = f"not available: tlsgate has no workers key yet ({why_not})"
        log(f"workers: {b.results.workers_note}")
        return
    cpus = f"{b.args.proxy_cpu},{b.args.client_cpu}"
    instances: list[Proxy] = []
    for n in WORKER_COUNTS:
        p = start_tlsgate(
            b.tmp,
            b.cert,
            b.key,
            b.sink.backends,
            cpus,
            b.args.tlsgate_cmd,
            name=f"tlsgate-w{n}",
            roles=("bulk", "greet"),
            workers=n,
        )
        if p.child is not None:
            b.stack.callback(p.child.stop)
        instances.append(p)
    for n, p in zip(WORKER_COUNTS, instances, strict=True):
        await_ready(p, b.args.ready_timeout)
        if not p.ok:
            b.results.workers_note = f"workers = {n} did not start: {p.error}"
            log(f"workers: {b.results.workers_note}")
            for q in instances:
                if q.child is not None:
                    q.child.stop()
            return
    log(
        f"workers: {b.args.runs} run(s) per instance, tlsgate on CPUs {cpus}; handshakes "
        f"{b.args.hs_seconds:g} s, {BULK_CONNECTIONS} bulk uploads {b.args.workers_seconds:g} s"
    )

    def handshakes(p: Proxy) -> tuple[dict[str, float], CpuUse]:
        marks: dict[str, CpuSample] = {}

        def mark(edge: str) -> None:
            marks[edge] = b.sample(p)

        res = tls13_client.run_load(
            p.ports["greet"],
            concurrency=b.args.concurrency,
            seconds=b.args.hs_seconds,
            warmup=0.5,
            on_window=mark,
        )
        if res.failed:
            raise RuntimeError(f"{res.failed} handshakes failed: {res.errors}")
        cpu = CpuUse.between(marks["start"], marks["end"])
        per_cpu = res.completed / cpu.proxy_cpu_seconds if cpu.proxy_cpu_seconds else math.nan
        return {"workers_hs": res.rate, "workers_hs_cpu": per_cpu}, cpu

    def uploads(p: Proxy) -> tuple[dict[str, float], None]:
        b.sink.drain()
        errors: list[Exception] = []

        def one() -> None:
            try:
                clients.bulk_upload(p.ports["bulk"], b.args.workers_seconds)
            except Exception as exc:  # reported below, from the harness's thread
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(BULK_CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(b.args.workers_seconds + 60.0)
        if errors:
            raise errors[0]
        reports = [b.sink.next_report("upload", timeout=30.0) for _ in threads]
        # The connections run side by side over the same seconds: their rates add up.
        return {"workers_bulk4": sum(r["bytes"] / r["seconds"] for r in reports) / 1e6}, None

    for _ in range(b.args.runs):
        for n, p in zip(WORKER_COUNTS, instances, strict=True):
            name = f"workers={n}"
            b.measure_group(
                "workers_hs",
                ("workers_hs", "workers_hs_cpu"),
                p,
                partial(handshakes, p),
                series_name=name,
            )
            time.sleep(0.7)  # the connections cut at the end close
            b.measure_group(
                "workers_bulk4", ("workers_bulk4",), p, partial(uploads, p), series_name=name
            )
    for p in instances:  # not needed any more; stop them before the report
        if p.child is not None:
            p.child.stop()


RUNNERS: dict[str, Callable[[Bench], None]] = {
    "bulk": test_bulk,
    "handshakes": test_handshakes,
    "smtp": test_smtp,
    "idle": test_idle,
    "idle9000": test_idle9000,
    "latency": test_latency,
    "workers": test_workers,
}


# --- setup -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = ap.add_argument
    add(
        "--quick",
        action="store_true",
        help="smoke run: 1.5 s per run, one run each, shorter latency runs, no idle9000",
    )
    add(
        "--only",
        help=f"tests to run, comma-separated, from {','.join(TESTS)} (default: all;"
        " --quick: all but idle9000)",
    )
    add(
        "--relays",
        default=",".join(DEFAULT_RELAYS),
        help=f"relays to run, comma-separated, from {','.join(RELAYS)} (%(default)s)",
    )
    add("--seconds", type=float, help="seconds per bulk run (5; --quick 1.5)")
    add("--hs-seconds", type=float, help="seconds per handshake run (2; --quick 1.5)")
    add("--runs", type=int, help="runs per figure, the median is reported (3; --quick 1)")
    add("--concurrency", type=int, default=50, help="concurrent handshakes (%(default)s)")
    add("--idle-conns", type=int, default=1000, help="idle connections (%(default)s)")
    add(
        "--idle9000-conns",
        type=int,
        default=9000,
        help="idle sessions held by tlsgate in the idle9000 test (%(default)s)",
    )
    add("--lat-count", type=int, help="NOOPs in the 1-session latency run (600; --quick 300)")
    add("--lat-sessions", type=int, default=200, help="busy latency sessions (%(default)s)")
    add("--lat-seconds", type=float, help="seconds of the busy latency run (3; --quick 2)")
    add(
        "--workers-seconds",
        type=float,
        help="seconds of the workers test's 4-connection upload (2; --quick 1.5)",
    )
    add("--smtp-mib", type=float, default=50.0, help="SMTP DATA message, MiB (%(default)s)")
    add("--smtp-seconds", type=float, help="seconds of DATA per SMTP session (5; --quick 1.5)")
    add(
        "--hs-client",
        choices=("lean", "openssl"),
        default="lean",
        help="handshake client: a minimal TLS 1.3 client that skips certificate checks (lean),"
        " or Python's ssl module (openssl); default %(default)s",
    )
    add("--proxy-cpu", type=int, default=0, help="CPU of the relay (%(default)s)")
    add("--client-cpu", type=int, default=1, help="CPU of the client and sink (%(default)s)")
    add(
        "--tlsgate-cmd",
        default="{python} -m tlsgate",
        help="how to start tlsgate, 'run -c CONFIG' is appended (%(default)s)",
    )
    add("--ready-timeout", type=float, default=20.0, help="seconds for a relay to listen (20)")
    add(
        "--patience",
        type=float,
        help="seconds, over the whole run, to wait for other processes to leave the CPUs idle"
        " before measuring (30; --quick 5)",
    )
    add(
        "--retries",
        type=int,
        help="repeats, over the whole run, of figures that other processes disturbed"
        " (6; --quick 1)",
    )
    add("--timeout", type=int, default=900, help="hard limit for the run, seconds (%(default)s)")
    add(
        "--json",
        type=Path,
        default=BENCH_DIR / "results" / "last.json",
        help="where to write the results as JSON (bench/results/last.json)",
    )
    add("--keep-logs", action="store_true", help="copy the relays' logs beside the JSON")
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (1.5 if args.quick else 5.0)
    args.smtp_seconds = args.smtp_seconds or (1.5 if args.quick else 5.0)
    args.hs_seconds = args.hs_seconds or (1.5 if args.quick else 2.0)
    args.runs = args.runs or (1 if args.quick else 3)
    args.lat_count = args.lat_count or (300 if args.quick else 600)
    args.lat_seconds = args.lat_seconds or (2.0 if args.quick else 3.0)
    args.workers_seconds = args.workers_seconds or (1.5 if args.quick else 2.0)
    if args.patience is None:
        args.patience = 5.0 if args.quick else 30.0
    if args.retries is None:
        args.retries = 1 if args.quick else 6
    default_tests = QUICK_TESTS if args.quick else TESTS
    only = {t.strip() for t in (args.only or ",".join(default_tests)).split(",") if t.strip()}
    args.tests = [t for t in TESTS if t in only]
    args.names = [n.strip() for n in args.relays.split(",") if n.strip()]
    for t in only:
        if t not in TESTS:
            ap.error(f"unknown test {t!r}; choose from {', '.join(TESTS)}")
    for n in args.names:
        if n not in RELAYS:
            ap.error(f"unknown relay {n!r}; choose from {', '.join(RELAYS)}")
    counts = [args.runs, args.seconds, args.hs_seconds, args.idle_conns, args.idle9000_conns]
    counts += [args.concurrency, args.lat_count, args.lat_sessions, args.lat_seconds]
    if min(*counts, args.workers_seconds) <= 0:
        ap.error("every count and duration must be > 0")
    return args


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGALRM:
        raise SystemExit("the bench hit its --timeout")
    raise SystemExit(f"stopped by signal {signum}")


def prepare_process(args: argparse.Namespace) -> None:
    cpus = os.sched_getaffinity(0)
    for cpu in (args.proxy_cpu, args.client_cpu):
        if cpu not in cpus:
            sys.exit(f"CPU {cpu} is not available here (have {sorted(cpus)})")
    if args.proxy_cpu == args.client_cpu:
        log("warning: the relay and the client share one CPU; the figures mean little")
    # This process is the load client: it and the sink (its child) run on the client CPU;
    # the relays are started with taskset on the proxy CPU.
    os.sched_setaffinity(0, {args.client_cpu})
    # The soft descriptor limit goes up to the hard one (20,000 here), for this process and,
    # inherited, for every relay and the sink it starts: 9,000 idle sessions take 18,000
    # descriptors in the relay and 9,000 here.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 3 * args.idle_conns + 100:
        log(f"warning: RLIMIT_NOFILE {want} is low for {args.idle_conns} idle connections")
    if "idle9000" in args.tests and want < 2 * args.idle9000_conns + 100:
        log(
            f"warning: RLIMIT_NOFILE {want} is low for {args.idle9000_conns} idle sessions"
            " (the relay needs two descriptors each); idle9000 will fail"
        )
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    signal.signal(signal.SIGALRM, _on_signal)
    signal.alarm(args.timeout)


def environment() -> dict[str, str]:
    def run(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return (out.stdout + out.stderr).strip()

    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    stunnel = next((ln for ln in run(["stunnel4", "-version"]).splitlines() if " on " in ln), "")
    commit = run(["git", "rev-parse", "--short", "HEAD"]) or "?"
    dirty = " + uncommitted changes" if run(["git", "status", "--porcelain", "tlsgate"]) else ""
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{cpu_model}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "python": f"Python {platform.python_version()} ({ssl.OPENSSL_VERSION})",
        "stunnel": stunnel.split(" on ")[0] or "stunnel ?",
        "haproxy": haproxy_version(),
        "tlsgate": f"tlsgate at {commit}{dirty}",
    }


def start_relays(
    args: argparse.Namespace,
    tmp: Path,
    cert: Path,
    key: Path,
    be: Backends,
    stack: contextlib.ExitStack,
) -> list[Proxy]:
    starters: dict[str, Callable[[], Proxy]] = {
        "stunnel": lambda: start_stunnel(tmp, cert, key, be, args.proxy_cpu),
        "tlsgate": lambda: start_tlsgate(tmp, cert, key, be, args.proxy_cpu, args.tlsgate_cmd),
        "haproxy": lambda: start_haproxy(tmp, cert, key, be, args.proxy_cpu),
        "baseline": lambda: start_baseline(tmp, cert, key, be, args.proxy_cpu),
    }
    relays = []
    for name in args.names:
        p = starters[name]()
        relays.append(p)
        if p.child is not None:
            stack.callback(p.child.stop)
    for p in relays:
        await_ready(p, args.ready_timeout)
        log(f"{p.name}: " + ("ready" if p.ok else f"NOT AVAILABLE: {p.error}"))
    return relays


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_process(args)
    started = time.monotonic()
    env = environment()
    results = Results()
    with contextlib.ExitStack() as stack:  # stops every child process, whatever happens
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tlsgate-bench-")))
        sink = Sink(tmp, args.client_cpu)
        stack.callback(sink.child.stop)
        cert, key = make_p256_cert(tmp)
        relays = start_relays(args, tmp, cert, key, sink.backends, stack)
        if args.keep_logs:
            stack.callback(keep_logs, tmp, args.json.parent)
        bench = Bench(
            args, sink, relays, results, args.patience, args.retries, tmp, cert, key, stack
        )
        for test in args.tests:
            test_started = time.monotonic()
            RUNNERS[test](bench)
            results.durations[test] = round(time.monotonic() - test_started, 1)
            log(f"{test}: done in {results.durations[test]:.0f} s")
        list(bench.live())  # notice a relay that died during the last test
    signal.alarm(0)
    print_report(args, env, results, relays, time.monotonic() - started)
    save_json(args, env, results, relays)
    return 0 if any(p.ok for p in relays) else 1


def print_report(
    args: argparse.Namespace,
    env: dict[str, str],
    results: Results,
    relays: list[Proxy],
    elapsed: float,
) -> None:
    names = [p.name for p in relays]
    tls = sorted(set(results.tls.values()))
    print(f"\ntlsgate bench, {env['date']}, {elapsed:.0f} s")
    print(f"  {env['machine']}; {env['python']}")
    print(f"  {env['stunnel']}; {env['haproxy']}; {env['tlsgate']}")
    print(
        f"  relay on CPU {args.proxy_cpu}, client and sink on CPU {args.client_cpu}; "
        f"{', '.join(tls) or 'TLS 1.3'}, ECDSA P-256 certificate, X25519"
    )
    print(
        f"  bulk {args.runs} x {args.seconds:g} s each way; handshakes {args.runs} x "
        f"{args.hs_seconds:g} s, {args.concurrency} concurrent, {args.hs_client} client; "
        f"{args.idle_conns} idle connections; DATA {args.runs} x {args.smtp_seconds:g} s "
        f"of {args.smtp_mib:g} MiB messages"
    )
    print(
        f"  latency {args.runs} x ({args.lat_count} NOOPs in 1 session; {args.lat_sessions} "
        f"sessions x 1 NOOP/s for {args.lat_seconds:g} s); 9,000-session test: "
        f"{args.idle9000_conns:,} sessions"
        + ("" if "idle9000" in args.tests else " (not run: --only idle9000)")
    )
    if results.durations:
        took = ", ".join(f"{t} {sec:.0f} s" for t, sec in results.durations.items())
        print(f"  seconds per test (waits for a quiet machine and repeats included): {took}")
    print("  medians; MB = 10^6 bytes\n")
    print(table(results, names))
    for line in notes(results, PLAIN_FLOOR):
        print(line)
    if "workers" in args.tests and "tlsgate" in names:
        print(
            f"\ntlsgate workers = 1 vs workers = 2 (tlsgate on CPUs {args.proxy_cpu},"
            f"{args.client_cpu}, not pinned to one; client and sink on CPU {args.client_cpu}):"
        )
        print(workers_table(results) or f"  {results.workers_note or 'no figures'}")
    check = bottlenecks(results, names)
    if check:
        print("\nWhich side limited each figure (median CPU use during the runs, % of one core):")
        print(check)
    paired = paired_ratios(results)
    if paired:
        print("\ntlsgate/stunnel run by run (the median of the per-run ratios; a run measures both")
        print("relays back to back, so a pair shares the machine's state of the moment):")
        print("\n".join(paired))
    details = run_details(results, names)
    if details:
        print("\nRuns and errors:")
        print("\n".join(details))
    for p in relays:
        if p.error:
            print(f"\n{p.name} NOT MEASURED: {p.error}")


def keep_logs(tmp: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log_file in tmp.glob("*.log"):
        (dest / log_file.name).write_bytes(log_file.read_bytes())


def save_json(
    args: argparse.Namespace, env: dict[str, str], results: Results, relays: list[Proxy]
) -> None:
    data = {
        "environment": env,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "tls": results.tls,
        "details": results.details,
        "seconds_per_test": results.durations,
        "workers_note": results.workers_note,
        "latency_raw": results.raw,
        "unavailable": {p.name: p.error for p in relays if p.error},
        "metrics": results.as_json(),
    }
    try:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        log(f"could not write {args.json}: {exc}")
        return
    print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
