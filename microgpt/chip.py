"""The chip contract, in one place for the host: the model's sizes and training constants, the
files the trainer keeps on the chip's filesystem, and the ESP32_GENERIC facts the tool relies on.

The firmware is the source of truth: the constants are read out of firmware/base.py,
firmware/train.py and firmware/checkpoint.py (their module-level `NAME = const(...)` and `NAME =
literal` lines) without importing them, since they are MicroPython modules. Formats of the files: docs/chip-files.md.
"""
import ast
import dataclasses
import importlib.util
import operator
import struct
import zlib
from pathlib import Path

from .errors import MicrogptError
from .fileio import read_at_most


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
# microgpt.py's hyperparameters that the host ships to the chip in config.json (the trainer has no
# defaults of its own): its learning_rate (Adam's at step 1, --lr's default) and its sampling temperature.
LR = 0.01
# --lr's bound: Adam moves each weight by about the learning rate a step, so above 1 one step outgrows
# the weights themselves (drawn at 0.08).
MAX_LR = 1.0
TEMPERATURE = 0.5
# Files on the chip's filesystem (firmware/train.py).
CONFIG, DATA, VAL, INIT, WEIGHTS, CKPT = (_TRAIN[k] for k in ("CONFIG", "DATA", "VAL", "INIT", "WEIGHTS", "CKPT"))
NAMES_BUFFER = _TRAIN["_NAMES_BUFFER"]  # bytes: the trainer's read buffer of the data file; a line must fit it
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
# weights.bin: magic, n_embd, n_head, n_layer, block_size, then the float32 weights.
WEIGHTS_HEAD = struct.Struct(_MODEL["WEIGHTS_HEAD"])
WEIGHTS_MAGIC = _MODEL["WEIGHTS_MAGIC"]


# ckpt.bin (firmware/checkpoint.py): a head (magic, run id, steps, the step done, ...), the arrays,
# and a CRC-32 of all that before it.
_CKPT = constants("checkpoint")
CKPT_HEAD = struct.Struct(_CKPT["_HEAD"])
CKPT_MAGIC = _CKPT["_MAGIC"]
CKPT_CRC = struct.Struct("<I")


def checkpoint_step(data: bytes | None) -> int | None:
    """The step a whole ckpt.bin holds, which a resumed run continues after; None for no file, or
    one the trainer would reject as cut or damaged."""
    if data is None or len(data) < CKPT_HEAD.size + CKPT_CRC.size or data[:4] != CKPT_MAGIC:
        return None
    if CKPT_CRC.unpack_from(data, len(data) - CKPT_CRC.size)[0] != zlib.crc32(data[:-CKPT_CRC.size]):
        return None
    return CKPT_HEAD.unpack_from(data)[3]


def weights_shape(head: bytes, size: int, what: str) -> tuple[Shape, int]:
    """The shape of the weights file `what` (its path, or where it is) of `size` bytes that begins
    with `head` (its first WEIGHTS_HEAD.size bytes or more), and where its floats begin. A file
    without the header is refused, whatever its size: any bytes of the right length would pass
    for floats (the weights from before the header was written can be given it; the message says how)."""
    magic = WEIGHTS_MAGIC.decode()
    if not head.startswith(WEIGHTS_MAGIC):
        default = WEIGHTS_HEAD.pack(WEIGHTS_MAGIC, *(getattr(DEFAULT, k) for k in KNOBS))
        old = "".join(chr(b) if 32 < b < 127 else f"\\x{b:02x}" for b in default)
        raise MicrogptError(f"{what} is not microgpt weights (it does not begin with {magic}): use the weights of a "
                            f"run (its NAME.{WEIGHTS}, or `microgpt device pull`); a {WEIGHTS} of {DEFAULT.n_params * 4:,} "
                            f"bytes from before the header gets it with `printf '{old}' | cat - OLD > NEW`")
    if size < WEIGHTS_HEAD.size:
        raise MicrogptError(f"{what} is cut short: {size:,} bytes, less than its {WEIGHTS_HEAD.size}-byte {magic} "
                            "header: did the run finish? Train again.")
    try:
        shape = Shape(*WEIGHTS_HEAD.unpack_from(head)[1:])
    except MicrogptError as e:
        raise MicrogptError(f"{what}: its {magic} header gives no model shape ({e}): not weights a run wrote") from None
    if size != WEIGHTS_HEAD.size + shape.n_params * 4:
        raise MicrogptError(f"{what} is {size:,} bytes, not {WEIGHTS_HEAD.size + shape.n_params * 4:,} "
                            f"({shape.n_params:,} float32 for {shape}): did the run finish? Train again.")
    return shape, WEIGHTS_HEAD.size


def read_weights_file(path: Path) -> tuple[Shape, bytes]:
    """The shape and the float32 bytes of the weights file at `path`, read no further than the
    chip's filesystem could hold (a run writes its weights there)."""
    try:
        data = read_at_most(path, VFS_SIZE)
    except OSError as e:
        raise MicrogptError(f"cannot read {path}: {e.strerror}") from None
    if data is None:
        raise MicrogptError(f"{path} holds more than {VFS_SIZE >> 20} MB, the chip's filesystem where a run writes "
                            f"its {WEIGHTS}: not microgpt weights")
    return read_weights(data, str(path))


def read_weights(data: bytes, what: str) -> tuple[Shape, bytes]:
    """The shape and the float32 bytes of a whole weights file (`what`: its path, or where it is)."""
    shape, start = weights_shape(data, len(data), what)
    return shape, data[start:]
