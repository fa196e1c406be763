"""Speed and memory benchmark, in one invocation on one machine (issue: make the trainer fast).

    python scripts/bench.py [NAMES] [--vm-steps 100] [--scalar-steps 50] [--min-heap] [--qemu [--qemu-bin PATH]]

Measures: with --qemu, speed on the chip (microgpt.chip_speed), in Espressif's QEMU with the official
firmware: guest instructions per training step from runs that print little, with the C kernels and
with the MicroPython ones (bytecode, as the chip runs them; a few minutes); the UART bytes per step
of a default run (C kernels); and from both, a board's time for 1,000 steps; the firmware trainer in the
MicroPython VM (ms/step, live heap, bytes allocated per step) with the C kernels, and with the
MicroPython ones as plain bytecode and with their @micropython.native loops at the ESP32's
heap, and native with a 16 MB heap (garbage collection nearly idle); the numpy reference (1,000 steps);
microgpt.py's scalar-autograd algorithm on CPython (microgpt.scalar); the .mpy sizes of every
trainer module compiled for the chip (mpy-cross -march=xtensawin); with --min-heap, the smallest
VM heap (1 KB resolution) at which 1,000 steps + 20 samples complete.
"""
import argparse
import time
from pathlib import Path

from microgpt import chip, chip_speed, dataset, mpy, payload, reference, scalar
from microgpt.chip import ESP32_HEAP
from microgpt.engines.host import HostEngine
from microgpt.engines.qemu import find_insn_plugin, find_qemu
from microgpt.errors import PlanError
from microgpt.planner import HEADROOM
from microgpt.run import run_apart

ROOT = Path(__file__).resolve().parents[1]


def vm_run(docs, steps, emit, heap=ESP32_HEAP, samples=0, kernels="python", headroom=HEADROOM, val=0):
    # The speed rows evaluate no held-out names (their time is the steps'); the heap search does, as a default run.
    options = payload.RunOptions(steps=steps, samples=samples, emit=emit, kernels=kernels, val=val)
    return run_apart(lambda work: HostEngine(work, heap=heap, headroom=headroom), options, docs)[0]


def min_heap(docs, emit, kernels, lo=60_000, hi=ESP32_HEAP):
    # Buffers are all allocated before step 1, so a short run finds the bound; 1,000 steps confirm it. The
    # planner's headroom is this search's result, so the runs here ask none of the heap; a heap below the
    # planned peak is refused before it runs, as one that runs out is.
    def trains(heap, steps):
        try:
            return vm_run(docs, steps, emit, heap, 20, kernels, headroom=0, val=payload.VAL).status == "ok"
        except PlanError:
            return False

    while hi - lo > 1024:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if trains(mid, 20) else (mid, hi)
    while not trains(hi, 1000):
        hi += 1024
    return hi


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="?", type=Path, default=ROOT.parent / "shared/data/names.txt")
    ap.add_argument("--vm-steps", type=int, default=100)
    ap.add_argument("--scalar-steps", type=int, default=50)
    ap.add_argument("--min-heap", action="store_true")
    ap.add_argument("--qemu", action="store_true", help="also count guest instructions per step in Espressif's QEMU")
    ap.add_argument("--qemu-bin", default=None, help="qemu-system-xtensa [default: $QEMU_XTENSA, PATH]")
    ap.add_argument("--firmware", type=Path, default=None, help="ESP32 firmware for the QEMU image")
    ap.add_argument("--qemu-kernels", choices=("c", "python", "both"), default="both",
                    help="whose instructions --qemu counts (the MicroPython kernels' count takes minutes)")
    ap.add_argument("--chip-only", action="store_true", help="with --qemu: only the chip's figures, no VM or CPython")
    for knob in chip.KNOBS:
        ap.add_argument("--" + knob.replace("_", "-"), type=int, default=getattr(chip.DEFAULT, knob),
                        help=f"the model's {knob} for --qemu's count [default: microgpt.py's]")
    args = ap.parse_args()
    shape = chip.Shape(*(getattr(args, knob) for knob in chip.KNOBS))
    docs = dataset.load_names(args.names)
    rows = []

    if args.qemu:
        qemu = find_qemu(args.qemu_bin)
        plugin = find_insn_plugin(qemu=qemu)
        if plugin is None:
            raise SystemExit("QEMU's tests/plugin/libinsn.so was not found: set $QEMU_INSN_PLUGIN")
        for kernels in ("c", "python") if args.qemu_kernels == "both" else (args.qemu_kernels,):
            options = payload.RunOptions(kernels=kernels, shape=shape)
            speed = chip_speed.instructions_per_step(options, docs, args.firmware, qemu, plugin)
            steps, report = max(speed.reports.items())
            r = report.to_json()
            how = (f"the {steps - 1} steps between the first and the last of a {steps}-step run printing nothing"
                   " meanwhile" if kernels == "c" else f"a {chip_speed.LONG}-step run less a {chip_speed.SHORT}-step"
                   " one")
            print(f"ESP32 in QEMU, {kernels} kernels ({r['emit']}), {shape}: {speed.per_step / 1e6:.3f} M guest instructions"
                  f" per training step on cpu 1 ({how}); peak heap {r['peak_heap_bytes']:,} B")
            if kernels == "c":
                default = payload.RunOptions(shape=shape)
                uart = chip_speed.uart_bytes_per_step(default, docs, args.firmware, qemu)
                u = uart.report.to_json()
                print(f"ESP32 in QEMU, a default run ({default.steps} steps, log every {default.log_every}, "
                      f"{default.samples} samples): {uart.per_step:.2f} UART bytes per step, start line through end "
                      f"line; mean of the last {u['loss_window']} losses {u['loss_mean']:.4f}; peak heap "
                      f"{u['peak_heap_bytes']:,} B")
                board = chip_speed.board_seconds(speed.per_step, uart.per_step)
                print(f"a board, 1,000 steps at {chip_speed.CLOCK_HZ / 1e6:.0f} MHz and {chip_speed.BAUD} baud: "
                      f"at most {board:.2f} s (one instruction a cycle, and the UART's bytes as if the CPU waited for "
                      "each; its FIFO sends while the CPU computes)")
        if args.chip_only:
            return

    # At the ESP32's heap, then with a heap so large that the garbage collector hardly runs: the
    # difference is what collecting the float temporaries costs.
    for kernels, emit, heap in (("c", "native", ESP32_HEAP), ("python", "bytecode", ESP32_HEAP),
                                ("python", "native", ESP32_HEAP), ("python", "native", 16 << 20)):
        report = vm_run(docs, args.vm_steps, emit, heap, kernels=kernels)
        assert report.status == "ok", report.error
        r = report.to_json()
        rows.append((f"firmware in MicroPython VM ({kernels} kernels, {emit}, {heap:,} B heap)", r["ms_per_step"],
                     f"live heap {r['peak_heap_bytes']:,} B, {r['alloc_per_step']:,} B allocated/step"))

    ordered, init = dataset.microgpt_order(docs, 42)
    t = time.perf_counter()
    reference.train(ordered, init, 1000)
    numpy_s = time.perf_counter() - t
    rows.append(("numpy reference on CPython", numpy_s * 1000 / 1000, f"1,000 steps in {numpy_s:.2f} s"))

    steps = scalar.train_steps(docs, 1000)
    next(steps)  # the first step also builds the model
    t = time.perf_counter()
    for _ in range(args.scalar_steps):
        next(steps)
    scalar_ms = (time.perf_counter() - t) * 1000 / args.scalar_steps
    rows.append(("microgpt.py's scalar autograd on CPython", scalar_ms, f"{args.scalar_steps} steps"))

    print(f"{'':72} {'ms/step':>10}   ratio to microgpt.py")
    for name, ms, note in rows:
        print(f"{name:72} {ms:>10.2f}   {scalar_ms / ms:6.1f}x  {note}")

    esp32 = mpy.firmware_target("v1.25.0")
    for emit in ("bytecode", "native"):
        built = payload.build(payload.RunOptions(steps=1, emit=emit, kernels="c", val=0), ["emma"], esp32)
        sizes = {k: len(v) for k, v in built.files.items() if k.endswith(".mpy")}
        print(f".mpy for xtensawin ({emit}): " + ", ".join(f"{k} {v:,} B" for k, v in sizes.items())
              + f"; total {sum(sizes.values()):,} B")

    if args.min_heap:
        for kernels, emit in (("c", "native"), ("python", "bytecode"), ("python", "native")):
            print(f"smallest VM heap for 1,000 steps + 20 samples ({kernels} kernels, {emit}): "
                  f"{min_heap(docs, emit, kernels):,} B")


if __name__ == "__main__":
    main()
