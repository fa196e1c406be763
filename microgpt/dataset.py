"""The training data: makemore's names.txt, fetched once and hash-checked, read and checked the
way microgpt.py reads it, and put in microgpt.py's seeded order with its initial weights."""
import random
from pathlib import Path

import numpy as np

from .errors import DatasetError
from . import download
from .chip import INIT_STD, N_PARAMS

# Pinned to a commit so the hash below stays true.
NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/988aa59/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
ALLOWED = "one name per line, lowercase letters a-z only"


def fetch_names(url=NAMES_URL, sha256=NAMES_SHA256):
    """Path of the cached names file (hash-checked), downloading it first if needed."""
    return download.fetch(url, sha256, f"names-{sha256[:12]}.txt", DatasetError, "pass a local names file (--data)")


def load_names(path=None):
    """The names in `path` (default: the canonical names.txt, fetched once), in file order.

    Lines are stripped and blank ones skipped — microgpt.py's
    `[l.strip() for l in text.strip().split('\\n') if l.strip()]` — and every name must be a-z.
    """
    path = fetch_names() if path is None else Path(path)
    if not path.is_file():
        raise DatasetError(f"no such file: {path}; give an existing names file ({ALLOWED}), "
                           f"or leave the path out to use makemore's names.txt")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not a name
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{path} line {line}: bytes that are not UTF-8 text; the file must hold {ALLOWED}") from None
    names = []
    for number, line in enumerate(text.split("\n"), 1):
        name = line.strip()
        if not name:
            continue
        for index, ch in enumerate(name):
            if not "a" <= ch <= "z":
                column = len(line) - len(line.lstrip()) + index + 1
                raise DatasetError(f"{path} line {number}, column {column}: {ch!r} is not a lowercase letter a-z; "
                                   f"the file must hold {ALLOWED}")
        names.append(name)
    if not names:
        raise DatasetError(f"{path} holds no names; the file must hold {ALLOWED}")
    return names


def microgpt_order(docs, seed):
    """microgpt.py's training order and initial weights for `seed`.

    Its script calls random.seed(seed), random.shuffle(docs), then random.gauss(0, 0.08) once
    per parameter in state_dict order; a private Random(seed) makes the same draws.
    Returns (shuffled copy of docs, float64 array of N_PARAMS weights).
    """
    rng = random.Random(seed)
    ordered = list(docs)
    rng.shuffle(ordered)
    init = np.array([rng.gauss(0, INIT_STD) for _ in range(N_PARAMS)])
    return ordered, init
