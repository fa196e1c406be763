"""Tests are marked by what they need, from the fixtures they use (conftest.MARKED_BY), so
`-m "not qemu and not slow"` is a quick run that never boots QEMU; a module whose tests share a
QEMU runs on one worker."""
import json
import re
import subprocess
import sys

from conftest import ROOT

# Collects tests as `pytest` does and prints each test's markers (one JSON line).
COLLECT = """
import json, sys, pytest
class Markers:
    def pytest_collection_finish(self, session):
        print(json.dumps({item.nodeid: sorted({m.name for m in item.iter_markers()}) for item in session.items}))
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0", *sys.argv[1:]],
                     plugins=[Markers()]))
"""

# The modules whose tests are checked below (collecting these alone is quicker than the whole suite).
MODULES = [f"tests/{name}.py" for name in ("test_qemu_chip", "test_virtual_board", "test_shapes", "test_device_run",
                                           "test_cmodel", "test_planner")]


def test_each_test_is_marked_by_what_its_fixtures_need():
    proc = subprocess.run([sys.executable, "-c", COLLECT, *MODULES], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    markers = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    marked = {name: {test for test, names in markers.items() if name in names} for name in ("qemu", "board", "vm")}
    # Every test of the chip's modules boots QEMU, through the `qemu` fixture or one built on it.
    chip_tests = {test for test in markers if test.startswith(("tests/test_qemu_chip.py", "tests/test_virtual_board.py"))}
    assert chip_tests and chip_tests <= marked["qemu"]
    assert "tests/test_shapes.py::test_the_chip_trains_any_shape_like_microgpt_py[16x2x1x16]" in marked["qemu"]
    # ... and shares it (a board, one run) with the module's other tests: one xdist group each.
    assert all("xdist_group" in markers[test] for test in chip_tests)
    # The virtual board is QEMU too; a board on the VM behind a pty is not.
    assert "tests/test_virtual_board.py::test_ctrl_c_leaves_the_board_usable" in marked["board"]
    assert marked["board"] <= marked["qemu"]
    assert "tests/test_device_run.py::test_busy_port" in marked["vm"] - marked["qemu"]
    # A target asked for by name in a parametrized fixture is marked by its parameter.
    rodata = "tests/test_cmodel.py::test_errors_carry_their_message_from_rodata"
    assert f"{rodata}[qemu]" in marked["qemu"] - marked["vm"] and f"{rodata}[vm]" in marked["vm"] - marked["qemu"]
    # What needs none of them carries none: the planner's arithmetic.
    assert not {"qemu", "board", "vm"} & set(markers["tests/test_planner.py::test_plan_command"])


def test_a_group_runs_on_one_worker(tmp_path):
    # What the chip's modules rely on from pytest-xdist's --dist loadgroup (pyproject's addopts),
    # which pytest 9.2 broke (pytest-dev/pytest-xdist#1386): tests spread over both workers.
    (tmp_path / "test_grouped.py").write_text(
        "import pytest\npytestmark = pytest.mark.xdist_group('board')\n"
        "@pytest.mark.parametrize('i', range(6))\ndef test_shares(i): pass\n")
    (tmp_path / "test_free.py").write_text("import pytest\n@pytest.mark.parametrize('i', range(6))\n"
                                           "def test_alone(i): pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-n", "2", "--dist",
                           "loadgroup", "-c", "/dev/null", "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workers = set(re.findall(r"^\[(gw\d)\].*PASSED .*test_grouped\.py", proc.stdout, re.M))
    assert len(workers) == 1, proc.stdout
