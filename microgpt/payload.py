"""What goes on the chip, decided once: `build(options, docs, target)` turns a run's options into
a `Payload` that holds every file of the chip's filesystem (the trainer compiled for the target,
the C module for its arch, config.json, the names in training order, the names held out of it,
the initial weights).
Engines receive the Payload and only place it: a VM's filesystem, QEMU's flash, a board's flash
or its raw REPL. config.json is written here and read by the chip alone (file formats:
docs/chip-files.md)."""
import dataclasses
import json
import zlib
from collections.abc import Mapping
from pathlib import Path

from . import chip, dataset, mpy, planner, reference
from .errors import BuildError

EMITS = ("auto", "native", "bytecode")
MAX_STEPS = 1_000_000  # the most steps a run asks for (--steps); the parser takes a start asking more as garbage
# Steps per UART step record: a record of 25 losses is ~180 bytes, ~7 a step; at 115200 baud a
# board sends a byte in ~87 us, so printing costs it ~0.6 ms a step against ~2 ms of training.
LOG_EVERY = 25
KERNELS = ("auto", "c", "python")
# Names held out of training by default: makemore and nanoGPT report a loss on names the model never saw.
VAL = 1000
INITS = ("microgpt", "device")
NATIVE = "@micropython.native"
CMODEL_DIR = chip.FIRMWARE_DIR / "cmodel"  # cmodel.c and its committed builds, cmodel-<arch>.mpy
CMODEL = "cmodel.mpy"  # its name on the chip's filesystem


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What a user asks of a training run (the options of build, sim run and device run)."""
    steps: int = 1000
    seed: int = 42
    init: str = "microgpt"  # "microgpt": microgpt.py's weights from the host; "device": drawn on the chip
    samples: int = 20
    log_every: int = LOG_EVERY  # steps per UART step record; build makes it at most steps
    ckpt_every: int = 0
    emit: str = "auto"  # how mpy-cross compiles the trainer: "native", "bytecode", or "auto" (see emit_for)
    kernels: str = "auto"  # the model's arithmetic: "c" (firmware/cmodel), "python", or "auto" (see kernels_for)
    temperature: float = chip.TEMPERATURE
    shape: chip.Shape = chip.DEFAULT  # microgpt.py's n_embd, n_head, n_layer, block_size
    val: int = VAL  # names held out of training, the last of the run's order; their loss is evaluated on the chip
    lr: float = chip.LR  # Adam's learning rate at step 1, decaying linearly to 0 over the run

    def __post_init__(self):
        if self.steps < 1 or self.samples < 0 or not 1 <= self.log_every or self.ckpt_every < 0 or self.val < 0:
            raise ValueError("steps and log_every must be >= 1; samples, ckpt_every and val >= 0")
        if not 0 < self.lr <= chip.MAX_LR:
            raise ValueError(f"lr must be in (0, {chip.MAX_LR:g}], not {self.lr!r}")
        reference.check_temperature(self.temperature)  # the samples after training, on the chip
        for name, allowed in (("init", INITS), ("emit", EMITS), ("kernels", KERNELS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class Payload:
    """Everything on the chip's filesystem for one run, made for one target."""
    options: RunOptions  # as resolved for the target: emit and kernels are never "auto", log_every <= steps
    target: mpy.Target
    files: Mapping[str, bytes]
    run_id: int  # a checkpoint resumes only the run that wrote it

    @property
    def boot(self) -> bytes:
        """main.py: what MicroPython runs at power-up, and what a host runs to start an uploaded run."""
        return self.files[chip.BOOT]


def cmodel_build(arch: str | None) -> Path | None:
    """The committed C-kernel module for `arch` (scripts/build_cmodel.py), if there is one."""
    path = CMODEL_DIR / f"cmodel-{arch}.mpy"
    return path if arch and path.is_file() else None


def cmodel_refuses(shape: chip.Shape) -> str | None:
    """Why the C kernels cannot take `shape` (cmodel.c's set_shape: rows four at a time, hidden
    units listed in bytes, a head and a name in locals), or None."""
    if shape.n_embd % 4 or shape.n_embd > 64:
        return f"n_embd {shape.n_embd} is not a multiple of 4 up to 64"
    if shape.head_dim > 16:
        return f"a head of {shape.head_dim} (n_embd / n_head) is more than 16"
    if shape.n_layer > 64 or shape.block_size > 255:
        return f"n_layer {shape.n_layer} is over 64 or block_size {shape.block_size} over 255"
    return None


def kernels_for(kernels: str, target: mpy.Target, shape: chip.Shape = chip.DEFAULT) -> str:
    """"c" or "python" for `target` and `shape`. "auto" is C wherever the module is built for the
    target's arch (the ESP32's xtensawin and the VM's x64) and takes the shape: the same step in
    ~400x fewer instructions on the chip."""
    built, refused = cmodel_build(target.arch), cmodel_refuses(shape)
    if kernels == "auto":
        return "c" if built and not refused else "python"
    if kernels == "c" and not built:
        raise BuildError(f"the C kernels are not built for {target} ({target.arch or 'no native code'}): "
                         "use --kernels python, or build them with scripts/build_cmodel.py")
    if kernels == "c" and refused:
        raise BuildError(f"the C kernels cannot take {shape}: {refused}; use --kernels python or another shape")
    return kernels


def emit_for(emit: str, target: mpy.Target) -> str:
    """"native" or "bytecode" for `target`. "auto" is native in a MicroPython VM with a native
    emitter (x64, x86): faster, and its machine code stays out of the GC heap, where bytecode
    sits (about 4 KB less at the peak, measured). On the ESP32 it is bytecode: machine code
    must go to executable RAM, and the v1.25 image leaves about 15 KB of IRAM free (its segment
    map ends at 0x4009c5bc of 0x400a0000) for the trainer's about 19 KB of xtensawin code."""
    if emit == "auto":
        return "native" if target.system == mpy.VM and target.arch else "bytecode"
    if emit == "native" and not target.arch:
        raise BuildError(f"{target} has no native code emitter for this machine: use --emit bytecode")
    return emit


def _module(src: Path, target: mpy.Target, emit: str) -> bytes:
    """A firmware module as .mpy for `target`. With emit "native" the hot loops marked
    @micropython.native become machine code for target's arch; with "bytecode" the marks are
    blanked (lines kept, so tracebacks point at the source)."""
    text = src.read_text()
    if emit == "bytecode":
        text = "\n".join("" if line.strip() == NATIVE else line for line in text.split("\n"))
    return mpy.compile_source(text, src.name, target)


def _trainer(target: mpy.Target, emit: str, kernels: str) -> dict[str, bytes]:
    """firmware/*.py for `target`: main.py as source (MicroPython boots it), the other modules as
    .mpy; with kernels "c" also the C module built for target's arch."""
    files = {}
    for src in sorted(chip.FIRMWARE_DIR.glob("*.py")):
        files[src.name if src.name == chip.BOOT else src.stem + ".mpy"] = (
            src.read_bytes() if src.name == chip.BOOT else _module(src, target, emit))
    if kernels == "c":
        blob = cmodel_build(target.arch).read_bytes()
        mpy.check_compatible(blob, target, CMODEL)
        files[CMODEL] = blob
    return files


def check_val(val: int, count: int) -> None:
    """Refuse to hold out `val` of `count` names when none would be left to train on (the CLI asks
    as soon as it has read the names, before anything is built or written)."""
    if val >= count:
        raise BuildError(f"--val {val} holds out {val:,} of the {count:,} names, leaving none to train on: "
                         f"pass --val below {count:,} (--val 0 evaluates no held-out loss)")


def split(ordered: list[str], val: int) -> tuple[list[str], list[str]]:
    """(the names that train, the last `val` names: held out) of the run's order."""
    check_val(val, len(ordered))
    return ordered[:len(ordered) - val], ordered[len(ordered) - val:]


def _names_file(names: list[str], block_size: int) -> bytes:
    """Names as the trainer reads them from flash (train.Names): one a line, each cut at block_size."""
    return ("\n".join(name[:block_size] for name in names) + "\n").encode()


def build(options: RunOptions, docs: list[str], target: mpy.Target,
          platform: planner.Platform = planner.ESP32) -> Payload:
    """The payload of a run of `options` on `docs` for `target`, whose heap is `platform`'s."""
    shape = options.shape
    options = dataclasses.replace(options, emit=emit_for(options.emit, target),
                                  kernels=kernels_for(options.kernels, target, shape),
                                  log_every=min(options.log_every, options.steps))
    planner.check(shape, options.kernels, options.log_every, platform)  # its heap holds the run
    files = _trainer(target, options.emit, options.kernels)
    # Step s trains on name s % count, so a run of fewer steps than names needs only its first
    # `steps`; and microgpt.py trains on a name's first block_size letters, never further (the
    # held-out loss reads no further either).
    ordered, init = dataset.microgpt_order(docs, options.seed, shape)
    training, held_out = split(ordered, options.val)
    trained = training[:options.steps]
    files[chip.DATA] = _names_file(trained, shape.block_size)
    if held_out:
        files[chip.VAL] = _names_file(held_out, shape.block_size)
    if options.init == "microgpt":
        files[chip.INIT] = init.astype("<f4").tobytes()
    run_id = zlib.crc32(f"{options.steps} {options.seed} {options.init} {shape} {options.lr!r}".encode()
                        + files[chip.DATA] + files.get(chip.VAL, b"") + files.get(chip.INIT, b""))
    config = dataclasses.asdict(options) | {"docs": len(trained), "run_id": run_id}
    files[chip.CONFIG] = json.dumps(config, sort_keys=True).encode()
    return Payload(options, target, files, run_id)
