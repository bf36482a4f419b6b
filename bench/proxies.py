"""The relays under test: stunnel4, tlsgate, HAProxy and a bare trio.SSLStream baseline.

Each terminates TLS on 127.0.0.1 in front of the same plaintext sink, with the same ECDSA P-256
certificate, pinned to the proxy CPU. Listener roles (implicit TLS but the last):

* ``bulk`` → the sink's bulk port, a byte relay.
* ``greet`` → the sink's greeter (sends a greeting, then closes), a byte relay (tlsgate:
  ``protocol = "tcp"``). The handshake test: the greeting proves that the proxy finished its
  side of the handshake and connected the backend.
* ``hold`` → the sink's parking port (greets, then holds), a byte relay. The idle tests hold
  their connections open here.
* ``smtps`` → the SMTP sink as an SMTPS admin would configure it (tlsgate: ``protocol =
  "smtp"``; the others: a byte relay).
* ``submission``: tlsgate only, ``protocol = "smtp"``, ``tls = "starttls"``.
* ``plain``: HAProxy only, a plaintext relay (no TLS) to the SMTP sink: the latency test's
  floor.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from procs import Child, spawn, wait_listening

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


@dataclass
class Backends:
    bulk: int
    smtp: int
    greet: int
    park: int


@dataclass
class Proxy:
    name: str
    ports: dict[str, int]
    child: Child | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.child is not None and self.error is None

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _addr(port: int) -> str:
    return f"127.0.0.1:{port}"


def _byte_relays(be: Backends) -> tuple[Proxy, list[tuple[int, int]]]:
    """Ports for a relay without SMTP mediation, and its (listen, backend) routes."""
    backend = {"bulk": be.bulk, "greet": be.greet, "hold": be.park, "smtps": be.smtp}
    ports = {role: free_port() for role in backend}
    routes = [(ports[role], backend[role]) for role in backend]
    return Proxy("", ports), routes


def start_stunnel(tmp: Path, cert: Path, key: Path, be: Backends, cpu: int) -> Proxy:
    p, routes = _byte_relays(be)
    p.name = "stunnel"
    lines = ["foreground = yes", "pid =", "syslog = no", "debug = 3", ""]
    for port, backend in routes:
        lines += [
            f"[relay{port}]",
            f"accept = {_addr(port)}",
            f"connect = {_addr(backend)}",
            f"cert = {cert}",
            f"key = {key}",
            "sslVersionMin = TLSv1.3",
            "",
        ]
    conf = tmp / "stunnel.conf"
    conf.write_text("\n".join(lines))
    binary = "stunnel4" if shutil.which("stunnel4") else "stunnel"
    p.child = spawn("stunnel", [binary, str(conf)], cpu=cpu, log=tmp / "stunnel.log")
    return p


def start_haproxy(tmp: Path, cert: Path, key: Path, be: Backends, cpu: int) -> Proxy:
    """HAProxy as a plain implicit-TLS terminator: mode tcp, one thread, TLS 1.3 only."""
    p, routes = _byte_relays(be)
    p.name = "haproxy"
    binary = shutil.which("haproxy") or next(
        (b for b in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(b, os.X_OK)),
        None,
    )
    if binary is None:
        p.error = "haproxy is not installed (Debian package haproxy)"
        return p
    combined = tmp / "haproxy.pem"  # HAProxy wants the certificate and its key in one file
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    combined.chmod(0o600)
    lines = [
        "global",
        "    nbthread 1",
        # Enough for the idle tests (two descriptors per session); HAProxy raises its own
        # RLIMIT_NOFILE to fit, within the hard limit.
        "    maxconn 5000",
        "    ssl-default-bind-options ssl-min-ver TLSv1.3",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 10s",
        "    timeout client 10m",
        "    timeout server 10m",
        "",
    ]
    for port, backend in routes:
        lines += [
            f"frontend in{port}",
            f"    bind {_addr(port)} ssl crt {combined}",
            f"    default_backend out{port}",
            f"backend out{port}",
            f"    server sink {_addr(backend)}",
            "",
        ]
    # A plaintext relay too (no TLS), for the latency test's floor: what any relay hop costs
    # on this machine.
    p.ports["plain"] = free_port()
    lines += [
        f"frontend plain{p.ports['plain']}",
        f"    bind {_addr(p.ports['plain'])}",
        "    default_backend plain_out",
        "backend plain_out",
        f"    server sink {_addr(be.smtp)}",
        "",
    ]
    conf = tmp / "haproxy.cfg"
    conf.write_text("\n".join(lines))
    # -db: stay in the foreground, one process (no master-worker).
    p.child = spawn("haproxy", [binary, "-db", "-f", str(conf)], cpu=cpu, log=tmp / "haproxy.log")
    return p


def haproxy_version() -> str:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "haproxy: not installed"
    first = out.splitlines()[0] if out else "HAProxy ?"
    return " ".join(first.split()[:3])  # "HAProxy version 2.6.12-1+deb12u4"


def start_baseline(tmp: Path, cert: Path, key: Path, be: Backends, cpu: int) -> Proxy:
    p, routes = _byte_relays(be)
    p.name = "baseline"
    argv = [
        sys.executable,
        str(BENCH_DIR / "baseline_relay.py"),
        str(cert),
        str(key),
        *(f"{port}:{backend}" for port, backend in routes),
    ]
    p.child = spawn("baseline", argv, cpu=cpu, log=tmp / "baseline.log")
    return p


TLSGATE_LISTENERS = ("bulk", "greet", "hold", "smtps", "submission")


def tlsgate_config(
    p: Proxy, cert: Path, key: Path, be: Backends, workers: int | None = None
) -> str:
    """The config of a tlsgate with a listener per role in ``p.ports``; ``workers`` adds the
    top-level key (None: leave it out, tlsgate's default)."""
    routes = {
        "bulk": ("tcp", "implicit", be.bulk, ""),
        "greet": ("tcp", "implicit", be.greet, ""),
        "hold": ("tcp", "implicit", be.park, ""),
        "smtps": ("smtp", "implicit", be.smtp, ""),
        "submission": ("smtp", "starttls", be.smtp, "auth_requires_tls = false\n"),
    }
    text = f"workers = {workers}\n" if workers is not None else ""
    text += (
        "shutdown_timeout = 2.0\n\n"
        '[log]\nlevel = "warning"\n\n'
        f'[[certificate]]\ncert = "{cert}"\nkey = "{key}"\n\n'
    )
    for name in p.ports:
        protocol, tls, backend, extra = routes[name]
        text += (
            f'[[listener]]\nname = "{name}"\nlisten = "{_addr(p.ports[name])}"\n'
            f'protocol = "{protocol}"\ntls = "{tls}"\nbackend = "{_addr(backend)}"\n{extra}\n'
        )
    return text


def tlsgate_argv(command: str) -> tuple[list[str], dict[str, str]]:
    """``--tlsgate-cmd`` as an argv, and an environment that imports tlsgate from this tree."""
    argv = shlex.split(command.replace("{python}", shlex.quote(sys.executable)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return argv, env


def start_tlsgate(
    tmp: Path,
    cert: Path,
    key: Path,
    be: Backends,
    cpu: int | str,
    command: str,
    *,
    name: str = "tlsgate",
    roles: tuple[str, ...] = TLSGATE_LISTENERS,
    workers: int | None = None,
) -> Proxy:
    p = Proxy(name, {role: free_port() for role in roles})
    conf = tmp / f"{name}.toml"
    conf.write_text(tlsgate_config(p, cert, key, be, workers))
    argv, env = tlsgate_argv(command)
    p.child = spawn(
        name,
        [*argv, "run", "-c", str(conf)],
        cpu=cpu,
        log=tmp / f"{name}.log",
        env=env,
        cwd=REPO_ROOT,
    )
    return p


def tlsgate_accepts_workers(tmp: Path, cert: Path, key: Path, be: Backends, command: str) -> str:
    """Why tlsgate cannot run ``workers = 2`` ("" if it can): ``tlsgate check`` on such a
    config must exit 0."""
    conf = tmp / "tlsgate-workers-check.toml"
    conf.write_text(tlsgate_config(Proxy("", {"greet": free_port()}), cert, key, be, workers=2))
    argv, env = tlsgate_argv(command)
    try:
        out = subprocess.run(
            [*argv, "check", "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            cwd=REPO_ROOT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"tlsgate check did not run: {exc}"
    if out.returncode == 0:
        return ""
    said = (out.stderr or out.stdout).strip().splitlines()
    return f"tlsgate check rejects workers = 2: {said[-1] if said else out.returncode}"


def await_ready(p: Proxy, timeout: float) -> None:
    if p.child is None:
        return  # not started; p.error says why
    error = wait_listening(p.child, sorted(set(p.ports.values())), timeout)
    if error:
        tail = p.child.log_tail()
        p.error = error + (f"; its log ends with:\n{tail}" if tail else "")
