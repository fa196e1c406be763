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
    done = subprocess.run([tool, "sim", "run", "--steps", "1", "--samples", "0", "--val", "0", "--data", names, "--quiet",
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


@pytest.mark.parametrize("content", [b"a" * 16768, bytes(16768)])
def test_bytes_of_the_old_header_less_size_are_not_weights(tmp_path, content):
    path = tmp_path / "w.bin"
    path.write_bytes(content)
    code, out = cli("sample", "--weights", path, "--count", 3)
    assert code == 1 and f"{path} is not microgpt weights (it does not begin with MGW1)" in out
    assert len(out.splitlines()) == 1  # no names


def test_header_less_weights_get_their_header_as_the_error_says(tmp_path):
    w, _ = weights_file(tmp_path)
    _, before = cli("sample", "--weights", w, "--count", 5)
    old = tmp_path / "old.bin"
    old.write_bytes(w.read_bytes()[chip.WEIGHTS_HEAD.size:])  # as a trainer wrote it before the header
    code, out = cli("sample", "--weights", old)
    assert code == 1
    command = out.split("`printf")[1].split("`")[0].replace("OLD", str(old)).replace("NEW", str(tmp_path / "new.bin"))
    subprocess.run(["bash", "-c", "printf" + command], check=True)
    assert cli("sample", "--weights", tmp_path / "new.bin", "--count", 5) == (0, before)


def test_weights_header_errors_name_the_file(tmp_path):
    cut = tmp_path / "cut.bin"
    cut.write_bytes(chip.WEIGHTS_MAGIC + bytes(4))
    assert cli("sample", "--weights", cut) == (
        1, f"Error: {cut} is cut short: 8 bytes, less than its 12-byte MGW1 header: did the run finish? Train again.\n")
    zero = tmp_path / "zero.bin"
    zero.write_bytes(chip.WEIGHTS_HEAD.pack(chip.WEIGHTS_MAGIC, 0, 4, 1, 16))
    code, out = cli("sample", "--weights", zero)
    assert code == 1 and out.startswith(f"Error: {zero}: its MGW1 header gives no model shape (n_embd must be")


@pytest.mark.parametrize("args, message", [
    (("build", "--data", "/dev/zero", "--out", "{tmp}/f.bin"),
     "/dev/zero line 1 is more than 1,023 bytes, not a name (a name and its newline fit the chip's 1,024-byte read "
     "buffer)"),
    (("sim", "run", "--data", "-", "--report", "{tmp}/r.json"),
     "standard input line 1 is more than 1,023 bytes, not a name"),
    (("sample", "--weights", "/dev/zero"),
     "/dev/zero holds more than 2 MB, the chip's filesystem where a run writes its weights.bin: not microgpt weights"),
    (("build", "--firmware", "/dev/zero", "--data", "{names}", "--out", "{tmp}/f.bin"),
     "/dev/zero holds more than 128 MB, the largest flash an ESP32 bootloader names"),
])
def test_an_endless_input_is_refused_at_its_bound(tmp_path, names_path, args, message):
    # In a process capped at 1 GB: reading the input whole would end there with a MemoryError.
    out = tmp_path / "out"
    with open("/dev/zero", "rb") as zero:
        done = limited(*(str(a).format(tmp=out, names=names_path) for a in args), memory=1 << 30, stdin=zero)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert not out.exists()  # nothing written


def test_a_name_as_long_as_the_chips_read_buffer_takes_is_read(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a" * (chip.NAMES_BUFFER - 1) + "\n" + "b" * (chip.NAMES_BUFFER - 1))
    assert dataset.load_names(names) == ["a" * (chip.NAMES_BUFFER - 1), "b" * (chip.NAMES_BUFFER - 1)]
    names.write_text("a" * chip.NAMES_BUFFER)
    with pytest.raises(MicrogptError, match="line 1 is more than 1,023 bytes"):
        dataset.load_names(names)


def test_the_vm_plans_for_its_own_heap_not_the_chips_areas(sim_run):
    # n_embd 24's arrays find no room in the chip's areas (planner.ESP32.areas); the VM's --heap is one piece.
    shape = chip.Shape(n_embd=24)
    code, out, report = sim_run("--heap", 600_000, "--n-embd", 24, "--steps", 3, "--samples", 2)
    assert code == 0, out
    predicted = planner.plan(shape, "c", 3, planner.vm(600_000)).peak
    assert abs(report["peak_heap_bytes"] - predicted) <= 0.05 * predicted
    code, out, _ = sim_run("--heap", 100_000, "--n-embd", 24, "--steps", 3, "--samples", 0)
    assert code == 1 and "B more than the MicroPython VM (x64, --heap)'s 100,000 B" in out
