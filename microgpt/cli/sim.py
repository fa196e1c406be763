"""`microgpt sim`: the trainer without a board, in the MicroPython VM, QEMU or Wokwi (`sim run`),
Espressif's QEMU as a board on a serial port for the board commands (`sim board`), and that QEMU
installed into the tool's cache (`sim install-qemu`)."""
import signal
from pathlib import Path

import click

from .. import chip
from ..engines.host import MAX_HEAP, MIN_HEAP
from ..run import Interrupted, RunDir, interruptible
from .options import Group, launch, refuse_others, report_options, resume_dir, run_options

# The engine options of `sim run`: each engine takes its own (Engine.OPTIONS) and refuses the others'.
ENGINE_OPTIONS = ("heap", "micropython", "qemu", "image", "firmware")


def _engine_class(name: str):
    if name == "host":
        from ..engines.host import HostEngine as engine
    elif name == "qemu":
        from ..engines.qemu import QemuEngine as engine
    else:
        from ..engines.wokwi import WokwiEngine as engine
    return engine


@click.group(cls=Group)
def sim():
    """Run the trainer without a board."""


@sim.command("run")
@click.option("--engine", type=click.Choice(["host", "qemu", "wokwi"]), default="host", show_default=True,
              help="host: the MicroPython VM; qemu: Espressif's QEMU; wokwi: the Wokwi simulator (needs WOKWI_CLI_TOKEN).")
@run_options
@click.option("--heap", type=click.IntRange(MIN_HEAP, MAX_HEAP), default=chip.ESP32_HEAP, show_default=True,
              help="GC heap of the VM in bytes (host engine); the default is ESP32_GENERIC's.")
@click.option("--micropython", default=None, help="MicroPython VM executable (host engine).")
@click.option("--qemu", default=None, help="qemu-system-xtensa executable (qemu engine).")
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from this whole-flash image (e.g. build/flash.bin) instead of a new board: its firmware, and "
                   "its filesystem with the run's trainer and files written over it (never the file itself).")
@click.option("--firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="MicroPython firmware to build the run's flash on (qemu, wokwi) [default: the pinned official v1.25.0, "
                   "downloaded once].")
@report_options("<engine>")
@click.pass_context
def sim_run(ctx, engine, options, data, heap, micropython, qemu, image, firmware, report, overwrite, resume, silence,
            quiet):
    """Train in the MicroPython VM, QEMU or Wokwi; write a JSON report, loss curve, UART log and weights."""
    if resume:
        rundir = resume_dir(ctx, resume, "engine")
        with rundir.claim(resume=True):
            record = rundir.record()
            if record["engine"] not in ("host", "qemu"):
                raise click.UsageError(f"{rundir.report} ran on {record['engine']}, which keeps no flash between runs"
                                       + (": continue it with `microgpt device run --resume`"
                                          if record["engine"] == "serial" else ""))
            cls = _engine_class(record["engine"])
            refuse_others(ctx, f"the resumed {record['engine']} run", (), ENGINE_OPTIONS)
            launch(cls(rundir.work, silence_s=silence, **record["settings"]), rundir, None, None, quiet)
        return
    cls = _engine_class(engine)
    refuse_others(ctx, f"the {engine} engine", cls.OPTIONS, ENGINE_OPTIONS)
    given = {"heap": heap, "micropython": micropython, "qemu": qemu, "image": image, "firmware": firmware}
    settings = {name: given[name] for name in cls.OPTIONS}
    rundir = RunDir(report) if report else RunDir.new(engine)
    with rundir.claim(overwrite=overwrite):
        launch(cls(rundir.work, silence_s=silence, **settings), rundir, options, data, quiet)


@sim.command("board")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Start the new board from this flash: a whole-flash image (e.g. build/flash.bin) as it is, its "
                   "filesystem and all; a firmware .bin gets an empty filesystem.")
@click.option("--firmware", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The new board's MicroPython firmware .bin (e.g. one downloaded from micropython.org), with an empty "
                   "filesystem, as a new board comes [default: the pinned official v1.25.0, downloaded once].")
@click.option("--flash", type=click.Path(dir_okay=False, path_type=Path), default=Path("board.bin"), show_default=True,
              help="The board's flash, kept in this file: the same file again is a power cycle.")
@click.option("--new", is_flag=True, help="Start a new board even if --flash holds one (its contents are lost).")
@click.option("--qemu", default=None, help="qemu-system-xtensa executable [default: $QEMU_XTENSA, PATH].")
@click.option("--tcp", type=click.IntRange(1, 65535), default=None,
              help="Offer UART0 on this TCP port (socket://127.0.0.1:PORT) instead of a pseudo-terminal.")
def board(image, firmware, flash, new, qemu, tcp):
    """A virtual ESP32: Espressif's QEMU running MicroPython, with UART0 on a serial port for
    `microgpt device run/pull`, mpremote or a terminal. Runs until Ctrl-C."""
    from ..basefw import FirmwareBase
    from ..engines.qemu import VirtualBoard, find_qemu

    find_qemu(qemu)  # the tool first: no flash is made for a board that cannot start
    given = image or firmware
    if flash.exists() and not new:
        if given is not None:
            raise click.UsageError(f"{flash} holds a board already: drop --{'image' if image else 'firmware'} to "
                                   "power it up again, or pass --new to replace it")
        made, what = None, "powered up again"
    else:
        made = VirtualBoard.new_flash(FirmwareBase(image, firmware))
        what = f"new, from {given}" if given else "new: MicroPython v1.25.0 with an empty filesystem"
    virtual = VirtualBoard(flash, qemu=qemu, tcp=tcp, new=made)
    ended_by = None
    try:  # from the start: a signal at any moment powers the board off cleanly
        with interruptible():
            port = virtual.start()
            click.echo(f"virtual ESP32 (Espressif's QEMU) on {port}\n"
                       f"  flash: {flash.resolve()} ({what}; kept: start it again with the same --flash for a power "
                       f"cycle)\n  try:   microgpt device run --mode upload --port {port} --steps 100\n"
                       "Ctrl-C powers it off.")
            virtual.wait()  # raises when QEMU ends by itself
    except (KeyboardInterrupt, Interrupted) as e:
        ended_by = getattr(e, "signum", signal.SIGINT)
    finally:
        virtual.stop()
    if ended_by != signal.SIGINT:  # a supervisor's SIGTERM, a closed terminal's SIGHUP
        click.echo(f"virtual ESP32 powered off ({signal.Signals(ended_by).name})", err=True)
        raise SystemExit(128 + ended_by)  # as a shell reports it


@sim.command("install-qemu")
@click.option("--archive", default=None, metavar="PATH_OR_URL",
              help="Install this archive instead of Espressif's release for this host (a mirror, an air-gapped lab, "
                   "a newer release); the release's layout: qemu/bin/qemu-system-xtensa. Needs --sha256.")
@click.option("--sha256", default=None, metavar="HEX", help="The sha256 of the --archive.")
def install_qemu(archive, sha256):
    """Install Espressif's QEMU (the emulated ESP32) into the tool's cache, where `sim run --engine qemu`
    and `sim board` find it. A second call only checks the install."""
    from .. import qemu_install

    if (archive is None) != (sha256 is None):
        raise click.UsageError("--archive and --sha256 go together: the archive is checked against the hash before "
                               "it is unpacked")
    chosen = qemu_install.given_archive(archive, sha256) if archive else qemu_install.pinned_archive()
    binary, version = qemu_install.install(chosen, _DownloadProgress())
    click.echo(f"Espressif's QEMU: {binary} ({version})\n"
               "  try: microgpt sim run --engine qemu --steps 100")


class _DownloadProgress:
    """The download's progress on stderr, every tenth of it."""

    def __init__(self):
        self.tenth = -1

    def __call__(self, received: int, total: int | None) -> None:
        tenth = received * 10 // total if total else -1
        if tenth > self.tenth:
            self.tenth = tenth
            click.echo(f"  {received / 1e6:.1f} of {total / 1e6:.1f} MB", err=True)
