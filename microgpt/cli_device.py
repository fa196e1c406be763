"""`microgpt device`: a real ESP32 on USB. Flash the image, train on the board, pull the weights."""
import time
from pathlib import Path

import click

from .cli import BUILD_IMAGE, _summary, run_options
from .engines import EngineError
from .ports import FLASH_BAUD, UART_BAUD, find_port
from .reference import N_PARAMS

port_option = click.option("--port", default=None,
                           help="The board's serial port [default: the one Espressif/USB-serial port plugged in].")


def _port(port: str | None) -> str:
    try:
        return port or find_port()
    except EngineError as e:
        raise click.ClickException(str(e)) from None


@click.group()
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
    from .flash import flash_image

    flash_image(_port(port), image, baud=baud, fs_only=fs_only)


@device.command("run")
@port_option
@click.option("--mode", type=click.Choice(["flash", "upload"]), default="flash", show_default=True,
              help="flash: write the image, then capture the boot; upload: the board runs MicroPython already, "
                   "copy the trainer and the run over the raw REPL and start it.")
@run_options
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=BUILD_IMAGE, show_default=True,
              help="Flash image (mode flash); built, or rebuilt when stale, first.")
@click.option("--firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Base firmware when the image must be built.")
@click.option("--baud", type=int, default=UART_BAUD, show_default=True, help="Baud rate of the board's UART.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Report JSON [default: runs/serial-<time>/report.json]; the UART log, loss curve and weights go beside it.")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds without UART output (or raw REPL answer) before the board is declared dead.")
@click.option("--quiet", is_flag=True, help="No UART echo or progress.")
def device_run(port, mode, cfg, docs, image, firmware, baud, report, timeout, quiet):
    """Train on the board; write a JSON report, loss curve, UART log and the trained weights."""
    from . import build as builder
    from . import payload
    from .engines.serial import SerialEngine
    from .report import write_report
    from .runner import run

    port = _port(port)
    report = report or Path("runs") / f"serial-{time.strftime('%Y%m%d-%H%M%S')}" / "report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    if mode == "flash":
        engine = SerialEngine(port, mode="flash", image=builder.fresh_image(cfg, docs, image, firmware),
                              baud=baud, silence_s=timeout)
    else:
        engine = SerialEngine(port, mode="upload", files=lambda target: payload.chip_files(cfg, docs, target),
                              baud=baud, silence_s=timeout)
    result = run(engine, report.with_suffix(".uart.log"), echo=not quiet, expect_steps=cfg.steps)
    if result["status"] == "ok":
        result["weights"] = str(_pull(port, baud, report.with_name("weights.bin")))
    write_report(result, report)
    _summary(result, report)


@device.command()
@port_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("weights.bin"), show_default=True)
@click.option("--baud", type=int, default=UART_BAUD, show_default=True, help="Baud rate of the board's UART.")
def pull(port, out, baud):
    """Copy the trained weights (weights.bin) from the board's filesystem."""
    out = _pull(_port(port), baud, out)
    click.echo(f"{out}: {N_PARAMS:,} float32 weights")


def _pull(port: str, baud: int, out: Path) -> Path:
    from .engines.serial import WEIGHTS
    from .rawrepl import MissingFile, RawRepl

    try:
        repl = RawRepl(port, baud)
        try:
            data = repl.read_file(WEIGHTS)
        finally:
            repl.close()
    except MissingFile as e:
        raise click.ClickException(f"{e}: train first with `microgpt device run`") from None
    except EngineError as e:
        raise click.ClickException(str(e)) from None
    if len(data) != N_PARAMS * 4:
        raise click.ClickException(f"{WEIGHTS} on the board is {len(data):,} bytes, not {N_PARAMS * 4:,} "
                                   f"({N_PARAMS:,} float32): did the run finish? Train again with `microgpt device run`.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out
