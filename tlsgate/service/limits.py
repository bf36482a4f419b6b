"""Process limits the daemon sets for itself at start."""

from __future__ import annotations

import resource


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as nginx's worker_rlimit_nofile does.

    Each session holds two descriptors; Debian's soft default of 1024 would cap a daemon at
    about 500 sessions while the hard limit allows far more.

    Returns:
        The (soft, hard) limits now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, hard  # e.g. a hard limit of "unlimited" the kernel refuses as soft
        soft = hard
    return soft, hard
