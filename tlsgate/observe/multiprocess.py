"""Metrics across `workers = N`: one `/metrics` whose counters are the totals of all workers.

prometheus_client's multiprocess mode: every worker writes its values into memory-mapped files
of its own in one directory, and the supervisor's `MultiProcessCollector` sums them at scrape
time. Counters and histograms of a worker that died or retired stay in the sums (its sessions
happened); the open-connections gauge counts live processes only (`livesum`, and
`mark_process_dead` when the supervisor reaps a worker). What concerns the whole daemon
(reloads, build info, certificate expiry) only the supervisor reports.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, multiprocess, values

from tlsgate.observe.events import ReloadResult
from tlsgate.observe.metrics import Metrics, ProcessMetrics
from tlsgate.tls.certstore import CertificateInfo

__all__ = ["SupervisorMetrics", "worker_metrics"]

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def worker_metrics() -> Metrics:
    """The metrics of a freshly forked worker: values in the supervisor's directory.

    Call it in the worker, after the fork: the value class is per process, and the files are
    named by the worker's pid.
    """
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return Metrics(process_wide=False)


class SupervisorMetrics:
    """The supervisor's registry: the workers' sums, and the daemon-wide metrics."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tlsgate-metrics-"))
        # Read by each worker's value class (inherited across fork).
        os.environ[DIRECTORY_VARIABLE] = str(self.directory)
        self.registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(self.registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        self._process = ProcessMetrics(self.registry)
        self.worker_restarts = Counter(
            "tlsgate_worker_restarts",
            "Worker processes that died and were replaced",
            registry=self.registry,
        )

    def config_reload(self, result: ReloadResult) -> None:
        self._process.config_reload(result)

    def certificates_loaded(self, certificates: Sequence[CertificateInfo]) -> None:
        self._process.certificates_loaded(certificates)

    def worker_restarted(self) -> None:
        self.worker_restarts.inc()

    def worker_exited(self, pid: int) -> None:
        """Drop a reaped worker's live gauges; its counters stay in the totals."""
        multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
