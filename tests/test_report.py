"""The report writer: strict JSON that round-trips, and a real PNG loss curve beside it."""
import dataclasses
import json
from pathlib import Path

import pytest

from microgpt.errors import OutputError
from microgpt.uart import parse_lines

LOGS = Path(__file__).parent / "data" / "uart"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parsed(name):
    return parse_lines((LOGS / name).open("rb"), engine="host", uart_log=str(LOGS / name))


def strict_load(path):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(Path(path).read_text(), parse_constant=reject)


def test_json_round_trip_and_png(tmp_path):
    report = parsed("reset_resume.log")
    out = tmp_path / "runs" / "a" / "report.json"  # parents created
    report.write(out)
    png = tmp_path / "runs" / "a" / "report.png"
    assert report.loss_curve == str(png)
    assert strict_load(out) == dataclasses.asdict(report)
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000  # a drawn figure, not an empty file


def test_no_losses_no_png(tmp_path):
    parsed("vm_ok.log").write(tmp_path / "r.json")
    report = parsed("memory_error.log")
    report.write(tmp_path / "r.json")
    assert report.loss_curve is None and not (tmp_path / "r.png").exists()
    assert strict_load(tmp_path / "r.json")["status"] == "error"


def test_non_finite_numbers_become_null_and_gaps_still_plot(tmp_path):
    lines = ["MGPT start v=1 params=4192 steps=4 log_every=1",
             "MGPT step n=1 loss=3.3 lr=0.01 ms=5 heap=1",
             "MGPT step n=3 loss=nan lr=0.01 ms=inf heap=1",
             "MGPT step n=4 loss=2.9 lr=0.01 ms=5 heap=1"]
    report = parse_lines(lines)
    report.write(tmp_path / "r.json")
    loaded = strict_load(tmp_path / "r.json")
    assert loaded["losses"] == [3.3, None, None, 2.9] and loaded["ms_per_step"] is None
    assert (tmp_path / "r.png").read_bytes().startswith(PNG_SIGNATURE)


def test_report_named_png_is_refused(tmp_path):
    with pytest.raises(OutputError, match="name the report .json"):
        parsed("vm_ok.log").write(tmp_path / "report.png")
