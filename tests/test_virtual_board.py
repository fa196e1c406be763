"""The board commands against the emulated chip: Espressif's QEMU running the official MicroPython
v1.25.0 firmware as a board on a pseudo-terminal (microgpt sim board), driven exactly as a user
drives a board on USB: `device run --mode upload`, `device pull`, `device sample`, a power cut and `--resume`,
Ctrl-C, and boards that are not MicroPython."""
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import OFFICIAL_FIRMWARE, signals, wait_for_record
from test_user_files import in_namespace
from test_val import AGREE, host_val_loss

from microgpt import reference
from microgpt.cli import main
from microgpt.engines.qemu import qemu_argv

CLI = [sys.executable, "-c", "from microgpt.cli import main; main()"]
# The module's tests share one board, each building on what the others left: one worker runs them
# all (--dist loadgroup), so the board boots, and trains its first run, once.
pytestmark = pytest.mark.xdist_group("virtual_board")


def device(*args, timeout=600):
    """`microgpt device ARGS` in a process of its own (as a user runs it) -> (exit code, output)."""
    proc = subprocess.run([*CLI, "device", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def device_running(*args):
    """`microgpt device ARGS` started, to be cut while it runs."""
    return subprocess.Popen([*CLI, "device", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=signals())


@pytest.fixture(scope="module")
def trained(virtual_board, names_path, tmp_path_factory):
    """50 steps and 20 samples trained on the virtual board, uploaded as to a board on USB."""
    report = tmp_path_factory.mktemp("run") / "report.json"
    t0 = time.monotonic()
    code, out = device("run", "--mode", "upload", "--port", virtual_board.port, "--steps", 50, "--samples", 20,
                       "--data", names_path, "--report", report, "--quiet")
    print(f"upload + 50 steps + read-back on the virtual board: {time.monotonic() - t0:.1f} s")
    return code, out, json.loads(report.read_text())


def test_upload_trains_on_the_real_firmware_like_microgpt_py(trained, microgpt_losses, docs):
    code, out, report = trained
    assert code == 0 and report["status"] == "ok", out
    assert (report["engine"], report["platform"], report["kernels"]) == ("serial", "esp32", "c")
    worst = max(abs(a - b) for a, b in zip(report["losses"], microgpt_losses[50], strict=True))
    assert worst <= 2e-3, worst
    # The held-out names went up with the run, and the chip's loss over them is the host's.
    assert report["val_names"] == 1000 and abs(report["val_loss"] - host_val_loss(report, docs)) <= AGREE
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
    for args in ((), ("--prefix", "ka", "--seed", 7, "--temperature", 0.8),
                 ("--temperature", repr(reference.MIN_TEMPERATURE))):  # the least float32 takes: greedy
        t0 = time.monotonic()
        code, on_board = device("sample", "--port", virtual_board.port, "--count", 20, *args)
        print(f"device sample {' '.join(map(str, args))}: {time.monotonic() - t0:.1f} s")
        assert code == 0, on_board
        on_host = CliRunner().invoke(main, ["sample", "--weights", str(path), "--count", "20",
                                            *map(str, args)])
        assert on_board == on_host.output and len(on_board.splitlines()) == 20
        assert all(line[3:].startswith("ka") for line in on_board.splitlines()) or "--prefix" not in args
        greedy = args[-1:] == (repr(reference.MIN_TEMPERATURE),)
        assert len({line[3:] for line in on_board.splitlines()}) == 1 or not greedy  # every draw the likeliest


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
    wait_for_record(report, b"MGPT ckpt step=30", 600)
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
    wait_for_record(report, b"MGPT step n=", 600)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 130, out
    code, out = device("pull", "--port", virtual_board.port, "--out", tmp_path / "w.bin")  # the board answers at once
    assert code == 1 and "there is no weights.bin on the board" in out  # the stopped run left none


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_upload_cut_while_copying_leaves_the_earlier_weights_and_a_usable_board(virtual_board, names_path,
                                                                                     tmp_path, sig):
    from microgpt import chip
    from microgpt.rawrepl import RawRepl

    earlier = chip.WEIGHTS_HEAD.pack(chip.WEIGHTS_MAGIC, *(getattr(chip.DEFAULT, k) for k in chip.KNOBS)) + bytes(
        4 * chip.N_PARAMS)  # an earlier run's weights
    repl = RawRepl(virtual_board.port)
    try:
        repl.write_file(chip.WEIGHTS, earlier)
    finally:
        repl.close()
    run = device_running("run", "--mode", "upload", "--port", virtual_board.port, "--steps", 10, "--data", names_path,
                         "--report", tmp_path / "cut" / "report.json")
    for line in run.stdout:  # a new board: every file is copied, the trainer's first
        if line.startswith("copying"):
            break
    run.send_signal(sig)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 128 + sig, out
    code, out = device("pull", "--port", virtual_board.port, "--out", tmp_path / "w.bin")  # the REPL answers again
    assert code == 0, out
    assert (tmp_path / "w.bin").read_bytes() == earlier


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


def kill_qemus_on(flash: Path) -> list[int]:
    """SIGKILL the QEMUs on `flash` (none outlives a failed test); their pids."""
    left = qemus_on(flash)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def sim_board(qemu, *args, env=None, ignored=()) -> subprocess.Popen:
    """`microgpt sim board ARGS` started, as a user starts it (the signals in `ignored` ignored, as nohup
    or a background job starts it); its first line of output read."""
    proc = subprocess.Popen([*CLI, "sim", "board", "--qemu", qemu, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=signals(ignored))
    proc.first_line = proc.stdout.readline()
    return proc


def sim_board_once(qemu, *args) -> tuple[int, str]:
    """`microgpt sim board ARGS` that is to end by itself (refused) -> (exit code, output)."""
    proc = subprocess.run([*CLI, "sim", "board", "--qemu", qemu, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_board_powers_off_when_terminated_or_hung_up(qemu, tmp_path, sig):
    # A supervisor's SIGTERM or a closed terminal's SIGHUP reach the tool alone, not QEMU: the
    # board is powered off all the same, and the exit status names the signal as a shell does.
    flash = tmp_path / "b.bin"
    proc = sim_board(qemu, "--image", OFFICIAL_FIRMWARE, "--flash", flash)
    try:
        assert "virtual ESP32" in proc.first_line
        assert qemus_on(flash)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert not kill_qemus_on(flash), "QEMU still runs"
    assert proc.returncode == 128 + sig, out
    assert signal.Signals(sig).name in out


def test_board_started_with_sighup_ignored_keeps_running_on_a_hangup(qemu, tmp_path):
    # `nohup microgpt sim board &`: the terminal closing does not power the board off.
    flash = tmp_path / "b.bin"
    proc = sim_board(qemu, "--image", OFFICIAL_FIRMWARE, "--flash", flash, ignored=(signal.SIGHUP,))
    try:
        assert "virtual ESP32" in proc.first_line
        proc.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        assert qemus_on(flash)
        proc.send_signal(signal.SIGINT)  # Ctrl-C still powers it off
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    assert not qemus_on(flash)


def test_board_command_line_and_flash_file(qemu, tmp_path):
    # `sim board` makes a new board's flash (the firmware, its filesystem erased), prints the port.
    flash = tmp_path / "b.bin"
    proc = sim_board(qemu, "--image", OFFICIAL_FIRMWARE, "--flash", flash)
    try:
        assert re.match(r"virtual ESP32 \(Espressif's QEMU\) on /dev/pts/\d+$", proc.first_line.strip()), proc.first_line
        data = flash.read_bytes()
        assert len(data) == 4 << 20 and data[0x1000:0x1000 + 16] == OFFICIAL_FIRMWARE.read_bytes()[:16]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    for given in ("--image", "--firmware"):
        again = CliRunner().invoke(main, ["sim", "board", given, str(OFFICIAL_FIRMWARE), "--flash", str(flash)])
        assert again.exit_code == 2 and "holds a board already" in again.output and f"drop {given}" in again.output
    both = CliRunner().invoke(main, ["sim", "board", "--image", str(OFFICIAL_FIRMWARE), "--firmware",
                                     str(OFFICIAL_FIRMWARE), "--flash", str(tmp_path / "c.bin")])
    assert both.exit_code == 1 and "not both" in both.output and not (tmp_path / "c.bin").exists()
    help_text = " ".join(CliRunner().invoke(main, ["sim", "board", "--help"]).output.split())
    assert "--firmware" in help_text and "a firmware .bin gets an empty filesystem" in help_text


def test_one_board_per_flash_file_and_none_outlives_its_command(qemu, tmp_path):
    # Two boards on one flash file would each write back their own flash, so what was written
    # through one is gone at the other's power cycle: a flash in use is refused, a new board
    # over it too (its contents untouched). `kill -9` of `sim board` takes its QEMU with it, so
    # the flash is free again; a board whose QEMU is gone says so. --firmware is all a new board
    # needs: nothing is downloaded (the cache stays empty).
    flash, cache = tmp_path / "board.bin", tmp_path / "cache"
    cache.mkdir()
    proc = sim_board(qemu, "--firmware", OFFICIAL_FIRMWARE, "--flash", flash,
                     env={**os.environ, "MICROGPT_CACHE": str(cache)})
    try:
        assert "virtual ESP32" in proc.first_line, proc.first_line + proc.stdout.read()
        assert not any(cache.iterdir())
        written = flash.read_bytes()
        for again in ((), ("--new", "--firmware", OFFICIAL_FIRMWARE)):
            code, out = sim_board_once(qemu, "--flash", flash, *again)
            assert code == 1 and "is the flash of a virtual board that is running" in out, out
            assert "virtual ESP32" not in out and len(qemus_on(flash)) == 1
        assert flash.read_bytes() == written
        proc.kill()  # kill -9: no handler runs
        proc.wait()
        deadline = time.monotonic() + 30
        while qemus_on(flash) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not qemus_on(flash), "QEMU outlived its sim board"
        proc = sim_board(qemu, "--flash", flash)  # a restart: the flash is free again
        assert "virtual ESP32" in proc.first_line and "powered up again" in proc.stdout.readline()
        [pid] = qemus_on(flash)
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 1, out
        assert "the virtual board is off: its QEMU ended (killed by SIGKILL)" in out, out
    finally:
        proc.kill()
        proc.wait()
        kill_qemus_on(flash)


def test_a_tcp_board_refuses_a_taken_port_and_a_second_client(qemu, board_flash, tmp_path):
    # A port another program listens on is refused before anything starts (QEMU's own server
    # would share it and fail after the board was announced). A second client of a running
    # board is told the board is in use, at once, not left unanswered.
    flash = tmp_path / "board.bin"
    flash.write_bytes(board_flash.read_bytes())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, out = sim_board_once(qemu, "--flash", flash, "--tcp", taken.getsockname()[1])
    assert code == 1 and "pick another --tcp PORT" in out and "virtual ESP32" not in out, out
    assert not qemus_on(flash)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = sim_board(qemu, "--flash", flash, "--tcp", port)
    try:
        assert f"on socket://127.0.0.1:{port}" in proc.first_line, proc.first_line
        url = f"socket://127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port)):  # the first client (a terminal, say)
            t0 = time.monotonic()
            code, out = device("pull", "--port", url, "--out", tmp_path / "w.bin", timeout=120)
            assert code == 1 and f"{url} is in use" in out and "Traceback" not in out, out
            assert time.monotonic() - t0 < 30  # told, not timed out
        code, out = device("pull", "--port", url, "--out", tmp_path / "w.bin", timeout=300)
        assert code == 1 and "there is no weights.bin on the board" in out, out  # free again: the board answers
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        kill_qemus_on(flash)


def test_a_flash_on_a_read_only_filesystem_is_refused_naming_it(qemu, board_flash, tmp_path):
    # QEMU cannot write the chip's flash back there: refused before a board is announced, naming
    # the path the user gave (never a temporary file) and the fix; no boot happens.
    (tmp_path / "ro").mkdir()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "board.bin").write_bytes(board_flash.read_bytes())
    board = f'"$PYTHON" -c "from microgpt.cli import main; main()" sim board --qemu {qemu}'
    result = in_namespace(
        "mount -t tmpfs -o ro tmpfs ro\n"
        "mount --bind kept kept && mount -o remount,bind,ro kept\n"
        f"{board} --firmware {OFFICIAL_FIRMWARE} --flash ro/board.bin || true\n"
        f"{board} --flash kept/board.bin\n", tmp_path)
    new, existing = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error:")]
    for line, path in ((new, "ro/board.bin"), (existing, "kept/board.bin")):
        assert f"cannot write {path}: the filesystem is read-only" in line and "--flash" in line, line
        assert ".tmp" not in line
    assert "virtual ESP32" not in result.stdout + result.stderr
