"""What several commands share: the options that define a training run, and running an engine
into a report."""
import contextlib
import functools
import signal
import tempfile
import time
from pathlib import Path

import click

from .. import chip, dataset, payload
from ..errors import MicrogptError, OutputError
from ..report import loss_window
from ..runner import INTERRUPTED, run
from .progress import Terminal

BUILD_IMAGE = Path("build/flash.bin")


class Group(click.Group):
    """A command group whose commands' library errors exit with their message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MicrogptError as e:
            raise click.ClickException(str(e)) from None


def run_options(f):
    """The options that define a training run, shared by build, sim run and device run;
    they reach the command as `cfg` (a payload.RunConfig) and `docs` (the names)."""

    @click.option("--steps", type=click.IntRange(1, 1_000_000), default=1000, show_default=True, help="Training steps.")
    @click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Names file, one a-z name per line [default: makemore's names.txt, downloaded once].")
    @click.option("--init", type=click.Choice(["microgpt", "device"]), default="microgpt", show_default=True,
                  help="microgpt: the host makes microgpt.py's initial weights and ships them; device: drawn on the chip.")
    @click.option("--seed", type=int, default=42, show_default=True, help="Seed of the data order, the weights and sampling.")
    @click.option("--samples", type=click.IntRange(min=0), default=20, show_default=True, help="Names to sample after training.")
    @click.option("--log-every", type=click.IntRange(min=1), default=1, show_default=True, help="Steps per UART step record.")
    @click.option("--ckpt-every", type=click.IntRange(min=0), default=0, show_default=True,
                  help="Checkpoint to flash every N steps, so a reset resumes the run (0: never).")
    @click.option("--emit", type=click.Choice(payload.EMITS), default="auto", show_default=True,
                  help="How mpy-cross compiles the trainer's MicroPython loops: auto is native in the VM, bytecode on the ESP32 (little executable RAM).")
    @click.option("--kernels", type=click.Choice(payload.KERNELS), default="auto", show_default=True,
                  help="The model's arithmetic: c (a native module, ~130x fewer instructions per step on the chip) "
                       "or python; auto is c wherever it is built for the target (the ESP32 and the x64 VM).")
    @functools.wraps(f)
    def wrapper(steps, data, init, seed, samples, log_every, ckpt_every, emit, kernels, **kwargs):
        cfg = payload.RunConfig(steps=steps, seed=seed, init=init, samples=samples, log_every=log_every,
                                ckpt_every=ckpt_every, emit=emit, kernels=kernels)
        return f(cfg=cfg, docs=dataset.load_names(data), **kwargs)

    return wrapper


timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
    help="Seconds without UART output (or raw REPL answer) before the chip is declared dead.")


@contextlib.contextmanager
def run_dir(report: Path | None, engine: str):
    """The report's path: --report (which must end in .json: the UART log, loss curve and
    weights go beside it), or report.json in a new directory runs/<engine>-<time>[-N]. A run
    that fails before it starts leaves no empty directory behind."""
    if report is not None:
        if report.suffix != ".json":
            raise OutputError(f"{report}: the report is JSON, and its UART log, loss curve and weights go beside it: "
                              "name the report .json")
        made = not report.parent.exists()
    else:
        stamp, n = f"{engine}-{time.strftime('%Y%m%d-%H%M%S')}", 1
        while True:  # mkdir is atomic: two runs started in the same second get two directories
            directory = Path("runs") / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                directory.mkdir(parents=True)
                break
            except FileExistsError:
                n += 1
            except OSError as e:
                raise OutputError(f"cannot make the run directory {directory}: {e.strerror}; run where you can "
                                  "write, or name a report with --report DIR/report.json") from None
        report, made = directory / "report.json", True
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=report.parent):
            pass  # a read-only or full directory is refused now, not after the run
    except OSError as e:
        raise OutputError(f"cannot write into {report.parent}: {e.strerror}; name another --report") from None
    try:
        yield report
    except BaseException:
        if made and report.parent.is_dir() and not any(report.parent.iterdir()):
            report.parent.rmdir()
        raise


def run_to_report(engine, cfg: payload.RunConfig, report: Path, quiet: bool) -> None:
    """Run `engine` with the UART logged beside `report`, read the trained weights back, write
    the report and say how it went; a failed run exits non-zero and leaves no weights."""
    weights = report.with_name(chip.WEIGHTS)
    weights.unlink(missing_ok=True)  # an earlier run's weights must not pass for this one's
    stop = signal.signal(signal.SIGTERM, _interrupt)  # a killed run still writes its report
    try:
        result = run(engine, report.with_suffix(".uart.log"), display=None if quiet else Terminal(),
                     expect_steps=cfg.steps, keep_weights=weights)
    finally:
        signal.signal(signal.SIGTERM, stop)
    result.write(report)
    if result.error and result.error.endswith(INTERRUPTED):
        click.echo(f"interrupted: report {report} (UART log: {result.uart_log})", err=True)
        raise SystemExit(130)  # as a shell reports a Ctrl-C
    _summary(result, report)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _summary(result, report_path):
    losses = [x for x in result.losses if x is not None]
    if result.status == "ok":
        tail = losses[-loss_window(len(result.losses)):]
        curve = f"loss {losses[0]:.4f} -> mean of last {len(tail)} {sum(tail) / len(tail):.4f}, " if tail else ""
        click.echo(f"ok: {result.steps} steps, {curve}{result.ms_per_step or 0:.2f} ms/step, "
                   f"peak heap {result.peak_heap_bytes:,} B")
        if result.samples:
            click.echo("samples: " + " ".join(result.samples))
    click.echo(f"report: {report_path}  (UART log: {result.uart_log})")
    if result.status != "ok":
        raise click.ClickException(f"run failed: {result.error}")
