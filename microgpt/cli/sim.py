"""`microgpt sim run`: the trainer without a board, in the MicroPython VM, QEMU or Wokwi."""
from pathlib import Path

import click

from .. import build as builder
from .. import chip, payload
from .options import BUILD_IMAGE, Group, run_dir, run_options, run_to_report, timeout_option


@click.group(cls=Group)
def sim():
    """Run the trainer without a board."""


@sim.command("run")
@click.option("--engine", type=click.Choice(["host", "qemu", "wokwi"]), default="host", show_default=True,
              help="host: the MicroPython VM; qemu: Espressif's QEMU; wokwi: the Wokwi simulator (needs WOKWI_CLI_TOKEN).")
@run_options
@click.option("--heap", type=click.IntRange(min=16384), default=chip.ESP32_HEAP, show_default=True,
              help="GC heap of the VM in bytes (host engine); the default is ESP32_GENERIC's.")
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Flash image to run as it is (its copy in the run directory gets this run's options) [default: "
                   "build/flash.bin for qemu and wokwi, built or rebuilt when stale; the run's files for host].")
@click.option("--firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Base firmware when the image must be built.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Report JSON [default: runs/<engine>-<time>/report.json]; the UART log, loss curve and weights go beside it.")
@timeout_option
@click.option("--micropython", default=None, help="MicroPython VM executable (host engine).")
@click.option("--qemu", default=None, help="qemu-system-xtensa executable (qemu engine).")
@click.option("--quiet", is_flag=True, help="No UART echo or progress.")
def sim_run(engine, cfg, docs, heap, image, firmware, report, timeout, micropython, qemu, quiet):
    """Train in the MicroPython VM, QEMU or Wokwi; write a JSON report, loss curve and UART log."""
    with run_dir(report, engine) as report:
        make = ENGINES[engine]
        eng = make(cfg, docs, image, firmware, report.parent, timeout, heap=heap, micropython=micropython, qemu=qemu)
        run_to_report(eng, cfg, report, quiet)


def _flash(cfg, docs, image, firmware, workdir):
    """The image a simulator runs: a copy of --image holding this run's files, or build/flash.bin
    (the tool's own), built or rebuilt when stale."""
    if image is None:
        return builder.fresh_image(cfg, docs, BUILD_IMAGE, firmware)
    return builder.run_copy(image, cfg, docs, workdir / "run-image.bin")


# One factory per engine: what it runs and its own options; each keeps its flash in the run directory.
def _host(cfg, docs, image, firmware, workdir, timeout, *, heap, micropython, **_):
    from ..engines.host import HostEngine

    if image is None:
        files = lambda target: payload.chip_files(cfg, docs, target)  # noqa: E731
    else:
        flash = builder.run_copy(image, cfg, docs, workdir / "run-image.bin")
        files = lambda target: builder.image_files(flash, target, cfg.emit)  # noqa: E731
    return HostEngine(files, heap=heap, micropython=micropython, silence_s=timeout, workdir=workdir)


def _qemu(cfg, docs, image, firmware, workdir, timeout, *, qemu, **_):
    from ..engines.qemu import QemuEngine

    return QemuEngine(_flash(cfg, docs, image, firmware, workdir), qemu=qemu, silence_s=timeout, workdir=workdir)


def _wokwi(cfg, docs, image, firmware, workdir, timeout, **_):
    from ..engines.wokwi import WokwiEngine

    # wokwi.toml names the image Wokwi simulates, so --image runs as it is, without a copy.
    return WokwiEngine(image or builder.fresh_image(cfg, docs, BUILD_IMAGE, firmware), silence_s=timeout)


ENGINES = {"host": _host, "qemu": _qemu, "wokwi": _wokwi}
