"""The one report writer: the parser's report as JSON, and its loss curve as a PNG beside it.

The JSON is strict (no NaN/Infinity, which most JSON readers reject): a loss or timing that
is not a finite number, e.g. a diverged run's `nan`, is written as null, like a step whose
record the UART lost.
"""
import json
import math
from pathlib import Path

import click
import numpy as np


def write_report(report, json_path):
    """Write `json_path` and, when there are losses, the loss curve at the same stem + .png.

    Sets report["loss_curve"] to the PNG's path (None without losses) and returns the report.
    """
    json_path = Path(json_path)
    png_path = json_path.with_suffix(".png")
    if png_path == json_path:
        raise click.ClickException(f"{json_path}: the report is JSON, its loss curve goes beside it as .png:"
                                   " name the report .json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if _plot_losses(report, png_path):
        report["loss_curve"] = str(png_path)
    else:
        report["loss_curve"] = None
        png_path.unlink(missing_ok=True)  # an earlier run's curve must not pass for this one's
    json_path.write_text(json.dumps(_finite(report), indent=2) + "\n")
    return report


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
    losses = [math.nan if x is None else float(x) for x in report.get("losses") or []]
    if not any(math.isfinite(x) for x in losses):
        return False
    # Imported here: matplotlib costs half a second, and most commands never plot.
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    loss = np.array(losses)
    loss[~np.isfinite(loss)] = np.nan
    window = max(1, min(50, len(loss) // 10))
    steps = np.arange(1, len(loss) + 1)

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="tight")
    ax = fig.add_subplot()
    ax.plot(steps, loss, lw=0.8, alpha=0.45, color="tab:blue", label="loss per step")
    ax.plot(steps, _moving_average(loss, window), lw=2, color="tab:orange",
            label=f"mean of last {window} steps")
    ms = report.get("ms_per_step")
    timing = f", {ms:.1f} ms/step" if isinstance(ms, (int, float)) and math.isfinite(ms) else ""
    failed = " (error)" if report.get("status") == "error" else ""
    title = f"microgpt on {report.get('engine')}: {report.get('steps')} steps{timing}{failed}"
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
