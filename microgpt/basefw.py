"""The base MicroPython firmware the image is built on: the pinned official ESP32_GENERIC
release (downloaded once, hash-checked, cached) or a file the user gives, identified with
esptool's image parser before anything is built on it.
"""
import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from esptool.bin_image import LoadFirmwareImage
from esptool.targets import CHIP_DEFS, ESP32ROM

from . import download
from .errors import FirmwareError, ImageError, NoPartitionTable
from .image import APP, PARTITION_TABLE_OFFSET, Partition, read_partition_table

class Release(NamedTuple):
    name: str
    url: str
    sha256: str

PINNED = Release(
    "ESP32_GENERIC-20250415-v1.25.0.bin",
    "https://micropython.org/resources/firmware/ESP32_GENERIC-20250415-v1.25.0.bin",
    "1eb1a88473e32aa6a4d45dc1b5b6ad40bc1f06128e7aa8548e438cfa4633da1b",
)

# The banner MicroPython prints at boot ("MicroPython v1.25.0 on 2025-04-15; ..."), compiled into the app.
_BANNER = re.compile(rb"MicroPython (v\d+\.\d+(?:\.\d+)?(?:-[0-9A-Za-z.+-]+)?) on (\d{4}-\d\d-\d\d)")

@dataclass(frozen=True)
class Firmware:
    path: Path
    data: bytes = field(repr=False)
    chip: str               # esptool's chip name
    offset: int             # where the file goes in flash (the 2nd-stage bootloader's offset)
    flash_size: int         # bytes, from the bootloader header
    partitions: list[Partition]
    version: str            # MicroPython's, e.g. "v1.25.0"
    build_date: str
    sha256: str

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        image = LoadFirmwareImage("esp32", data)
    except Exception as e:  # esptool raises FatalError, RuntimeError or struct.error on bad images
        raise FirmwareError(f"{what} is corrupt: {e}") from None
    if not image.segments or image.checksum != image.calculate_checksum() or (
            image.append_digest and image.stored_digest != image.calc_digest):
        raise FirmwareError(f"{what} is corrupt: its checksum or SHA-256 digest does not match")
    return image

def identify(path: Path) -> Firmware:
    """Check that `path` is a complete MicroPython ESP32 firmware (bootloader + partition table
    + app, as published on micropython.org) and say what it is."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FirmwareError(f"cannot read the firmware {path}: {e.strerror}") from None
    name = path.name
    boot = _load_image(data, f"{name} (bootloader at its start)")
    offset = ESP32ROM.BOOTLOADER_FLASH_OFFSET
    try:
        parts = read_partition_table(data, PARTITION_TABLE_OFFSET - offset)
    except NoPartitionTable:
        raise FirmwareError(
            f"{name} has no partition table at flash {PARTITION_TABLE_OFFSET:#x}: pass the complete firmware .bin "
            "from micropython.org/download/ESP32_GENERIC (bootloader, partition table and app), not an app-only "
            "image") from None
    except ImageError as e:
        raise FirmwareError(f"{name}: {e}") from None
    app = next((p for p in parts if p.type == APP), None)
    if app is None:
        raise FirmwareError(f"{name} has no app partition in its partition table")
    app_data = data[app.offset - offset:app.end - offset]
    _load_image(app_data, f"{name} (app at {app.offset:#x})")
    banner = _BANNER.search(app_data)
    if not banner:
        raise FirmwareError(f"{name} is an ESP32 firmware but not MicroPython (no version banner in its app)")
    sizes = {bits: int(label.removesuffix("MB")) << 20 for label, bits in ESP32ROM.FLASH_SIZES.items()}
    flash_size = sizes.get(boot.flash_size_freq & 0xF0)
    if flash_size is None:
        raise FirmwareError(f"{name} is corrupt: its bootloader header gives no valid flash size")
    return Firmware(path, data, "esp32", offset, flash_size, parts, banner[1].decode(), banner[2].decode(),
                    _sha256(data))

def resolve(path: Path | None = None) -> Firmware:
    """The firmware to build on: `path` if given (--firmware), else the pinned official release."""
    return identify(path if path is not None else fetch())
