"""The run's report: what the parser read (a uart.RunState), the reason a run failed in words a
user can act on, and where its files are; built once, written as JSON with its loss curve as a
PNG beside it.

The JSON is strict (no NaN/Infinity, which most JSON readers reject): a loss or timing that
is not a finite number, e.g. a diverged run's `nan`, is written as null, like a step whose
record the UART lost.
"""
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np

from . import planner
from .chip import DEFAULT, Shape
from .fileio import write_atomic
from .uart import RunState, UartParser

LOSS_WINDOW = 100  # steps the loss is averaged over: one name's loss says little


def loss_window(steps: int) -> int:
    """The window of the summary, the plot's moving average and the progress line alike: the
    last 100 steps, or all of a shorter run."""
    return max(1, min(LOSS_WINDOW, steps))


def loss_mean(losses: list) -> tuple[float | None, int]:
    """(mean of the known losses in the last window, the window)."""
    window = loss_window(len(losses))
    known = [x for x in losses[-window:] if x is not None and math.isfinite(x)]
    return (sum(known) / len(known) if known else None), window


@dataclasses.dataclass(frozen=True)
class Report:
    """report.json: one run, whatever the engine (the chip's records: docs/uart-protocol.md)."""
    engine: str
    error: str | None              # why it failed, and what to do; None when it succeeded
    interrupted: str | None        # the signal that ended it (SIGINT, SIGTERM, SIGHUP), if one did
    run: RunState
    uart_log: str | None
    weights: str | None = None     # the trained weights, read back from the target
    loss_curve: str | None = None  # the PNG beside the JSON
    resume_step: int | None = None  # a cut run's: the step of the checkpoint on the target, where --resume goes on

    @property
    def status(self) -> str:
        return "error" if self.error else "ok"

    def to_json(self) -> dict:
        """The flat record report.json holds."""
        run, end, cfg, val = self.run, self.run.end or {}, self.run.config, self.run.val or {}
        mean, window = loss_mean(run.losses)
        # The model's shape: a start record without one came from a trainer of microgpt.py's only.
        shape = cfg.get("shape", DEFAULT if cfg else None)
        shape = None if shape is None else dataclasses.asdict(shape)
        return _finite({
            "engine": self.engine, "status": self.status, "error": self.error, "interrupted": self.interrupted,
            "steps": run.steps, "params": cfg.get("params"), "shape": shape, "losses": run.losses,
            "samples": run.samples,
            "loss_mean": mean, "loss_window": window, "val_loss": val.get("loss"), "val_names": val.get("names"),
            "ms_per_step": run.ms_per_step, "peak_heap_bytes": end.get("peak_heap", run.step_heap),
            "peak_src": "end" if end else "step" if run.step_heap is not None else None,
            "heap_total": end.get("heap_total", cfg.get("heap_total")), "platform": cfg.get("platform"),
            "emit": cfg.get("emit"), "kernels": cfg.get("kernels"), "freq_mhz": cfg.get("freq_mhz"),
            "ms_train": end.get("ms_train"), "alloc_per_step": end.get("alloc_per_step"),
            "config": cfg | ({"shape": shape} if "shape" in cfg else {}), "boots": run.boots, "resumed_from": run.resumed_from,
            "checkpoints": run.checkpoints, "checkpoints_rejected": run.checkpoints_rejected,
            "bad_records": run.bad_records, "uart_log": self.uart_log, "weights": self.weights,
            "loss_curve": self.loss_curve, "resume_step": self.resume_step,
        })

    def write(self, json_path) -> None:
        write_atomic(Path(json_path), (json.dumps(self.to_json(), indent=2) + "\n").encode())


def from_log(lines, engine: str = "log", uart_log=None) -> Report:
    """The report of a whole log (an iterable of raw lines, e.g. an open binary file)."""
    parser = UartParser()
    for line in lines:
        parser.feed(line)
    run = parser.state()
    return Report(engine, diagnose(run, uart_log), None, run, None if uart_log is None else str(uart_log))


def diagnose(run: RunState, uart_log=None, engine_error: str | None = None) -> str | None:
    """Why the run failed, in words a user can act on, with what the engine saw; None if it succeeded."""
    if run.end is not None and not run.stale:
        return None
    return _failure(run, uart_log, engine_error)


def _failure(run, uart_log, engine_error):
    """Why the run failed, most specific reason first, with what the engine saw."""
    if run.stale:
        reason = (f"the chip runs a {run.config['steps']}-step configuration but {run.expect_steps} steps"
                  " were asked: its image or filesystem is stale (rebuild with `microgpt build`, flash again)")
    elif run.error is not None:
        tb = [t for t in run.traceback if t and t != run.error and not t.startswith("Traceback")]
        reason = run.error or "the trainer failed without a message"
        if tb:
            reason += f" (traceback: {'; '.join(tb)})"
        if run.error.startswith("MemoryError"):
            reason += _memory_advice(run, tb)
    elif run.reset_loop:
        reason = (f"reset loop: the chip rebooted {run.boots_without_progress} times without progress (a brownout or"
                  " watchdog is typical: check the USB cable and power supply, and the ROM's rst: reason in the UART log)")
    elif not run.config:
        reason = "the trainer never started: no MGPT start line"
        if not engine_error:
            engine_error = ("check that the image holds the trainer and the firmware boots"
                            f" (rebuild it with `microgpt build`; UART log: {uart_log})")
    else:
        reason = f"the run stopped after step {run.steps} of {run.config['steps']}: no MGPT end line"
    return f"{reason} — {engine_error}" if engine_error else reason


def _memory_advice(run, tb) -> str:
    """What ran out, in the terms the user can change."""
    if tb and tb[-1].endswith("in <module>"):  # at an import, before the trainer started
        return (": the trainer's modules did not fit while loading; if it was built with `--emit native`,"
                " build with `--emit bytecode` (native code needs the chip's small executable RAM)")
    heap = run.config.get("heap_total")
    need = _heap_needed(run.config)
    if heap is None or heap < need:
        return (f": the trainer needs a GC heap of about {need:,} bytes (`microgpt plan`'s estimate for its shape"
                " and kernels)" + (f" and this one has {heap:,} bytes" if heap else "") + "; in the VM raise --heap, on"
                " a board use ESP32_GENERIC (167 KB) and keep boot.py light")
    return (f": the chip's heap ({heap:,} bytes) holds what the trainer needs (about {need:,}), so something else"
            " took it: a boot.py that keeps objects alive, or a heap fragmented by many small allocations; reset"
            " the board and run again, and report the UART log if it persists")


def _heap_needed(config: dict) -> int:
    """The planner's heap for the run's shape, kernels and platform as its start record names them;
    before a start record, the default run's on the chip."""
    shape = config.get("shape") if isinstance(config.get("shape"), Shape) else DEFAULT
    kernels = config.get("kernels") if config.get("kernels") in planner.KERNELS else "c"
    platform = planner.ESP32 if config.get("platform") in (None, "esp32") else planner.VM
    log_every = config.get("log_every")  # the chip's buffer of losses; payload.build keeps it within steps
    if not (isinstance(log_every, int) and 0 < log_every <= config.get("steps", 0)):  # no start yet, or garbled
        log_every = planner.MEASURED_LOG_EVERY
    return planner.plan(shape, kernels, log_every, platform).heap_needed


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def plot_losses(losses: list, title: str, val_loss: float | None = None) -> bytes | None:
    """The loss curve as PNG bytes: each step's loss and its trailing mean, and the held-out loss
    after training as a line across; None with no losses."""
    loss = np.array([math.nan if x is None else float(x) for x in losses])
    loss[~np.isfinite(loss)] = np.nan
    if not np.isfinite(loss).any():
        return None
    # Imported here: matplotlib costs half a second, and most commands never plot.
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    window = loss_window(len(loss))
    steps = np.arange(1, len(loss) + 1)
    fig = Figure(figsize=(8, 4.5), dpi=100, layout="tight")
    ax = fig.add_subplot()
    few = len(loss) <= 20  # a handful of steps: mark each, or a single one would not show at all
    ax.plot(steps, loss, lw=0.8, alpha=0.45, color="tab:blue", marker="o" if few else None, label="loss per step")
    ax.plot(steps, _moving_average(loss, window), lw=2, color="tab:orange", marker="." if few else None,
            label=f"mean of last {window} steps")
    if val_loss is not None and math.isfinite(val_loss):
        ax.axhline(val_loss, lw=1.5, ls="--", color="tab:green", label=f"held-out loss after training {val_loss:.4f}")
    ax.set(xlabel="step", ylabel="loss", title=title)
    if len(loss) == 1:
        ax.set_xlim(0.5, 1.5)
    ax.grid(alpha=0.3)
    ax.legend()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _moving_average(x, window):
    """Trailing mean over up to `window` steps, skipping NaNs (steps whose loss is unknown)."""
    known = np.isfinite(x)
    sums = np.concatenate([[0.0], np.cumsum(np.where(known, x, 0.0))])
    counts = np.concatenate([[0], np.cumsum(known)])
    end = np.arange(1, len(x) + 1)
    start = np.maximum(end - window, 0)
    n = counts[end] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[end] - sums[start]) / n, np.nan)
