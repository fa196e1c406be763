"""`microgpt device run --mode upload` and `device pull` against the MicroPython VM behind a pty,
with the real trainer: the same losses as `sim run --engine host`, a reset that resumes to
bit-identical weights, and each fault ending in a clear error with the UART log kept."""
import json
import re
from pathlib import Path

import pytest
from conftest import cli
from vm_pty import VmPort

from microgpt import chip, payload
from microgpt.chip import N_PARAMS, WEIGHTS_HEAD
from microgpt.engines import Engine
from microgpt.engines.serial import UploadEngine
from microgpt.run import RunDir, run


@pytest.fixture
def device_cli(tmp_path, names_path):
    """`microgpt device ARGS` -> (exit code, output, report dict or None)."""

    def invoke(*args, report=tmp_path / "run" / "report.json"):
        if args[0] == "run":
            args = (*args, "--data", names_path, "--report", report, "--quiet")
        code, output = cli("device", *args)
        return code, output, json.loads(report.read_text()) if report.exists() else None

    return invoke


def test_upload_run_matches_the_host_engine(vm_board, device_cli, sim_run, tmp_path):
    code, out, rep = device_cli("run", "--mode", "upload", "--port", vm_board.path, "--steps", 50, "--samples", 5)
    assert code == 0, out
    assert "copying" not in out and out.startswith("ok: 50 steps")  # --quiet: the summary alone
    assert rep["engine"] == "serial" and rep["status"] == "ok" and rep["steps"] == 50
    assert rep["platform"] == "linux" and len(rep["samples"]) == 5
    assert Path(rep["uart_log"]).read_bytes().count(b"MGPT step ") == 2  # 25 steps a record
    code, out, host = sim_run("--engine", "host", "--steps", 50, "--samples", 5, report=tmp_path / "host" / "report.json")
    assert code == 0, out
    assert rep["losses"] == host["losses"]  # same VM, trainer and files: identical, not merely close
    assert rep["samples"] == host["samples"]
    assert rep["val_names"] == payload.VAL and rep["val_loss"] == host["val_loss"]  # held-out names went up too
    weights = Path(rep["weights"]).read_bytes()  # pulled from the board after the run
    assert weights == (vm_board.cwd / "weights.bin").read_bytes() == Path(host["weights"]).read_bytes()

    code, out, _ = device_cli("pull", "--port", vm_board.path, "--out", tmp_path / "pulled.bin")
    assert code == 0, out
    assert (tmp_path / "pulled.bin").read_bytes() == weights and len(weights) == WEIGHTS_HEAD.size + N_PARAMS * 4


class ResetAt(Engine):
    """The board resets (power glitch, watchdog) once, right after it reports step `at`."""

    name = "serial"

    def __init__(self, engine, board, at):
        self.engine, self.board, self.at = engine, board, at

    def lines(self):
        for line in self.engine.lines():
            yield line
            if self.at and line.startswith(b"MGPT step n=%d " % self.at):
                self.at = None
                self.fault()

    def fault(self):
        self.board.reset()

    def target(self):
        return self.engine.target()

    def place(self, placed):
        self.engine.place(placed)

    def stop(self):
        self.engine.stop()

    def read_file(self, name):
        return self.engine.read_file(name)

    def close(self):
        self.engine.close()


def run_on(engine, report, options, docs):
    rundir = RunDir(report)
    with rundir.claim():
        return run(engine, rundir, options, docs)


@pytest.mark.parametrize("shape", [chip.DEFAULT, chip.Shape(n_embd=12, n_layer=2)], ids=["default", "two-layers"])
def test_a_reset_mid_run_resumes_to_bit_identical_weights(tmp_path, docs, micropython, shape):
    # The board resets under the run and comes back at its REPL (an upload leaves no boot entry):
    # the host sees MicroPython's banner, starts the trainer again, and it resumes from its checkpoint
    # (with two layers, Adam's m and v in two pieces each: adam.py).
    options = payload.RunOptions(steps=100, samples=3, ckpt_every=10, log_every=5, shape=shape)
    reports = {}
    for name, reset_at in (("whole", None), ("reset", 15)):
        with VmPort(tmp_path / name) as board:
            engine = UploadEngine(board.start().path, silence_s=60)
            if reset_at:
                engine = ResetAt(engine, board, reset_at)
            reports[name] = run_on(engine, tmp_path / f"{name}.json", options, docs)
    whole, reset = reports["whole"].run, reports["reset"].run
    assert reports["whole"].status == reports["reset"].status == "ok", reports["reset"].error
    # The reset comes once the host has seen step 15; the chip may have run on to a later checkpoint
    # (the UART's buffers hold some steps), never to the end.
    assert reset.boots == 2 and reset.resumed_from in range(10, 100, 10)
    assert whole.resumed_from is None
    assert reset.losses == whole.losses and reset.samples == whole.samples
    assert (tmp_path / "reset" / "weights.bin").read_bytes() == (tmp_path / "whole" / "weights.bin").read_bytes()
    log = (tmp_path / "reset.uart.log").read_bytes()
    assert log.count(b"MGPT start ") == 2 and b"MGPT resume step=%d" % reset.resumed_from in log


class UnplugAt(ResetAt):
    def fault(self):
        self.board.unplug()


def test_cable_pulled_mid_run(vm_board, docs, tmp_path):
    engine = UploadEngine(vm_board.path)
    options = payload.RunOptions(steps=1000, samples=0, log_every=1)  # long enough to outlast the host's reaction
    rep = run_on(UnplugAt(engine, vm_board, 7), tmp_path / "r.json", options, docs)
    assert rep.status == "error"
    # The cable goes once the host has seen step 7; what the chip had already sent may follow.
    last = int(re.match(r"the run stopped after step (\d+) of 1000: no MGPT end line — serial connection to /dev/pts/",
                        rep.error).group(1))
    assert 7 <= last < 1000
    assert "lost" in rep.error and "check the USB cable" in rep.error
    assert (tmp_path / "r.uart.log").read_bytes().count(b"MGPT step ") == last  # what arrived is on disk


def test_memory_error_on_the_chip(tmp_path, device_cli, micropython):
    with VmPort(tmp_path / "board", heap=24_000) as board:  # far below what the trainer needs
        code, out, rep = device_cli("run", "--mode", "upload", "--port", board.start().path, "--steps", 5)
    assert code != 0 and "run failed: MemoryError" in out
    assert rep["status"] == "error" and rep["error"].startswith("MemoryError")
    assert b"MGPT error MemoryError" in Path(rep["uart_log"]).read_bytes()


def test_raw_repl_refused(tmp_path, device_cli):
    with VmPort(tmp_path / "board") as port:
        port.start(["cat"])  # something on the port that is not MicroPython
        code, out, rep = device_cli("run", "--mode", "upload", "--port", port.path, "--steps", 5, "--silence", 2)
    assert code != 0
    assert "refused the raw REPL (no 'raw REPL; CTRL-B to exit' banner)" in rep["error"]
    assert "device flash" in rep["error"]
    assert Path(rep["uart_log"]).exists()


def test_silent_board(tmp_path, device_cli):
    with VmPort(tmp_path / "board") as port:  # powered off: nothing answers
        code, out, rep = device_cli("run", "--mode", "upload", "--port", port.path, "--steps", 5, "--silence", 1)
    assert code != 0 and "no answer from /dev/pts/" in rep["error"] and "within 1 s" in rep["error"]
    assert Path(rep["uart_log"]).exists()


@pytest.mark.parametrize("mode", ["upload", "flash"])
def test_missing_port_is_refused_before_anything_is_built_or_run(tmp_path, device_cli, mode, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where build/flash.bin and runs/ would go
    code, out, rep = device_cli("run", "--mode", mode, "--port", tmp_path / "ttyUSB3", "--steps", 5)
    assert code != 0 and "ttyUSB3 does not exist: is the board plugged in?" in out
    assert rep is None and not (tmp_path / "run").exists() and not (tmp_path / "build").exists()


def test_busy_port(vm_board, device_cli):
    from microgpt.ports import open_serial

    with open_serial(vm_board.path):
        code, out, rep = device_cli("run", "--mode", "upload", "--port", vm_board.path, "--steps", 5)
    assert code != 0 and "is busy: another program" in out and rep is None


def test_pull_without_weights(vm_board, device_cli, tmp_path):
    code, out, _ = device_cli("pull", "--port", vm_board.path, "--out", tmp_path / "w.bin")
    assert code != 0 and "there is no weights.bin on the board: train first with `microgpt device run`" in out
    (vm_board.cwd / "weights.bin").write_bytes(b"MGW1\x10\0\4\0\1\0\x10\0" + bytes(88))  # a run cut short while saving
    code, out, _ = device_cli("pull", "--port", vm_board.path, "--out", tmp_path / "w.bin")
    assert code != 0 and "weights.bin on the board is 100 bytes, not 16,780" in out and "did the run finish?" in out
    assert not (tmp_path / "w.bin").exists()


def test_pull_never_replaces_a_file_unless_told(vm_board, device_cli, sim_run, tmp_path):
    code, out, trained = sim_run("--steps", 3, "--samples", 0)
    assert code == 0, out
    (vm_board.cwd / "weights.bin").write_bytes(Path(trained["weights"]).read_bytes())
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"my weights")
    code, out, _ = device_cli("pull", "--port", vm_board.path, "--out", mine)
    assert code != 0 and "--overwrite to replace it" in out and mine.read_bytes() == b"my weights", out
    code, out, _ = device_cli("pull", "--port", vm_board.path, "--out", mine, "--overwrite")
    assert code == 0 and mine.read_bytes() == Path(trained["weights"]).read_bytes(), out


def test_upload_starts_a_new_run(vm_board, device_cli):
    """A finished run leaves its last checkpoint and weights on the board; uploading the same run
    again trains it again from step 1 instead of resuming at its end."""
    args = ("run", "--mode", "upload", "--port", vm_board.path, "--steps", 6, "--ckpt-every", 3, "--samples", 0)
    code, out, first = device_cli(*args)
    assert code == 0, out
    assert first["checkpoints"] == [3, 6] and (vm_board.cwd / "ckpt.bin").exists()
    code, out, again = device_cli(*args, report=vm_board.cwd.parent / "again" / "report.json")
    assert code == 0, out
    assert again["resumed_from"] is None and again["losses"] == first["losses"]
