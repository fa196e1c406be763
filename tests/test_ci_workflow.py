"""The GitHub workflow: its test job runs README's test command, the QEMU job installs Espressif's
QEMU with the tool, as a user does, and trains on it, and the Wokwi job runs only where the token exists."""
import os
import re
import subprocess
from pathlib import Path

import yaml
from conftest import ROOT

WORKFLOW = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())


def steps(job):
    return "\n".join(step.get("run", "") for step in WORKFLOW["jobs"][job]["steps"])


def test_the_test_job_runs_readmes_test_command():
    readme_command = re.search(r"^(python3 -m pytest[^\n#]*?)\s+#", (ROOT / "README.md").read_text(), re.M).group(1)
    assert readme_command in steps("tests")
    assert "pip install -e '.[test]'" in steps("tests")


def test_the_qemu_job_installs_qemu_with_the_tool_and_trains_on_it():
    run = steps("qemu")
    assert "microgpt sim install-qemu" in run
    assert run.index("microgpt sim install-qemu") < run.index("microgpt sim run --engine qemu")
    assert "QEMU_XTENSA" not in run and "--qemu" not in run and "releases/download" not in run  # the tool finds its own


def test_the_wokwi_job_needs_the_token():
    job = WORKFLOW["jobs"]["wokwi"]
    assert job["env"]["WOKWI_CLI_TOKEN"] == "${{ secrets.WOKWI_CLI_TOKEN }}"
    assert all("env.WOKWI_CLI_TOKEN != ''" in step["if"] for step in job["steps"])
    assert "microgpt sim run --engine wokwi" in steps("wokwi")


def test_two_ci_runs_at_once_each_have_a_venv_of_their_own_removed_at_exit(tmp_path):
    # .ci/run's own lines up to its venv, run twice at once; each then says where its venv is and
    # waits: neither may share or remove the other's, and each is gone when its run ends.
    script = (ROOT / ".ci" / "run").read_text()
    setup = script[:script.index("python3 -m pip install")] + 'echo "$VIRTUAL_ENV"\nread -r _\n'
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text(setup)
    runs = [subprocess.Popen(["bash", str(tmp_path / ".ci" / "run")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "TMPDIR": str(tmp_path)}) for _ in range(2)]
    venvs = [run.stdout.readline().strip() for run in runs]
    assert venvs[0] != venvs[1] and all((Path(v) / "bin" / "python3").exists() for v in venvs), venvs
    for run in runs:
        run.communicate("\n", timeout=60)
        assert run.returncode == 0
    assert not any(Path(v).exists() for v in venvs)


def test_the_readmes_board_commands_need_no_download():
    # What each command would download (the firmware, the names) is given as a file in the README's
    # board section, so it runs offline as shown.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try the board commands without a board")[1].split("\n## ")[0]
    commands = [line.split("#")[0].split() for line in section.split("```")[1].splitlines() if line.strip()]
    needs = {("sim", "board"): "--firmware", ("device", "run"): "--data"}
    for argv in commands:
        if argv[0] == "microgpt" and tuple(argv[1:3]) in needs:
            assert needs[tuple(argv[1:3])] in argv, " ".join(argv)
    assert {tuple(argv[1:3]) for argv in commands} >= set(needs)
