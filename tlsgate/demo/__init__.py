"""`tlsgate demo`: a legacy plaintext mail server with tlsgate in front of it, in one process."""

from __future__ import annotations


def main(*, check: bool = False) -> int:
    """Run the demo until Ctrl-C (exit 0), or with `check` drive one client per listener.

    Returns:
        The process exit code: 0 when the demo ran (or every check passed), else 1.
    """
    # Imported here so that `tlsgate.demo.legacy`, which tests use on its own, does not pull
    # in the daemon.
    from tlsgate.demo.runner import run_demo

    return run_demo(check=check)
