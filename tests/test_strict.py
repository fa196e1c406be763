"""Real-target tests skip, with the reason, where Espressif's QEMU is not installed; in strict mode
(MICROGPT_REAL_TARGETS=strict, which .ci/run sets where ../shared/qemu exists) they fail instead,
so CI never passes by skipping the chip."""
import os
import subprocess
import sys

from conftest import ROOT

TEST = "tests/test_qemu_chip.py::test_the_chips_heap_peaks_under_100_kb"


def pytest_without_qemu(tmp_path, strict: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("QEMU_XTENSA", "MICROGPT_REAL_TARGETS")}
    env["PATH"] = str(tmp_path / "empty-path") + os.pathsep + os.path.dirname(sys.executable)
    env["IDF_TOOLS_PATH"] = str(tmp_path / "no-idf-tools")
    if strict:
        env["MICROGPT_REAL_TARGETS"] = "strict"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", "0", TEST], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_without_qemu_a_real_target_test_skips_and_says_why(tmp_path):
    result = pytest_without_qemu(tmp_path, strict=False)
    assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout
    assert "qemu-system-xtensa is not installed" in result.stdout


def test_in_strict_mode_it_fails(tmp_path):
    result = pytest_without_qemu(tmp_path, strict=True)
    assert result.returncode == 1 and "1 error" in result.stdout, result.stdout
    assert "MICROGPT_REAL_TARGETS=strict: real-target tests must run" in result.stdout


def test_ci_runs_the_readme_test_command_in_strict_mode_where_qemu_is():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m pytest -q" in readme and ci.rstrip().endswith("python3 -m pytest -q")
    assert "MICROGPT_REAL_TARGETS=strict" in ci and "QEMU_XTENSA=" in ci and "python3 -m venv" in ci
