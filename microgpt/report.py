"""The run's report: built once from what the parser read (Report.of), with the reason a run
failed in words a user can act on, and written as JSON with its loss curve as a PNG beside it.

The JSON is strict (no NaN/Infinity, which most JSON readers reject): a loss or timing that
is not a finite number, e.g. a diverged run's `nan`, is written as null, like a step whose
record the UART lost.
"""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from .errors import OutputError
from .fileio import write_atomic


# The smallest VM heap, in bytes, that trains 1,000 steps and samples 20 names, by kernels
# (`scripts/bench.py --min-heap`: C kernels with native loops, MicroPython kernels as bytecode).
MIN_HEAP = {"c": 94_142, "python": 104_968}


def loss_window(steps: int) -> int:
    """How many trailing steps the loss is averaged over, for the plot, the summary and the
    progress line alike: one step's loss on one name says little."""
    return max(1, min(50, steps // 10))


@dataclasses.dataclass
class Report:
    """report.json: one run, whatever the engine (fields of the chip's records: docs/uart-protocol.md)."""
    engine: str
    status: str                   # "ok" or "error"
    error: str | None             # why it failed, and what to do
    steps: int
    params: int | None
    losses: list                  # per step; None where the UART lost the record
    samples: list
    ms_per_step: float | None     # measured on the chip
    peak_heap_bytes: int | None
    uart_log: str | None
    config: dict                  # the start record's fields
    boots: int
    resumed_from: int | None
    checkpoints: list
    checkpoints_rejected: list
    lr_final: float | None
    heap_total: int | None
    platform: str | None
    emit: str | None
    kernels: str | None
    freq_mhz: int | None
    ms_train: float | None
    peak_src: str | None          # "end" (the end record) or "step" (largest step record)
    alloc_per_step: int | None
    bad_records: int
    weights: str | None = None    # the trained weights, read back from the target
    loss_curve: str | None = None  # the PNG beside the JSON

    @classmethod
    def of(cls, run, engine: str, uart_log=None, engine_error: str | None = None) -> "Report":
        """The report of `run` (a uart.RunState); `engine_error`: what the engine saw go wrong."""
        end, cfg = run.end or {}, run.config
        failure = None if run.end is not None and not run.stale else _failure(run, uart_log, engine_error)
        return cls(
            engine=engine, status="error" if failure else "ok", error=failure, steps=run.steps,
            params=cfg.get("params"), losses=run.losses, samples=run.samples, ms_per_step=run.ms_per_step,
            peak_heap_bytes=end.get("peak_heap", run.step_heap), uart_log=None if uart_log is None else str(uart_log),
            config=cfg, boots=run.boots, resumed_from=run.resumed_from, checkpoints=run.checkpoints,
            checkpoints_rejected=run.checkpoints_rejected, lr_final=run.last_step.get("lr"),
            heap_total=end.get("heap_total", cfg.get("heap_total")), platform=cfg.get("platform"),
            emit=cfg.get("emit"), kernels=cfg.get("kernels"), freq_mhz=cfg.get("freq_mhz"),
            ms_train=end.get("ms_train"), peak_src="end" if end else "step" if run.step_heap is not None else None,
            alloc_per_step=end.get("alloc_per_step"), bad_records=run.bad_records)

    def write(self, json_path) -> None:
        """Write `json_path` and, when there are losses, the loss curve at the same stem + .png
        (self.loss_curve names it; None without losses)."""
        json_path = Path(json_path)
        png_path = json_path.with_suffix(".png")
        if png_path == json_path:
            raise OutputError(f"{json_path}: the report is JSON, its loss curve goes beside it as .png:"
                              " name the report .json")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        if _plot_losses(self, png_path):
            self.loss_curve = str(png_path)
        else:
            self.loss_curve = None
            png_path.unlink(missing_ok=True)  # an earlier run's curve must not pass for this one's
        write_atomic(json_path, (json.dumps(_finite(dataclasses.asdict(self)), indent=2) + "\n").encode())


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
        if run.error.startswith("MemoryError") and tb and tb[-1].endswith("in <module>"):  # at an import
            reason += (": the trainer's modules did not fit while loading; if it was built with"
                       " `--emit native`, build with `--emit bytecode` (native code needs the chip's"
                       " small executable RAM)")
        elif run.error.startswith("MemoryError"):
            reason += (f": the trainer needs a GC heap of about {MIN_HEAP['c'] // 1000} KB with the C kernels,"
                       f" {MIN_HEAP['python'] // 1000} KB with the MicroPython ones (1,000 steps and 20 samples);"
                       " in the VM raise --heap, on a board use ESP32_GENERIC (167 KB) and keep boot.py light")
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


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _plot_losses(report, png_path):
    """Raw loss per step and its trailing moving average; False when there is nothing to plot."""
    losses = [math.nan if x is None else float(x) for x in report.losses or []]
    if not any(math.isfinite(x) for x in losses):
        return False
    # Imported here: matplotlib costs half a second, and most commands never plot.
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    loss = np.array(losses)
    loss[~np.isfinite(loss)] = np.nan
    window = loss_window(len(loss))
    steps = np.arange(1, len(loss) + 1)

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="tight")
    ax = fig.add_subplot()
    ax.plot(steps, loss, lw=0.8, alpha=0.45, color="tab:blue", label="loss per step")
    ax.plot(steps, _moving_average(loss, window), lw=2, color="tab:orange",
            label=f"mean of last {window} steps")
    ms = report.ms_per_step
    timing = f", {ms:.1f} ms/step" if isinstance(ms, (int, float)) and math.isfinite(ms) else ""
    failed = " (error)" if report.status == "error" else ""
    title = f"microgpt on {report.engine}: {report.steps} steps{timing}{failed}"
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(png_path, format="png")
    return True


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
