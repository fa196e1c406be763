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
from test_val import AGREE, host_val_loss

from microgpt import chip, reference
from microgpt.chip import Shape
from microgpt.dataset import microgpt_order

STEPS = 20
VAL = 100  # held-out names the chip's runs evaluate (the default run's 1,000: tests/test_qemu_chip.py)
# Together they differ from microgpt.py's shape in each knob (heads of 5 and 3, a width the
# unrolled MicroPython kernels do not take), and each trains in the ESP32's heap: microgpt.py's
# width with two layers (7,264 parameters) only since Adam's m and v are arrays by layer
# (adam.py), which spread over the heap's areas (as four whole-model arrays of 29 KB it ended
# in a MemoryError before step 1).
SHAPES = [Shape(n_embd=20, block_size=8), Shape(n_head=2), Shape(n_embd=12, n_head=4, n_layer=2), Shape(n_layer=2)]
# The largest that fits the chip with the C kernels (7,752 parameters; also only since m and v are
# by layer); the MicroPython kernels' buffers and the VM's 64-bit objects take more than its heap.
LARGEST = Shape(n_embd=12, n_layer=4)



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


@pytest.mark.parametrize("shape, kernels", [(shape, kernels) for shape in SHAPES for kernels in ("c", "python")]
                         + [(LARGEST, "c")], ids=lambda x: shape_id(x) if isinstance(x, Shape) else x)
def test_the_vm_trains_any_shape_like_microgpt_py(sim_run, microgpt_losses_of, shape, kernels):
    code, out, report = sim_run("--steps", STEPS, "--samples", 3, "--kernels", kernels, *knob_options(shape))
    check_run(code, out, report, shape, microgpt_losses_of(shape), kernels)
    assert all(len(s) <= shape.block_size for s in report["samples"])


@pytest.mark.parametrize("shape", SHAPES + [LARGEST], ids=shape_id)
def test_the_chip_trains_any_shape_like_microgpt_py(qemu, names_path, tmp_path, microgpt_losses_of, shape, docs):
    report_path = tmp_path / "report.json"
    code, out = cli("sim", "run", "--engine", "qemu", "--qemu", qemu, "--firmware", OFFICIAL_FIRMWARE,
                    "--data", names_path, "--steps", STEPS, "--samples", 5, "--val", VAL, "--report", report_path, "--quiet",
                    *knob_options(shape))
    report = json.loads(report_path.read_text())
    check_run(code, out, report, shape, microgpt_losses_of(shape), "c")
    assert report["platform"] == "esp32"
    # The C's forward-only loss, for this shape, on the chip: the host's from the same weights.
    assert report["val_names"] == VAL and abs(report["val_loss"] - host_val_loss(report, docs, VAL)) <= AGREE
    # `microgpt sample` reads the shape from the weights' header and draws the chip's names.
    code, sampled = cli("sample", "--weights", report["weights"], "--count", 5)
    assert code == 0, sampled
    assert [(line.split(maxsplit=1) + [""])[1] for line in sampled.splitlines()] == report["samples"]


@pytest.mark.parametrize("shape", [Shape(n_layer=3), Shape(n_embd=12, n_head=3, n_layer=2), LARGEST], ids=shape_id)
def test_a_checkpoint_of_adams_pieces_is_the_flat_layout(firmware_on_cpython, tmp_path, shape):
    # With more than one layer the trainer checkpoints (params, m, v) with m and v lists of pieces
    # (adam.py): the file must be the one whole-model arrays give, so that checkpoints stay
    # those of microgpt.py's parameter order.
    import adam
    import base
    import checkpoint
    import numpy as np

    knobs = tuple(getattr(shape, k) for k in chip.KNOBS)
    base.set_shape(*knobs)
    try:
        pieces = adam.bounds()
    finally:
        base.set_shape(*(getattr(chip.DEFAULT, k) for k in chip.KNOBS))
    assert len(pieces) == shape.n_layer
    rng = np.random.default_rng(3)
    params, m, v = (rng.normal(size=shape.n_params).astype(np.float32) for _ in range(3))
    whole, split = str(tmp_path / "whole.bin"), str(tmp_path / "split.bin")
    checkpoint.save(whole, 7, 100, 50, 123, knobs, (params, m, v))
    checkpoint.save(split, 7, 100, 50, 123, knobs, (params, [m[a:b] for a, b in pieces], [v[a:b] for a, b in pieces]))
    assert open(whole, "rb").read() == open(split, "rb").read()
    back = (np.zeros(shape.n_params, np.float32), *([np.zeros(b - a, np.float32) for a, b in pieces] for _ in "mv"))
    assert checkpoint.load(whole, 7, 100, knobs, back) == (50, 123)
    assert np.array_equal(np.concatenate([back[0], *back[1], *back[2]]), np.concatenate([params, m, v]))


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
