"""The chip contract, in one place for the host: the model's sizes and training constants, the
files the trainer keeps on the chip's filesystem, and the ESP32_GENERIC facts the tool relies on.

The firmware is the source of truth: the constants are read out of firmware/base.py and
firmware/train.py (their module-level `NAME = const(...)` and `NAME = literal` lines) without
importing them, since they are MicroPython modules. Formats of the files: docs/chip-files.md.
"""
import ast
import dataclasses
import importlib.util
import operator
import struct
from pathlib import Path

from .errors import MicrogptError


def _firmware_dir() -> Path:
    """firmware/ of the checkout the tool runs from, else the copy a wheel installed."""
    checkout = Path(__file__).resolve().parents[1] / "firmware"
    if checkout.is_dir():
        return checkout
    return Path(next(iter(importlib.util.find_spec("microgpt.firmware").submodule_search_locations)))


FIRMWARE_DIR = _firmware_dir()

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.USub: operator.neg}


def _value(node, known):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return known[node.id]
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "const":
        return _value(node.args[0], known)
    if isinstance(node, ast.BinOp):
        return _OPS[type(node.op)](_value(node.left, known), _value(node.right, known))
    if isinstance(node, ast.UnaryOp):
        return _OPS[type(node.op)](_value(node.operand, known))
    raise ValueError("not a constant")


def constants(module: str) -> dict:
    """NAME -> value for the constant assignments at the top level of firmware/<module>.py."""
    known = {}
    for node in ast.parse((FIRMWARE_DIR / f"{module}.py").read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                known[node.targets[0].id] = _value(node.value, known)
            except (ValueError, KeyError):
                pass  # not a constant (an object, a call)
    return known


def firmware_module(name: str):
    """A firmware module that also runs under CPython (rng.py), imported from its file."""
    spec = importlib.util.spec_from_file_location(f"firmware_{name}", FIRMWARE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_MODEL, _TRAIN = constants("base"), constants("train")

# The model (firmware/base.py).
VOCAB, BOS, N_EMBD, N_HEAD, N_LAYER, BLOCK = (
    _MODEL[k] for k in ("VOCAB", "BOS", "N_EMBD", "N_HEAD", "N_LAYER", "BLOCK"))
RMS_EPS, BETA1, BETA2, ADAM_EPS = (_MODEL[k] for k in ("RMS_EPS", "BETA1", "BETA2", "ADAM_EPS"))
# Training (firmware/train.py).
INIT_STD = _TRAIN["INIT_STD"]
# Files on the chip's filesystem (firmware/train.py).
CONFIG, DATA, VAL, INIT, WEIGHTS, CKPT = (_TRAIN[k] for k in ("CONFIG", "DATA", "VAL", "INIT", "WEIGHTS", "CKPT"))
# MicroPython runs main.py at power-up; the trainer's boot entry is firmware/main.py, whose
# first line marks it as ours (a board's own main.py is never touched).
BOOT = "main.py"
BOOT_SOURCE = (FIRMWARE_DIR / BOOT).read_bytes()
BOOT_MARK = b"# microgpt boot entry\n"
assert BOOT_SOURCE.startswith(BOOT_MARK), f"firmware/{BOOT} must begin with {BOOT_MARK!r}"

# ESP32_GENERIC v1.25.0: the GC heap at boot, and its partition table's vfs partition.
ESP32_HEAP = 166_592
VFS_SIZE = 0x200000


@dataclasses.dataclass(frozen=True)
class Shape:
    """microgpt.py's four knobs; the rest follows from them (head_dim = n_embd / n_head, an MLP of
    4 × n_embd, the 27-token vocabulary). The default is the firmware's (firmware/base.py)."""
    n_embd: int = N_EMBD
    n_head: int = N_HEAD
    n_layer: int = N_LAYER
    block_size: int = BLOCK

    def __post_init__(self):
        for name in KNOBS:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise MicrogptError(f"{name} must be a whole number >= 1, not {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise MicrogptError(f"n_embd {self.n_embd} must be a multiple of n_head {self.n_head} "
                                "(each head takes n_embd / n_head of the embedding)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_hidden(self) -> int:
        return 4 * self.n_embd

    def matrices(self) -> list[tuple[str, int, int]]:
        """(name, rows, columns) in microgpt.py's state_dict order, each row-major [out][in]."""
        e = self.n_embd
        top = [("wte", VOCAB, e), ("wpe", self.block_size, e), ("lm_head", VOCAB, e)]
        per_layer = [("attn_wq", e, e), ("attn_wk", e, e), ("attn_wv", e, e), ("attn_wo", e, e),
                     ("mlp_fc1", 4 * e, e), ("mlp_fc2", e, 4 * e)]
        return top + [(f"layer{i}.{name}", r, c) for i in range(self.n_layer) for name, r, c in per_layer]

    @property
    def n_params(self) -> int:
        return sum(r * c for _, r, c in self.matrices())

    def __str__(self):
        return ", ".join(f"{name} {getattr(self, name)}" for name in KNOBS)


KNOBS = ("n_embd", "n_head", "n_layer", "block_size")
DEFAULT = Shape()
N_PARAMS = DEFAULT.n_params  # 4,192: microgpt.py's own model
# weights.bin: magic, n_embd, n_head, n_layer, block_size, then the float32 weights. A file of
# just the default shape's floats (before the header existed) is the default shape.
WEIGHTS_HEAD = struct.Struct(_MODEL["WEIGHTS_HEAD"])
WEIGHTS_MAGIC = _MODEL["WEIGHTS_MAGIC"]


def weights_shape(head: bytes, size: int, where: str) -> tuple[Shape, int]:
    """The shape of a weights.bin of `size` bytes that begins with `head` (its first
    WEIGHTS_HEAD.size bytes or more), and where its floats begin."""
    if head[:4] == WEIGHTS_MAGIC and len(head) >= WEIGHTS_HEAD.size:
        shape = Shape(*WEIGHTS_HEAD.unpack_from(head)[1:])
        if size != WEIGHTS_HEAD.size + shape.n_params * 4:
            raise MicrogptError(f"{WEIGHTS} {where} is {size:,} bytes, not {WEIGHTS_HEAD.size + shape.n_params * 4:,}"
                                f" ({shape.n_params:,} float32 for {shape}): did the run finish? Train again.")
        return shape, WEIGHTS_HEAD.size
    if size != DEFAULT.n_params * 4:
        raise MicrogptError(f"{WEIGHTS} {where} is {size:,} bytes, not {DEFAULT.n_params * 4:,} (the default "
                            f"model's {DEFAULT.n_params:,} float32) and has no {WEIGHTS_MAGIC.decode()} header: "
                            "did the run finish? Train again.")
    return DEFAULT, 0


def read_weights(data: bytes, where: str) -> tuple[Shape, bytes]:
    """The shape and the float32 bytes of a whole weights.bin."""
    shape, start = weights_shape(data, len(data), where)
    return shape, data[start:]
