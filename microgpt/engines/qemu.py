"""Run the flash image in Espressif's QEMU (`qemu-system-xtensa -machine esp32`) and stream UART0.

Follows Espressif's QEMU guide (github.com/espressif/esp-toolchain-docs, qemu/esp32/README.md):
the ROM first-stage bootloader is built into QEMU, the flash image is an `if=mtd` raw drive of
exactly 2, 4, 8 or 16 MB, and with `-nographic` UART0 is the process's stdout.
"""
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

from .. import image as flash_image
from . import EngineError, ProcessEngine

BINARY = "qemu-system-xtensa"
FLASH_SIZES = tuple(mb * 1024 * 1024 for mb in (2, 4, 8, 16))  # the only sizes QEMU's esp32 flash accepts
INSTALL_HELP = (
    f"{BINARY} (Espressif's QEMU fork) was not found. Install it with ESP-IDF:\n"
    "    python $IDF_PATH/tools/idf_tools.py install qemu-xtensa\n"
    "or unpack a qemu-xtensa release from https://github.com/espressif/qemu/releases\n"
    "(Linux also needs: sudo apt-get install -y libgcrypt20 libglib2.0-0 libpixman-1-0 libsdl2-2.0-0 libslirp0),\n"
    f"then put it on PATH, set QEMU_XTENSA=/path/to/{BINARY}, or pass --qemu PATH."
)
# Documented switch that stops QEMU emulating the Timer Group watchdogs (TG0's is armed at reset).
NO_WATCHDOG = ["-global", "driver=timer.esp32.timg,property=wdt_disable,value=true"]
# QEMU's instruction-counting TCG plugin (tests/plugin/insn.c, built as libinsn.so): it writes
# "cpu N insns: COUNT" per guest CPU when QEMU exits. MicroPython runs on cpu 1 of the ESP32.
INSN_PLUGIN = "libinsn.so"
MICROPYTHON_CPU = 1


def find_insn_plugin(explicit: str | os.PathLike | None = None, qemu: str | None = None) -> Path | None:
    """libinsn.so: the given path, $QEMU_INSN_PLUGIN, or beside QEMU's build (tests/plugin/)."""
    for given in (explicit, os.environ.get("QEMU_INSN_PLUGIN")):
        if given:
            if not Path(given).is_file():
                raise EngineError(f"QEMU plugin {given}: no such file (build QEMU's tests/plugin/{INSN_PLUGIN})")
            return Path(given)
    if qemu:
        for near in (Path(qemu).resolve().parent / "tests/plugin", Path(qemu).resolve().parent.parent / "lib"):
            if (near / INSN_PLUGIN).is_file():
                return near / INSN_PLUGIN
    return None


def read_insn_counts(log: str) -> dict[int, int]:
    """{cpu: guest instructions} from the insn plugin's exit lines."""
    return {int(cpu): int(n) for cpu, n in re.findall(r"^cpu (\d+) insns: (\d+)$", log, re.M)}


def find_qemu(explicit: str | os.PathLike | None = None) -> str:
    """The qemu-system-xtensa to run: --qemu PATH, $QEMU_XTENSA, PATH, then an ESP-IDF tools install."""
    for given, origin in ((explicit, "--qemu"), (os.environ.get("QEMU_XTENSA"), "$QEMU_XTENSA")):
        if given:
            if Path(given).is_file() and os.access(given, os.X_OK):
                return str(given)
            raise EngineError(f"{origin} {given}: no such executable file.\n{INSTALL_HELP}")
    on_path = shutil.which(BINARY)
    if on_path:
        return on_path
    # idf_tools.py installs to $IDF_TOOLS_PATH/tools/qemu-xtensa/<version>/qemu/bin (default ~/.espressif).
    tools = Path(os.environ.get("IDF_TOOLS_PATH") or Path.home() / ".espressif") / "tools" / "qemu-xtensa"
    exe = BINARY + (".exe" if os.name == "nt" else "")
    installed = sorted(tools.glob(f"*/qemu/bin/{exe}"), key=lambda p: [int(n) for n in re.findall(r"\d+", p.parts[-4])])
    if installed:
        return str(installed[-1])  # newest version
    raise EngineError(INSTALL_HELP)


def check_flash_image(image: Path) -> None:
    if not image.is_file():
        raise EngineError(f"flash image {image} not found; build it with `microgpt build`.")
    size = image.stat().st_size
    if size not in FLASH_SIZES:
        raise EngineError(
            f"flash image {image} is {size:,} bytes; Espressif's QEMU needs exactly 2, 4, 8 or 16 MB "
            "(build a full-size image with `microgpt build`, or esptool merge_bin --fill-flash-size 4MB)."
        )


class QemuEngine(ProcessEngine):
    """Boot the merged flash image in `qemu-system-xtensa -machine esp32`; UART0 is QEMU's stdout.

    QEMU writes the chip's flash back to its drive file, so it runs on a copy (`flash`, in
    `workdir`): the built image stays pristine, and after the run the copy holds what the chip
    wrote (weights.bin). Without `workdir` the copy lives in a temp dir removed on close.
    """

    name = "qemu"
    what = "QEMU"

    def __init__(self, image: str | os.PathLike, *, qemu: str | os.PathLike | None = None,
                 silence_s: float = 120.0, timeout_s: float | None = None, watchdog: bool = True,
                 extra_args: Sequence[str] = (), workdir: str | os.PathLike | None = None,
                 insn_plugin: str | os.PathLike | None = None):
        self.image = Path(image)
        check_flash_image(self.image)
        self.qemu = find_qemu(qemu)
        self.silence_s, self.deadline_s = silence_s, timeout_s
        self.watchdog = watchdog
        self.extra_args = list(extra_args)
        workdir = self._workdir(workdir, "microgpt-qemu-")
        self.flash = workdir / "qemu-flash.bin"
        self.insn_plugin = insn_plugin
        self.insn_log = workdir / "qemu-insn.log"
        self.instructions: dict[int, int] = {}  # with insn_plugin: guest instructions per CPU, after stop()

    def command(self) -> list[str]:
        """The documented invocation; watchdogs stay emulated, as on the board, unless disabled."""
        argv = [self.qemu, "-nographic", "-machine", "esp32", "-drive", f"file={self.flash},if=mtd,format=raw"]
        if self.insn_plugin:  # its counts go to a log of their own, not to the UART
            argv += ["-plugin", str(self.insn_plugin), "-d", "plugin", "-D", str(self.insn_log)]
        return argv + ([] if self.watchdog else NO_WATCHDOG) + self.extra_args

    def prepare(self) -> None:
        self.flash.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.image, self.flash)

    def stop(self) -> None:
        super().stop()  # SIGTERM first: QEMU exits cleanly, flushes the flash, the plugin writes its counts
        if self.insn_plugin and self.insn_log.is_file():
            self.instructions = read_insn_counts(self.insn_log.read_text(errors="replace"))

    def read_file(self, name: str) -> bytes | None:
        """From QEMU's copy of the flash, as the chip left it."""
        return flash_image.read_vfs(self.flash).get(name) if self.flash.is_file() else None
