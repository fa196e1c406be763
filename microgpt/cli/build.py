"""`microgpt build`: a board's whole flash, MicroPython + a littlefs filesystem with the trainer and the run."""
import dataclasses
import json
from pathlib import Path

import click

from .. import basefw, dataset, image, mpy, payload
from ..fileio import output_error, refuse_existing, write_together
from .options import BUILD_IMAGE, run_options


@click.command()
@run_options
@click.option("--firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="MicroPython ESP32 firmware to build on (a firmware file, or a whole-flash image whose "
                   "filesystem is replaced) [default: the pinned official v1.25.0, downloaded once].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=BUILD_IMAGE, show_default=True,
              help="The image to write (.bin); what it was built from goes beside it as .json.")
@click.option("--overwrite", is_flag=True, help="Replace the image and its .json if they are there.")
def build(options, data, firmware, out, overwrite):
    """Build a flash image: MicroPython + a littlefs filesystem holding the trainer and the run.
    Flash it with `microgpt device flash` (or any esptool at offset 0); the board trains at power-up."""
    manifest = out.with_suffix(".json")
    if manifest == out:
        raise click.UsageError(f"{out}: the image's manifest goes beside it as .json: name the image .bin")
    refuse_existing((out, manifest), overwrite, "the build would replace files",
                    "name another --out, or --overwrite to replace them")
    docs = dataset.load_names(data)
    payload.check_val(options.val, len(docs))
    fw = basefw.resolve(firmware)
    chip = payload.build(options, docs, mpy.firmware_target(fw.version))
    flash = fw.flash(dict(chip.files))
    vfs = fw.vfs
    free = image.free_bytes(flash[vfs.offset:vfs.end])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(e, out.parent) from None
    # For the user, beside the image: what it holds and was built from (no tool reads it back).
    write_together({out: flash, manifest: (json.dumps({
        "image": str(out), "flash_size": len(flash), "firmware": fw.version, "firmware_sha256": fw.sha256,
        "vfs_offset": vfs.offset, "vfs_size": vfs.size, "bytes_free": free,
        "options": dataclasses.asdict(chip.options),
        "files": {name: len(blob) for name, blob in chip.files.items()}}, indent=2) + "\n").encode()})
    click.echo(f"{out}: {len(flash) >> 20} MB, MicroPython {fw.version}, vfs at {vfs.offset:#x} "
               f"({vfs.size >> 10} KB, {free >> 10} KB free)")
    for name, blob in sorted(chip.files.items()):
        click.echo(f"  {name:<14} {len(blob):>9,} bytes")
