"""What the chip learns in a given board time: held-out loss and samples of a run that fits a budget.

    python3 scripts/learning.py NAMES --budget 60 [--n-embd 20 ...] [--lr 0.02] [--qemu [--firmware FW]] [--out DIR]
    python3 scripts/learning.py NAMES --default [--qemu]        # microgpt.py's run: 1,000 steps, its shape, lr 0.01
    python3 scripts/learning.py NAMES --bigram                  # the bigram anchor, on the same held-out names
    python3 scripts/learning.py NAMES --search --budget 10 60 300 [--shapes 16,4,1,16 20,4,1,16] [--lrs 0.01 0.02]

Board time (microgpt.chip_speed): the compute instructions of a training step on the chip (counted in
Espressif's QEMU with the insn plugin, inside the training loop: `chip_speed.instructions_per_step`,
under a minute a shape) × steps at 240 MHz, plus the run's UART bytes (start line through end
line: `chip_speed.uart_bytes`) at 115200 baud, as if the CPU waited for each. Every step's loss goes
out on the UART whatever --log-every is (about 5.4 bytes a step), so the UART is part of a step's
cost; the held-out evaluation and the samples after training are not counted, their UART bytes are.

A budget run takes as many steps as fit the budget: instructions per step from QEMU, the UART bytes
a step and the run's other bytes from a short run of the same options on the same engine
(`uart_model`: 1,000 steps), and then `steps_for`. It prints the run's row of the README's table:
steps, board time from the run's own UART bytes, held-out loss (`--val`, report.json's `val_loss`)
and the first samples, then its wall time as a comment. With --qemu the run itself is on the
emulated chip; without, in the MicroPython VM (C kernels; the VM computes in double between float32
stores, so after thousands of steps its held-out loss differs from the chip's by a few thousandths).

--search runs every shape × learning rate × budget in the VM (the instructions per step of each shape
still from QEMU) and prints them best first per budget: the candidates to confirm on the chip.

--bigram: the bigram model's held-out loss on exactly the held-out names of a run (the last --val
names of microgpt.py's order for --seed, each cut to block_size as the chip reads it), its counts
from the training names (the others), plus one in every cell as makemore's bigram (P = (N + 1) / row
sum), per token.
"""
import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from microgpt import chip, chip_speed, dataset, payload, reference
from microgpt.engines.host import HostEngine
from microgpt.engines.qemu import QemuEngine, find_insn_plugin, find_qemu
from microgpt.errors import MicrogptError
from microgpt.run import run_apart

ROOT = Path(__file__).resolve().parents[1]
LOG_EVERY = 500  # steps per UART step record of a budget run: 2 KB of losses on the heap, ~45 B of record header every 500 steps
SLACK = 256  # UART bytes kept spare beyond uart_model's: a longer step count in the start line, other samples, val records
SHOW = 8  # samples shown in a row
SEARCH_SHAPES = ("16,4,1,16", "20,4,1,16", "20,2,1,16", "12,4,2,16", "16,4,2,16", "12,3,3,16", "12,4,4,16")  # all fit
SEARCH_LRS = (0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05)


def bigram_loss(training: list[str], held_out: list[str], block_size: int = chip.DEFAULT.block_size) -> float:
    """The mean next-token loss per token on `held_out` of a bigram table counted on `training`,
    one added to every count (makemore's bigram); each name read as the chip reads it, its first
    block_size positions (reference.val_loss)."""
    vocab = chip.VOCAB
    counts = np.ones((vocab, vocab))
    for name in training:
        tokens = reference.tokenize(name)[:block_size + 1]
        np.add.at(counts, (tokens[:-1], tokens[1:]), 1)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    total = count = 0
    for name in held_out:
        tokens = reference.tokenize(name)[:block_size + 1]
        total -= logp[tokens[:-1], tokens[1:]].sum()
        count += len(tokens) - 1
    return float(total / count)


def steps_for(budget_s: float, per_step: float, step_bytes: float, other_bytes: float) -> int:
    """The most steps whose board time fits `budget_s`: `per_step` instructions and `step_bytes`
    UART bytes a step, `other_bytes` (start, val, samples, end) once, SLACK bytes kept spare."""
    step_s = chip_speed.board_seconds(per_step, step_bytes, 1)
    return math.floor((budget_s - (other_bytes + SLACK) * chip_speed.BYTE_S) / step_s)


def step_record_bytes(log: bytes) -> int:
    """The bytes of a UART log's step records, line ends included."""
    return sum(len(line) + 1 for line in log.split(b"\n") if line.startswith(b"MGPT step "))


def train(options: payload.RunOptions, docs: list[str], engine: str, report: Path | None = None,
          qemu: str | None = None, firmware: Path | None = None) -> tuple[dict, bytes]:
    """One run (`engine` "host" or "qemu"): its report.json as a dict, and its UART log. The run's
    files go to `report` (and beside it), or to a directory removed after it."""
    def make(work):
        return HostEngine(work) if engine == "host" else QemuEngine(work, qemu=qemu, firmware=firmware)

    start = time.monotonic()
    try:  # e.g. --out that names no report, or one there already: the tool's own message
        result, _, log = run_apart(make, options, docs, report)
    except MicrogptError as e:
        raise SystemExit(f"Error: {e}") from None
    r = result.to_json()
    if r["error"]:
        raise SystemExit(f"the {options.steps}-step run ({engine}) failed: {r['error']}")
    r["wall_s"] = time.monotonic() - start
    return r, log


def uart_model(options: payload.RunOptions, docs: list[str], engine: str, qemu: str | None = None,
               firmware: Path | None = None) -> tuple[float, int]:
    """(UART bytes a step, the run's other bytes) of `options` on `engine`, from a run of two step
    records there (the chip's records are not the VM's to the byte: its heap has a digit more)."""
    _, log = train(dataclasses.replace(options, steps=2 * options.log_every), docs, engine, None, qemu, firmware)
    steps = step_record_bytes(log)
    return steps / (2 * options.log_every), chip_speed.uart_bytes(log) - steps


def per_step(shape: chip.Shape, docs: list[str], qemu: str, firmware: Path | None) -> float:
    """The chip's compute instructions per training step of `shape` (C kernels), from QEMU."""
    plugin = find_insn_plugin(qemu=qemu)
    if plugin is None:
        raise SystemExit("QEMU's tests/plugin/libinsn.so was not found: set $QEMU_INSN_PLUGIN")
    options = payload.RunOptions(kernels="c", shape=shape)
    return chip_speed.instructions_per_step(options, docs, firmware, qemu, plugin).per_step


def budget_options(budget_s: float, shape: chip.Shape, lr: float, docs: list[str], instructions: float,
                   samples: int, val: int, seed: int, engine: str, qemu: str | None = None,
                   firmware: Path | None = None) -> payload.RunOptions:
    """The run of `shape` at `lr` on `engine` whose board time fits `budget_s`."""
    options = payload.RunOptions(shape=shape, lr=lr, kernels="c", samples=samples, val=val, seed=seed,
                                 log_every=LOG_EVERY)
    step_bytes, other_bytes = uart_model(options, docs, engine, qemu, firmware)
    return dataclasses.replace(options, steps=steps_for(budget_s, instructions, step_bytes, other_bytes))


def row(label: str, r: dict, log: bytes, instructions: float) -> str:
    """The README table's row of a run: shape, parameters, lr, steps, board time, held-out loss, samples."""
    board = chip_speed.board_seconds(instructions, chip_speed.uart_bytes(log) / r["steps"], r["steps"])
    shape = ", ".join(str(r["shape"][knob]) for knob in chip.KNOBS)
    return (f"| {label} | {shape} | {r['params']:,} | {r['config']['lr']:g} | {r['steps']:,} | {board:.2f} s | "
            f"{r['val_loss']:.4f} | {', '.join(r['samples'][:SHOW])} |")


def wall(r: dict, engine: str) -> str:
    """A comment line: the run's wall time on this host (QEMU's follows the host's load; the board time does not)."""
    return (f"# {engine}: {r['wall_s']:.0f} s of wall time, {r['ms_train'] / 1000:.0f} s of it training "
            f"(its clock); train loss, mean of the last {r['loss_window']}: {r['loss_mean']:.4f}")


def parse_shape(text: str) -> chip.Shape:
    return chip.Shape(*(int(v) for v in text.split(",")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="?", type=Path, default=ROOT.parent / "shared/data/names.txt")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--budget", type=float, nargs="+", help="board seconds a run may take (--search: several)")
    what.add_argument("--default", action="store_true", help="microgpt.py's run: 1,000 steps, its shape, lr 0.01")
    what.add_argument("--bigram", action="store_true", help="the bigram table's held-out loss, on the host")
    ap.add_argument("--search", action="store_true", help="with --budget: every --shapes × --lrs in the VM")
    ap.add_argument("--shapes", nargs="+", default=SEARCH_SHAPES, help="--search's shapes, n_embd,n_head,n_layer,"
                    "block_size")
    ap.add_argument("--lrs", type=float, nargs="+", default=SEARCH_LRS, help="--search's learning rates")
    ap.add_argument("--lr", type=float, default=chip.LR, help="a budget run's learning rate")
    for knob in chip.KNOBS:
        ap.add_argument("--" + knob.replace("_", "-"), type=int, default=getattr(chip.DEFAULT, knob),
                        help=f"a budget run's {knob} [default: microgpt.py's]")
    ap.add_argument("--qemu", action="store_true", help="train on the emulated chip (else in the VM)")
    ap.add_argument("--qemu-bin", default=None, help="qemu-system-xtensa [default: $QEMU_XTENSA, PATH]")
    ap.add_argument("--firmware", type=Path, default=None, help="ESP32 firmware for QEMU's image")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--val", type=int, default=payload.VAL, help="names held out (the last of the run's order)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None, metavar="REPORT.json",
                    help="keep the run's report here, its UART log and weights beside it (not with --search)")
    args = ap.parse_args()
    if args.search and args.out:
        ap.error("--out keeps one run's files: not with --search")
    docs = dataset.load_names(args.names)

    if args.bigram:
        ordered, _ = dataset.microgpt_order(docs, args.seed)
        training, held_out = payload.split(ordered, args.val)
        loss = bigram_loss(training, held_out, args.block_size)
        print(f"| bigram table (counts + 1, on the host) | | {chip.VOCAB ** 2:,} | | | | {loss:.4f} | |")
        return

    qemu = find_qemu(args.qemu_bin)
    measured = {}

    def instructions(shape):
        if shape not in measured:
            measured[shape] = per_step(shape, docs, qemu, args.firmware)
            print(f"# {shape}: {measured[shape] / 1e6:.4f} M instructions per step on the chip (QEMU)", flush=True)
        return measured[shape]

    engine = "qemu" if args.qemu else "host"
    if args.default:
        options = payload.RunOptions(kernels="c", samples=args.samples, val=args.val, seed=args.seed)
        counted = instructions(options.shape)  # first: a missing plugin is said before the run's minutes
        r, log = train(options, docs, engine, args.out, qemu, args.firmware)
        print(row(f"microgpt.py's run ({engine})", r, log, counted))
        print(wall(r, engine))
        return

    shapes = [parse_shape(s) for s in args.shapes] if args.search else [
        chip.Shape(*(getattr(args, knob) for knob in chip.KNOBS))]
    lrs = args.lrs if args.search else [args.lr]
    if not args.search and len(args.budget) != 1:
        ap.error("one --budget a run (several with --search)")
    for budget in args.budget:
        results = []
        for shape in shapes:
            for lr in lrs:
                options = budget_options(budget, shape, lr, docs, instructions(shape), args.samples, args.val,
                                         args.seed, engine, qemu, args.firmware)
                r, log = train(options, docs, engine, None if args.search else args.out, qemu, args.firmware)
                results.append((r["val_loss"], row(f"{budget:g} s ({engine})", r, log, instructions(shape))))
                if args.search:
                    print("# " + results[-1][1], flush=True)
                else:
                    print(wall(r, engine))
        if args.search:
            print(f"\n{budget:g} s of board time, best first:")
        for _, line in sorted(results):
            print(line)


if __name__ == "__main__":
    main()
