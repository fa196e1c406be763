"""The report writer: strict JSON that round-trips, and a real PNG loss curve."""
import json
from pathlib import Path

import pytest
from conftest import step_record

from microgpt import chip, planner
from microgpt.report import Report, from_log, plot_losses
from microgpt.uart import UartParser

LOGS = Path(__file__).parent / "data" / "uart"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parsed(name):
    return from_log((LOGS / name).open("rb"), engine="host", uart_log=str(LOGS / name))


def strict_load(path):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(Path(path).read_text(), parse_constant=reject)


def test_json_round_trip(tmp_path):
    report = parsed("reset_resume.log")
    out = tmp_path / "runs" / "report.json"
    out.parent.mkdir()
    report.write(out)
    assert strict_load(out) == report.to_json()
    assert strict_load(out)["losses"] == report.run.losses and report.to_json()["status"] == "ok"


def test_the_loss_curve_is_a_drawn_figure():
    png = plot_losses(parsed("reset_resume.log").run.losses, "a run")
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000  # a drawn figure, not an empty file
    assert plot_losses([], "nothing") is None and plot_losses([None, float("nan")], "nothing") is None


def test_a_one_step_run_still_shows_its_loss():
    # A lone point drawn as a line is invisible: few steps get markers, so the curve differs from an empty one.
    one, empty = plot_losses([3.3], "one step"), plot_losses([3.3, float("nan")], "one step")
    assert one is not None and one != empty


def test_non_finite_numbers_become_null_and_gaps_still_plot(tmp_path):
    lines = ["MGPT start v=2 params=4192 steps=4 log_every=1",
             step_record(1, 3.5, heap=1), step_record(3, float("nan"), ms="inf", heap=1), step_record(4, 2.5, heap=1)]
    report = from_log(lines)
    report.write(tmp_path / "r.json")
    loaded = strict_load(tmp_path / "r.json")
    assert loaded["losses"] == [3.5, None, None, 2.5] and loaded["ms_per_step"] is None
    assert plot_losses(report.run.losses, "gaps").startswith(PNG_SIGNATURE)


def test_the_summary_is_the_mean_of_the_last_100_steps():
    parser = UartParser()
    parser.feed("MGPT start v=2 params=4192 steps=150 log_every=1")
    for n in range(1, 151):
        parser.feed(step_record(n, 3.0 if n <= 50 else 2.0))
    summary = Report("x", None, None, parser.state(), None).to_json()
    assert (summary["loss_window"], summary["loss_mean"]) == (100, 2.0)


MEMORY_ERROR = ["MGPT error MemoryError: memory allocation failed, allocating 16768 bytes",
                'MGPT tb   File "train.py", line 108, in main']


@pytest.mark.parametrize("kernels, platform, shape", [
    ("c", "esp32", chip.Shape(20, 4, 1, 16)), ("python", "esp32", chip.DEFAULT), ("python", "linux", chip.DEFAULT)])
def test_memory_error_advice_is_the_planners_heap_for_the_runs_shape_and_kernels(kernels, platform, shape):
    # The figure users see is the one `microgpt plan` and the run's own check work with.
    knobs = ",".join(str(getattr(shape, k)) for k in chip.KNOBS)
    start = (f"MGPT start v=2 params={shape.n_params} steps=1000 seed=42 init=microgpt docs=32033 log_every=25"
             f" ckpt_every=0 samples=20 temp=0.5 lr=0.01 platform={platform} impl=1.25.0 emit=bytecode"
             f" kernels={kernels} freq_mhz=240 freq_boot_mhz=160 heap_total=60000 shape={knobs}")
    error = from_log([start, *MEMORY_ERROR]).error
    on = planner.ESP32 if platform == "esp32" else planner.VM
    need = planner.plan(shape, kernels, 25, on).heap_needed
    assert f"the trainer needs a GC heap of about {need:,} bytes" in error and "this one has 60,000 bytes" in error


def test_memory_error_advice_before_the_start_record_is_the_default_runs_on_the_chip():
    need = planner.plan(chip.DEFAULT, "c", planner.MEASURED_LOG_EVERY, planner.ESP32).heap_needed
    assert f"the trainer needs a GC heap of about {need:,} bytes" in from_log(MEMORY_ERROR).error
