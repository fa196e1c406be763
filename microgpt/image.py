"""The flash image: ESP32 partition table, and the littlefs2 filesystem MicroPython mounts
(microgpt.basefw puts a firmware and a filesystem together into a board's whole flash).

Offsets and sizes come from the firmware's own partition table, never from constants here: a
firmware with another layout just works, or is refused with the reason.
"""
import hashlib
import struct
from pathlib import Path
from typing import NamedTuple

from littlefs import LittleFS, LittleFSError, UserContext

from .errors import ImageError, NoPartitionTable

PARTITION_TABLE_OFFSET = 0x8000  # ESP-IDF's default, used by every MicroPython ESP32 board
PARTITION_TABLE_MAX = 0xC00
_ENTRY = struct.Struct("<2sBBII16sI")
_ENTRY_MAGIC = b"\xaa\x50"
_MD5_MAGIC = b"\xeb\xeb" + b"\xff" * 14

APP, DATA = 0x00, 0x01
BLOCK_SIZE = 4096  # esp32.Partition's block size: one flash sector

# MicroPython's VfsLfs2 defaults (extmod/vfs_lfs.c, vfs_lfsx.c): readsize = progsize = lookahead = 32,
# cache 4 * max(readsize, progsize), block_cycles 100.
LFS_CONFIG = dict(block_size=BLOCK_SIZE, read_size=32, prog_size=32, cache_size=128,
                  lookahead_size=32, block_cycles=100)
# We format as on-disk version 2.0, which every littlefs v2 mounts (2.1 needs littlefs >= 2.6, newer
# than some firmware a user may pass). Reading takes the library's default, which mounts both: a
# newer MicroPython upgrades the disk to 2.1 as soon as it writes.
LFS_FORMAT_VERSION = 0x00020000


class Partition(NamedTuple):
    label: str
    type: int
    subtype: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


def _bytes(image: bytes | Path) -> bytes:
    return image if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()


def read_partition_table(image: bytes | Path, offset: int = PARTITION_TABLE_OFFSET) -> list[Partition]:
    """Parse the binary partition table found at `offset` in `image` (ESP-IDF format: 32-byte
    entries with magic 0xAA50, optionally an MD5 entry 0xEBEB..., ended by 0xFF)."""
    table = _bytes(image)[offset:offset + PARTITION_TABLE_MAX]
    parts = []
    for pos in range(0, len(table) - _ENTRY.size + 1, _ENTRY.size):
        entry = table[pos:pos + _ENTRY.size]
        if entry.startswith(_MD5_MAGIC):
            if hashlib.md5(table[:pos]).digest() != entry[16:]:
                raise ImageError("the partition table fails its MD5 check: the file is corrupt")
            continue
        magic, ptype, subtype, poff, size, label, _flags = _ENTRY.unpack(entry)
        if magic != _ENTRY_MAGIC:
            break
        parts.append(Partition(label.rstrip(b"\0").decode("ascii", "replace"), ptype, subtype, poff, size))
    if not parts:
        raise NoPartitionTable(f"no ESP32 partition table at {offset:#x}")
    return parts


def vfs_partition(parts: list[Partition]) -> Partition:
    """The data partition MicroPython's ESP32 port mounts as "/" with littlefs (flashbdev.py)."""
    for p in parts:
        if p.type == DATA and p.label == "vfs":
            return p
    raise ImageError(
        f"the firmware has no data partition labelled 'vfs' (it has: {', '.join(p.label for p in parts)}); "
        "use a MicroPython ESP32 firmware with the standard partition table, e.g. ESP32_GENERIC")


def _littlefs(block_count: int, buffer: bytearray | None = None) -> LittleFS:
    """A fresh filesystem (buffer None) or the one in `buffer`, mounted."""
    if buffer is None:
        fs = LittleFS(context=UserContext(block_count * BLOCK_SIZE), block_count=block_count, mount=False,
                      disk_version=LFS_FORMAT_VERSION, **LFS_CONFIG)
        fs.format()
    else:
        fs = LittleFS(context=UserContext(buffer=buffer), block_count=block_count, mount=False, **LFS_CONFIG)
    fs.mount()
    return fs


def _write_files(fs: LittleFS, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        parent = name.rpartition("/")[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(name, "wb") as f:
            f.write(data)


def build_fs(size: int, files: dict[str, bytes]) -> bytes:
    """A littlefs2 filesystem of `size` bytes holding `files` (path -> content), as MicroPython's
    VfsLfs2 formats it; refuses, saying by how much, when the files do not fit."""
    fs = _littlefs(size // BLOCK_SIZE)
    try:
        _write_files(fs, files)
    except LittleFSError as e:
        if e.code != LittleFSError.Error.LFS_ERR_NOSPC:
            raise
        # Measure what the files really take (data, CTZ pointers, metadata) on a roomy filesystem.
        total = sum(len(d) for d in files.values())
        roomy = _littlefs(size // BLOCK_SIZE + 2 * (total // BLOCK_SIZE + len(files)) + 16)
        _write_files(roomy, files)
        need = roomy.used_block_count * BLOCK_SIZE
        raise ImageError(
            f"the files ({total:,} bytes in {len(files)} files) need {need:,} bytes of littlefs but the vfs "
            f"partition holds {size:,}: {need - size:,} bytes too many (use a smaller dataset)") from None
    fs.unmount()
    return bytes(fs.context.buffer)


def _mount(region: bytes) -> LittleFS:
    try:
        return _littlefs(len(region) // BLOCK_SIZE, bytearray(region))
    except LittleFSError as e:
        raise ImageError(f"no littlefs filesystem there ({e}); was the image made by `microgpt build`?") from None


def update_fs(region: bytes, files: dict[str, bytes]) -> bytes:
    """The littlefs2 filesystem in `region` with `files` written over (others kept)."""
    fs = _mount(region)
    _write_files(fs, files)
    fs.unmount()
    return bytes(fs.context.buffer)


def free_bytes(region: bytes) -> int:
    """Bytes still free on a littlefs2 filesystem."""
    fs = _mount(region)
    return (fs.block_count - fs.used_block_count) * BLOCK_SIZE


def require_fits(image_size: int, flash_size: int, what: str = "the image") -> None:
    """Refuse to put more bytes on a flash than it holds."""
    if image_size > flash_size:
        raise ImageError(
            f"{what} needs {image_size:,} bytes but the flash holds {flash_size:,} "
            f"({flash_size >> 20} MB): {image_size - flash_size:,} bytes too many; use a board with "
            f"{-(-image_size >> 20)} MB of flash or a firmware built for this flash size")


def vfs_region(image: bytes | Path) -> tuple[int, int]:
    """(offset, size) of the vfs partition in a flash image made by build_image."""
    vfs = vfs_partition(read_partition_table(image))
    return vfs.offset, vfs.size


def read_fs(region: bytes) -> dict[str, bytes]:
    """Every file of a littlefs2 filesystem (path -> content)."""
    fs = _mount(region)
    files = {}
    for top, _dirs, names in fs.walk("/"):
        for name in names:
            path = f"{top.rstrip('/')}/{name}".lstrip("/")
            with fs.open(path, "rb") as f:
                files[path] = f.read()
    return files


def read_vfs(image: bytes | Path) -> dict[str, bytes]:
    """Every file on the vfs partition of a flash image (path -> content)."""
    data = _bytes(image)
    offset, size = vfs_region(data)
    return read_fs(data[offset:offset + size])
