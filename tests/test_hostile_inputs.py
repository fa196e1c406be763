"""Hostile use (issue 22, round 3): inputs and limits are refused at the option with a line that
names the fix, before anything runs; the tool finds its own VM however it is started."""
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from microgpt.cli import main


def cli(*args, input=None, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], input=input, env=env)
    return result.exit_code, result.output


def test_the_vm_installed_beside_the_tool_is_found_without_activating_its_venv(tmp_path):
    # As from pipx or `/path/venv/bin/microgpt`: the venv's bin/ is not on PATH.
    tool = Path(sys.executable).parent / "microgpt"
    env = {k: v for k, v in os.environ.items() if k != "MICROPYTHON"} | {"PATH": "/usr/bin:/bin"}
    names = tmp_path / "names.txt"
    names.write_text("emma\nava\n")
    done = subprocess.run([tool, "sim", "run", "--steps", "1", "--samples", "0", "--data", names, "--quiet",
                           "--report", tmp_path / "r" / "report.json"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: 1 steps")


def test_a_micropython_that_is_a_directory_is_named(tmp_path):
    code, out = cli("sim", "run", "--report", tmp_path / "r.json", env={"MICROPYTHON": str(tmp_path)})
    assert code == 1 and f"$MICROPYTHON {tmp_path} is not an executable file" in out
    code, out = cli("sim", "run", "--micropython", tmp_path, "--report", tmp_path / "r.json")
    assert code == 1 and f"--micropython {tmp_path} is not an executable file" in out
