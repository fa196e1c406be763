"""What several commands share: the options that define a training run, the options of a run's
report, checks that every option given is one the chosen engine takes, and running an engine
into a report."""
import functools
import logging
import math
import signal
from pathlib import Path

import click

from .. import chip, dataset, payload, planner, reference
from ..errors import MicrogptError
from ..fileio import output_error
from ..report import loss_mean
from ..run import Interrupted, RunDir, run
from .progress import Terminal

BUILD_IMAGE = Path("build/flash.bin")
RENAMED = {"--timeout": "--silence"}  # options given a new name: the old one's error names the new


class Group(click.Group):
    """A command group whose commands' library errors exit with their one-line message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as e:
            new = RENAMED.get(e.option_name)
            if new is None or e.ctx is None or not any(new in p.opts for p in e.ctx.command.params):
                raise
            raise click.NoSuchOption(e.option_name, f"No such option '{e.option_name}': it is {new} now",
                                     ctx=e.ctx) from None
        except MicrogptError as e:
            raise click.ClickException(str(e)) from None
        except Interrupted as e:  # before a run started (it has left nothing) or outside one
            click.echo(f"interrupted by {e}", err=True)
            raise SystemExit(128 + e.signum) from None  # as a shell reports it
        except OSError as e:
            if e.filename is None or e.errno is None:
                raise
            raise click.ClickException(str(output_error(e, e.filename))) from None


class FiniteFloat(click.ParamType):
    """A float that is a number (not nan or inf), within [low, high] when given; low open if asked."""
    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            self.fail(f"{value} is not {'>' if self.low_open else '>='} {self.low:g}", param, ctx)
        if self.high is not None and number > self.high:
            self.fail(f"{value} is not <= {self.high:g}", param, ctx)
        return number


class Knob(click.IntRange):
    """A knob of the model's shape: a whole number from 1 up to the most the chip's heap could
    hold (planner.most), so an absurd shape is refused before anything is computed for it."""
    name = "integer"

    def __init__(self, knob: str):
        super().__init__(min=1)
        self.knob = knob

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number > (most := planner.most(self.knob)):
            self.fail(f"{number:,} is more than {most:,}: even the smallest model with {self.knob} {number:,} "
                      f"needs more than the ESP32's {chip.ESP32_HEAP:,} B heap for its weights, gradient and "
                      "Adam's m and v", param, ctx)
        return number


class Temperature(FiniteFloat):
    """A sampling temperature the chip's float32 sampler can take (reference.check_temperature)."""

    def convert(self, value, param, ctx):
        try:
            return reference.check_temperature(super().convert(value, param, ctx))
        except MicrogptError as e:
            self.fail(str(e), param, ctx)


def given(ctx: click.Context, name: str) -> bool:
    """Did the user give option `name` (not its default)?"""
    source = ctx.get_parameter_source(name)
    return source is not None and source not in (click.core.ParameterSource.DEFAULT,
                                                 click.core.ParameterSource.DEFAULT_MAP)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def refuse_others(ctx: click.Context, who: str, takes: tuple[str, ...], candidates: tuple[str, ...]) -> None:
    """Every option in `candidates` that was given must be one `who` takes: none is silently dropped."""
    for name in candidates:
        if given(ctx, name) and name not in takes:
            accepted = ", ".join(flag(n) for n in takes) or "none of these"
            raise click.UsageError(f"{flag(name)} does not apply to {who} (it takes {accepted}): drop it")


def shape_options(f):
    """microgpt.py's four knobs, as --n-embd, --n-head, --n-layer, --block-size (defaults: its own)."""
    for knob, help in reversed([
            ("n_embd", "Embedding width (microgpt.py's n_embd; a multiple of --n-head)."),
            ("n_head", "Attention heads (microgpt.py's n_head)."),
            ("n_layer", "Transformer layers (microgpt.py's n_layer)."),
            ("block_size", "Context length: the letters of a name the model reads (microgpt.py's block_size).")]):
        f = click.option(flag(knob), type=Knob(knob), default=getattr(chip.DEFAULT, knob),
                         show_default=True, help=help)(f)
    return f


def sampling_options(f):
    """--count, --seed, --temperature, --prefix: how names are drawn from trained weights."""
    for option in reversed([
            click.option("--count", type=click.IntRange(min=1), default=20, show_default=True, help="Names to sample."),
            click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=42, show_default=True,
                         help="Seed of the draws: a run's --seed gives that run's samples."),
            click.option("--temperature", type=Temperature(), default=chip.TEMPERATURE,
                         show_default=True, help="Softmax temperature: lower is safer, higher more inventive."),
            click.option("--prefix", default="",
                         help="Letters every name begins with (a-z, fewer than the model's block size).")]):
        f = option(f)
    return f


RUN_OPTIONS = ("steps", "data", "init", "seed", "samples", "log_every", "ckpt_every", "emit", "kernels", "val",
               "lr") + chip.KNOBS


def run_options(f):
    """The options that define a training run, shared by build, sim run and device run; they
    reach the command as `options` (a payload.RunOptions) and `data` (the names file, or None)."""

    @click.option("--steps", type=click.IntRange(1, payload.MAX_STEPS), default=1000, show_default=True, help="Training steps.")
    @click.option("--data", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=None,
                  help="Names file, one a-z name per line ('-': standard input) [default: makemore's names.txt, "
                       "downloaded once].")
    @click.option("--init", type=click.Choice(payload.INITS), default="microgpt", show_default=True,
                  help="microgpt: the host makes microgpt.py's initial weights and ships them; device: drawn on the chip.")
    @click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=42, show_default=True,
                  help="Seed of the data order, the weights and sampling.")
    @click.option("--samples", type=click.IntRange(0, 10_000), default=20, show_default=True,
                  help="Names to sample after training.")
    @click.option("--log-every", type=click.IntRange(min=1), default=payload.LOG_EVERY, show_default=True,
                  help="Steps per UART step record (at most --steps); every step's loss arrives either way.")
    @click.option("--ckpt-every", type=click.IntRange(min=0), default=0, show_default=True,
                  help="Checkpoint to flash every N steps, so a reset resumes the run (0: never).")
    @click.option("--emit", type=click.Choice(payload.EMITS), default="auto", show_default=True,
                  help="How mpy-cross compiles the trainer's MicroPython loops: auto is native in the VM, bytecode "
                       "on the ESP32 (little executable RAM).")
    @click.option("--kernels", type=click.Choice(payload.KERNELS), default="auto", show_default=True,
                  help="The model's arithmetic: c (a native module, ~400x fewer instructions per step on the chip) "
                       "or python; auto is c wherever it is built for the target (the ESP32 and the x64 VM).")
    @click.option("--val", type=click.IntRange(min=0), default=payload.VAL, show_default=True,
                  help="Names held out of training (the last of the run's order); after training the chip reports "
                       "the mean loss per token on them (0: none).")
    @click.option("--lr", type=FiniteFloat(0, chip.MAX_LR, low_open=True), default=chip.LR, show_default=True,
                  help="Adam's learning rate at step 1 (microgpt.py's learning_rate), decaying linearly to 0 over "
                       "the run.")
    @shape_options
    @functools.wraps(f)
    def wrapper(steps, data, init, seed, samples, log_every, ckpt_every, emit, kernels, val, lr, n_embd, n_head,
                n_layer, block_size, **kwargs):
        options = payload.RunOptions(steps=steps, seed=seed, init=init, samples=samples,
                                     log_every=log_every, ckpt_every=ckpt_every, emit=emit, kernels=kernels,
                                     shape=chip.Shape(n_embd, n_head, n_layer, block_size), val=val, lr=lr)
        return f(options=options, data=data, **kwargs)

    return wrapper


def report_options(engine: str):
    """--report, --overwrite, --resume, --silence and --quiet: where a run writes, and how it is watched."""
    def decorate(f):
        for option in reversed([
            click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help=f"Report JSON [default: runs/{engine}-<time>/report.json]; the UART log, loss curve and "
                              "weights go beside it, named after it."),
            click.option("--overwrite", is_flag=True, help="Replace an earlier run's files at --report."),
            click.option("--resume", type=click.Path(exists=True, path_type=Path), default=None,
                         help="Continue a cut run (its directory or report) from its last checkpoint; takes no run "
                              "options: the run's own are kept."),
            click.option("--silence", type=FiniteFloat(0, 86_400, low_open=True), default=120.0, show_default=True,
                         help="Seconds without UART output (or an answer from the board) before the chip is "
                              "declared dead."),
            click.option("--quiet", is_flag=True, help="No UART echo or progress."),
        ]):
            f = option(f)
        return f
    return decorate


def resume_dir(ctx: click.Context, resume: Path, *also: str) -> RunDir:
    """The run to continue: --resume DIR (the cut run in it) or --resume REPORT.json; run options
    (and `also`) are its own."""
    for name in RUN_OPTIONS + ("report", "overwrite") + also:
        if given(ctx, name):
            raise click.UsageError(f"{flag(name)} does not go with --resume: a resumed run keeps its own options")
    return RunDir.cut_in(resume) if resume.is_dir() else RunDir(resume)


def launch(engine, rundir: RunDir, options, data, quiet: bool) -> None:
    """Run `engine` (a new run of `options` on the names in `data`, or with options None the
    run rundir holds, resumed), say how it went, and exit non-zero if it failed."""
    if quiet:
        logging.getLogger("microgpt").setLevel(logging.WARNING)  # no "copying ..." either
    docs = dataset.load_names(data) if options is not None else None
    if docs is not None:
        payload.check_val(options.val, len(docs))
    report = run(engine, rundir, options, docs, display=None if quiet else Terminal())
    state = report.run
    if not report.error:
        known = [x for x in state.losses if x is not None and math.isfinite(x)]
        mean, window = loss_mean(state.losses)
        curve = f"loss {known[0]:.4f} -> mean of last {window} {mean:.4f}, " if known and mean is not None else ""
        peak = report.to_json()["peak_heap_bytes"]
        click.echo(f"ok: {state.steps} steps, {curve}{state.ms_per_step or 0:.2f} ms/step"
                   + (f", peak heap {peak:,} B" if peak is not None else ""))
        if state.val:
            click.echo(f"held-out loss {state.val['loss']:.4f} ({state.val['names']:,} names never trained on)")
        if state.samples:
            click.echo("samples: " + " ".join(state.samples))
    click.echo(f"report: {rundir.report}  (UART log: {rundir.uart_log})", err=bool(report.error))
    if report.error and rundir.work.is_dir():
        where = rundir.report.parent if rundir.report.name == "report.json" else rundir.report
        if report.resume_step is not None:
            click.echo(f"its last checkpoint is step {report.resume_step}: continue it with --resume {where}", err=True)
        elif state.checkpoints:  # the target did not answer: the UART's last ckpt record is a lower bound
            click.echo(f"its checkpoint could not be read back; the last reported is step {state.checkpoints[-1]} "
                       f"(the chip may hold a later one): once it answers, continue it with --resume {where}",
                       err=True)
    if report.interrupted:
        click.echo(f"interrupted by {report.interrupted}", err=True)
        raise SystemExit(128 + getattr(signal, report.interrupted, signal.SIGINT))  # as a shell reports it
    if report.error:
        raise click.ClickException(f"run failed: {report.error}")
