"""Speed on the chip, as guest instructions per training step in Espressif's QEMU.

QEMU's `insn` plugin counts the instructions each emulated CPU executes; MicroPython runs on
cpu 1. Boot, imports, loading the data and writing the weights cost the same in a short run and
a long one, so (count of the long run - count of the short run) / (difference in steps) is what
one training step costs, with the trainer's own per-step work (reading a name, the UART record)
included. Unlike the VM's ms/step, the count hardly depends on the host machine: what does is
ESP-IDF's busy-waits timed by the host's clock (boot, UART), a few million instructions a run
(measured), hence a long run of 200 steps more than the short one.
"""
import dataclasses
import tempfile
from pathlib import Path
from typing import NamedTuple

from . import payload
from .engines.qemu import MICROPYTHON_CPU, QemuEngine
from .run import RunDir, run

SHORT, LONG = 10, 210


class ChipSpeed(NamedTuple):
    per_step: float       # guest instructions on cpu 1 per training step
    reports: dict         # steps -> that run's report


def instructions_per_step(options: payload.RunOptions, docs: list[str], firmware: Path | None, qemu: str,
                          plugin: Path, short: int = SHORT, long: int = LONG) -> ChipSpeed:
    """Run `options` (its steps replaced by `short` and `long`, no samples) in QEMU with the insn
    plugin, and take the difference. Raises if a run fails."""
    reports, counts = {}, {}
    for steps in (short, long):
        with tempfile.TemporaryDirectory() as tmp, RunDir(Path(tmp) / "report.json").claim() as rundir:
            engine = QemuEngine(rundir.work, qemu=qemu, firmware=firmware, insn_plugin=plugin)
            report = run(engine, rundir, dataclasses.replace(options, steps=steps, samples=0), docs)
            if report.error or MICROPYTHON_CPU not in engine.instructions:
                raise RuntimeError(f"the {steps}-step QEMU run failed: {report.error or 'no instruction count'}")
            reports[steps] = report
            counts[steps] = engine.instructions[MICROPYTHON_CPU]
    return ChipSpeed((counts[long] - counts[short]) / (long - short), reports)
