"""A user's files: outputs are checked before a run starts, two runs never share working files, an
earlier run is never replaced unless asked, a full or read-only disk is one line naming the path,
an interrupted run keeps its report and can be resumed to the same result."""
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import OFFICIAL_FIRMWARE as FIRMWARE
from conftest import signals, wait_for_record

from microgpt import payload
from microgpt.cli import main
from microgpt.cli.options import launch
from microgpt.engines.host import HostEngine
from microgpt.errors import OutputError
from microgpt.payload import RunOptions
from microgpt.run import RunDir, run

CLI = [sys.executable, "-c", "from microgpt.cli import main; main()"]
REFUSALS = ("in use by another run", "belongs to an earlier run")  # the claim's two ways to refuse a run


def sim(names_path, report, *args):
    # No held-out evaluation: what these runs test is their files, and with the MicroPython kernels
    # (most of them here) it takes the VM seconds.
    return [*CLI, "sim", "run", "--data", str(names_path), "--report", str(report), "--quiet", "--val", "0",
            *map(str, args)]


@pytest.mark.parametrize("name", ["weights.bin", "report.png", "report.uart.log"])
def test_a_report_path_that_is_not_json_is_refused_before_the_run(sim_run, tmp_path, name):
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
    first, second = RunDir.new("host"), RunDir.new("host")
    assert first.report.parent != second.report.parent
    assert [first.report.parent.name, second.report.parent.name] == ["host-20261201-120000", "host-20261201-120000-2"]


def test_a_run_that_fails_before_it_starts_leaves_no_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError), RunDir.new("host").claim():
        raise RuntimeError("the engine could not start")
    assert list((tmp_path / "runs").iterdir()) == []


def test_every_file_of_a_run_is_named_after_its_report_with_absolute_paths(sim_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, report = sim_run("--steps", 3, "--samples", 0, report=Path("runs") / "mine.json")
    assert code == 0, out
    here = tmp_path / "runs"
    assert report["uart_log"] == str(here / "mine.uart.log") and report["weights"] == str(here / "mine.weights.bin")
    assert report["loss_curve"] == str(here / "mine.png")
    assert sorted(p.name for p in here.iterdir()) == ["mine.json", "mine.png", "mine.uart.log", "mine.weights.bin"]


def test_an_earlier_run_is_never_replaced_unless_asked(sim_run, docs, micropython, tmp_path):
    report = tmp_path / "run" / "report.json"
    code, out, ok = sim_run("--steps", 3, "--samples", 0, report=report)
    assert code == 0, out
    before = {p.name: p.read_bytes() for p in report.parent.iterdir()}
    # A failing rerun into the same path is refused before it runs: the trained weights stay.
    code, out, _ = sim_run("--steps", 3, "--samples", 0, "--heap", 20000, report=report)
    assert code != 0 and "belongs to an earlier run" in out and "--overwrite" in out
    assert {p.name: p.read_bytes() for p in report.parent.iterdir()} == before
    # Told to replace it, a run refused before it starts (a heap the planner knows is too small) replaces nothing.
    code, out, _ = sim_run("--steps", 3, "--samples", 0, "--heap", 20000, "--overwrite", report=report)
    assert code != 0 and {p.name: p.read_bytes() for p in report.parent.iterdir()} == before
    # One that starts and fails (a MemoryError: a heap above the planned peak, below what the collector needs, run
    # as scripts/bench.py runs it, asking no headroom) leaves no weights that could pass for its own.
    with RunDir(report).claim(overwrite=True) as rundir:
        engine = HostEngine(rundir.work, heap=93_000, headroom=0, micropython=micropython)
        failed = run(engine, rundir, RunOptions(steps=3, samples=0), docs).to_json()
    assert failed["status"] == "error" and "MemoryError" in failed["error"] and failed["weights"] is None
    assert not report.with_name("report.weights.bin").exists()


@pytest.mark.usefixtures("micropython")
def test_runs_aimed_at_one_report_never_mix(names_path, tmp_path):
    # Four runs with different seeds started at once at one report path: one runs, the others are
    # refused at once; the report, log and weights left are all the winner's.
    report = tmp_path / "c" / "report.json"
    procs = [subprocess.Popen(sim(names_path, report, "--steps", 40, "--samples", 3, "--seed", seed),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (1, 2, 3, 4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert codes.count(0) == 1, outs
    refused = [out for code, out in zip(codes, outs) if code]
    assert all(any(why in out for why in REFUSALS) for out in refused), refused
    winner = json.loads(report.read_text())
    seed = winner["config"]["seed"]
    assert winner["status"] == "ok" and (seed, 0) in zip((1, 2, 3, 4), codes)
    log = report.with_suffix(".uart.log").read_text()
    assert f"seed={seed} " in log and log.count("MGPT start") == 1
    replay = CliRunner().invoke(main, ["sample", "--weights", winner["weights"], "--count", "3", "--seed", str(seed)])
    assert [line[3:] for line in replay.output.splitlines()] == winner["samples"]


def _claim_and_finish(report, start, results):
    start.wait()
    try:
        with RunDir(report).claim() as rundir:
            time.sleep(0.02)  # the run
            rundir.report.write_text("{}")
            rundir.release(finished=True)
        results.put("ran")
    except OutputError as e:
        results.put("refused" if any(why in str(e) for why in REFUSALS) else str(e))
    except Exception as e:  # noqa: BLE001 - the winner's files removed under it: report it, not hang
        results.put(repr(e))


def test_claims_started_together_let_exactly_one_run(tmp_path):
    # The race that let two of the four runs above win, or removed the winner's directory under
    # it: a refused claim removed the work directory (and the lock in it) it thought it had made.
    # Before the fix, 25 of 200 such rounds had two winners and 14 lost the winner's report.
    context = multiprocessing.get_context("fork")
    for round_ in range(30):
        report = tmp_path / str(round_) / "report.json"
        start, results = context.Barrier(4), context.Queue()
        procs = [context.Process(target=_claim_and_finish, args=(report, start, results)) for _ in range(4)]
        for proc in procs:
            proc.start()
        outcomes = sorted(results.get(timeout=30) for _ in procs)
        for proc in procs:
            proc.join()
        assert outcomes == ["ran", "refused", "refused", "refused"], (round_, outcomes)
        assert sorted(p.name for p in report.parent.iterdir()) == ["report.json"]


@pytest.mark.usefixtures("micropython")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupted_run_keeps_its_report_naming_the_signal(names_path, tmp_path, sig):
    report = tmp_path / "run" / "report.json"
    proc = subprocess.Popen(sim(names_path, report, "--kernels", "python", "--steps", 1000, "--samples", 0),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=signals())
    wait_for_record(report, b"MGPT step", 60)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, out  # as a shell reports a process ended by that signal
    saved = json.loads(report.read_text())
    name = signal.Signals(sig).name
    assert saved["status"] == "error" and saved["interrupted"] == name and saved["error"].endswith(f"({name})")
    assert f"interrupted by {name}" in out and saved["steps"] >= 1


def test_signals_ignored_at_start_stay_ignored(names_path, tmp_path):
    # `nohup microgpt sim run ... &`: the terminal closing (SIGHUP) or a Ctrl-C in it must not end the run.
    report = tmp_path / "run" / "report.json"
    proc = subprocess.Popen(sim(names_path, report, "--kernels", "python", "--steps", 150, "--samples", 0),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=signals(ignored=(signal.SIGHUP, signal.SIGINT)))
    wait_for_record(report, b"MGPT step", 60)
    assert proc.poll() is None, "the run ended before the signals came"
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    saved = json.loads(report.read_text())
    assert saved["status"] == "ok" and saved["interrupted"] is None and saved["steps"] == 150


@pytest.mark.slow
def test_a_cut_run_resumes_to_the_same_result_as_an_uninterrupted_one(names_path, tmp_path, sim_run):
    args = ("--steps", 300, "--samples", 5, "--ckpt-every", 50, "--kernels", "python")
    code, out, whole = sim_run(*args, report=tmp_path / "whole" / "report.json")
    assert code == 0, out
    report = tmp_path / "cut" / "report.json"
    proc = subprocess.Popen(sim(names_path, report, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=signals())
    wait_for_record(report, b"MGPT ckpt step=100", 120)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "continue it with --resume" in out, out
    cut = json.loads(report.read_text())
    assert cut["status"] == "error" and 100 <= cut["steps"] < 300
    # Run options do not go with --resume: the run keeps its own.
    refused = CliRunner().invoke(main, ["sim", "run", "--resume", str(report.parent), "--steps", "5"])
    assert refused.exit_code == 2 and "--steps does not go with --resume" in refused.output
    result = CliRunner().invoke(main, ["sim", "run", "--resume", str(report.parent), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    resumed = json.loads(report.read_text())
    assert resumed["status"] == "ok" and resumed["resumed_from"] in range(100, 300, 50)
    assert resumed["losses"] == whole["losses"] and resumed["samples"] == whole["samples"]
    assert Path(resumed["weights"]).read_bytes() == Path(whole["weights"]).read_bytes()
    assert not report.with_suffix(".work").exists()  # finished: nothing left to resume
    again = CliRunner().invoke(main, ["sim", "run", "--resume", str(report.parent)])
    assert again.exit_code != 0 and "no run to resume" in again.output


class CutAfterCheckpoint(HostEngine):
    """The VM, cut once it has written checkpoint `at`, before its record of it reached the host
    (the line in flight is lost, as in a power cut or a Ctrl-C)."""

    def __init__(self, at, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.at = at

    def lines(self):
        for line in super().lines():
            if line.startswith(b"MGPT ckpt step=%d" % self.at):
                return
            yield line


def test_a_cut_run_names_the_checkpoint_it_resumes_from(names_path, tmp_path, capsys):
    # The UART's last ckpt record says 20, the VM's flash holds 40: the message and --resume both
    # take the flash's, the one the trainer loads.
    rundir = RunDir(tmp_path / "cut" / "report.json")
    options = payload.RunOptions(steps=60, samples=0, log_every=5, ckpt_every=20, kernels="python", val=0)
    with rundir.claim(), pytest.raises(click.ClickException, match="the run stopped after step 40 of 60"):
        launch(CutAfterCheckpoint(40, rundir.work), rundir, options, names_path, quiet=True)
    said = capsys.readouterr().err
    cut = json.loads(rundir.report.read_text())
    assert cut["checkpoints"] == [20] and cut["resume_step"] == 40
    assert f"its last checkpoint is step 40: continue it with --resume {rundir.report.parent}\n" in said
    result = CliRunner().invoke(main, ["sim", "run", "--resume", str(rundir.report.parent), "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(rundir.report.read_text())["resumed_from"] == 40


# --- full and read-only disks: run the real CLI in a mount namespace with a small tmpfs ---------

def in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """`script` (sh) in a user and mount namespace of its own, where it may mount a tmpfs."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed: no mount namespace for a full or read-only disk")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"user namespaces are not allowed here: {probe.stderr.decode().strip()}")
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-ec", script], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def one_line_error(result) -> str:
    err = (result.stdout + result.stderr).strip()
    assert result.returncode != 0 and "Traceback" not in err, err
    return err.splitlines()[-1]


@pytest.mark.usefixtures("micropython")  # the run asks the VM what it imports before it writes
def test_a_full_disk_is_one_line_naming_the_path_and_leaves_no_partial_file(names_path, tmp_path):
    (tmp_path / "full").mkdir()
    result = in_namespace(
        f'mount -t tmpfs -o size=1m tmpfs full\n'
        f'"$PYTHON" -c "from microgpt.cli import main; main()" sim run --data {names_path} --steps 3 --samples 0 '
        f'--report full/report.json --quiet || true\n'
        f'ls -A full > listing.txt\n'
        f'"$PYTHON" -c "from microgpt.cli import main; main()" build --data {names_path} --steps 3 '
        f'--firmware {FIRMWARE} --out full/flash.bin\n', tmp_path)
    line = one_line_error(result)
    assert "cannot write" in line and "full/flash.bin" in line and "no space left" in line, line
    sim_error = [ln for ln in (result.stdout + result.stderr).splitlines() if "no space left" in ln][0]
    assert "full/report.work/vfs.bin" in sim_error and "Traceback" not in result.stderr
    assert (tmp_path / "listing.txt").read_text().split() == [], "a partial or temporary file was left"


def test_a_read_only_directory_is_one_line_naming_the_path(names_path, tmp_path):
    (tmp_path / "ro").mkdir()
    result = in_namespace(
        f'mount -t tmpfs -o ro tmpfs ro\n'
        f'cd ro\n'
        f'"$PYTHON" -c "from microgpt.cli import main; main()" sim run --data {names_path} --steps 3 --quiet || true\n'
        f'"$PYTHON" -c "from microgpt.cli import main; main()" build --data {names_path} --steps 3 '
        f'--firmware {FIRMWARE} --out out/flash.bin\n', tmp_path)
    line = one_line_error(result)
    assert "cannot write" in line and "out" in line and "read-only" in line, line
    assert "runs" in result.stdout + result.stderr and "read-only" in (result.stdout + result.stderr).splitlines()[0]


def test_a_report_path_that_is_not_utf8_is_refused_in_one_line(names_path, tmp_path):
    odd = os.fsencode(str(tmp_path)) + b"/caf\xe9/report.json"
    proc = subprocess.run([os.fsencode(sys.executable), b"-c", b"from microgpt.cli import main; main()", b"sim",
                           b"run", b"--data", os.fsencode(str(names_path)), b"--steps", b"2", b"--report", odd],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "must be UTF-8" in proc.stderr, proc.stderr



# --- outputs never replace what is there unasked; a refused run writes nothing --------------------

def test_build_refuses_to_replace_a_file_it_would_write_unless_told(names_path, tmp_path):
    # The image's manifest goes beside it as .json: `--out myrun.bin` would replace the report
    # myrun.json; `--out myrun.weights.bin` the trained weights.
    (tmp_path / "myrun.json").write_text('{"a": "report"}')
    (tmp_path / "myrun.weights.bin").write_bytes(b"trained")
    build = ["build", "--data", str(names_path), "--steps", "3", "--firmware", str(FIRMWARE)]
    for out in ("myrun.bin", "myrun.weights.bin"):
        result = CliRunner().invoke(main, [*build, "--out", str(tmp_path / out)])
        assert result.exit_code != 0 and "--overwrite to replace them" in result.output, result.output
    assert (tmp_path / "myrun.json").read_text() == '{"a": "report"}'
    assert (tmp_path / "myrun.weights.bin").read_bytes() == b"trained"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myrun.json", "myrun.weights.bin"]
    result = CliRunner().invoke(main, [*build, "--out", str(tmp_path / "myrun.bin"), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "myrun.json").read_text())["image"] == str(tmp_path / "myrun.bin")


def test_files_written_together_are_all_written_or_none(tmp_path):
    from microgpt.fileio import write_together

    image, manifest = tmp_path / "flash.bin", tmp_path / "gone" / "flash.json"
    image.write_bytes(b"earlier")
    with pytest.raises(OutputError, match="gone"):
        write_together({image: b"new image", manifest: b"{}"})
    assert image.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["flash.bin"]


@pytest.mark.parametrize("args", [("--kernels", "c", "--n-embd", 68), ("--block-size", 256), ("--n-embd", 24)])
def test_a_shape_the_chip_cannot_run_is_refused_before_anything_is_written(sim_run, tmp_path, args):
    fresh = tmp_path / "fresh" / "r.json"
    code, out, saved = sim_run("--steps", 2, "--samples", 0, *args, report=fresh)
    assert code != 0 and "run failed" not in out and saved is None, out
    assert not fresh.parent.exists()  # no report, log, nor r.work/lock: the same --report is free
    # Over an earlier run, --overwrite replaces it only once a run starts: the refused one loses nothing.
    report = tmp_path / "earlier" / "r.json"
    code, out, _ = sim_run("--steps", 3, "--samples", 0, report=report)
    assert code == 0, out
    before = {p.name: p.read_bytes() for p in report.parent.iterdir()}
    code, out, _ = sim_run("--steps", 2, "--samples", 0, "--overwrite", *args, report=report)
    assert code != 0 and "run failed" not in out, out
    assert {p.name: p.read_bytes() for p in report.parent.iterdir()} == before


def test_a_directory_named_like_the_work_directory_that_this_tool_did_not_make_is_refused(sim_run, tmp_path):
    theirs = tmp_path / "r.work"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    code, out, saved = sim_run("--steps", 2, "--samples", 0, report=tmp_path / "r.json")
    assert code != 0 and "did not make" in out and saved is None, out
    assert (theirs / "notes.txt").read_text() == "mine"
    # A symlink is never followed, not even to replace an earlier run.
    theirs.rename(tmp_path / "elsewhere")
    theirs.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "r.json").write_text("{}")
    code, out, _ = sim_run("--steps", 2, "--samples", 0, "--overwrite", report=tmp_path / "r.json")
    assert code != 0 and "is a symlink" in out, out
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == ["notes.txt"]
    assert (tmp_path / "r.json").read_text() == "{}"


def test_a_report_under_a_file_says_so(sim_run, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, out, _ = sim_run("--steps", 2, report=tmp_path / "afile" / "r.json")
    assert code != 0 and "a file stands where a directory is needed" in out, out


def test_a_signal_while_a_run_claims_its_report_leaves_nothing(names_path, tmp_path):
    # SIGTERM sent at the claim's most delicate moment: its lock taken, the earlier run not yet checked.
    script = ("import os, signal\nfrom microgpt.run import RunDir\ncheck = RunDir._check\n"
              "def _check(self, *a):\n    os.kill(os.getpid(), signal.SIGTERM)\n    check(self, *a)\n"
              "RunDir._check = _check\nfrom microgpt.cli import main\nmain()")
    report = tmp_path / "r" / "r.json"
    proc = subprocess.run([sys.executable, "-c", script, "sim", "run", "--data", str(names_path), "--steps", "2",
                           "--report", str(report)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted by SIGTERM" in proc.stderr, proc
    assert "Traceback" not in proc.stderr and not report.parent.exists()


def test_resuming_a_run_without_checkpoints_says_it_starts_again_and_finds_its_report(names_path, tmp_path):
    # A run cut with no --ckpt-every, its report not named report.json: --resume DIR finds it, and
    # says (and the report says: resumed_from 0) that it starts again from step 1.
    report = tmp_path / "cut" / "mine.json"
    proc = subprocess.Popen(sim(names_path, report, "--kernels", "python", "--steps", 200, "--samples", 0),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=signals())
    wait_for_record(report, b"MGPT step", 60)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and json.loads(report.read_text())["checkpoints"] == [], out
    result = CliRunner().invoke(main, ["sim", "run", "--resume", str(report.parent), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0 and "it starts again from step 1" in result.output, result.output
    resumed = json.loads(report.read_text())
    assert resumed["status"] == "ok" and resumed["steps"] == 200 and resumed["resumed_from"] == 0


def test_resume_of_a_directory_with_two_cut_runs_asks_which(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.work").mkdir()
        (tmp_path / f"{name}.work" / "run.json").write_text("{}")
    result = CliRunner().invoke(main, ["sim", "run", "--resume", str(tmp_path)])
    assert result.exit_code != 0 and "holds 2 cut runs (a.json, b.json): name one" in result.output, result.output
