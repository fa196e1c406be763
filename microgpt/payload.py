"""What a run puts on the chip's filesystem: the trainer, its configuration, the names in
training order and, with init "microgpt", microgpt.py's initial weights (file names and formats:
firmware/train.py and docs/uart-protocol.md)."""
import dataclasses
import json
import zlib
from pathlib import Path

from . import chip, dataset, mpy, reference
from .errors import BuildError

FIRMWARE_DIR = chip.FIRMWARE_DIR
BOOT = "main.py"  # MicroPython boots main.py from source; every other module ships compiled


@dataclasses.dataclass(frozen=True)
class RunConfig:
    steps: int = 1000
    seed: int = 42
    init: str = "microgpt"  # "microgpt": microgpt.py's weights from the host; "device": drawn on the chip
    samples: int = 20
    log_every: int = 1
    ckpt_every: int = 0
    emit: str = "auto"  # how mpy-cross compiles the trainer: "native", "bytecode", or "auto" (see emit_for)
    kernels: str = "auto"  # the model's arithmetic: "c" (firmware/cmodel), "python", or "auto" (see kernels_for)
    temperature: float = reference.TEMPERATURE

    def __post_init__(self):
        if self.steps < 1 or self.samples < 0 or self.log_every < 1 or self.ckpt_every < 0:
            raise ValueError("steps and log_every must be >= 1; samples and ckpt_every >= 0")
        if self.init not in ("microgpt", "device"):
            raise ValueError(f"init must be 'microgpt' or 'device', not {self.init!r}")
        if self.emit not in EMITS:
            raise ValueError(f"emit must be one of {', '.join(EMITS)}, not {self.emit!r}")
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, not {self.kernels!r}")


EMITS = ("auto", "native", "bytecode")
NATIVE = "@micropython.native"
KERNELS = ("auto", "c", "python")
CMODEL_DIR = FIRMWARE_DIR / "cmodel"  # cmodel.c and its committed builds, cmodel-<arch>.mpy
CMODEL = "cmodel.mpy"  # its name on the chip's filesystem


def cmodel_build(arch: str | None) -> Path | None:
    """The committed C-kernel module for `arch` (scripts/build_cmodel.py), if there is one."""
    path = CMODEL_DIR / f"cmodel-{arch}.mpy"
    return path if arch and path.is_file() else None


def kernels_for(kernels: str, target: mpy.Target) -> str:
    """"c" or "python" for `target`. "auto" is C wherever the module is built for the target's
    arch (the ESP32's xtensawin and the VM's x64): the same step in ~130x fewer instructions on the chip."""
    if kernels == "auto":
        return "c" if cmodel_build(target.arch) else "python"
    if kernels == "c" and not cmodel_build(target.arch):
        raise BuildError(f"the C kernels are not built for {target} ({target.arch or 'no native code'}): "
                         "use --kernels python, or build them with scripts/build_cmodel.py")
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


def compile_trainer_module(src: Path, target: mpy.Target, emit: str) -> bytes:
    """A firmware module as .mpy for `target`. With emit "native" the hot loops marked
    @micropython.native become machine code for target's arch; with "bytecode" the marks are
    blanked (the plain-bytecode path; lines kept, so tracebacks point at the source)."""
    text = src.read_text()
    emit = emit_for(emit, target)
    if emit == "bytecode":
        text = "\n".join("" if line.strip() == NATIVE else line for line in text.split("\n"))
    return mpy.compile_source(text, src.name, target)


def trainer_module(name: str, target: mpy.Target, emit: str) -> bytes:
    """The file `name` of the chip's trainer (a module's .mpy) as it is for `target`."""
    if name == CMODEL:
        blob = cmodel_build(target.arch).read_bytes()
        mpy.check_compatible(blob, target, CMODEL)
        return blob
    return compile_trainer_module(FIRMWARE_DIR / (name[:-4] + ".py"), target, emit)


def trainer_files(target: mpy.Target, emit: str, kernels: str = "python") -> dict[str, bytes]:
    """firmware/*.py for `target`: main.py as source, the other modules as .mpy; with kernels
    "c" also the C module built for target's arch."""
    files = {}
    for src in sorted(FIRMWARE_DIR.glob("*.py")):
        if src.name == BOOT:
            files[BOOT] = src.read_bytes()
        else:
            files[src.stem + ".mpy"] = trainer_module(src.stem + ".mpy", target, emit)
    if kernels == "c":
        files[CMODEL] = trainer_module(CMODEL, target, emit)
    return files


def run_files(cfg: RunConfig, docs: list[str]) -> dict[str, bytes]:
    """config.json, names.txt (microgpt.py's shuffled order for cfg.seed) and init.bin."""
    ordered, init = dataset.microgpt_order(docs, cfg.seed)
    files = {"names.txt": ("\n".join(ordered) + "\n").encode()}
    if cfg.init == "microgpt":
        files["init.bin"] = init.astype("<f4").tobytes()
    # A checkpoint resumes only the run that wrote it: same data, weights, steps and seed.
    run_id = zlib.crc32(f"{cfg.steps} {cfg.seed} {cfg.init}".encode() + files["names.txt"] + files.get("init.bin", b""))
    config = dataclasses.asdict(cfg) | {"docs": len(ordered), "run_id": run_id}
    files["config.json"] = json.dumps(config, sort_keys=True).encode()
    return files


def chip_files(cfg: RunConfig, docs: list[str], target: mpy.Target) -> dict[str, bytes]:
    """Everything the chip's filesystem needs for this run (its config names the emit and kernels used)."""
    cfg = dataclasses.replace(cfg, emit=emit_for(cfg.emit, target), kernels=kernels_for(cfg.kernels, target))
    return trainer_files(target, cfg.emit, cfg.kernels) | run_files(cfg, docs)
