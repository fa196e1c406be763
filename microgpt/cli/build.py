"""`microgpt build`: the flash image, MicroPython + a littlefs filesystem with the trainer and the run."""
from pathlib import Path

import click

from .. import build as builder
from .options import BUILD_IMAGE, run_options


@click.command()
@run_options
@click.option("--firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Base MicroPython ESP32 firmware [default: the pinned official v1.25.0, downloaded once].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=BUILD_IMAGE, show_default=True)
def build(cfg, docs, firmware, out):
    """Build the flash image: MicroPython + a littlefs filesystem holding the trainer and the run."""
    info = builder.build(cfg, docs, firmware, out)
    click.echo(f"{info['image']}: {info['flash_size'] >> 20} MB, MicroPython {info['firmware']}, "
               f"vfs at {info['vfs_offset']:#x} ({info['vfs_size'] >> 10} KB, {info['bytes_free'] >> 10} KB free)")
    for name, size in sorted(info["files"].items()):
        click.echo(f"  {name:<14} {size:>9,} bytes")
