"""Child processes of the harness, and what /proc says about them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    """A process the harness started in its own session (so its whole group can be ended)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds."""
        pgid = self.popen.pid  # start_new_session=True: pid == pgid == sid
        if self.popen.stdin:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        # Workers or threads the leader left behind, and a leader that ignored SIGTERM.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    cpu: int | str,
    log: Path,
    stdout: int | IO[bytes] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start ``argv`` pinned to ``cpu`` (one CPU, or a taskset list such as "0,1"), stderr (and
    stdout, unless given) into ``log``.

    The child inherits the harness's RLIMIT_NOFILE, which ``run.py`` raises to the hard limit
    first: 9,000 idle sessions take about 18,000 descriptors in the relay.
    """
    log_file = log.open("ab")
    try:
        popen = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            stdin=subprocess.PIPE,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    finally:
        log_file.close()
    return Child(name, popen, log)


# --- /proc -----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (forked workers, not threads)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree: list[int] = []
    todo = [root]
    while todo and len(tree) < 10_000:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int, tree: bool = True) -> float:
    """User + system CPU time of ``root`` (and of its descendants when ``tree``); a process's
    figure covers all its threads."""
    total = 0
    for pid in process_tree(root) if tree else [root]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_kib(root: int) -> int:
    """VmRSS summed over the processes of the tree (threads share their process's RSS)."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def open_fds(pid: int) -> int:
    """Descriptors open in one process (0 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def nofile_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of a process, from /proc (0 if unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return 0


def thread_count(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/task"))
    return total


def cpu_busy_jiffies(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            return sum(values[:8]) - idle, sum(values[:8])
    raise ValueError(f"cpu{cpu} not in /proc/stat")


@dataclass(frozen=True)
class CpuSample:
    t: float
    proxy: float  # CPU seconds of the proxy's process tree
    ours: float  # CPU seconds of the harness and the sink (the client side)
    busy: tuple[int, int]  # busy jiffies of the proxy CPU and of the client CPU
    total: tuple[int, int]


@dataclass(frozen=True)
class Meter:
    """Samples the CPU use of the proxy, of the client side and of both CPUs as a whole."""

    proxy_pid: int
    client_pids: tuple[int, ...]
    proxy_cpu: int
    client_cpu: int

    def sample(self) -> CpuSample:
        b0, t0 = cpu_busy_jiffies(self.proxy_cpu)
        b1, t1 = cpu_busy_jiffies(self.client_cpu)
        return CpuSample(
            time.perf_counter(),
            cpu_seconds(self.proxy_pid),
            sum(cpu_seconds(pid, tree=False) for pid in self.client_pids),
            (b0, b1),
            (t0, t1),
        )


@dataclass
class CpuUse:
    """Percentages of one core between two samples."""

    proxy_pct: float  # the proxy
    proxy_cpu_seconds: float
    client_cpu_pct: float  # the client CPU, whoever used it
    other_pct: float  # both CPUs, used by neither the proxy nor the client side
    client_side_pct: float = 0.0  # the load client and the sink

    @staticmethod
    def between(a: CpuSample, b: CpuSample) -> CpuUse:
        wall = max(b.t - a.t, 1e-9)
        proxy = b.proxy - a.proxy
        ours = b.ours - a.ours
        busy = [100.0 * (b.busy[i] - a.busy[i]) / max(b.total[i] - a.total[i], 1) for i in (0, 1)]
        # Whatever the two CPUs did beyond the proxy and the client side: other processes on the
        # machine (kernel softirq work is mostly charged to the processes it serves).
        other = max(0.0, busy[0] + busy[1] - 100.0 * (proxy + ours) / wall)
        return CpuUse(100.0 * proxy / wall, proxy, busy[1], other, 100.0 * ours / wall)


# --- ports -----------------------------------------------------------------------------------


def listening_ports() -> set[int]:
    """Ports in LISTEN state on 127.0.0.1 or 0.0.0.0 (from /proc/net/tcp, no connection made)."""
    ports = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            local, state = parts[1], parts[3]
            address, port = local.split(":")
            if state == "0A" and address in ("0100007F", "00000000"):
                ports.add(int(port, 16))
    return ports


def wait_listening(child: Child, ports: Sequence[int], timeout: float) -> str | None:
    """Wait until ``child`` listens on every port. Return None when ready, else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            return f"{child.name} exited with status {child.popen.returncode}"
        if set(ports) <= listening_ports():
            return None
        time.sleep(0.05)
    return f"{child.name} did not listen on {list(ports)} within {timeout:.0f} s"
