"""Speed on the chip: guest instructions per training step in Espressif's QEMU, UART bytes per
step, and from both an estimate of a board's time.

Compute: QEMU's `insn` plugin counts the instructions each emulated CPU executes; MicroPython runs
on cpu 1. QEMU's guest clock follows the host's, and whatever waits on time costs a number of
instructions that depends on the host's load: UART output at its baud rate, and every flash
access (ESP-IDF stops the other CPU for it, and QEMU runs the two CPUs by turns, so the wait
lasts up to a time slice of the host: boot, loading the data, writing the weights cost ±100 M
instructions from run to run). So the count is taken inside the training loop only, from the
first step to the last, in a run that prints nothing meanwhile (one step record, at the end;
no samples): the plugin's `match` option prints, at every execution of an instruction, the
instructions its CPU ran since the previous one. The C module converts the name's length to a
float once a step (the mean over its positions, `ufloat.s`), which no other code runs during
training; summed, those deltas give cpu 1's count at each step.

With the MicroPython kernels (no C module) a step costs ~180 M instructions, against which the
boot's noise and a step record every 25 steps are small: there, the count is the difference of a
long and a short run.

UART: the bytes a default run sends from its start line through its end line (step records,
samples, start and end), per step.

A board's time for 1,000 steps at 240 MHz and 115200 baud, as an upper bound: one instruction a
cycle, plus every UART byte's 10 bits on the wire as if the CPU waited for each (the UART's FIFO
in fact sends while the CPU computes).
"""
import dataclasses
import re
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from . import payload
from .engines.qemu import MICROPYTHON_CPU, QemuEngine
from .report import Report
from .run import run_apart

STEPS = 201  # the C kernels' run: 200 steps between the first marker and the last
SHORT, LONG = 10, 210  # the MicroPython kernels' runs
MARK = "ufloat.s"
DUPLICATE = 10_000  # QEMU may report one execution twice when it retranslates a block: a step is far longer
CLOCK_HZ = 240e6
BAUD = 115200
BYTE_S = 10 / BAUD  # start bit, 8 data bits, stop bit: 86.8 µs


class ChipSpeed(NamedTuple):
    per_step: float       # guest instructions on cpu 1 per training step
    reports: dict         # steps -> that run's report


class UartLoad(NamedTuple):
    per_step: float       # UART bytes per training step, start line through end line
    report: Report        # the run's


def _qemu_run(options: payload.RunOptions, docs: list[str], firmware: Path | None, qemu: str,
              plugin: str | None) -> tuple[Report, QemuEngine, bytes]:
    """One run in QEMU: its report, the engine (instruction counts, plugin output) and its UART log."""
    report, engine, log = run_apart(lambda work: QemuEngine(work, qemu=qemu, firmware=firmware, insn_plugin=plugin),
                                    options, docs)
    if report.error:
        raise RuntimeError(f"the {options.steps}-step QEMU run failed: {report.error}")
    return report, engine, log


def marks(plugin_log: str) -> list[tuple[int, int]]:
    """(address, its CPU's instruction count then) for each execution the insn plugin's `match`
    reported, in order. Raises if two CPUs executed the instruction (their counts interleave)."""
    out, count, hits = [], 0, 0
    for m in re.finditer(r"^0x([0-9a-f]+), '.*', \d+ hits, (\d+) match hits, \D*(\d+) since last match", plugin_log,
                         re.M):
        hits += 1
        if int(m[2]) != hits:
            raise RuntimeError(f"{MARK} ran on more than one CPU: the count cannot be read per CPU")
        count += int(m[3])
        out.append((int(m[1], 16), count))
    return out


def per_step_between_marks(found: list[tuple[int, int]], steps: int) -> float:
    """Instructions per step from the address executed exactly once a step (duplicates dropped)."""
    at = defaultdict(list)
    for address, count in found:
        if not at[address] or count - at[address][-1] > DUPLICATE:
            at[address].append(count)
    once = [counts for counts in at.values() if len(counts) == steps]
    if len(once) != 1:
        raise RuntimeError(f"no single instruction {MARK} ran once per step ({steps} steps; executions per address: "
                           f"{sorted(len(c) for c in at.values())}): is the C module the one this measures?")
    counts = once[0]
    return (counts[-1] - counts[0]) / (steps - 1)


def instructions_per_step(options: payload.RunOptions, docs: list[str], firmware: Path | None, qemu: str,
                          plugin: Path) -> ChipSpeed:
    """cpu 1's instructions per training step of `options` (see the module's doc), from runs
    without samples or a held-out loss, which follow the training loop and would only add to the
    MicroPython kernels' noise. Raises if a run fails."""
    quiet = dataclasses.replace(options, samples=0, val=0)
    if options.kernels == "python":  # step records as asked: a silent run of these would outlast the engine's patience
        reports, counts = {}, {}
        for steps in (SHORT, LONG):
            reports[steps], engine, _ = _qemu_run(dataclasses.replace(quiet, steps=steps), docs, firmware, qemu,
                                                  str(plugin))
            counts[steps] = engine.instructions[MICROPYTHON_CPU]
        return ChipSpeed((counts[LONG] - counts[SHORT]) / (LONG - SHORT), reports)
    report, engine, _ = _qemu_run(dataclasses.replace(quiet, steps=STEPS, log_every=STEPS), docs, firmware, qemu,
                                  f"{plugin},match={MARK}")
    return ChipSpeed(per_step_between_marks(marks(engine.insn_output), STEPS), {STEPS: report})


def uart_bytes(log: bytes) -> int:
    """Bytes of a UART log from its MGPT start line through its MGPT end line, line ends included."""
    lines = log.split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"MGPT start "))
    end = next(i for i, line in enumerate(lines) if line.startswith(b"MGPT end "))
    return sum(len(line) + 1 for line in lines[start:end + 1])


def uart_bytes_per_step(options: payload.RunOptions, docs: list[str], firmware: Path | None, qemu: str) -> UartLoad:
    """Run `options` as they are in QEMU and count its UART bytes per step. Raises if the run fails."""
    report, _, log = _qemu_run(options, docs, firmware, qemu, None)
    return UartLoad(uart_bytes(log) / options.steps, report)


def board_seconds(instructions_per_step: float, uart_bytes_per_step: float, steps: int = 1000) -> float:
    """Upper bound of a board's time for `steps` steps at CLOCK_HZ and BAUD (see the module's doc)."""
    return steps * (instructions_per_step / CLOCK_HZ + uart_bytes_per_step * BYTE_S)
