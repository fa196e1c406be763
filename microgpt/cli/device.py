"""`microgpt device`: an ESP32 on a serial port (or the virtual one, `microgpt sim board`). Flash
an image, train on the board, pull the weights, sample names on the board."""
from pathlib import Path

import click

from .. import chip
from ..fileio import refuse_existing, write_atomic
from ..ports import FLASH_BAUD, UART_BAUD, find_port
from ..run import RunDir
from .options import (
    BUILD_IMAGE,
    Group,
    launch,
    refuse_others,
    report_options,
    resume_dir,
    run_options,
    sampling_options,
)
from .sample import check_prefix

port_option = click.option("--port", default=None,
                           help="The board's serial port [default: the one Espressif/USB-serial port plugged in].")
baud_option = click.option("--baud", type=click.IntRange(300, 5_000_000), default=UART_BAUD, show_default=True,
                           help="Baud rate of the board's UART.")
# The options of each way to start a run (FlashEngine.OPTIONS, UploadEngine.OPTIONS): none is dropped.
MODE_OPTIONS = ("image", "firmware", "flash_baud")


@click.group(cls=Group)
def device():
    """An ESP32 on a serial port: flash it, train on it, pull the weights, sample on it."""


@device.command()
@port_option
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=BUILD_IMAGE, show_default=True,
              help="Whole-flash image made by `microgpt build` (written at 0), or a MicroPython firmware file "
                   "(written at 0x1000, as micropython.org says).")
@click.option("--fs-only", is_flag=True,
              help="Write only the vfs partition (the run's files): the board must already hold this image's firmware.")
@click.option("--force", is_flag=True,
              help="For experts: write the file at 0 as it is, even if it is not a MicroPython ESP32 image.")
@click.option("--baud", type=click.IntRange(9600, 5_000_000), default=FLASH_BAUD, show_default=True,
              help="Baud rate while flashing.")
def flash(port, image, fs_only, force, baud):
    """Write the image with esptool (checked first, compressed, verified), then hard-reset the board."""
    from ..flash import flash_image

    flash_image(port or find_port(), image, baud=baud, fs_only=fs_only, force=force)


@device.command("run")
@port_option
@click.option("--mode", type=click.Choice(["flash", "upload"]), default="flash", show_default=True,
              help="flash: write the run's whole flash with esptool, then capture the boot; upload: the board runs "
                   "MicroPython already, copy the trainer and the run over the raw REPL and start it.")
@run_options
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Mode flash: start from this whole-flash image, the run's files written over its filesystem "
                   "(the file itself is never written).")
@click.option("--firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Mode flash: MicroPython firmware to build the run's flash on [default: the pinned official v1.25.0].")
@click.option("--flash-baud", type=click.IntRange(9600, 5_000_000), default=FLASH_BAUD, show_default=True,
              help="Mode flash: baud rate while flashing.")
@baud_option
@report_options("serial")
@click.pass_context
def device_run(ctx, port, mode, options, data, image, firmware, flash_baud, baud, report, overwrite, resume, silence,
               quiet):
    """Train on the board; write a JSON report, loss curve, UART log and the trained weights.
    With --resume, continue a run cut by a power cut or a lost cable from its last checkpoint."""
    from ..engines.serial import FlashEngine, UploadEngine

    port = port or find_port()
    if resume:
        rundir = resume_dir(ctx, resume, "mode")
        refuse_others(ctx, "a resumed run (the board holds it)", (), MODE_OPTIONS)
        with rundir.claim(resume=True):
            if rundir.record()["engine"] != "serial":
                raise click.UsageError(f"{rundir.report} ran on {rundir.record()['engine']}, not on a board: "
                                       "continue it with `microgpt sim run --resume`")
            launch(UploadEngine(port, baud=baud, silence_s=silence), rundir, None, None, quiet)
        return
    cls = FlashEngine if mode == "flash" else UploadEngine
    refuse_others(ctx, f"--mode {mode}", cls.OPTIONS, MODE_OPTIONS)
    rundir = RunDir(report) if report else RunDir.new("serial")
    with rundir.claim(overwrite=overwrite):
        if mode == "upload":
            engine = UploadEngine(port, baud=baud, silence_s=silence)
        else:
            engine = FlashEngine(port, rundir.work, image=image, firmware=firmware, flash_baud=flash_baud, baud=baud,
                                 silence_s=silence)
        launch(engine, rundir, options, data, quiet)


@device.command()
@port_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path(chip.WEIGHTS), show_default=True,
              help="Where the weights go.")
@click.option("--overwrite", is_flag=True, help="Replace the file at --out if it is there.")
@baud_option
def pull(port, out, baud, overwrite):
    """Copy the trained weights (weights.bin) from the board's filesystem."""
    from ..board import read_board_file
    from ..errors import MissingFile

    refuse_existing((out,), overwrite, "the weights would replace a file", "name another --out, or --overwrite to replace it")
    try:
        data = read_board_file(port or find_port(), baud, chip.WEIGHTS)
    except MissingFile as e:
        raise click.ClickException(f"{e}: train first with `microgpt device run`") from None
    shape, _ = chip.read_weights(data, f"{chip.WEIGHTS} on the board")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)
    click.echo(f"{out}: {shape.n_params:,} float32 weights ({shape})")


@device.command("sample")
@port_option
@sampling_options
@baud_option
def device_sample(port, count, seed, temperature, prefix, baud):
    """Sample names on the board from the weights its last run left there (no training): the
    names `microgpt sample` gives on the host from the same weights, seed, temperature and prefix."""
    from ..board import NAME_S, board_names, board_weights
    from ..rawrepl import RawRepl

    check_prefix(prefix)
    repl = RawRepl(port or find_port(), baud)
    try:
        with repl.within(f"sampling {count} names", count * NAME_S):
            check_prefix(prefix, board_weights(repl))
            for i, name in enumerate(board_names(repl, count, seed, temperature, prefix)):
                click.echo(f"{i + 1:2d} {name}")
    finally:
        repl.close()
