"""Writing the tool's files: a private output directory, keys that are never readable by others.

Theory of operation: every file is first written in full to a temporary file in the target
directory, then renamed over its final name. A private key's temporary file is created by
`os.open(..., O_CREAT | O_EXCL, 0o600)`, so no other user can open it at any moment, not even
between creation and a later chmod; `fchmod` then puts back any bit a strict umask took away.
The rename is atomic within one directory, so a reader (tlsgate reloading its certificates)
sees the old file or the new one, never half of one. All files of a command are written before
the first rename, so a failure leaves either the old set or the new one in place, apart from a
window of two renames.

Existing files are refused unless `force` is given. The check runs before anything is
written; it is not repeated at rename time, because the directory is the user's own (0700 if
we made it) and nobody else can create files in it between the check and the rename.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tlsgate.certtool.errors import CertToolError

# CONTRACT.md: `--out DIR` is created with mode 0700 if it is missing.
DIRECTORY_MODE = 0o700
# Private keys: readable by their owner only (tlsgate check warns about anything wider).
PRIVATE_MODE = 0o600
# Certificates are public; the directory's 0700 keeps them private anyway when we made it.
PUBLIC_MODE = 0o644


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file a command writes."""

    path: Path
    data: bytes
    private: bool

    @property
    def mode(self) -> int:
        return PRIVATE_MODE if self.private else PUBLIC_MODE


def prepare_directory(out: Path) -> Path:
    """Return `out` as an absolute path, creating it with mode 0700 if it is missing.

    Missing parents are created with the default mode. An existing directory keeps its mode:
    it may be a shared one such as /etc/tlsgate, and the keys in it are 0600 anyway.

    Raises:
        CertToolError: `out` exists and is not a directory.
        OSError: the directory cannot be created.
    """
    path = Path(os.path.abspath(out))
    if path.exists() and not path.is_dir():
        raise CertToolError(f"--out {out}: exists and is not a directory")
    if not path.exists():
        path.mkdir(mode=DIRECTORY_MODE, parents=True)
        # The umask can only have removed bits, so the directory was never wider than 0700;
        # chmod makes it exactly 0700 even under a umask such as 0277.
        path.chmod(DIRECTORY_MODE)
    return path


def refuse_existing(files: Sequence[OutputFile], *, force: bool) -> None:
    """Raise CertToolError if any target exists (a dangling symlink counts) and not `force`."""
    existing = [str(f.path) for f in files if f.path.exists() or f.path.is_symlink()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise CertToolError(
            f"{', '.join(existing)} already {verb}; pass --force to replace "
            f"{'it' if len(existing) == 1 else 'them'}"
        )


def write_files(files: Sequence[OutputFile], *, force: bool) -> None:
    """Write every file atomically, with its mode from creation on.

    Args:
        files: the files, all in directories that exist; renamed in this order.
        force: replace existing files instead of refusing.

    Raises:
        CertToolError: a target exists and `force` is false; nothing has been written.
        OSError: writing failed; temporary files are removed, earlier renames stay.
    """
    refuse_existing(files, force=force)
    temporaries: list[Path] = []
    try:
        for file in files:
            # One at a time: if the second write fails, the finally clause must still know
            # the first temporary file to remove it.
            try:
                temporaries.append(_write_temporary(file))
            except OSError as exc:
                raise _naming(file, exc) from exc
        for file, temporary in zip(files, temporaries, strict=True):
            try:
                os.replace(temporary, file.path)
            except OSError as exc:
                raise _naming(file, exc) from exc
        for directory in {file.path.parent for file in files}:
            _fsync_directory(directory)
    finally:
        for temporary in temporaries:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()


def _naming(file: OutputFile, exc: OSError) -> OSError:
    # The error names the file the user asked for, not our temporary file. OSError(errno, ...)
    # returns the matching subclass (PermissionError, ...).
    return OSError(exc.errno, exc.strerror, str(file.path))


def _write_temporary(file: OutputFile) -> Path:
    # Same directory as the target, so that os.replace is a rename and not a copy. A leading
    # dot and a random part keep it out of the way of globs and of a concurrent run.
    temporary = file.path.with_name(f".{file.path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, file.mode)
    try:
        os.fchmod(descriptor, file.mode)
        view = memoryview(file.data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)  # a key that survives a crash is worth one fsync
    except BaseException:
        os.close(descriptor)
        temporary.unlink()
        raise
    os.close(descriptor)
    return temporary


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
