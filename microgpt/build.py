"""Putting a run on flash: the merged image for boards and simulators (rebuilt only when its
inputs change), and the vfs partition the MicroPython VM boots from."""
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

from . import basefw, chip, image, mpy, payload
from .errors import ImageError, OutputError
from .fileio import write_atomic

log = logging.getLogger(__name__)


def _digest(cfg: payload.RunConfig, docs: list[str], firmware_sha256: str) -> str:
    # Everything the image's bytes depend on, cheap to compute: no download, no compile.
    h = hashlib.sha256(json.dumps([repr(cfg), firmware_sha256, mpy.mpy_cross_version()]).encode())
    h.update("\n".join(docs).encode())
    for src in sorted(payload.FIRMWARE_DIR.glob("*.py")) + sorted(payload.CMODEL_DIR.glob("*.mpy")):
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    return h.hexdigest()


def _manifest(out: Path) -> Path:
    return out.with_suffix(".json")


def build(cfg: payload.RunConfig, docs: list[str], firmware: Path | None, out: Path) -> dict:
    """Write the flash image `out` and its manifest (what it was built from) beside it."""
    if _manifest(out) == out:
        raise OutputError(f"{out}: the image's manifest goes beside it as .json: name the image .bin")
    fw = basefw.resolve(firmware)
    files = payload.chip_files(cfg, docs, mpy.firmware_target(fw.version))
    info = image.build_image(fw, files, out)
    info["inputs"] = _digest(cfg, docs, fw.sha256)
    info["run"] = repr(cfg)
    _manifest(out).write_text(json.dumps(info, indent=2) + "\n")
    return info


def fresh_image(cfg: payload.RunConfig, docs: list[str], out: Path, firmware: Path | None) -> Path:
    """`out`, built first if it is missing or was built from other inputs than these."""
    try:
        made = json.loads(_manifest(out).read_text())
    except (OSError, ValueError):
        made = None
    if out.exists() and made:
        fw_sha = basefw.identify(firmware).sha256 if firmware else made["firmware_sha256"]
        if made.get("inputs") == _digest(cfg, docs, fw_sha):
            return out
    log.info("building %s (%s) ...", out, "stale" if out.exists() else "missing")
    build(cfg, docs, firmware, out)
    return out


def run_copy(given: Path, cfg: payload.RunConfig, docs: list[str], out: Path) -> Path:
    """A copy of the flash image `given` at `out` whose filesystem holds this run's files (its
    configuration, the names in order, the initial weights). `given` is never written, and
    neither its manifest nor the base firmware is needed: the image carries both the firmware
    and the trainer, whose emit and kernels the run keeps."""
    try:
        data = Path(given).read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read the flash image {given}: {e.strerror}") from None
    try:
        offset, size = image.vfs_region(data)
        region = data[offset:offset + size]
        built = json.loads(image.read_fs(region)[chip.CONFIG])
    except (ImageError, KeyError, ValueError):
        raise ImageError(f"{given} is not a flash image made by `microgpt build` (no partition table or no "
                         "trainer on its vfs partition): build one with `microgpt build --out FILE`") from None
    # An image made before the C kernels existed ran the MicroPython ones.
    cfg = dataclasses.replace(cfg, emit=built.get("emit", cfg.emit), kernels=built.get("kernels", "python"))
    region = image.update_fs(region, payload.run_files(cfg, docs))
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(out, data[:offset] + region + data[offset + size:])


def image_files(path: Path, target: mpy.Target, emit: str) -> dict[str, bytes]:
    """The files on the vfs partition of the image `path`, as `target` needs them: machine code
    for another arch (xtensawin, in the VM) made again for target's; bytecode runs anywhere."""
    files = image.read_vfs(path)
    for name, blob in files.items():
        if name.endswith(".mpy") and mpy.parse_header(blob).arch not in (None, target.arch):
            files[name] = payload.trainer_module(name, target, emit)
    return files
