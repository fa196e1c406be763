"""Write a flash image to a board with esptool's API.

Only what the board can boot is written, checked first as every image is (microgpt.basefw): a
whole-flash image (`microgpt build`'s build/flash.bin) goes at 0, a MicroPython firmware file at
0x1000, as micropython.org's install instructions say; anything else is refused before esptool
touches the board, unless `force` (for experts: the file's bytes at 0, unchecked). esptool
compresses and verifies (MD5 of the flash against the data). `fs_only` rewrites just the vfs
partition, where the run's files live: a new run configuration deploys in seconds, provided the
board already holds this image's firmware and partition table (checked first, by MD5 on the chip).
"""
import contextlib
import hashlib
from pathlib import Path

from esptool.cmds import attach_flash, detect_chip, detect_flash_size, reset_chip, run_stub, write_flash
from esptool.util import FatalError, flash_size_bytes

from . import basefw
from .errors import FlashError, ImageError
from .image import PARTITION_TABLE_MAX, PARTITION_TABLE_OFFSET, require_fits
from .ports import FLASH_BAUD, open_serial

ROM_BAUD = 115200  # the ROM bootloader always starts here; the stub then switches to `baud`


def flash_image(port: str, image: Path, *, baud: int = FLASH_BAUD, fs_only: bool = False, reset: bool = True,
                force: bool = False) -> None:
    """Write `image` (or its vfs partition) to the board on `port`, verify it, and hard-reset the
    board unless `reset` is False (the caller then resets it while listening, to miss no boot output)."""
    image = Path(image)
    if not image.is_file():
        raise ImageError(f"flash image {image} not found; build it with `microgpt build`.")
    if force:
        if fs_only:
            raise ImageError("--force writes the file as it is, at 0: it does not go with --fs-only")
        data, offset = image.read_bytes(), 0
    else:
        fw = basefw.identify(image)
        data, offset = fw.data, fw.offset
        if fs_only and offset:
            raise ImageError(f"{image.name} is a firmware file, not a whole-flash image: --fs-only writes the "
                             "filesystem of an image made by `microgpt build`")
    if fs_only:
        vfs = fw.vfs
        data, offset = data[vfs.offset:vfs.end], vfs.offset
    try:
        with contextlib.closing(open_serial(port, ROM_BAUD)) as ser:
            esp = run_stub(detect_chip(ser, ROM_BAUD))
            if baud != ROM_BAUD:
                esp.change_baud(baud)
            attach_flash(esp)
            flash_size = flash_size_bytes(detect_flash_size(esp))
            if flash_size:  # None: a flash chip esptool does not know, nothing to check against
                require_fits(offset + len(data), flash_size,
                             image.name + (" up to the end of its vfs partition" if fs_only else ""))
            if fs_only:
                _require_same_partitions(esp, fw.data)
            write_flash(esp, [(offset, data)], flash_size="keep", compress=True)
            reset_chip(esp, "hard-reset" if reset else "no-reset")
    except FatalError as e:
        raise FlashError(f"esptool failed on {port}: {e}. Hold BOOT while plugging the board in if it "
                         "does not enter its bootloader by itself.") from None


def _require_same_partitions(esp, image: bytes) -> None:
    table = image[PARTITION_TABLE_OFFSET:PARTITION_TABLE_OFFSET + PARTITION_TABLE_MAX]
    on_board = esp.flash_md5sum(PARTITION_TABLE_OFFSET, PARTITION_TABLE_MAX)
    if on_board != hashlib.md5(table).hexdigest():
        raise FlashError(
            "the board's partition table differs from the image's, so its vfs partition may lie elsewhere: "
            "flash the whole image once (drop --fs-only).")
