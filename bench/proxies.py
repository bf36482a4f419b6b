"""The relays under test: stunnel4, tlsgate and a bare trio.SSLStream baseline.

Each terminates TLS on 127.0.0.1 in front of the same plaintext sink, with the same ECDSA P-256
certificate, pinned to the proxy CPU. Listener roles (implicit TLS but the last):

* ``bulk`` → the sink's bulk port, a byte relay.
* ``greet`` → the sink's greeter (sends a greeting, then closes), a byte relay (tlsgate:
  ``protocol = "tcp"``). The handshake test: the greeting proves that the proxy finished its
  side of the handshake and connected the backend.
* ``hold`` → the SMTP sink, a byte relay. The idle test holds its connections open here.
* ``smtps`` → the SMTP sink as an SMTPS admin would configure it (tlsgate: ``protocol =
  "smtp"``). For stunnel and the baseline it is the same relay as ``hold``.
* ``submission``: tlsgate only, ``protocol = "smtp"``, ``tls = "starttls"``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
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
    ports = {"bulk": free_port(), "greet": free_port(), "hold": free_port()}
    ports["smtps"] = ports["hold"]
    routes = [(ports["bulk"], be.bulk), (ports["greet"], be.greet), (ports["hold"], be.smtp)]
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


def tlsgate_config(p: Proxy, cert: Path, key: Path, be: Backends) -> str:
    def listener(name: str, protocol: str, tls: str, backend: int, extra: str = "") -> str:
        return (
            f'[[listener]]\nname = "{name}"\nlisten = "{_addr(p.ports[name])}"\n'
            f'protocol = "{protocol}"\ntls = "{tls}"\nbackend = "{_addr(backend)}"\n{extra}\n'
        )

    return (
        "shutdown_timeout = 2.0\n\n"
        '[log]\nlevel = "warning"\n\n'
        f'[[certificate]]\ncert = "{cert}"\nkey = "{key}"\n\n'
        + listener("bulk", "tcp", "implicit", be.bulk)
        + listener("greet", "tcp", "implicit", be.greet)
        + listener("hold", "tcp", "implicit", be.smtp)
        + listener("smtps", "smtp", "implicit", be.smtp)
        + listener("submission", "smtp", "starttls", be.smtp, "auth_requires_tls = false\n")
    )


def start_tlsgate(tmp: Path, cert: Path, key: Path, be: Backends, cpu: int, command: str) -> Proxy:
    names = ("bulk", "greet", "hold", "smtps", "submission")
    p = Proxy("tlsgate", {name: free_port() for name in names})
    conf = tmp / "tlsgate.toml"
    conf.write_text(tlsgate_config(p, cert, key, be))
    argv = shlex.split(command.replace("{python}", shlex.quote(sys.executable)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    p.child = spawn(
        "tlsgate",
        [*argv, "run", "-c", str(conf)],
        cpu=cpu,
        log=tmp / "tlsgate.log",
        env=env,
        cwd=REPO_ROOT,
    )
    return p


def await_ready(p: Proxy, timeout: float) -> None:
    assert p.child is not None
    error = wait_listening(p.child, sorted(set(p.ports.values())), timeout)
    if error:
        tail = p.child.log_tail()
        p.error = error + (f"; its log ends with:\n{tail}" if tail else "")
