"""The certificate tool's one exception type."""

from __future__ import annotations


class CertToolError(Exception):
    """Bad input: a value, an input file or an existing output file the tool refuses.

    The CLI prints the message as `error: ...` and exits 2. Failures of the machine itself
    (a directory that cannot be written) stay `OSError` and exit 1.
    """
