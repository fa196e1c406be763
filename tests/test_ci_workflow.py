"""The GitHub workflow: its test job runs README's test command, the QEMU job installs Espressif's
QEMU with the tool, as a user does, and trains on it, and the Wokwi job runs only where the token exists."""
import re

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
