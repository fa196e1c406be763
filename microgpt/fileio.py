"""Outputs are written whole or not at all: to a temporary file beside the target, then renamed
over it, so a full disk or a kill mid-write never leaves a truncated file that looks like a result.
A write that fails says which path and what to do, in one line."""
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


def write_atomic(path, data: bytes) -> Path:
    """Write `data` to `path` whole or not at all; a failure leaves the earlier file (if any) and
    no temporary file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share it
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise output_error(e, path) from None
    return path
