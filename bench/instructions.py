"""Instructions tlsgate executes per relayed TLS handshake, or per SMTP command round trip,
counted by callgrind.

    python bench/instructions.py                      # this tree
    python bench/instructions.py TREE_A TREE_B ...    # several source trees, one after another
    python bench/instructions.py --round-trips TREE_A TREE_B    # per mediated NOOP round trip

Handshakes per second move by 15% from one run to the next on a shared 2-core machine, which
hides any change worth less than that. An instruction count does not move with the machine
(about 0.5% between runs here), so it tells whether a change to the per-connection path helps
before the side-by-side run of bench/run.py measures by how much. It is not a speed: a cache
miss costs no instruction.

tlsgate runs under `valgrind --tool=callgrind` with one implicit-TLS listener in front of the
sink's greeting backend; the lean TLS 1.3 client (4 in flight) opens connections for
``--seconds``, after a warm-up; the counters are zeroed before and dumped after that window.
With ``--round-trips``, the listener is the SMTP submission one (STARTTLS, the mediator on the
path) and one session (the latency test's client) makes 3,000 NOOP round trips in the window.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tls13_client
from certs import make_p256_cert
from latency import NoopSession
from proxies import REPO_ROOT, Proxy, free_port, tlsgate_config
from run import Sink

READY_TIMEOUT_SECONDS = 120.0  # python under valgrind imports slowly
ROUND_TRIPS = 3000


def count(
    tree: Path, tmp: Path, sink: Sink, cert: Path, key: Path, seconds: float, round_trips: bool
) -> str:
    role = "submission" if round_trips else "greet"
    proxy = Proxy("tlsgate", {role: free_port()})
    config = tmp / "tlsgate.toml"
    config.write_text(tlsgate_config(proxy, cert, key, sink.backends))
    out = tmp / f"callgrind.{tree.name}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    argv += [sys.executable, "-m", "tlsgate", "run", "-c", str(config)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    with open(tmp / "valgrind.log", "w") as log:
        child = subprocess.Popen(argv, env=env, cwd=tree, stderr=log)
    try:
        port = proxy.ports[role]
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or child.poll() is not None:
                    return "did not start (see valgrind.log)"
                time.sleep(0.5)
        if round_trips:
            measure = _round_trips(port, child.pid)
        else:
            measure = _handshakes(port, child.pid, seconds)
        time.sleep(1)
    finally:
        child.terminate()
        child.wait(60)
    dump = next(iter(sorted(glob.glob(f"{out}.*"))), None)  # the --dump; OUT is the exit's
    done, what = measure
    if dump is None or not done:
        return "no measurement"
    found = re.search(r"^(?:summary|totals):\s*(\d+)", Path(dump).read_text(), re.MULTILINE)
    if found is None:
        return "no total in the callgrind dump"
    per = int(found.group(1)) / done
    if round_trips:
        return f"{per / 1e3:.1f} k instructions per {what} ({done:,} of them)"
    return f"{per / 1e6:.3f} M instructions per {what} ({done} of them)"


def _callgrind(command: str, pid: int) -> None:
    subprocess.run(["callgrind_control", f"--{command}", str(pid)], capture_output=True)


def _handshakes(port: int, pid: int, seconds: float) -> tuple[int, str]:
    tls13_client.run_load(port, concurrency=2, seconds=3, warmup=0)  # first-use imports
    time.sleep(1)
    _callgrind("zero", pid)
    load = tls13_client.run_load(port, concurrency=4, seconds=seconds, warmup=0)
    time.sleep(2)
    _callgrind("dump", pid)
    return load.completed, "handshake"


def _round_trips(port: int, pid: int) -> tuple[int, str]:
    session = NoopSession(port, "starttls")
    try:
        for _ in range(200):  # first-use imports, warm caches
            session.round_trip()
        time.sleep(1)
        _callgrind("zero", pid)
        for _ in range(ROUND_TRIPS):
            session.round_trip()
        _callgrind("dump", pid)
    finally:
        session.close()
    return ROUND_TRIPS, "mediated NOOP round trip"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[REPO_ROOT])
    parser.add_argument("--seconds", type=float, default=15.0, help="handshake load (15)")
    parser.add_argument(
        "--round-trips",
        action="store_true",
        help=f"count per SMTP NOOP round trip through STARTTLS ({ROUND_TRIPS:,} of them)",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)")
        return 1
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tlsgate-instr-")))
        sink = Sink(tmp, cpu=1)
        stack.callback(sink.child.stop)
        cert, key = make_p256_cert(tmp)
        for tree in args.trees:
            result = count(tree.resolve(), tmp, sink, cert, key, args.seconds, args.round_trips)
            print(f"{tree}: {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
