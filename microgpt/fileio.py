"""Outputs are written whole or not at all: to a temporary file beside the target, then renamed
over it, so a full disk or a kill mid-write never leaves a truncated file that looks like a result."""
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
