"""Hostile use (issue 22, round 3): inputs and limits are refused at the option with a line that
names the fix, before anything runs; the tool finds its own VM however it is started."""
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from microgpt import chip, dataset, payload, planner, reference
from microgpt.cli import main
from microgpt.errors import MicrogptError


def cli(*args, input=None, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], input=input, env=env)
    return result.exit_code, result.output


def test_the_vm_installed_beside_the_tool_is_found_without_activating_its_venv(tmp_path):
    # As from pipx or `/path/venv/bin/microgpt`: the venv's bin/ is not on PATH.
    tool = Path(sys.executable).parent / "microgpt"
    env = {k: v for k, v in os.environ.items() if k != "MICROPYTHON"} | {"PATH": "/usr/bin:/bin"}
    names = tmp_path / "names.txt"
    names.write_text("emma\nava\n")
    done = subprocess.run([tool, "sim", "run", "--steps", "1", "--samples", "0", "--data", names, "--quiet",
                           "--report", tmp_path / "r" / "report.json"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: 1 steps")


def test_a_micropython_that_is_a_directory_is_named(tmp_path):
    code, out = cli("sim", "run", "--report", tmp_path / "r.json", env={"MICROPYTHON": str(tmp_path)})
    assert code == 1 and f"$MICROPYTHON {tmp_path} is not an executable file" in out
    code, out = cli("sim", "run", "--micropython", tmp_path, "--report", tmp_path / "r.json")
    assert code == 1 and f"--micropython {tmp_path} is not an executable file" in out


def limited(*args, memory=2 << 30, timeout=120, stdin=subprocess.DEVNULL):
    """The tool in a process that may use at most `memory` bytes: input that would grow without
    bound fails there instead of stopping the machine."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return subprocess.run([Path(sys.executable).parent / "microgpt", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, stdin=stdin)


@pytest.mark.parametrize("command", [("plan",), ("sim", "run")])
def test_an_absurd_shape_is_refused_at_the_option_with_the_heaps_bound(command):
    done = limited(*command, "--n-layer", 10**9)
    assert done.returncode == 2, done.stderr
    most = planner.most("n_layer")
    assert (f"'--n-layer': 1,000,000,000 is more than {most:,}: even the smallest model with n_layer 1,000,000,000 "
            f"needs more than the ESP32's {chip.ESP32_HEAP:,} B heap") in done.stderr


def test_the_bounds_are_the_most_the_chips_heap_could_hold():
    assert [planner.most(knob) for knob in chip.KNOBS] == [27, 27, 863, 10_346]
    for knob in chip.KNOBS:
        most = planner.most(knob)
        for value, fits in ((most, True), (most + 1, False)):
            smallest = dict.fromkeys(chip.KNOBS, 1) | {knob: value}
            smallest["n_embd"] = max(smallest["n_embd"], smallest["n_head"])
            needs = planner.TRAINING_ARRAYS * 4 * chip.Shape(**smallest).n_params
            assert (needs <= chip.ESP32_HEAP) == fits, (knob, value)


def weights_file(tmp_path, shape=chip.DEFAULT, seed=0):
    """A weights.bin (header and float32 weights) of microgpt.py's initial weights for `seed`."""
    params = dataset.microgpt_order([], seed, shape)[1].astype("<f4")
    path = tmp_path / "weights.bin"
    path.write_bytes(chip.WEIGHTS_HEAD.pack(chip.WEIGHTS_MAGIC, *(getattr(shape, k) for k in chip.KNOBS))
                     + params.tobytes())
    return path, params.astype(np.float64)


@pytest.mark.parametrize("command", [("sample", "--weights", "{w}"), ("device", "sample", "--port", "/nonexistent")])
@pytest.mark.parametrize("temperature", ["1e-300", "1e-320", "0", "-1", "101"])
def test_a_temperature_the_chips_float32_sampler_cannot_take_is_refused_before_anything_runs(
        tmp_path, command, temperature):
    w, _ = weights_file(tmp_path)
    code, out = cli(*(a.format(w=w) for a in command), "--temperature", temperature)
    assert code == 2 and f"is outside {reference.MIN_TEMPERATURE:.8g}..100: the chip samples in float32" in out
    with pytest.raises(MicrogptError, match="outside"):
        payload.RunOptions(temperature=float(temperature))  # the run's own samples, after training


def test_at_the_smallest_temperature_every_draw_is_the_likeliest_letter(tmp_path):
    w, params = weights_file(tmp_path)
    tokens, expected = [chip.BOS], ""
    while len(tokens) <= chip.BLOCK and (token := int(np.argmax(reference.logits(params, tokens)[-1]))) != chip.BOS:
        tokens.append(token)
        expected += chr(ord("a") + token)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        code, out = cli("sample", "--weights", w, "--count", 5, "--temperature", repr(reference.MIN_TEMPERATURE))
    assert code == 0, out
    assert [line[3:] for line in out.splitlines()] == [expected] * 5

