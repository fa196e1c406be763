"""The run pipeline: the payload placed once, the log on disk is the stream, it stops at the right
line, engine failures are reported, the report is written; and the run directory: claimed, never
shared, never silently replacing an earlier run.

The engine here is a test double that replays a recorded log through the real split_lines (real
engines are tested in their own files); payload, parser, log writing and terminal output are real.
"""
import dataclasses
import json
import re
import sys
from pathlib import Path

from conftest import step_record

from microgpt import mpy, payload
from microgpt.cli.progress import Terminal
from microgpt.engines import Engine, split_lines
from microgpt.errors import EngineError
from microgpt.report import from_log
from microgpt.run import RunDir, run
from microgpt.uart import UartParser

LOGS = Path(__file__).parent / "data" / "uart"
VM = mpy.Target("MicroPython VM", "v1.29.0", (6, 3), "x64", 63)
DOCS = ["emma", "olivia", "ava", "isabella", "sophia"]


class Replay(Engine):
    """Yields a recorded UART in small chunks; falls silent after `silent_after` bytes, or
    raises `failure` after `fail_after` lines, if asked."""

    name = "replay"

    def __init__(self, data, silent_after=None, fail_after=None, failure=None, chunk=13):
        self.data, self.silent_after, self.chunk = data, silent_after, chunk
        self.fail_after, self.failure = fail_after, failure
        self.closed = 0
        self.placed = None

    def target(self):
        return VM

    def place(self, placed):
        self.placed = placed

    def lines(self):
        data = self.data[:self.silent_after]
        chunks = [data[i:i + self.chunk] for i in range(0, len(data), self.chunk)]

        def read():
            if chunks:
                return chunks.pop(0)
            return b"" if self.silent_after is not None else None  # silence, or end of stream

        for n, line in enumerate(split_lines(read, silence_s=0.05), 1):
            yield line
            if n == self.fail_after:
                raise self.failure

    def close(self):
        self.closed += 1


def steps_of(data: bytes) -> int:
    found = re.search(rb"MGPT start .*?steps=(\d+)", data)
    return int(found[1]) if found else 20


def replay(name, tmp_path, steps=None, display=None, **kw):
    data = (LOGS / name).read_bytes()
    engine = Replay(data, **kw)
    rundir = RunDir(tmp_path / "out" / "run.json")
    with rundir.claim():
        report = run(engine, rundir, payload.RunOptions(val=0, steps=steps or steps_of(data)), DOCS, display=display)
    assert engine.closed == 1
    return report, rundir.uart_log.read_bytes()


def test_the_payload_is_built_once_for_the_engines_target_and_placed(tmp_path):
    engine = Replay((LOGS / "vm_ok.log").read_bytes())
    rundir = RunDir(tmp_path / "run.json")
    with rundir.claim():
        run(engine, rundir, payload.RunOptions(val=0, steps=20, kernels="python"), DOCS)
    placed = engine.placed
    assert placed.target == VM and placed.options.emit == "native" and placed.options.kernels == "python"
    config = json.loads(placed.files["config.json"])
    assert config["steps"] == 20 and config["emit"] == "native" and config["docs"] == 5
    # log_every (25 by default) is resolved once, here: at most the run's steps, for the chip and the parser.
    assert placed.options.log_every == config["log_every"] == 20
    assert all(mpy.parse_header(blob).arch in (None, "x64") for name, blob in placed.files.items() if name.endswith(".mpy"))


def test_log_on_disk_is_the_stream_and_report_matches_the_parser(tmp_path):
    data = (LOGS / "vm_ok.log").read_bytes()
    report, log = replay("vm_ok.log", tmp_path)
    assert log == data
    log_path = str(tmp_path / "out" / "run.uart.log")
    parsed = from_log(data.split(b"\n")[:-1], engine="replay", uart_log=log_path).run
    assert report.run == dataclasses.replace(parsed, expect_steps=20)
    assert report.status == "ok" and report.engine == "replay"
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved == report.to_json() and saved["uart_log"] == log_path and saved["loss_curve"].endswith("run.png")


def test_each_line_is_on_disk_before_the_next_arrives(tmp_path):
    seen = []

    class Watched(Replay):
        def lines(self):
            for line in super().lines():
                yield line
                seen.append(line)  # the runner asked for the next line: this one must be on disk
                assert log_path.read_bytes() == b"".join(s + b"\n" for s in seen)

    rundir = RunDir(tmp_path / "run.json")
    log_path = rundir.uart_log
    with rundir.claim():
        report = run(Watched((LOGS / "reset_resume.log").read_bytes()), rundir, payload.RunOptions(val=0, steps=30), DOCS)
    assert report.status == "ok"
    assert len(seen) == 42  # all lines up to the end record, which stops the run


def test_stops_after_end_keeping_crlf(tmp_path):
    data = (LOGS / "esp32_ok.log").read_bytes()
    report, log = replay("esp32_ok.log", tmp_path)
    end = data.index(b"MGPT end")
    assert log == data[:data.index(b"\n", end) + 1]  # the banner and prompt after it never waited for
    assert report.status == "ok" and report.run.steps == 20


def test_stops_after_the_traceback(tmp_path):
    data = (LOGS / "memory_error.log").read_bytes() + b"MicroPython v1.25.0 on 2025-04-15\n>>> more\n"
    engine = Replay(data)
    rundir = RunDir(tmp_path / "run.json")
    with rundir.claim():
        report = run(engine, rundir, payload.RunOptions(val=0, steps=20), DOCS)
    assert rundir.uart_log.read_bytes().endswith(b"allocating 16768 bytes\nMicroPython v1.25.0 on 2025-04-15\n")
    assert report.error.startswith("MemoryError") and engine.closed == 1


def test_stops_in_a_reset_loop(tmp_path):
    report, log = replay("reset_loop.log", tmp_path)
    assert report.error.startswith("reset loop: the chip rebooted 3 times")
    assert log.count(b"rst:0x") == 3 and log.endswith(b"rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n")


def test_silence_mid_run_is_an_error_and_the_log_keeps_what_arrived(tmp_path):
    data = (LOGS / "vm_ok.log").read_bytes()
    cut = data.index(b"MGPT step n=8")
    report, log = replay("vm_ok.log", tmp_path, silent_after=cut + 20)
    assert log == data[:cut + 20] + b"\n"  # all that arrived, the half line too
    assert report.status == "error" and report.run.steps == 7
    assert report.error == ("the run stopped after step 7 of 20: no MGPT end line — "
                            "no output from the chip for 0.05 s (raise --silence if the run is just slow)")


def test_engine_error_mid_run(tmp_path):
    vanished = EngineError("serial port vanished: reconnect the board")
    report, log = replay("reset_resume.log", tmp_path, fail_after=20, failure=vanished)
    assert log.count(b"\n") == 20
    assert report.status == "error" and report.error.endswith("— serial port vanished: reconnect the board")
    assert report.error.startswith("the run stopped after step 15 of 30")


def test_ctrl_c_keeps_the_log_and_reports(tmp_path):
    report, log = replay("vm_ok.log", tmp_path, fail_after=3, failure=KeyboardInterrupt())
    assert log.count(b"\n") == 3 and report.error.endswith("— interrupted (SIGINT)")
    assert report.interrupted == "SIGINT" and report.to_json()["interrupted"] == "SIGINT"


def test_stale_image_is_stopped_at_its_start_line(tmp_path):
    report, log = replay("vm_ok.log", tmp_path, steps=1000)
    assert log.count(b"\n") == 1
    assert "20-step configuration but 1000 steps were asked" in report.error


def test_terminal_without_tty_prints_progress_every_tenth(tmp_path, capsys):
    replay("vm_ok.log", tmp_path, display=Terminal())
    out = capsys.readouterr().out.splitlines()
    progress = [line for line in out if line.startswith("step ")]
    assert len(progress) == 11  # steps 1, 2, 4, 6, ..., 20: every tenth of the run
    # The loss shown is the running mean over the window (all of a run this short), not one name's.
    assert progress[-1].startswith("step 20/20 ▕████████████████████▏ loss 3.10 (mean of last 20)  4.6 ms/step")
    assert progress[0] == "step 1/20 ▕█···················▏ loss 3.37 (mean of last 1)  5.3 ms/step"
    assert re.search(r"  (<1|\d+) s left$", progress[5])  # the time left, from the pace so far
    assert "MGPT sample 1 ieodnne" in out and not any("MGPT step" in line for line in out)
    assert out[0].startswith("MGPT start") and out[-1].startswith("MGPT end")


def test_terminal_with_tty_redraws_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    replay("esp32_ok.log", tmp_path, display=Terminal())
    out = capsys.readouterr().out
    assert out.count("\rstep ") == 20
    assert "\rstep 20/20 ▕████████████████████▏ loss 3.10 (mean of last 20)  183.0 ms/step" in out
    assert "\nMGPT sample 1 ieodnne\n" in out and "\r\n" not in out  # progress line ended, CRs not echoed
    assert "rst:0x1 (POWERON_RESET)" in out


def test_progress_of_a_fast_run_shows_what_is_known_not_zeros(capsys):
    # The VM's steps take hundredths of a millisecond and the run ends within a second.
    parser, terminal = UartParser(100), Terminal()
    lines = ["MGPT start v=2 params=4192 steps=100 seed=42 log_every=25",
             *(step_record(n, *[3.0] * 25, ms=ms) for n, ms in ((25, 0.03), (50, 0.7), (75, 0.0), (100, 0.12)))]
    for line in lines:
        terminal.show(line.encode(), parser.feed(line.encode()))
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split(")", 1)[1] for line in progress] == [
        "  0.03 ms/step", "  0.7 ms/step  <1 s left", "  <1 s left", "  0.12 ms/step"]
