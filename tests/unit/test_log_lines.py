"""Processes that share stderr (the workers of `workers = N`) never interleave their lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROCESSES = 4
LINES_EACH = 2000

# Each process logs as a worker does, to the stderr it shares with the others.
_LOGGING_PROCESS = """
import sys
from tlsgate.config.model import LogConfig, LogFormat
from tlsgate.observe.logs import configure_logging, get_logger

worker = int(sys.argv[1])
configure_logging(LogConfig(format=LogFormat.JSON), worker=worker)
log = get_logger(listener="submission", conn_id="1")
for number in range(int(sys.argv[2])):
    log.info("accepted", number=number, peer="127.0.0.1:50000")
"""


def test_concurrent_processes_write_whole_json_lines_to_one_pipe() -> None:
    # One pipe for all, as stderr is under systemd or a container runtime.
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader:
        try:
            children = [
                subprocess.Popen(
                    [sys.executable, "-c", _LOGGING_PROCESS, str(worker), str(LINES_EACH)],
                    stderr=write_end,
                )
                for worker in range(1, PROCESSES + 1)
            ]
        finally:
            os.close(write_end)  # EOF once every child is done with its copy
        output = reader.read().decode()
    for child in children:
        assert child.wait(timeout=60) == 0
    lines = output.splitlines()
    assert len(lines) == PROCESSES * LINES_EACH
    events = [json.loads(line) for line in lines]  # a torn line would not parse
    for worker in range(1, PROCESSES + 1):
        numbers = [event["number"] for event in events if event["worker"] == worker]
        assert numbers == list(range(LINES_EACH))
