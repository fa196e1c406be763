"""Shapes other than microgpt.py's (--n-embd, --n-head, --n-layer, --block-size): the trainer
takes the shape from config.json at run time and trains like microgpt.py's algorithm with the
same shape (microgpt/reference.py, checked against microgpt/scalar.py; microgpt.py's initial
weights and data order), in the VM (the C kernels and the MicroPython ones) and on the emulated
chip (the C kernels); the weights and checkpoints it writes carry the shape."""
import functools
import json
import sys

import pytest
from conftest import OFFICIAL_FIRMWARE, ROOT, cli

from microgpt import chip, reference
from microgpt.chip import Shape
from microgpt.dataset import microgpt_order

STEPS = 20
# Together they differ from microgpt.py's shape in each knob (heads of 5 and 3, a width the
# unrolled MicroPython kernels do not take), and each trains in the ESP32's heap: microgpt.py's
# width with two layers (7,264 parameters) does not, its four arrays of 29 KB needing more than
# the largest free blocks of the chip's heap.
SHAPES = [Shape(n_embd=20, block_size=8), Shape(n_head=2), Shape(n_embd=12, n_head=4, n_layer=2)]



def shape_id(shape):
    return "x".join(str(getattr(shape, k)) for k in chip.KNOBS)


def knob_options(shape):
    return ["--n-embd", shape.n_embd, "--n-head", shape.n_head, "--n-layer", shape.n_layer,
            "--block-size", shape.block_size]


@pytest.fixture(scope="session")
def microgpt_losses_of(docs):
    """microgpt.py's losses of a STEPS-step run with seed 42, by shape: its algorithm in numpy
    (microgpt.reference, which equals microgpt.scalar's to 1e-9 for shapes unlike microgpt.py's in
    each knob: tests/test_reference.py), a hundred times faster than the scalar autograd."""

    @functools.cache
    def losses(shape):
        ordered, init = microgpt_order(docs, 42, shape)
        return reference.train(ordered, init, STEPS, shape)[1]

    return losses


def check_run(code, out, report, shape, microgpt_losses, kernels):
    assert code == 0 and report["status"] == "ok", out
    assert report["kernels"] == kernels and report["shape"] == json.loads(json.dumps(shape.__dict__))
    assert report["params"] == shape.n_params and len(report["losses"]) == STEPS
    worst = max(abs(a - b) for a, b in zip(report["losses"], microgpt_losses))
    assert worst <= 2e-3, worst
    with open(report["weights"], "rb") as f:
        assert chip.read_weights(f.read(), "of the run")[0] == shape


@pytest.mark.parametrize("kernels", ["c", "python"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_the_vm_trains_any_shape_like_microgpt_py(sim_run, microgpt_losses_of, shape, kernels):
    code, out, report = sim_run("--steps", STEPS, "--samples", 3, "--kernels", kernels, *knob_options(shape))
    check_run(code, out, report, shape, microgpt_losses_of(shape), kernels)
    assert all(len(s) <= shape.block_size for s in report["samples"])


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_the_chip_trains_any_shape_like_microgpt_py(qemu, names_path, tmp_path, microgpt_losses_of, shape):
    report_path = tmp_path / "report.json"
    code, out = cli("sim", "run", "--engine", "qemu", "--qemu", qemu, "--firmware", OFFICIAL_FIRMWARE,
                    "--data", names_path, "--steps", STEPS, "--samples", 5, "--report", report_path, "--quiet",
                    *knob_options(shape))
    report = json.loads(report_path.read_text())
    check_run(code, out, report, shape, microgpt_losses_of(shape), "c")
    assert report["platform"] == "esp32"
    # `microgpt sample` reads the shape from the weights' header and draws the chip's names.
    code, sampled = cli("sample", "--weights", report["weights"], "--count", 5)
    assert code == 0, sampled
    assert [(line.split(maxsplit=1) + [""])[1] for line in sampled.splitlines()] == report["samples"]


def test_a_checkpoint_of_another_shape_is_refused_and_leaves_no_trace(tmp_path):
    sys.path.insert(0, str(ROOT / "firmware"))
    try:
        import checkpoint
    finally:
        sys.path.remove(str(ROOT / "firmware"))
    from array import array

    path = str(tmp_path / "ckpt.bin")
    checkpoint.save(path, 7, 100, 50, 123, (16, 4, 1, 16), (array("f", [1.0, 2.0]),))
    mine = array("f", [0.0, 0.0])
    with pytest.raises(checkpoint.BadCheckpoint, match="other-shape"):
        checkpoint.load(path, 7, 100, (16, 2, 1, 16), (mine,))
    assert list(mine) == [0.0, 0.0]
    assert checkpoint.load(path, 7, 100, (16, 4, 1, 16), (mine,)) == (50, 123) and list(mine) == [1.0, 2.0]
