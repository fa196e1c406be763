"""The chip contract, in one place for the host: the model's sizes and training constants, the
files the trainer keeps on the chip's filesystem, and the ESP32_GENERIC facts the tool relies on.

The firmware is the source of truth: the constants are read out of firmware/base.py and
firmware/train.py (their module-level `NAME = const(...)` and `NAME = literal` lines) without
importing them, since they are MicroPython modules. Formats of the files: docs/chip-files.md.
"""
import ast
import importlib.util
import operator
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
VOCAB, BOS, N_EMBD, N_HEAD, HEAD_DIM, BLOCK, N_HIDDEN, N_PARAMS = (
    _MODEL[k] for k in ("VOCAB", "BOS", "N_EMBD", "N_HEAD", "HEAD_DIM", "BLOCK", "N_HIDDEN", "N_PARAMS"))
RMS_EPS = _MODEL["RMS_EPS"]
# Training (firmware/train.py).
LR, BETA1, BETA2, ADAM_EPS, INIT_STD = (_TRAIN[k] for k in ("LR", "BETA1", "BETA2", "EPS", "INIT_STD"))
# Files on the chip's filesystem (firmware/train.py).
CONFIG, DATA, INIT, WEIGHTS, CKPT = (_TRAIN[k] for k in ("CONFIG", "DATA", "INIT", "WEIGHTS", "CKPT"))
# MicroPython runs main.py at power-up; the trainer's boot entry is firmware/main.py, whose
# first line marks it as ours (a board's own main.py is never touched).
BOOT = "main.py"
BOOT_SOURCE = (FIRMWARE_DIR / BOOT).read_bytes()
BOOT_MARK = b"# microgpt boot entry\n"
assert BOOT_SOURCE.startswith(BOOT_MARK), f"firmware/{BOOT} must begin with {BOOT_MARK!r}"

# ESP32_GENERIC v1.25.0: the GC heap at boot, and its partition table's vfs partition.
ESP32_HEAP = 166_592
VFS_SIZE = 0x200000


def check_weights(data: bytes, where: str) -> bytes:
    """`data` if it is a whole weights.bin (N_PARAMS float32, little-endian)."""
    if len(data) != N_PARAMS * 4:
        raise MicrogptError(f"{WEIGHTS} {where} is {len(data):,} bytes, not {N_PARAMS * 4:,} ({N_PARAMS:,} float32): "
                            "did the run finish? Train again.")
    return data
