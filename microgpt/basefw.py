"""The MicroPython firmware a run's flash is built on: the pinned official ESP32_GENERIC release
(downloaded once, hash-checked, cached), a firmware file the user gives (flashed at 0x1000), or a
whole-flash image (flashed at 0, e.g. one `microgpt build` wrote), each identified with esptool's
image parser before anything is built on it or written to a board. `FirmwareBase` is that choice as
the engines that build a flash (QEMU, Wokwi, a board's flash) and the virtual board take it."""
import contextlib
import hashlib
import io
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from esptool.bin_image import LoadFirmwareImage
from esptool.cmds import merge_bin
from esptool.targets import CHIP_DEFS, ESP32ROM

from . import download, image
from .errors import EngineError, FirmwareError, ImageError, NoPartitionTable
from .fileio import read_at_most
from .image import APP, PARTITION_TABLE_OFFSET, Partition


class Release(NamedTuple):
    name: str
    url: str
    sha256: str


PINNED = Release(
    "ESP32_GENERIC-20250415-v1.25.0.bin",
    "https://micropython.org/resources/firmware/ESP32_GENERIC-20250415-v1.25.0.bin",
    "1eb1a88473e32aa6a4d45dc1b5b6ad40bc1f06128e7aa8548e438cfa4633da1b",
)
BOOTLOADER = ESP32ROM.BOOTLOADER_FLASH_OFFSET  # 0x1000: where the ROM looks for the 2nd-stage bootloader
# The banner MicroPython prints at boot ("MicroPython v1.25.0 on 2025-04-15; ..."), compiled into the app.
_BANNER = re.compile(rb"MicroPython (v\d+\.\d+(?:\.\d+)?(?:-[0-9A-Za-z.+-]+)?) on (\d{4}-\d\d-\d\d)")
_FLASH_SIZES = {int(label.removesuffix("MB")) << 20: bits for label, bits in ESP32ROM.FLASH_SIZES.items()}
MAX_FLASH = max(_FLASH_SIZES)  # a firmware or a whole-flash image is no larger than the flash it goes on
WHAT_TO_PASS = ("pass the firmware .bin from micropython.org/download/ESP32_GENERIC (bootloader, partition table and "
                "app), or a whole-flash image made by `microgpt build`")


@dataclass(frozen=True)
class Firmware:
    """A MicroPython ESP32 firmware: a firmware file (data goes at 0x1000) or a whole-flash image (at 0)."""
    path: Path
    data: bytes = field(repr=False)
    offset: int             # where `data` goes in flash
    flash_size: int         # bytes, from the bootloader header
    partitions: list[Partition]
    version: str            # MicroPython's, e.g. "v1.25.0"
    build_date: str
    sha256: str
    chip: str = "esp32"     # esptool's chip name

    @property
    def vfs(self) -> Partition:
        return image.vfs_partition(self.partitions)

    def filesystem(self, files: dict[str, bytes], keep: bool = False) -> bytes:
        """The vfs partition holding `files`: a new filesystem, or with `keep` a whole image's own
        filesystem with `files` written over (its other files kept; an erased one formatted)."""
        vfs = self.vfs
        region = self.data[vfs.offset - self.offset:vfs.end - self.offset] if keep and self.offset == 0 else b""
        if region.strip(b"\xff"):
            return image.update_fs(region, files)
        return image.build_fs(vfs.size, files)

    def flash(self, files: dict[str, bytes] | None, keep: bool = False) -> bytes:
        """The board's whole flash: this firmware, with `files` on its vfs partition (see
        filesystem); `files` None leaves the partition erased (MicroPython formats it at first boot)."""
        vfs = self.vfs
        fs = b"\xff" * vfs.size if files is None else self.filesystem(files, keep)
        if self.offset == 0:
            return self.data[:vfs.offset] + fs + self.data[vfs.end:]
        # esptool's merge pads the gaps and the tail with 0xFF (erased flash).
        with contextlib.redirect_stdout(io.StringIO()):
            return merge_bin([(self.offset, self.data), (vfs.offset, fs)], chip=self.chip, flash_size="keep",
                             pad_to_size=f"{self.flash_size >> 20}MB")


def fetch(release: Release = PINNED) -> Path:
    """The release's file in the cache (hash-checked), downloaded first if needed."""
    return download.fetch(release.url, release.sha256, release.name, FirmwareError,
                          "download it by hand, check it and pass --firmware PATH")


def _load_image(data: bytes, what: str):
    """An ESP32 app or bootloader image at the start of `data`, parsed and checked by esptool;
    refuses other chips."""
    # Extended header (ESP32 and later): chip id at byte 12, "append digest" flag at byte 23.
    if len(data) < 24 or data[0] != ESP32ROM.ESP_IMAGE_MAGIC or data[23] not in (0, 1):
        raise FirmwareError(f"{what} is not an ESP32 firmware image")
    chip_id = struct.unpack_from("<H", data, 12)[0]
    if chip_id != ESP32ROM.IMAGE_CHIP_ID:
        chip = next((c.CHIP_NAME for c in CHIP_DEFS.values() if getattr(c, "IMAGE_CHIP_ID", None) == chip_id),
                    f"chip id {chip_id}")
        raise FirmwareError(f"{what} is built for the {chip}, not the ESP32: use an ESP32_GENERIC firmware")
    try:
        parsed = LoadFirmwareImage("esp32", data)
    except Exception as e:  # esptool raises FatalError, RuntimeError or struct.error on bad images
        raise FirmwareError(f"{what} is corrupt: {e}") from None
    if not parsed.segments or parsed.checksum != parsed.calculate_checksum() or (
            parsed.append_digest and parsed.stored_digest != parsed.calc_digest):
        raise FirmwareError(f"{what} is corrupt: its checksum or SHA-256 digest does not match")
    return parsed


def _where(data: bytes, name: str) -> int:
    """Where the file goes in flash: 0x1000 for a firmware file (it starts with the bootloader),
    0 for a whole-flash image (erased bytes, then the bootloader at 0x1000)."""
    if data[:1] == bytes([ESP32ROM.ESP_IMAGE_MAGIC]):
        return BOOTLOADER
    if len(data) > BOOTLOADER and data[BOOTLOADER] == ESP32ROM.ESP_IMAGE_MAGIC:
        return 0
    kind = ("empty" if not data else "text, not firmware" if all(32 <= b < 127 or b in b"\t\r\n" for b in data[:4096])
            else f"{len(data):,} bytes of something else")
    raise FirmwareError(f"{name} is not an ESP32 firmware or flash image ({kind}): {WHAT_TO_PASS}")


def identify(path: Path) -> Firmware:
    """Check that `path` is a complete MicroPython ESP32 firmware (bootloader + partition table +
    app, as published on micropython.org, or all of a board's flash) and say what it is."""
    path = Path(path)
    try:
        data = read_at_most(path, MAX_FLASH)
    except OSError as e:
        raise FirmwareError(f"cannot read the firmware {path}: {e.strerror}") from None
    name = path.name
    if data is None:
        raise FirmwareError(f"{path} holds more than {MAX_FLASH >> 20} MB, the largest flash an ESP32 bootloader "
                            f"names: {WHAT_TO_PASS}")
    offset = _where(data, name)
    boot = _load_image(data[BOOTLOADER - offset:], f"{name} (bootloader at {BOOTLOADER:#x})")
    try:
        parts = image.read_partition_table(data, PARTITION_TABLE_OFFSET - offset)
    except NoPartitionTable:
        raise FirmwareError(f"{name} has no partition table at flash {PARTITION_TABLE_OFFSET:#x}: {WHAT_TO_PASS}, "
                            "not an app-only image") from None
    except ImageError as e:
        raise FirmwareError(f"{name}: {e}") from None
    app = next((p for p in parts if p.type == APP), None)
    if app is None:
        raise FirmwareError(f"{name} has no app partition in its partition table")
    if app.offset - offset + 24 > len(data):
        raise FirmwareError(f"{name} ends at {offset + len(data):#x}, before its app at {app.offset:#x}: "
                            "the file is truncated")
    app_data = data[app.offset - offset:app.end - offset]
    _load_image(app_data, f"{name} (app at {app.offset:#x})")
    banner = _BANNER.search(app_data)
    if not banner:
        raise FirmwareError(f"{name} is an ESP32 firmware but not MicroPython (no version banner in its app)")
    sizes = {bits: size for size, bits in _FLASH_SIZES.items()}
    flash_size = sizes.get(boot.flash_size_freq & 0xF0)
    if flash_size is None:
        raise FirmwareError(f"{name} is corrupt: its bootloader header gives no valid flash size")
    end = max(p.end for p in parts)
    if end > flash_size:
        raise FirmwareError(f"{name}: its partition table ends at {end:#x}, beyond its {flash_size >> 20} MB flash")
    fw = Firmware(path, data, offset, flash_size, parts, banner[1].decode(), banner[2].decode(),
                  hashlib.sha256(data).hexdigest())
    if offset == 0 and len(data) != flash_size:
        raise FirmwareError(f"{name} is {len(data):,} bytes, but a whole-flash image for its {flash_size >> 20} MB "
                            f"flash is {flash_size:,}: the file is truncated or padded; build it again")
    if offset and offset + len(data) > fw.vfs.offset:
        raise FirmwareError(f"{name} ({len(data):,} bytes at {offset:#x}) runs into its vfs partition at "
                            f"{fw.vfs.offset:#x}: not a MicroPython ESP32 firmware file")
    return fw


def resolve(path: Path | None = None) -> Firmware:
    """The firmware to build on: `path` if given (--firmware or --image), else the pinned official release."""
    return identify(path if path is not None else fetch())


class FirmwareBase:
    """The firmware an emulated or real ESP32's flash is built on: `image` (a whole-flash image,
    whose filesystem is kept under the run's files) or `firmware` (a firmware file, with a new
    filesystem), identified at once; without either the pinned official release, fetched when
    the target is first asked for (after the engine has checked its tools)."""

    def __init__(self, image: str | os.PathLike | None, firmware: str | os.PathLike | None):
        if image is not None and firmware is not None:
            raise EngineError("give --image (a whole flash to run) or --firmware (a firmware to build on), not both")
        given = image if image is not None else firmware
        self.keep = image is not None
        self.firmware = identify(given) if given is not None else None

    def resolve(self) -> Firmware:
        if self.firmware is None:
            self.firmware = resolve()
        return self.firmware
