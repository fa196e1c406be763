"""The training data: makemore's names.txt, fetched once and hash-checked, read and checked the
way microgpt.py reads it, and put in microgpt.py's seeded order with its initial weights."""
import os
import random
import stat
import sys

import numpy as np

from . import download
from .chip import DEFAULT, INIT_STD, NAMES_BUFFER, Shape
from .errors import DatasetError

# Pinned to a commit so the hash below stays true.
NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/988aa59/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
ALLOWED = "one name per line, lowercase letters a-z only"
STDIN = "-"  # --data - reads the names from standard input
# Bounds that tell a names file from something else, checked while reading (never the whole file,
# nor a whole line, first): makemore's 32,033 names are 228 KB and 15 letters at most. A line (a
# name, any spaces around it, its newline) is at most the chip's read buffer (chip.NAMES_BUFFER),
# which the trainer takes each name from.
MAX_BYTES = 64 << 20


def fetch_names(url=NAMES_URL, sha256=NAMES_SHA256):
    """Path of the cached names file (hash-checked), downloading it first if needed."""
    return download.fetch(url, sha256, f"names-{sha256[:12]}.txt", DatasetError, "pass a local names file (--data)")


def _open(path):
    if str(path) == STDIN:
        return sys.stdin.buffer, "standard input"
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DatasetError(f"no such file: {path}; give an existing names file ({ALLOWED}), "
                           "or leave the path out to use makemore's names.txt") from None
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    info = os.fstat(f.fileno())
    if stat.S_ISDIR(info.st_mode):
        f.close()
        raise DatasetError(f"{path} is a directory; give a names file ({ALLOWED})")
    if stat.S_ISREG(info.st_mode) and info.st_size > MAX_BYTES:
        f.close()
        raise DatasetError(f"{path} is {info.st_size:,} bytes, more than the {MAX_BYTES >> 20} MB a names file may "
                           "hold (the chip trains on one name per step): use a sample of it")
    return f, str(path)


def load_names(path=None):
    """The names in `path` (default: the canonical names.txt, fetched once; "-": standard input),
    in file order.

    Lines are stripped and blank ones skipped — microgpt.py's
    `[l.strip() for l in text.strip().split('\\n') if l.strip()]` — and every name must be a-z.
    The file is read line by line and refused at the first line that is not a name.
    """
    f, where = _open(fetch_names() if path is None else path)
    names, size = [], 0
    try:
        for number, raw in enumerate(iter(lambda: f.readline(NAMES_BUFFER + 1), b""), 1):
            if len(raw.removesuffix(b"\n")) >= NAMES_BUFFER:
                raise DatasetError(f"{where} line {number} is more than {NAMES_BUFFER - 1:,} bytes, not a name (a name and "
                                   f"its newline fit the chip's {NAMES_BUFFER:,}-byte read buffer): the file must hold "
                                   "one name per line")
            size += len(raw)
            if size > MAX_BYTES:
                raise DatasetError(f"{where} holds more than {MAX_BYTES >> 20} MB of names (the chip trains on one "
                                   "name per step): use a sample of it")
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark is not a name
            except UnicodeDecodeError:
                raise DatasetError(f"{where} line {number}: bytes that are not UTF-8 text; "
                                   f"the file must hold {ALLOWED}") from None
            name = line.strip()
            if not name:
                continue
            for index, ch in enumerate(name):
                if not "a" <= ch <= "z":
                    column = len(line) - len(line.lstrip()) + index + 1
                    raise DatasetError(f"{where} line {number}, column {column}: {ch!r} is not a lowercase letter "
                                       f"a-z; the file must hold {ALLOWED}")
            names.append(name)
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    if not names:
        raise DatasetError(f"{where} holds no names; the file must hold {ALLOWED}")
    return names


def microgpt_order(docs, seed, shape: Shape = DEFAULT):
    """microgpt.py's training order and initial weights for `seed`, for a model of `shape`.

    Its script calls random.seed(seed), random.shuffle(docs), then random.gauss(0, 0.08) once
    per parameter in state_dict order; a private Random(seed) makes the same draws.
    Returns (shuffled copy of docs, float64 array of shape.n_params weights).
    """
    rng = random.Random(seed)
    ordered = list(docs)
    rng.shuffle(ordered)
    init = np.array([rng.gauss(0, INIT_STD) for _ in range(shape.n_params)])
    return ordered, init
