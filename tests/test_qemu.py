"""The QEMU engine: its command line, where it finds qemu-system-xtensa, its errors, and a real
child process streaming a UART transcript through it.

A stand-in `qemu-system-xtensa` (a Python script)
plays its part on the process boundary: it records its argv, writes to the flash drive it was
given, prints a transcript from sim/ on stdout in arbitrary chunks, then idles at the "REPL",
exits, or keeps chattering, as asked.
"""
import json
import os
import sys
from pathlib import Path

import pytest

from microgpt.engines.qemu import BINARY, NO_WATCHDOG, QemuEngine, find_qemu
from microgpt.errors import EngineError, Silence
from microgpt.report import from_log

SIM = Path(__file__).resolve().parents[1] / "sim"
MiB = 1 << 20

FAKE_SIMULATOR = f"""#!{sys.executable}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "call.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid(), "token": os.environ.get("WOKWI_CLI_TOKEN")}}, f)
for arg in sys.argv:
    if arg.startswith("file="):  # QEMU's flash drive: the chip writes to it
        with open(arg[5:].split(",")[0], "r+b") as f:
            f.seek(0x3F0000)
            f.write(b"written by the chip")
uart = open(os.environ["FAKE_UART"], "rb").read() if os.environ.get("FAKE_UART") else b""
for i in range(0, len(uart), 97):  # UART bytes arrive in chunks that split lines
    sys.stdout.buffer.write(uart[i:i + 97])
    sys.stdout.flush()
    time.sleep(0.002)
sys.stderr.write(os.environ.get("FAKE_STDERR", ""))
sys.stderr.flush()
after = os.environ.get("FAKE_AFTER", "idle")
while after == "chatter":
    print("tick", flush=True)
    time.sleep(0.05)
if after == "idle":  # QEMU sits at the MicroPython REPL until killed
    time.sleep(3600)
sys.exit(int(after))
"""


def simulator(directory: Path, name: str) -> Path:
    """An executable stand-in simulator called `name` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / name
    exe.write_text(FAKE_SIMULATOR)
    exe.chmod(0o755)
    return exe


def call_of(exe: Path) -> dict:
    return json.loads((exe.parent / "call.json").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def engine_with_flash(tmp_path, **kwargs) -> QemuEngine:
    """A QEMU engine whose flash is in place (a blank 4 MB file: the stand-in boots nothing)."""
    engine = QemuEngine(tmp_path / "run", **kwargs)
    engine.flash.parent.mkdir(parents=True, exist_ok=True)
    with open(engine.flash, "wb") as f:
        f.truncate(4 * MiB)
    return engine


@pytest.fixture
def no_qemu(tmp_path, monkeypatch):
    """An environment with no QEMU anywhere: empty PATH, no $QEMU_XTENSA, empty tool cache and ESP-IDF tools dir."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.delenv("QEMU_XTENSA", raising=False)
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IDF_TOOLS_PATH", str(tmp_path / "idf-tools"))


def test_command_is_espressifs_documented_invocation(tmp_path, no_qemu):
    qemu = simulator(tmp_path / "bin", BINARY)
    with QemuEngine(tmp_path / "run", qemu=qemu) as engine:
        flash = tmp_path / "run" / "qemu-flash.bin"
        assert engine.command() == [str(qemu), "-nographic", "-machine", "esp32",
                                    "-drive", f"file={flash},if=mtd,format=raw", *NO_WATCHDOG]
        assert NO_WATCHDOG == ["-global", "driver=timer.esp32.timg,property=wdt_disable,value=true"]
    with QemuEngine(tmp_path / "run", qemu=qemu, watchdog=True, extra_args=["-icount", "3"]) as engine:
        assert engine.command()[6:] == ["-icount", "3"]


def test_binary_lookup_order(tmp_path, monkeypatch, no_qemu):
    explicit = simulator(tmp_path / "explicit", BINARY)
    from_env = simulator(tmp_path / "env", BINARY)
    on_path = simulator(tmp_path / "path", BINARY)
    tools = tmp_path / "idf-tools" / "tools" / "qemu-xtensa"
    simulator(tools / "esp_develop_9.0.0_20240606" / "qemu" / "bin", BINARY)
    newest = simulator(tools / "esp_develop_10.0.0_20250101" / "qemu" / "bin", BINARY)
    monkeypatch.setenv("QEMU_XTENSA", str(from_env))
    monkeypatch.setenv("PATH", str(on_path.parent))

    assert find_qemu(explicit) == str(explicit)
    assert find_qemu() == str(from_env)
    monkeypatch.delenv("QEMU_XTENSA")
    assert find_qemu() == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    ours = simulator(tmp_path / "cache" / "qemu-xtensa" / "qemu" / "bin", BINARY)  # `microgpt sim install-qemu`'s
    assert find_qemu() == str(ours)
    ours.unlink()
    assert find_qemu() == str(newest)  # numeric version order: 10 > 9
    monkeypatch.delenv("IDF_TOOLS_PATH")  # ESP-IDF's default: ~/.espressif
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = simulator(tmp_path / "home" / ".espressif/tools/qemu-xtensa/esp_develop_9.0.0_20240606/qemu/bin", BINARY)
    assert find_qemu() == str(default)


def test_missing_binary_says_how_to_install(tmp_path, no_qemu):
    with pytest.raises(EngineError) as e:
        QemuEngine(tmp_path / "run")
    message = str(e.value)
    for hint in ("microgpt sim install-qemu", "idf_tools.py install qemu-xtensa", "https://github.com/espressif/qemu/releases",
                 "QEMU_XTENSA", "--qemu PATH"):
        assert hint in message
    with pytest.raises(EngineError, match=r"--qemu .*nowhere/qemu-system-xtensa: no such executable"):
        find_qemu(tmp_path / "nowhere" / BINARY)


def test_the_tool_is_checked_before_any_firmware_is_looked_at(tmp_path, no_qemu, monkeypatch):
    # No QEMU: refused at once, before the (missing) firmware is read or the pinned one downloaded.
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EngineError, match="was not found"):
        QemuEngine(tmp_path / "run", firmware=tmp_path / "no-such-firmware.bin")
    assert not (tmp_path / "cache").exists()


def test_streams_a_run_then_kills_qemu(tmp_path, monkeypatch):
    transcript = (SIM / "qemu-esp32-train.uart").read_bytes()
    monkeypatch.setenv("FAKE_UART", str(SIM / "qemu-esp32-train.uart"))
    qemu = simulator(tmp_path / "bin", BINARY)
    engine = engine_with_flash(tmp_path, qemu=qemu, silence_s=0.5)
    lines = []
    with pytest.raises(Silence, match="no output from the chip for 0.5 s"), engine:
        for line in engine.lines():
            lines.append(line)
    call = call_of(qemu)
    assert not alive(call["pid"])  # killed on close
    assert [str(qemu)] + call["argv"] == engine.command()
    assert lines == transcript.split(b"\n")[:-1]  # a real capture: every line as QEMU printed it
    # QEMU's flash stays in the run's work directory with what the chip wrote (a cut run resumes from it).
    assert engine.flash.read_bytes()[0x3F0000:0x3F0013] == b"written by the chip"

    report = from_log(lines, engine="qemu")
    run, summary = report.run, report.to_json()
    assert report.status == "ok" and run.steps == 30 and summary["params"] == 4192
    assert run.losses[:2] == pytest.approx([3.365967, 3.424273], abs=1e-6) and None not in run.losses
    assert run.samples == ["hoon", "wnonl", "q", "fmo", "qx"]
    assert summary["platform"] == "esp32" and summary["freq_mhz"] == 240
    assert summary["peak_heap_bytes"] == 83616 and run.bad_records == 0  # records per docs/uart-protocol.md
    assert summary["kernels"] == "c" and run.config["freq_boot_mhz"] == 160


def test_watchdog_reset_loop_is_reported(tmp_path, monkeypatch):
    # QEMU exiting (here with 0) simply ends the lines; the parser judges the run.
    monkeypatch.setenv("FAKE_UART", str(SIM / "qemu-esp32-wdt-reset-loop.uart"))
    monkeypatch.setenv("FAKE_AFTER", "0")
    with engine_with_flash(tmp_path, qemu=simulator(tmp_path / "bin", BINARY)) as engine:
        lines = list(engine.lines())
    assert sum(b"rst:0x8 (TG1WDT_SYS_RESET)" in line for line in lines) == 4
    report = from_log(lines, engine="qemu")
    assert report.status == "error" and report.error.startswith("reset loop")
    assert report.run.boots == 4 and report.run.steps == 10 and report.run.bad_records == 1


def test_qemu_failing_reports_its_stderr(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STDERR", 'qemu-system-xtensa: -drive file=x,if=mtd: Failed to get "write" lock\n')
    monkeypatch.setenv("FAKE_AFTER", "1")
    with engine_with_flash(tmp_path, qemu=simulator(tmp_path / "bin", BINARY)) as engine:
        with pytest.raises(EngineError, match=r'(?s)QEMU exited with code 1:\n.*Failed to get "write" lock'):
            list(engine.lines())


def test_deadline_stops_a_run_that_never_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_AFTER", "chatter")
    qemu = simulator(tmp_path / "bin", BINARY)
    with engine_with_flash(tmp_path, qemu=qemu, silence_s=5, deadline_s=0.5) as engine:
        with pytest.raises(Silence, match="did not finish within 0.5 s"):
            list(engine.lines())
    assert not alive(call_of(qemu)["pid"])
