"""A real board on a serial port (or anything that acts as one: the MicroPython VM behind a pty).

Two ways to start a run, one engine each: FlashEngine writes the image and boots it,
UploadEngine copies the run to a board that already runs MicroPython.

Either way the UART is read through resets (a reset does not drop a USB-serial bridge, and the
trainer resumes from its checkpoint): only the runner decides when the run is over.
"""
import logging
from pathlib import Path
from typing import Callable, Iterator

from esptool.reset import HardReset

from .. import chip, mpy
from ..flash import flash_image
from ..ports import FLASH_BAUD, UART_BAUD, open_serial, watch_link
from ..rawrepl import ENTER_TIMEOUT_S, MissingFile, RawRepl
from . import Engine, split_lines

log = logging.getLogger(__name__)
# main.py as the board runs it at boot; exec'd from the raw REPL because Ctrl-D (soft reset, which
# would boot it) ends the MicroPython VM instead.
RUN_MAIN = "exec(open('main.py').read(), {'__name__': '__main__'})"
# What an earlier run left behind: a new run must neither resume its checkpoint nor leave its
# weights to be pulled as if they were the new run's.
EARLIER_RUN = (chip.WEIGHTS, chip.CKPT, chip.CKPT + ".tmp")


def read_board_file(port: str, baud: int, name: str) -> bytes:
    """A file from the board's filesystem, over the raw REPL (MissingFile if it has none)."""
    repl = RawRepl(port, baud)
    try:
        return repl.read_file(name)
    finally:
        repl.close()


class SerialEngine(Engine):
    """A board on `port`. `baud` is the UART's; `silence_s` and `timeout_s` as for split_lines
    (`silence_s` also bounds the wait for the raw REPL). Subclasses start the run two ways."""

    name = "serial"

    def __init__(self, port: str, *, baud: int = UART_BAUD, silence_s: float = 120.0, timeout_s: float | None = None):
        self.port, self.baud = port, baud
        self.silence_s, self.timeout_s = silence_s, timeout_s
        self._read: Callable[[], bytes | None] | None = None

    def lines(self) -> Iterator[bytes]:
        yield from split_lines(self._read, self.silence_s, self.timeout_s)

    def read_file(self, name: str) -> bytes | None:
        try:
            return read_board_file(self.port, self.baud, name)
        except MissingFile:
            return None


class FlashEngine(SerialEngine):
    """Write `image` (a `microgpt build` image) with esptool, then pulse EN (RTS) with the port
    already open, so the UART is captured from the ROM's first line; main.py trains at boot."""

    def __init__(self, port: str, image: str | Path, *, flash_baud: int = FLASH_BAUD, **kwargs):
        super().__init__(port, **kwargs)
        self.image, self.flash_baud = image, flash_baud
        self._serial = None

    def prepare(self) -> None:
        flash_image(self.port, self.image, baud=self.flash_baud, reset=False)
        ser = self._serial = open_serial(self.port, self.baud, release_lines=True)
        HardReset(ser)()  # EN low, then high: the board boots the new image while we listen

        def read() -> bytes:
            with watch_link(self.port):
                return ser.read(max(1, ser.in_waiting))
        self._read = read

    def stop(self) -> None:
        if self._serial:
            self._serial.close()
            self._serial = None


class UploadEngine(SerialEngine):
    """The board runs MicroPython already: copy `files(target)` over the raw REPL (the run's
    files made for what the board imports, `target`, asked of the board, e.g.
    `lambda target: payload.chip_files(cfg, docs, target)`) and start main.py there. No
    reflash, so it is the quick way to try a new configuration."""

    def __init__(self, port: str, files: Callable[[mpy.Target], dict[str, bytes]], **kwargs):
        super().__init__(port, **kwargs)
        self.files = files
        self._repl: RawRepl | None = None

    def prepare(self) -> None:
        repl = self._repl = RawRepl(self.port, self.baud, answer_s=min(self.silence_s, ENTER_TIMEOUT_S))
        repl.exec("import sys")
        target = mpy.target_from(f"the board ({repl.platform})", *repl.eval(mpy.ASK_TARGET))
        for path, data in self.files(target).items():
            log.info("copying %s (%s bytes) to the board", path, f"{len(data):,}")
            repl.write_file(path, data)
        repl.remove(*EARLIER_RUN)
        repl.soft_reset()  # a clean heap for the trainer, as after a boot
        repl.start(RUN_MAIN)
        self._read = repl.read

    def stop(self) -> None:
        if self._repl:
            self._repl.close()
            self._repl = None
