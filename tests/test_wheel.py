"""`pip install .` (a wheel, not a checkout) carries the firmware and the C kernels: installed
into a fresh virtual environment, the tool builds the trainer's files and trains from them, from
a directory that is not the checkout."""
import json
import subprocess
import sys
import sysconfig
import venv

import pytest
from conftest import ROOT


@pytest.mark.slow
@pytest.mark.usefixtures("micropython")
def test_the_installed_wheel_trains_with_its_own_firmware(tmp_path, names_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("microgpt_esp32-*.whl")
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    # The dependencies come from this interpreter's site-packages (whether that is a venv or not),
    # listed as plain paths: their .pth files, this checkout's editable install among them, stay out.
    here = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "venv" / site.removeprefix(str(env) + "/") / "deps.pth").write_text("\n".join(sorted(here)) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing can be read from it by accident
    elsewhere.mkdir()
    run = subprocess.run([str(python), "-c", "import microgpt.chip as c; print(c.FIRMWARE_DIR)"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and str(env) in run.stdout, run.stdout + run.stderr
    report = elsewhere / "run" / "report.json"
    run = subprocess.run([str(env / "bin" / "microgpt"), "sim", "run", "--data", str(names_path), "--steps", "5",
                          "--samples", "2", "--report", str(report), "--quiet"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(report.read_text())
    assert result["status"] == "ok" and result["kernels"] == "c" and len(result["samples"]) == 2
