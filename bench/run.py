"""tlsgate's performance bench: tlsgate beside stunnel4 and a bare trio.SSLStream relay.

    python bench/run.py                  # the full run, about 3 minutes
    python bench/run.py --quick          # a smoke run, under a minute
    python bench/run.py --only bulk --seconds 5 --runs 3

Every relay terminates implicit TLS (TLS 1.3, ECDSA P-256) on 127.0.0.1 in front of the same
plaintext sink. The relay runs on one CPU, the load client and the sink on the other. The run
prints a table of medians with ratios to stunnel, and a check of which side limited each figure.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import resource
import signal
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
import tls13_client
from certs import make_p256_cert
from procs import Child, CpuSample, CpuUse, Meter, cpu_busy_jiffies, rss_kib, spawn, thread_count
from proxies import (
    BENCH_DIR,
    REPO_ROOT,
    Backends,
    Proxy,
    await_ready,
    start_baseline,
    start_stunnel,
    start_tlsgate,
)
from report import (
    OTHER_LOAD_PCT,
    Results,
    bottlenecks,
    cpu_note,
    notes,
    run_details,
    table,
)

# The order the tests run in. idle comes first, on relays that have not yet served anything
# else: memory that earlier tests freed would otherwise be reused and hide the cost of an idle
# connection (by half, for the baseline).
TESTS = ("idle", "bulk", "handshakes", "smtp")
WARM_UP = 20  # connections opened and closed before the idle test's "before"
RELAYS = ("stunnel", "tlsgate", "baseline")


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
        self.backends = Backends(int(ready["bulk"]), int(ready["smtp"]), int(ready["greet"]))

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
        """Run one measurement and record its value and CPU use, or its error.

        ``fn`` returns the value, and the CPU use if it sampled it itself (else it is sampled
        around the call). A run that other processes disturbed is repeated while the run's
        retry budget lasts.
        """
        series = self.results.of(metric, p.name)
        while True:  # bounded: each repeat spends the retry budget
            self.wait_quiet()
            before = self.sample(p)
            try:
                value, sampled = fn()
            except Exception as exc:  # a failed run is reported, and the bench goes on
                series.errors.append(f"{type(exc).__name__}: {exc}")
                log(f"  {p.name:8} {metric}: FAILED {type(exc).__name__}: {exc}")
                time.sleep(0.5)
                return None
            cpu = sampled or CpuUse.between(before, self.sample(p))
            time.sleep(0.3)  # let the relay finish closing before the next measurement
            if cpu.other_pct < OTHER_LOAD_PCT or self.retry_budget <= 0:
                break
            self.retry_budget -= 1
            log(f"  {p.name:8} {metric}: {value:,.1f} disturbed ({cpu_note(cpu)}); again")
        series.cpu.append(cpu)
        series.values.append(value)
        log(f"  {p.name:8} {metric}: {value:,.1f}  ({cpu_note(cpu)})")
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
    """One DATA of ``--smtp-mib`` per session: SMTPS on every relay, STARTTLS on tlsgate."""
    message = clients.make_message(int(b.args.smtp_mib * 1024 * 1024))
    log(f"smtp: {b.args.runs} run(s) of one {len(message) / 2**20:.0f} MiB DATA per listener")

    def session(p: Proxy, port: int, starttls: bool) -> tuple[float, CpuUse]:
        marks: dict[str, CpuSample] = {}

        def mark(edge: str) -> None:
            marks[edge] = b.sample(p)

        mbps = clients.smtp_data(port, message, starttls=starttls, on_window=mark)
        return mbps, CpuUse.between(marks["start"], marks["end"])  # the DATA phase only

    for _ in range(b.args.runs):
        for p in b.live():
            b.measure("smtp_implicit", p, partial(session, p, p.ports["smtps"], False))
            if "submission" in p.ports:
                b.measure("smtp_starttls", p, partial(session, p, p.ports["submission"], True))


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


RUNNERS: dict[str, Callable[[Bench], None]] = {
    "bulk": test_bulk,
    "handshakes": test_handshakes,
    "smtp": test_smtp,
    "idle": test_idle,
}


# --- setup -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = ap.add_argument
    add("--quick", action="store_true", help="smoke run: 1.5 s per run, one run each")
    add("--only", default=",".join(TESTS), help="tests to run, comma-separated (%(default)s)")
    add("--relays", default=",".join(RELAYS), help="relays to run, comma-separated (%(default)s)")
    add("--seconds", type=float, help="seconds per bulk run (5; --quick 1.5)")
    add("--hs-seconds", type=float, help="seconds per handshake run (2; --quick 1.5)")
    add("--runs", type=int, help="runs per figure, the median is reported (3; --quick 1)")
    add("--concurrency", type=int, default=50, help="concurrent handshakes (%(default)s)")
    add("--idle-conns", type=int, default=1000, help="idle connections (%(default)s)")
    add("--smtp-mib", type=float, default=50.0, help="SMTP DATA body, MiB (%(default)s)")
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
    args.hs_seconds = args.hs_seconds or (1.5 if args.quick else 2.0)
    args.runs = args.runs or (1 if args.quick else 3)
    if args.patience is None:
        args.patience = 5.0 if args.quick else 30.0
    if args.retries is None:
        args.retries = 1 if args.quick else 6
    only = {t.strip() for t in args.only.split(",") if t.strip()}
    args.tests = [t for t in TESTS if t in only]
    args.names = [n.strip() for n in args.relays.split(",") if n.strip()]
    for t in only:
        if t not in TESTS:
            ap.error(f"unknown test {t!r}; choose from {', '.join(TESTS)}")
    for n in args.names:
        if n not in RELAYS:
            ap.error(f"unknown relay {n!r}; choose from {', '.join(RELAYS)}")
    if min(args.runs, args.seconds, args.hs_seconds, args.idle_conns, args.concurrency) <= 0:
        ap.error("--runs, --seconds, --hs-seconds, --idle-conns and --concurrency must be > 0")
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
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 3 * args.idle_conns + 100:
        log(f"warning: RLIMIT_NOFILE {want} is low for {args.idle_conns} idle connections")
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
        "tlsgate": f"tlsgate at {commit}{dirty}",
    }


def start_relays(
    args: argparse.Namespace, tmp: Path, be: Backends, stack: contextlib.ExitStack
) -> list[Proxy]:
    cert, key = make_p256_cert(tmp)
    starters: dict[str, Callable[[], Proxy]] = {
        "stunnel": lambda: start_stunnel(tmp, cert, key, be, args.proxy_cpu),
        "tlsgate": lambda: start_tlsgate(tmp, cert, key, be, args.proxy_cpu, args.tlsgate_cmd),
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
        relays = start_relays(args, tmp, sink.backends, stack)
        if args.keep_logs:
            stack.callback(keep_logs, tmp, args.json.parent)
        bench = Bench(args, sink, relays, results, args.patience, args.retries)
        for test in args.tests:
            RUNNERS[test](bench)
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
    print(f"  {env['stunnel']}; {env['tlsgate']}")
    print(
        f"  relay on CPU {args.proxy_cpu}, client and sink on CPU {args.client_cpu}; "
        f"{', '.join(tls) or 'TLS 1.3'}, ECDSA P-256 certificate, X25519"
    )
    print(
        f"  bulk {args.runs} x {args.seconds:g} s each way; handshakes {args.runs} x "
        f"{args.hs_seconds:g} s, {args.concurrency} concurrent, {args.hs_client} client; "
        f"{args.idle_conns} idle connections; DATA {args.smtp_mib:g} MiB x {args.runs}"
    )
    print("  medians; MB = 10^6 bytes\n")
    print(table(results, names))
    for line in notes(results):
        print(line)
    check = bottlenecks(results, names)
    if check:
        print("\nWhich side limited each figure (median CPU use during the runs, % of one core):")
        print(check)
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
