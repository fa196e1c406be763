"""The heap planner (microgpt/planner.py): its arrays are the ones the firmware allocates, its
prediction for the default shape is the VM's measured peak within 5% (the chip's: test_qemu_chip),
and a shape that cannot fit is refused with its figures before anything is built."""
import json
import re
import subprocess

import pytest
from click.testing import CliRunner
from conftest import OFFICIAL_FIRMWARE, ROOT

from microgpt import chip, payload, planner
from microgpt.cli import main
from microgpt.errors import PlanError

# The VM allocates the model as the trainer does (train.main): the four big arrays, then GPT.
PROBE = """
import gc
from base import N_PARAMS, zeros
{imports}
def probe():  # locals, as in train.main: no globals dict grows
    gc.collect()
    before = gc.mem_alloc()
    params, grads = zeros(N_PARAMS), zeros(N_PARAMS)
    gc.collect()
    arrays = gc.mem_alloc()
    gpt = GPT(params, grads)
    gc.collect()
    model = gc.mem_alloc() - arrays
    names = {{}}  # a map grown as the instance's attributes grew: what the object holds beside its arrays
    for name in gpt.__dict__:
        names[name] = None
    gc.collect()
    print(arrays - before, model, gc.mem_alloc() - arrays - model)
probe()
"""


def vm(micropython, code, tmp_path, kernels):
    (tmp_path / "probe.py").write_text(code)
    if kernels == "c":
        (tmp_path / "cmodel.mpy").write_bytes(payload.cmodel_build("x64").read_bytes())
    path = f"{tmp_path}:{chip.FIRMWARE_DIR}"
    out = subprocess.run([micropython, "-X", f"heapsize={chip.ESP32_HEAP}", "-c",
                          f"import sys; sys.path[:0] = {path.split(':')!r}; import probe"],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    return [int(x) for x in out.split() if x.isdigit()]


SHAPES = [chip.DEFAULT, chip.Shape(20, 4, 1, 8), chip.Shape(16, 2, 1, 16), chip.Shape(12, 4, 2, 16),
          chip.Shape(12, 3, 3, 16), chip.Shape(64, 4, 1, 32)]


def test_the_work_buffer_is_cmodels(tmp_path, micropython):
    asked = "".join(f"print(cmodel.shape({s.n_embd}, {s.n_head}, {s.n_layer}, {s.block_size}))\n" for s in SHAPES)
    assert vm(micropython, "import cmodel\n" + asked, tmp_path, "c") == [planner.work_floats(s) for s in SHAPES]


@pytest.mark.parametrize("shape, trains", [
    # 1,000 steps in Espressif's QEMU with the official firmware (`sim run --engine qemu --n-embd ...`).
    (chip.Shape(20, 4, 1, 16), True), (chip.Shape(12, 3, 3, 16), True), (chip.Shape(16, 4, 2, 16), True),
    (chip.Shape(12, 4, 4, 16), True), (chip.Shape(24, 4, 1, 16), False), (chip.Shape(16, 4, 3, 16), False)])
def test_what_fits_is_what_trained_on_the_chip(shape, trains):
    assert planner.plan(shape, "c", payload.LOG_EVERY).fits == trains
    if not trains:
        with pytest.raises(PlanError, match="Choose a smaller shape"):
            planner.check(shape, "c", payload.LOG_EVERY)


@pytest.mark.parametrize("kernels, imports", [("c", "from cgpt import GPT"), ("python", "from model import GPT")])
def test_the_arrays_are_what_the_vm_allocates(tmp_path, kernels, imports, micropython):
    weights, model, attributes = vm(micropython, PROBE.format(imports=imports), tmp_path, kernels)
    buffers = dict(planner.plan(chip.DEFAULT, kernels, payload.LOG_EVERY, planner.VM).buffers)
    assert weights == buffers["weights"] + buffers["gradients"]
    arrays = sum(size for what, size in buffers.items() if what.startswith(("C work", "logits", "model buffers")))
    # Beside its arrays the model object holds their names (no more than a map grown as its
    # attributes grew) and is an object itself (32 B).
    assert arrays <= model <= arrays + attributes + 32, (arrays, attributes, model)


@pytest.mark.parametrize("kernels", planner.KERNELS)
def test_the_default_shapes_peak_is_the_vms_within_5_percent(sim_run, kernels):
    code, out, report = sim_run("--engine", "host", "--heap", chip.ESP32_HEAP, "--steps", 50, "--kernels", kernels)
    assert code == 0, out
    predicted = planner.plan(chip.DEFAULT, kernels, payload.LOG_EVERY, planner.VM).peak
    assert abs(report["peak_heap_bytes"] - predicted) <= 0.05 * predicted, (report["peak_heap_bytes"], predicted)


def test_the_chips_peak_with_the_micropython_kernels_and_two_layers_within_5_percent(qemu, names_path, tmp_path):
    # The MicroPython kernels on the emulated chip, for a shape unlike the calibration's: another
    # width (kernels_any.py instead of kernels.py), two layers, a shorter block.
    shape, steps = chip.Shape(8, 2, 2, 8), 3
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["sim", "run", "--engine", "qemu", "--qemu", qemu, "--firmware",
                                       str(OFFICIAL_FIRMWARE), "--data", str(names_path), "--steps", str(steps),
                                       "--samples", "2", "--kernels", "python", "--val", "20", "--report", str(report_path),
                                       "--quiet", "--n-embd", "8", "--n-head", "2", "--n-layer", "2",
                                       "--block-size", "8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    measured = json.loads(report_path.read_text())["peak_heap_bytes"]
    predicted = planner.plan(shape, "python", steps).peak
    assert abs(measured - predicted) <= 0.05 * predicted, (measured, predicted)


def test_the_default_shape_fits_and_the_largest_listed_are_the_largest():
    for kernels in planner.KERNELS:
        assert planner.check(chip.DEFAULT, kernels, payload.LOG_EVERY).fits
        best = planner.largest(kernels, payload.LOG_EVERY)
        assert best and [p.shape.n_params for p in best] == sorted((p.shape.n_params for p in best), reverse=True)
        for p in best:
            assert p.fits and p.peak + p.platform.headroom <= chip.ESP32_HEAP
            wider = chip.Shape(p.shape.n_embd + p.shape.n_head, p.shape.n_head, p.shape.n_layer, p.shape.block_size)
            assert not planner.plan(wider, kernels, payload.LOG_EVERY).fits


def test_a_shape_that_cannot_fit_is_refused_with_the_planners_figures():
    shape = chip.Shape(n_embd=32, n_head=4, n_layer=2, block_size=16)
    with pytest.raises(PlanError) as e:
        planner.check(shape, "c", payload.LOG_EVERY)
    p = planner.plan(shape, "c", payload.LOG_EVERY)
    assert str(e.value) == (
        f"n_embd 32, n_head 4, n_layer 2, block_size 16 ({shape.n_params:,} parameters) needs about {p.peak:,} B of "
        f"heap at its peak with the c kernels, and {planner.HEADROOM:,} B free beside it: {-p.spare:,} B more than "
        "ESP32_GENERIC v1.25.0's 166,592 B. Choose a smaller shape (`microgpt plan` lists the largest that fit)")
    assert p.peak > 4 * 4 * shape.n_params  # the weights, gradients and Adam's two alone


def test_plan_command():
    result = CliRunner().invoke(main, ["plan"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "n_embd 16, n_head 4, n_layer 1, block_size 16: 4,192 parameters, c kernels, on ESP32_GENERIC v1.25.0"
    assert "  weights                                     16,800 B" in lines
    assert "  C work (1,553 floats)                        6,256 B" in lines
    assert any(line.startswith("  predicted peak") and line.endswith(f" {planner.ESP32.measured['c']:,} B")
               for line in lines)
    assert "fits" in result.output and "largest that fit (n_head 4, block_size 16, c kernels):" in lines
    result = CliRunner().invoke(main, ["plan", "--n-embd", "24", "--kernels", "python"])
    assert result.exit_code == 1 and "does NOT fit" in result.output and "model buffers (24 arrays" in result.output


def test_plan_exits_1_when_the_shape_does_not_fit_and_says_when_no_shape_fits():
    result = CliRunner().invoke(main, ["plan", "--n-embd", "24"])
    assert result.exit_code == 1 and result.output.count("does NOT fit") == 1
    result = CliRunner().invoke(main, ["plan", "--block-size", "5000"])
    assert result.exit_code == 1 and result.output.endswith(
        "largest that fit (n_head 4, block_size 5000, c kernels):\n"
        "  none: not even n_embd 4 with one layer fits; choose fewer heads or a smaller block size\n")
    result = CliRunner().invoke(main, ["plan", "--n-embd", "18"])
    assert result.exit_code == 1 and "n_embd 18 must be a multiple of n_head 4" in result.output


def test_the_docs_heap_figures_are_the_planners():
    # The figures are measured once, in planner.py; the planner's model (docs/design.md) and the
    # measurements (docs/measurements.md) quote them.
    design, measured = (" ".join((ROOT / "docs" / name).read_text().split()) for name in ("design.md", "measurements.md"))
    assert (f"{planner.VM_MIN_HEAP['c']:,} B with the C kernels, {planner.VM_MIN_HEAP['python']:,} B with the "
            "MicroPython ones compiled native") in measured
    assert f"({planner.HEADROOM:,} B: the VM's smallest heap that trains less its peak" in design
    calibrations = {"ESP32 in QEMU, C kernels (": planner.ESP32.measured["c"],
                    "ESP32 in QEMU, MicroPython kernels (": planner.ESP32.measured["python"],
                    "VM, C kernels (": planner.VM.measured["c"]}
    for row, peak in calibrations.items():
        assert re.search(re.escape(row) + rf"[^|]*\| {peak:,} B \| {peak:,} B \(", measured), row
