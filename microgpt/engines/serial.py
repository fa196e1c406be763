"""A board on a serial port (or anything that acts as one: the virtual board, the MicroPython VM
behind a pty). Two ways to put a run there, one engine each: FlashEngine writes the run's whole
flash with esptool and captures the boot; UploadEngine copies the run to a board that runs
MicroPython already and starts it over the raw REPL (also how a cut run is resumed).

A board reset does not drop a USB-serial bridge: the UART is read through it, and only the
pipeline decides when the run is over.
"""
import logging
import re
from collections.abc import Iterator

from esptool.reset import HardReset

from .. import basefw, chip, mpy, rawrepl
from ..board import read_board_file
from ..errors import EngineError, MissingFile
from ..fileio import write_atomic
from ..flash import flash_image
from ..payload import Payload
from ..ports import FLASH_BAUD, UART_BAUD, open_serial, watch_link
from ..rawrepl import RawRepl
from . import Engine, split_lines

log = logging.getLogger(__name__)
# What MicroPython prints when it starts its REPL: "MicroPython v1.25.0 on 2025-04-15; Generic ESP32 module with ESP32".
MICROPYTHON_BANNER = re.compile(rb"MicroPython \S+ on \d{4}-\d\d-\d\d")
# What an earlier run left behind: a new run must neither resume its checkpoint nor leave its
# weights to be pulled as if they were the new run's.
EARLIER_RUN = (chip.WEIGHTS, chip.CKPT, chip.CKPT + ".tmp")


class SerialEngine(Engine):
    """A board on `port` at `baud`; `silence_s` as for split_lines."""

    name = "serial"

    def __init__(self, port: str, *, baud: int = UART_BAUD, silence_s: float = 120.0):
        self.port, self.baud, self.silence_s = port, baud, silence_s
        open_serial(port, baud, release_lines=True).close()  # a missing or busy port is refused before anything is built
        self._repl: RawRepl | None = None

    def settings(self) -> dict:
        return {"baud": self.baud}

    def repl(self) -> RawRepl:
        if self._repl is None:
            self._repl = RawRepl(self.port, self.baud, answer_s=min(self.silence_s, rawrepl.ENTER_TIMEOUT_S),
                                 silence_s=self.silence_s)
        return self._repl

    def lines(self) -> Iterator[bytes]:
        """Start the trainer over the raw REPL (the boot entry's own text) and stream its output: a
        run just uploaded, or one resumed from the checkpoint on the board's flash. A board that
        resets under the run (brownout, watchdog) comes back at its REPL, announcing itself with
        MicroPython's banner: the trainer is started again, and resumes from its checkpoint."""
        repl = self.repl()
        while True:
            repl.soft_reset()  # a clean heap for the trainer, as after a boot
            repl.start(chip.BOOT_SOURCE.decode())
            for line in split_lines(repl.read, self.silence_s):
                yield line
                if repl.running and MICROPYTHON_BANNER.search(line):
                    break
            else:
                return
            log.info("the board reset during the run: starting the trainer again")
            repl.enter()

    def stop(self) -> None:
        if self._repl:
            self._repl.close()  # Ctrl-C's a trainer still running: the board stays usable
            self._repl = None

    def read_file(self, name: str) -> bytes | None:
        try:
            return read_board_file(self.port, self.baud, name)
        except MissingFile:
            return None


class UploadEngine(SerialEngine):
    """The board runs MicroPython already: the payload (made for what the board imports, asked
    of it) goes over the raw REPL, files it already holds byte for byte are skipped, and the host
    starts the trainer. No boot entry is left on the board (and the tool's own is removed): after
    a reset or a power cut the board waits at its REPL with the run's checkpoint, and
    `device run --resume` continues it, so no step is trained where nobody listens."""

    def target(self) -> mpy.Target:
        repl = self.repl()
        return mpy.target_from(f"the board ({repl.platform})", *repl.eval(mpy.ASK_TARGET))

    def place(self, payload: Payload) -> None:
        repl = self.repl()
        repl.remove_own(chip.BOOT, chip.BOOT_MARK)
        files = {name: data for name, data in payload.files.items() if name != chip.BOOT}
        repl.sync(files, progress=lambda path, size: log.info("copying %s (%s bytes) to the board", path, f"{size:,}"))
        # Only now that the new run is whole on the board: a copy cut short (Ctrl-C, a lost cable)
        # leaves the earlier run's weights to pull.
        repl.remove(*EARLIER_RUN)


class FlashEngine(SerialEngine):
    """Write the run's whole flash (`workdir`/flash.bin: the firmware, `image` or `firmware`, with
    the payload on its filesystem) with esptool, then pulse EN (RTS) with the port already open, so
    the UART is captured from the ROM's first line; main.py trains at boot."""

    OPTIONS = ("image", "firmware", "flash_baud")

    def __init__(self, port: str, workdir, *, image=None, firmware=None, flash_baud: int = FLASH_BAUD, **kwargs):
        super().__init__(port, **kwargs)
        self.base = basefw.FirmwareBase(image, firmware)
        self.flash, self.flash_baud = workdir / "flash.bin", flash_baud
        self._serial = None

    def target(self) -> mpy.Target:
        return mpy.firmware_target(self.base.resolve().version)

    def place(self, payload: Payload) -> None:
        write_atomic(self.flash, self.base.resolve().flash(dict(payload.files), keep=self.base.keep))
        flash_image(self.port, self.flash, baud=self.flash_baud, reset=False)

    def lines(self) -> Iterator[bytes]:
        ser = self._serial = open_serial(self.port, self.baud, release_lines=True)
        HardReset(ser)()  # EN low, then high: the board boots the new image while we listen

        def read() -> bytes:
            with watch_link(self.port):
                return ser.read(max(1, ser.in_waiting))
        yield from split_lines(read, self.silence_s)

    def stop(self) -> None:
        if self._serial:
            try:
                with watch_link(self.port):
                    self._serial.write(b"\r\x03")  # Ctrl-C: a trainer still running stops, as on the upload path
            except EngineError:
                pass  # the port is gone
            self._serial.close()
            self._serial = None
        super().stop()

