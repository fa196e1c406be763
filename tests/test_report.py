"""The report writer: strict JSON that round-trips, and a real PNG loss curve."""
import json
from pathlib import Path

from conftest import step_record

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
