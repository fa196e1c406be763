"""`microgpt device`: a real ESP32 on USB. Flash the image, train on the board, pull the weights."""
from pathlib import Path

import click

from .. import build as builder
from .. import chip, payload
from ..fileio import write_atomic
from ..ports import FLASH_BAUD, UART_BAUD, find_port, open_serial
from .options import BUILD_IMAGE, Group, run_dir, run_options, run_to_report, timeout_option

port_option = click.option("--port", default=None,
                           help="The board's serial port [default: the one Espressif/USB-serial port plugged in].")


@click.group(cls=Group)
def device():
    """A real ESP32 on a serial port: flash it, train on it, pull the weights."""


@device.command()
@port_option
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=BUILD_IMAGE, show_default=True,
              help="Flash image made by `microgpt build`.")
@click.option("--fs-only", is_flag=True,
              help="Write only the vfs partition (the run's files): the board must already hold this image's firmware.")
@click.option("--baud", type=int, default=FLASH_BAUD, show_default=True, help="Baud rate while flashing.")
def flash(port, image, fs_only, baud):
    """Write the image with esptool (compressed, verified), then hard-reset the board."""
    from ..flash import flash_image

    flash_image(port or find_port(), image, baud=baud, fs_only=fs_only)


@device.command("run")
@port_option
@click.option("--mode", type=click.Choice(["flash", "upload"]), default="flash", show_default=True,
              help="flash: write the image, then capture the boot; upload: the board runs MicroPython already, "
                   "copy the trainer and the run over the raw REPL and start it.")
@run_options
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Flash image (mode flash) to write as it is, with this run's files in its copy "
                   "[default: build/flash.bin, built or rebuilt when stale].")
@click.option("--firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Base firmware when the image must be built.")
@click.option("--baud", type=int, default=UART_BAUD, show_default=True, help="Baud rate of the board's UART.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Report JSON [default: runs/serial-<time>/report.json]; the UART log, loss curve and weights go beside it.")
@timeout_option
@click.option("--quiet", is_flag=True, help="No UART echo or progress.")
def device_run(port, mode, cfg, docs, image, firmware, baud, report, timeout, quiet):
    """Train on the board; write a JSON report, loss curve, UART log and the trained weights."""
    from ..engines.serial import FlashEngine, UploadEngine

    port = port or find_port()
    open_serial(port, baud, release_lines=True).close()  # a missing or busy port is refused before anything is built
    with run_dir(report, "serial") as report:
        if mode == "upload":
            engine = UploadEngine(port, lambda target: payload.chip_files(cfg, docs, target), baud=baud, silence_s=timeout)
        elif image is None:
            engine = FlashEngine(port, builder.fresh_image(cfg, docs, BUILD_IMAGE, firmware), baud=baud, silence_s=timeout)
        else:
            engine = FlashEngine(port, builder.run_copy(image, cfg, docs, report.with_name("run-image.bin")),
                                 baud=baud, silence_s=timeout)
        run_to_report(engine, cfg, report, quiet)


@device.command()
@port_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path(chip.WEIGHTS), show_default=True)
@click.option("--baud", type=int, default=UART_BAUD, show_default=True, help="Baud rate of the board's UART.")
def pull(port, out, baud):
    """Copy the trained weights (weights.bin) from the board's filesystem."""
    from ..engines.serial import read_board_file
    from ..rawrepl import MissingFile

    try:
        data = read_board_file(port or find_port(), baud, chip.WEIGHTS)
    except MissingFile as e:
        raise click.ClickException(f"{e}: train first with `microgpt device run`") from None
    chip.check_weights(data, "on the board")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)
    click.echo(f"{out}: {chip.N_PARAMS:,} float32 weights")
