"""scripts/bench.py runs end to end: every row of its table, and the chip's .mpy sizes."""
import re
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.usefixtures("micropython")
def test_benchmark_prints_every_row_and_the_chips_mpy_sizes(names_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), str(names_path),
                          "--vm-steps", "3", "--scalar-steps", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = re.findall(r"^(.+?)\s+([\d.]+)\s+([\d.]+)x", out, re.M)
    assert [name.split(" (")[0] for name, _, _ in rows] == [
        "firmware in MicroPython VM"] * 4 + ["numpy reference on CPython", "microgpt.py's scalar autograd on CPython"]
    assert all(float(ms) > 0 for _, ms, _ in rows)
    for emit in ("bytecode", "native"):
        sizes = re.search(rf"^\.mpy for xtensawin \({emit}\): (.*)$", out, re.M).group(1)
        assert all(f"{m}.mpy" in sizes for m in ("cgpt", "checkpoint", "cmodel", "model", "rng", "sample", "train")), sizes
