"""Exec a command the way systemd starts a service, for tests that cannot run systemd itself.

    python -m tests.helpers.launch [--fds A,B] [--pid-var LISTEN_PID] [--mdwe] -- COMMAND...

- `--fds`: the fds this process inherited (`pass_fds`) become fds 3, 4, ... in order, as
  systemd passes sockets (sd_listen_fds(3)).
- `--pid-var NAME`: set NAME to this process's pid. `exec` keeps the pid, so COMMAND sees
  `LISTEN_PID` / `WATCHDOG_PID` naming itself, which is what the real ones say.
- `--mdwe`: the kernel's own MemoryDenyWriteExecute (PR_SET_MDWE, Linux 6.3): mapping memory
  writable and executable, or making a mapping executable later, fails from here on.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import sys

FIRST_PASSED_FD = 3
# Out of the way of fds 3.. while they are being rearranged.
SCRATCH_FD_FLOOR = 100
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
EXIT_NO_MDWE = 75  # the kernel cannot do it: the test skips


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fds", default="")
    parser.add_argument("--pid-var", action="append", default=[])
    parser.add_argument("--mdwe", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    sources = [int(fd) for fd in args.fds.split(",") if fd]
    scratch = [fcntl.fcntl(fd, fcntl.F_DUPFD, SCRATCH_FD_FLOOR) for fd in sources]
    for fd in sources:
        os.close(fd)
    for index, fd in enumerate(scratch):
        os.dup2(fd, FIRST_PASSED_FD + index, inheritable=True)
        os.close(fd)
    for name in args.pid_var:
        os.environ[name] = str(os.getpid())
    if args.mdwe:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            sys.exit(EXIT_NO_MDWE)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
