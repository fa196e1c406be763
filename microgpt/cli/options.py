"""What several commands share: the options that define a training run, and running an engine
into a report."""
import functools
import time
from pathlib import Path

import click

from .. import chip, dataset, payload
from ..errors import MicrogptError
from ..runner import run
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
                  help="The model's arithmetic: c (a native module, ~170x fewer instructions per step on the chip) "
                       "or python; auto is c wherever it is built for the target (the ESP32 and the x64 VM).")
    @functools.wraps(f)
    def wrapper(steps, data, init, seed, samples, log_every, ckpt_every, emit, kernels, **kwargs):
        cfg = payload.RunConfig(steps=steps, seed=seed, init=init, samples=samples, log_every=log_every,
                                ckpt_every=ckpt_every, emit=emit, kernels=kernels)
        return f(cfg=cfg, docs=dataset.load_names(data), **kwargs)

    return wrapper


def report_path(report: Path | None, engine: str) -> Path:
    """--report, or runs/<engine>-<time>/report.json."""
    return report or Path("runs") / f"{engine}-{time.strftime('%Y%m%d-%H%M%S')}" / "report.json"


def run_to_report(engine, cfg: payload.RunConfig, report: Path, quiet: bool) -> None:
    """Run `engine` with the UART logged beside `report`, read the trained weights back, write
    the report and say how it went; a failed run exits non-zero."""
    report.parent.mkdir(parents=True, exist_ok=True)
    result = run(engine, report.with_suffix(".uart.log"), display=None if quiet else Terminal(),
                 expect_steps=cfg.steps, keep_weights=report.with_name(chip.WEIGHTS))
    result.write(report)
    _summary(result, report)


def _summary(result, report_path):
    losses = [x for x in result.losses if x is not None]
    if result.status == "ok":
        tail = losses[-100:]
        curve = f"loss {losses[0]:.4f} -> mean of last {len(tail)} {sum(tail) / len(tail):.4f}, " if tail else ""
        click.echo(f"ok: {result.steps} steps, {curve}{result.ms_per_step or 0:.2f} ms/step, "
                   f"peak heap {result.peak_heap_bytes:,} B")
        if result.samples:
            click.echo("samples: " + " ".join(result.samples))
    click.echo(f"report: {report_path}  (UART log: {result.uart_log})")
    if result.status != "ok":
        raise click.ClickException(f"run failed: {result.error}")
