"""Outputs are written whole or not at all: to a temporary file beside the target, then renamed
over it, so a full disk or a kill mid-write never leaves a truncated file that looks like a result.
A write that fails says which path and what to do, in one line."""
import contextlib
import errno
import os
from pathlib import Path

from .errors import OutputError

_FIX = {
    errno.ENOSPC: "no space left on the device: free some space there, or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere",
    errno.EROFS: "the filesystem is read-only: write elsewhere",
    errno.EACCES: "no permission to write there: write elsewhere, or fix its permissions",
    errno.EPERM: "no permission to write there: write elsewhere, or fix its permissions",
    errno.EFBIG: "the file is too large for that filesystem: write elsewhere",
    errno.ENOTDIR: "a file stands where a directory is needed: name another path",
    errno.EEXIST: "a file stands where a directory is needed: name another path",  # mkdir over a file
    errno.EISDIR: "a directory stands where the file would go: name another path",
}


def read_at_most(path, limit: int) -> bytes | None:
    """The bytes of the file at `path` if it holds at most `limit` of them, else None: read with
    that bound, so a device (/dev/zero) or a huge file is refused without being read whole."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


def output_error(e: OSError, path) -> OutputError:
    """The one-line error for an output that could not be written."""
    fix = _FIX.get(e.errno, e.strerror or str(e))
    return OutputError(f"cannot write {path}: {fix}")


@contextlib.contextmanager
def _naming(path):
    """An OSError in the block becomes the one-line error naming `path`."""
    try:
        yield
    except OSError as e:
        raise output_error(e, path) from None


def refuse_existing(paths, overwrite: bool, whose: str, fix: str) -> list[Path]:
    """The paths among `paths` that exist (a dangling symlink too); unless `overwrite`, any is
    refused before anything is written: an output never replaces a file unasked. The error is
    `whose` (e.g. "x belongs to an earlier run"), the files found, then `fix`."""
    there = [Path(p) for p in paths if os.path.lexists(p)]
    if there and not overwrite:
        names = ", ".join(p.name for p in there)
        raise OutputError(f"{whose} ({names} in {there[0].parent}): {fix}")
    return there


def write_atomic(path, data: bytes) -> Path:
    """Write `data` to `path` whole or not at all; a failure leaves the earlier file (if any) and
    no temporary file behind."""
    return write_together({path: data})[0]


def write_together(files: dict) -> list[Path]:
    """Write each {path: data} whole, all or none: every file goes to its temporary first, and
    only when all are written are they renamed over their paths (a rename within a directory
    needs no space)."""
    # The temporary is per process: two writers never share one.
    writes = [(Path(path), Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp"), data)
              for path, data in files.items()]
    try:
        for path, tmp, data in writes:
            with _naming(path):
                tmp.write_bytes(data)
        for path, tmp, _ in writes:
            with _naming(path):
                os.replace(tmp, path)
    except OutputError:
        for _, tmp, _ in writes:
            tmp.unlink(missing_ok=True)
        raise
    return [path for path, _, _ in writes]
