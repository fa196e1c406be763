"""A user's files and mistakes: outputs are checked before a run starts, runs never share a
directory, a failed run leaves nothing that looks like a result, and bad input is refused in
one line that names the fix."""
import json
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from microgpt import dataset
from microgpt.cli import main
from microgpt.cli.options import run_dir


@pytest.mark.parametrize("name", ["weights.bin", "report.png", "report.uart.log"])
def test_a_report_path_that_would_overwrite_an_output_is_refused_before_the_run(sim_run, tmp_path, name):
    out = tmp_path / "out"
    code, text, _ = sim_run("--steps", 2, "--samples", 0, report=out / name)
    assert code != 0 and "name the report .json" in text
    assert not out.exists()  # nothing ran: no UART log, no directory


def test_build_refuses_an_image_named_like_its_manifest(names_path, tmp_path):
    result = CliRunner().invoke(main, ["build", "--data", str(names_path), "--out", str(tmp_path / "x.json")])
    assert result.exit_code != 0 and "name the image .bin" in result.output
    assert not (tmp_path / "x.json").exists()


def test_two_runs_in_the_same_second_get_two_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "20261201-120000")
    with run_dir(None, "host") as first, run_dir(None, "host") as second:
        assert first.parent != second.parent and first.parent.is_dir() and second.parent.is_dir()
    assert [first.parent.name, second.parent.name] == ["host-20261201-120000", "host-20261201-120000-2"]


def test_a_run_that_fails_before_it_starts_leaves_no_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError), run_dir(None, "host"):
        raise RuntimeError("the engine could not start")
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_failed_rerun_leaves_no_weights_of_the_earlier_run(sim_run, tmp_path):
    report = tmp_path / "run" / "report.json"
    code, out, ok = sim_run("--steps", 3, "--samples", 0, report=report)
    assert code == 0 and ok["weights"] == str(report.with_name("weights.bin"))
    code, out, failed = sim_run("--steps", 3, "--samples", 0, "--heap", 20000, report=report)  # MemoryError
    assert code != 0 and failed["status"] == "error" and failed["weights"] is None
    assert not report.with_name("weights.bin").exists()


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_a_timeout_must_be_positive(names_path, timeout):
    result = CliRunner().invoke(main, ["sim", "run", "--data", str(names_path), "--timeout", timeout])
    assert result.exit_code == 2 and "--timeout" in result.output


def test_a_program_that_is_not_micropython_is_named(sim_run, tmp_path):
    code, out, report = sim_run("--steps", 2, "--micropython", "/bin/true", report=tmp_path / "r" / "report.json")
    assert code != 0 and "/bin/true did not answer as a MicroPython VM does" in out
    assert "Traceback" not in out


def test_a_names_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes(b"\xef\xbb\xbfemma\nolivia\n")
    assert dataset.load_names(path) == ["emma", "olivia"]


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("microgpt, version ")


def test_an_output_directory_that_cannot_be_written_is_one_line(sim_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out, _ = sim_run("--steps", 2, report=blocker / "report.json")
    assert code != 0 and f"cannot write into {blocker}" in out and "Traceback" not in out


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_an_interrupted_run_exits_130_and_keeps_its_report(names_path, tmp_path, sig, code):
    report = tmp_path / "run" / "report.json"
    argv = [sys.executable, "-c", "from microgpt.cli import main; main()", "sim", "run", "--data", str(names_path),
            "--kernels", "python", "--steps", "1000", "--samples", "0", "--report", str(report), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = report.with_suffix(".uart.log")
    deadline = time.monotonic() + 60
    while b"MGPT step" not in (log.read_bytes() if log.exists() else b"") and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    saved = json.loads(report.read_text())
    assert saved["status"] == "error" and saved["error"].endswith("interrupted (Ctrl-C)") and saved["steps"] >= 1
