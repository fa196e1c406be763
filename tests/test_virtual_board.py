"""The board commands against the emulated chip: Espressif's QEMU running the official MicroPython
v1.25.0 firmware as a board on a pseudo-terminal (microgpt sim board), driven exactly as a user
drives a board on USB: `device run --mode upload`, `device pull`, `device sample`, a power cut and `--resume`,
Ctrl-C, and boards that are not MicroPython."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import OFFICIAL_FIRMWARE

from microgpt.cli import main
from microgpt.engines.qemu import qemu_argv

CLI = [sys.executable, "-c", "from microgpt.cli import main; main()"]


def device(*args, timeout=600):
    """`microgpt device ARGS` in a process of its own (as a user runs it) -> (exit code, output)."""
    proc = subprocess.run([*CLI, "device", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def device_running(*args):
    """`microgpt device ARGS` started, to be cut while it runs."""
    return subprocess.Popen([*CLI, "device", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.fixture(scope="module")
def trained(virtual_board, names_path, tmp_path_factory):
    """50 steps and 20 samples trained on the virtual board, uploaded as to a board on USB."""
    report = tmp_path_factory.mktemp("run") / "report.json"
    t0 = time.monotonic()
    code, out = device("run", "--mode", "upload", "--port", virtual_board.port, "--steps", 50, "--samples", 20,
                       "--data", names_path, "--report", report, "--quiet")
    print(f"upload + 50 steps + read-back on the virtual board: {time.monotonic() - t0:.1f} s")
    return code, out, json.loads(report.read_text())


def test_upload_trains_on_the_real_firmware_like_microgpt_py(trained, microgpt_losses):
    code, out, report = trained
    assert code == 0 and report["status"] == "ok", out
    assert (report["engine"], report["platform"], report["kernels"]) == ("serial", "esp32", "c")
    worst = max(abs(a - b) for a, b in zip(report["losses"], microgpt_losses[50], strict=True))
    assert worst <= 2e-3, worst
    # After 50 steps the model may end a name at once (microgpt.py samples an empty one then too).
    assert len(report["samples"]) == 20 and all(re.fullmatch("[a-z]*", s) for s in report["samples"])


@pytest.fixture(scope="module")
def pulled(trained, virtual_board, tmp_path_factory):
    """`device pull` of the trained run's weights -> (exit code, output, the file pulled)."""
    path = tmp_path_factory.mktemp("pull") / "pulled.bin"
    code, out = device("pull", "--port", virtual_board.port, "--out", path)
    return code, out, path


def test_pull_returns_the_runs_weights_and_they_replay_the_chips_names(trained, pulled):
    report = trained[2]
    code, out, path = pulled
    assert code == 0, out
    assert path.read_bytes() == Path(report["weights"]).read_bytes()
    result = CliRunner().invoke(main, ["sample", "--weights", str(path), "--count", "20"])
    assert [line[3:] for line in result.output.splitlines()] == report["samples"]


def test_mpremote_sees_what_the_run_left_on_the_board(virtual_board, trained):
    # The virtual board is a board to other tools too: mpremote lists the trainer's files.
    proc = subprocess.run([sys.executable, "-m", "mpremote", "connect", virtual_board.port, "fs", "ls"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "weights.bin" in proc.stdout and "names.txt" in proc.stdout, proc.stdout + proc.stderr


def test_the_board_samples_on_demand_what_the_host_samples(trained, virtual_board, pulled):
    # Names made on the emulated chip (float32, the C kernels) from the weights on its flash, with
    # and without a prefix: the host's, from the same weights pulled.
    assert trained[0] == 0
    code, out, path = pulled
    assert code == 0, out
    for args in ((), ("--prefix", "ka", "--seed", 7, "--temperature", 0.8)):
        t0 = time.monotonic()
        code, on_board = device("sample", "--port", virtual_board.port, "--count", 20, *args)
        print(f"device sample {' '.join(map(str, args))}: {time.monotonic() - t0:.1f} s")
        assert code == 0, on_board
        on_host = CliRunner().invoke(main, ["sample", "--weights", str(path), "--count", "20",
                                            *map(str, args)])
        assert on_board == on_host.output and len(on_board.splitlines()) == 20
        assert all(line[3:].startswith("ka") for line in on_board.splitlines()) or not args


def test_upload_1000_steps_and_pull_in_a_minute(trained, virtual_board, names_path, microgpt_losses, tmp_path):
    # The whole path a user takes with a board: upload (the trainer is on the board already from
    # the run above, so the run's own files go), 1,000 steps, the weights read back, and a pull.
    report = tmp_path / "long" / "report.json"
    t0 = time.monotonic()
    code, out = device("run", "--mode", "upload", "--port", virtual_board.port, "--steps", 1000, "--data", names_path,
                       "--report", report, "--quiet")
    t_run = time.monotonic() - t0
    assert code == 0, out
    code, out = device("pull", "--port", virtual_board.port, "--out", tmp_path / "pulled.bin")
    wall = time.monotonic() - t0
    print(f"virtual board: upload + 1,000 steps + read-back {t_run:.1f} s, with a pull {wall:.1f} s")
    assert code == 0, out
    result = json.loads(report.read_text())
    assert abs(result["loss_mean"] - sum(microgpt_losses[1000][-100:]) / 100) <= 0.02, result["loss_mean"]
    assert len(result["samples"]) == 20 and all(re.fullmatch("[a-z]+", s) for s in result["samples"])
    assert result["peak_heap_bytes"] <= 100_000
    assert (tmp_path / "pulled.bin").read_bytes() == Path(result["weights"]).read_bytes()
    assert wall < 180  # the goal is a minute on an idle host; this bounds a busy one


def test_a_power_cut_mid_run_resumes_to_the_uninterrupted_result(trained, virtual_board, names_path, tmp_path):
    report = tmp_path / "cut" / "report.json"
    # One checkpoint (each costs the emulated flash seconds), then the power goes.
    run = device_running("run", "--mode", "upload", "--port", virtual_board.port, "--steps", 50, "--samples", 20,
                         "--ckpt-every", 30, "--data", names_path, "--report", report, "--quiet")
    log = report.with_suffix(".uart.log")
    deadline = time.monotonic() + 600
    while b"MGPT ckpt step=30" not in (log.read_bytes() if log.exists() else b"") and time.monotonic() < deadline:
        time.sleep(0.05)
    virtual_board.kill()  # the power goes: QEMU dies at once; its flash file keeps what the chip had written
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 1 and "continue it with --resume" in out, out
    virtual_board.start()  # power back on, on the same flash
    code, out = device("run", "--resume", report.parent, "--port", virtual_board.port, "--quiet")
    assert code == 0, out
    resumed, whole = json.loads(report.read_text()), trained[2]
    assert resumed["resumed_from"] == 30 and resumed["boots"] == 2
    assert resumed["losses"] == whole["losses"] and resumed["samples"] == whole["samples"]


def test_ctrl_c_leaves_the_board_usable(trained, virtual_board, names_path, tmp_path):
    report = tmp_path / "stopped" / "report.json"
    run = device_running("run", "--mode", "upload", "--port", virtual_board.port, "--steps", 1000, "--samples", 0,
                         "--data", names_path, "--report", report, "--quiet")
    log = report.with_suffix(".uart.log")
    deadline = time.monotonic() + 600
    while b"MGPT step n=" not in (log.read_bytes() if log.exists() else b"") and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 130, out
    code, out = device("pull", "--port", virtual_board.port, "--out", tmp_path / "w.bin")  # the board answers at once
    assert code == 1 and "there is no weights.bin on the board" in out  # the stopped run left none


def test_a_board_in_its_rom_bootloader_is_named_not_waited_for(qemu, board_flash, tmp_path):
    # Download mode (BOOT held at reset): the ROM speaks esptool's protocol, not MicroPython.
    flash = tmp_path / "rom.bin"
    flash.write_bytes(board_flash.read_bytes())
    argv = qemu_argv(qemu, flash, serial="pty") + ["-global", "driver=esp32.gpio,property=strap_mode,value=0x0f"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port = re.search(rb"redirected to (\S+) \(label serial0\)", proc.stdout.readline())[1].decode()
        t0 = time.monotonic()
        code, out = device("pull", "--port", port, timeout=120)
        assert code == 1 and "ROM bootloader's download mode" in out and "Traceback" not in out, out
        assert time.monotonic() - t0 < 60
    finally:
        proc.kill()
        proc.wait()


def qemus_on(flash: Path) -> list[int]:
    """The pids of the QEMUs running on this flash file."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if any(b"qemu-system" in a for a in argv[:1]) and f"file={flash},".encode() in b"".join(argv):
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_board_powers_off_when_terminated_or_hung_up(qemu, tmp_path, sig):
    # A supervisor's SIGTERM or a closed terminal's SIGHUP reach the tool alone, not QEMU: the
    # board is powered off all the same, and the exit status names the signal as a shell does.
    flash = tmp_path / "b.bin"
    proc = subprocess.Popen([*CLI, "sim", "board", "--image", str(OFFICIAL_FIRMWARE), "--flash", str(flash),
                             "--qemu", qemu], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "virtual ESP32" in proc.stdout.readline()
        assert qemus_on(flash)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    left = qemus_on(flash)
    for pid in left:  # no QEMU outlives a failed test either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, out
    assert not left, "QEMU still runs"
    assert signal.Signals(sig).name in out


def test_board_command_line_and_flash_file(qemu, tmp_path):
    # `sim board` makes a new board's flash (the firmware, its filesystem erased), prints the port.
    flash = tmp_path / "b.bin"
    proc = subprocess.Popen([*CLI, "sim", "board", "--image", str(OFFICIAL_FIRMWARE), "--flash", str(flash),
                             "--qemu", qemu], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert re.match(r"virtual ESP32 \(Espressif's QEMU\) on /dev/pts/\d+$", first.strip()), first
        data = flash.read_bytes()
        assert len(data) == 4 << 20 and data[0x1000:0x1000 + 16] == OFFICIAL_FIRMWARE.read_bytes()[:16]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    again = CliRunner().invoke(main, ["sim", "board", "--image", str(OFFICIAL_FIRMWARE), "--flash", str(flash)])
    assert again.exit_code == 2 and "holds a board already" in again.output
