"""The numpy reference against calculus (finite differences) and against microgpt.py's own
algorithm (microgpt.scalar and its recorded 1,000-step run). `docs` (the real names.txt) comes
from conftest.py."""
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from microgpt import chip, reference, scalar
from microgpt.dataset import microgpt_order
from microgpt.download import sha256_of

FIXTURE = Path(__file__).resolve().parent / "data/microgpt_seed42.json"

# a 1-letter name, repeated letters (wte rows accumulate), and 24 letters (cut at block_size)
CHECK_NAMES = ["a", "anna", "emma", "mariaguadalupeconcepcion"]


@pytest.fixture(scope="module")
def microgpt_run():
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def trained(docs):
    """The reference's float64 run of microgpt.py's 1,000 steps, seed 42."""
    ordered, init = microgpt_order(docs, 42)
    return reference.train(ordered, init, 1000)


# Shapes that differ from microgpt.py's in each knob (n_embd, n_head, n_layer, block_size).
SHAPES = [chip.Shape(24, 4, 1, 16), chip.Shape(16, 2, 1, 16), chip.Shape(16, 4, 2, 16), chip.Shape(16, 4, 1, 8)]


def random_weights(seed, std=chip.INIT_STD, dtype=np.float64, shape=chip.DEFAULT):
    return np.random.default_rng(seed).normal(0, std, shape.n_params).astype(dtype)


@pytest.mark.parametrize("shape", [chip.DEFAULT, *SHAPES], ids=str)
def test_layout_is_microgpts_state_dict(shape):
    state_dict = scalar.make_state_dict(chip.VOCAB, lambda: 0.0, shape)
    assert list(state_dict) == [name for name, _, _ in shape.matrices()]
    assert [(len(mat), len(mat[0])) for mat in state_dict.values()] == [(r, c) for _, r, c in shape.matrices()]
    assert shape.n_params == len(scalar.parameters(state_dict))
    flat = np.arange(shape.n_params, dtype=np.float64)
    w = reference.views(flat, shape)
    last = f"layer{shape.n_layer - 1}.mlp_fc2"
    assert w["wpe"][0, 0] == 27 * shape.n_embd and w[last][-1, -1] == shape.n_params - 1
    w["layer0.attn_wq"][1, 2] = -1.0  # views write through
    assert flat[reference.offsets(shape)["layer0.attn_wq"][0] + shape.n_embd + 2] == -1.0


def test_the_default_is_microgpts_4192_parameters():
    assert chip.DEFAULT.n_params == 4192 and chip.DEFAULT == chip.Shape(16, 4, 1, 16)


def test_tokenize():
    assert reference.tokenize("abz") == [26, 0, 1, 25, 26]
    with pytest.raises(ValueError, match="a-z"):
        reference.tokenize("aB")


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_gradient_matches_central_differences(name):
    """Relative error, per parameter matrix over 64 random entries of it:
    ||g_fd - g|| / max(||g_fd||, ||g||), in float64 with h = 1e-5 (both zero counts as 0)."""
    params = random_weights(seed=CHECK_NAMES.index(name))
    tokens = reference.tokenize(name)
    _, grad = reference.loss_and_grad(params, tokens)
    rng = np.random.default_rng(0)
    h = 1e-5
    for matrix, (start, rows, cols) in reference.offsets().items():
        picked = start + rng.choice(rows * cols, size=64, replace=False)
        fd = np.empty(len(picked))
        for j, i in enumerate(picked):
            plus, minus = params.copy(), params.copy()
            plus[i] += h
            minus[i] -= h
            fd[j] = (reference.loss_and_grad(plus, tokens)[0] - reference.loss_and_grad(minus, tokens)[0]) / (2 * h)
        exact = grad[picked]
        scale = max(np.linalg.norm(fd), np.linalg.norm(exact))
        error = np.linalg.norm(fd - exact) / scale if scale else 0.0
        assert error <= 1e-6, f"{name}: {matrix} gradient off by {error:.2e}"


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_loss_and_gradient_match_microgpt_scalar(name):
    params = random_weights(seed=7, std=0.3)  # larger than init so attention is far from uniform
    tokens = reference.tokenize(name)
    loss, grad = reference.loss_and_grad(params, tokens)
    loss_s, grad_s = scalar.loss_and_grad(params.tolist(), tokens)
    assert loss == pytest.approx(loss_s, rel=1e-12)
    np.testing.assert_allclose(grad, grad_s, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_other_shapes_match_microgpt_scalar(shape):
    params = random_weights(seed=11, std=0.3, shape=shape)
    for name in ("emma", "mariaguadalupeconcepcion"):  # the second is cut at block_size
        tokens = reference.tokenize(name)
        loss, grad = reference.loss_and_grad(params, tokens, shape)
        loss_s, grad_s = scalar.loss_and_grad(params.tolist(), tokens, knobs=shape)
        assert loss == pytest.approx(loss_s, rel=1e-12)
        np.testing.assert_allclose(grad, grad_s, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_other_shapes_train_as_microgpt_py_and_start_from_its_weights(docs, shape):
    ordered, init = microgpt_order(docs, 42, shape)
    shuffled, _, state_dict = scalar.prepare(docs, 42, shape)
    assert ordered == shuffled and init.tolist() == [p.data for p in scalar.parameters(state_dict)]
    _, losses = reference.train(ordered, init, 3, shape)
    np.testing.assert_allclose(losses, scalar.train(docs, 3, seed=42, knobs=shape), rtol=0, atol=1e-9)


def test_float32_params_give_float32_gradient():
    params = random_weights(seed=3)
    tokens = reference.tokenize("isabella")
    loss64, grad64 = reference.loss_and_grad(params, tokens)
    loss32, grad32 = reference.loss_and_grad(params.astype(np.float32), tokens)
    assert grad32.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-6)
    assert np.linalg.norm(grad32 - grad64) / np.linalg.norm(grad64) < 1e-5


def test_first_training_steps_match_microgpt_scalar(docs):
    ordered, init = microgpt_order(docs, 42)
    _, losses = reference.train(ordered, init, 10)
    np.testing.assert_allclose(losses, scalar.train(docs, 10, seed=42), rtol=0, atol=1e-9)


def test_fixture_is_microgpts_run_on_the_real_names(microgpt_run, names_path):
    assert (microgpt_run["seed"], microgpt_run["steps"], len(microgpt_run["losses"])) == (42, 1000, 1000)
    assert microgpt_run["sha256_of_names"] == sha256_of(names_path)


def test_1000_steps_match_microgpt_run(trained, microgpt_run):
    _, losses = trained
    expected = microgpt_run["losses"]
    assert losses[0] == pytest.approx(3.366, abs=5e-4)
    np.testing.assert_allclose(losses[:50], expected[:50], rtol=0, atol=1e-9)
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-6)  # here they agree to 1e-15
    assert abs(np.mean(losses[-100:]) - np.mean(expected[-100:])) <= 1e-6


def test_sampling_is_microgpts_rule(trained):
    """Fed the same uniforms, reference.sample picks what microgpt.py's random.choices picks."""
    params, _ = trained
    rng = random.Random(5)
    ours = [reference.sample(params, rng.random) for _ in range(10)]
    random.seed(5)
    theirs = [scalar.sample(params.tolist()) for _ in range(10)]
    assert ours == theirs
    assert all(re.fullmatch(r"[a-z]{0,16}", s) for s in ours)


def test_a_prefix_begins_every_name_and_the_block_bounds_it(trained):
    params, _ = trained
    rng = random.Random(5)
    names = [reference.sample(params, rng.random, prefix="ka") for _ in range(10)]
    assert all(re.fullmatch(r"ka[a-z]{0,14}", s) for s in names) and len(set(names)) > 1
    assert reference.sample(params, rng.random, prefix="a" * 16) == "a" * 16  # no room for more
