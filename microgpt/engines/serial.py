"""A real board on a serial port (or anything that acts as one: the MicroPython VM behind a pty).

Two ways to start a run:
- "flash": write the flash image with esptool, then pulse EN (RTS) with the port already open,
  so the UART is captured from the ROM's first line; main.py trains at boot.
- "upload": the board already runs MicroPython: copy the run's files over the raw REPL and
  start main.py there. No reflash, so it is the quick way to try a new configuration.

Either way the UART is read through resets (a reset does not drop a USB-serial bridge, and the
trainer resumes from its checkpoint): only the runner decides when the run is over.
"""
from pathlib import Path
from typing import Callable, Iterator

import click
from esptool.reset import HardReset

from microgpt import mpy
from microgpt.flash import flash_image
from microgpt.ports import FLASH_BAUD, UART_BAUD, open_serial, watch_link
from microgpt.rawrepl import ENTER_TIMEOUT_S, RawRepl

from . import Engine, EngineError, split_lines

MODES = ("flash", "upload")
# main.py as the board runs it at boot; exec'd from the raw REPL because Ctrl-D (soft reset, which
# would boot it) ends the MicroPython VM instead.
RUN_MAIN = "exec(open('main.py').read(), {'__name__': '__main__'})"
WEIGHTS = "weights.bin"  # the trained weights, left on the board's filesystem by the trainer
# What an earlier run left behind: a new run must neither resume its checkpoint nor leave its
# weights to be pulled as if they were the new run's.
EARLIER_RUN = (WEIGHTS, "ckpt.bin", "ckpt.bin.tmp")


class SerialEngine(Engine):
    """mode "flash" writes `image` (a `microgpt build` image); mode "upload" copies `files(target)`,
    the run's files made for what the board imports (`target`, asked of the board), e.g.
    `lambda target: payload.chip_files(cfg, docs, target)`. `baud` is the UART's; `silence_s` and
    `timeout_s` as for split_lines (`silence_s` also bounds the wait for the raw REPL)."""

    name = "serial"

    def __init__(self, port: str, *, mode: str = "upload", image: str | Path | None = None,
                 files: Callable[[mpy.Target], dict[str, bytes]] | None = None, baud: int = UART_BAUD,
                 flash_baud: int = FLASH_BAUD, silence_s: float = 120.0, timeout_s: float | None = None):
        if mode not in MODES or (mode == "flash") != (image is not None) or (mode == "upload") != (files is not None):
            raise ValueError("mode 'flash' takes an image, mode 'upload' the files to copy")
        self.port, self.mode, self.image, self.files = port, mode, image, files
        self.baud, self.flash_baud = baud, flash_baud
        self.silence_s, self.timeout_s = silence_s, timeout_s
        self._repl: RawRepl | None = None
        self._serial = None

    def lines(self) -> Iterator[bytes]:
        read = self._boot() if self.mode == "flash" else self._upload()
        yield from split_lines(read, self.silence_s, self.timeout_s)

    def _boot(self):
        """Flash, then reset the board with the port open: the UART from the ROM's first line."""
        try:
            flash_image(self.port, self.image, baud=self.flash_baud, reset=False)
        except click.ClickException as e:
            raise EngineError(e.format_message()) from None
        ser = self._serial = open_serial(self.port, self.baud, release_lines=True)
        HardReset(ser)()  # EN low, then high: the board boots the new image while we listen

        def read() -> bytes:
            with watch_link(self.port):
                return ser.read(max(1, ser.in_waiting))
        return read

    def _upload(self):
        """Copy the run over the raw REPL and start main.py; the UART is the raw REPL's output."""
        repl = self._repl = RawRepl(self.port, self.baud, answer_s=min(self.silence_s, ENTER_TIMEOUT_S))
        repl.exec("import sys")
        target = mpy.target_from(f"the board ({repl.platform})", *repl.eval(mpy.ASK_TARGET))
        try:
            files = self.files(target)
        except click.ClickException as e:  # e.g. the board's MicroPython cannot import our .mpy
            raise EngineError(e.format_message()) from None
        for path, data in files.items():
            click.echo(f"copying {path} ({len(data):,} bytes) to the board", err=True)
            repl.write_file(path, data)
        repl.remove(*EARLIER_RUN)
        repl.soft_reset()  # a clean heap for the trainer, as after a boot
        repl.start(RUN_MAIN)
        return repl.read

    def close(self) -> None:
        if self._repl:
            self._repl.close()
            self._repl = None
        if self._serial:
            self._serial.close()
            self._serial = None
