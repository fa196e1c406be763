"""The on-chip trainer (firmware/): exact gradients, parity with microgpt.py, memory, samples."""
import re

import numpy as np
import pytest
from conftest import cli

from microgpt import chip, payload, reference
from microgpt.chip import N_PARAMS

NAMES = ["a", "emma", "xavier", "mariaguadalupeconcepcion"]  # 1 letter ... longer than block_size


def test_firmware_backward_matches_the_numpy_reference(firmware_on_cpython):
    # The firmware's float32 arrays against the reference's float64 math on the same weights.
    model = firmware_on_cpython.model
    gpt = model.GPT(model.zeros(N_PARAMS), model.zeros(N_PARAMS))
    weights = np.random.default_rng(7).normal(0, 0.3, N_PARAMS).astype(np.float32)
    for i, w in enumerate(weights):
        gpt.params[i] = float(w)
    for name in NAMES:
        for i in range(N_PARAMS):
            gpt.grads[i] = 0.0
        loss = gpt.loss_and_grad(name.encode())
        ref_loss, ref_grad = reference.loss_and_grad(weights.astype(np.float64), reference.tokenize(name))
        grad = np.array(gpt.grads, dtype=np.float64)
        rel = np.abs(grad - ref_grad).max() / np.abs(ref_grad).max()
        assert rel <= 1e-4, (name, rel)
        assert loss == pytest.approx(ref_loss, rel=1e-5)


BUILDS = [("python", "bytecode"), ("python", "native"), ("c", "bytecode"), ("c", "native")]


@pytest.fixture(scope="module")
def runs_50_steps(sim_run_module):
    # The same 50 steps with the model's arithmetic in MicroPython (as plain bytecode and with
    # its @micropython.native loops) and in C (the native module, firmware/cmodel).
    return {(kernels, emit): sim_run_module("--steps", 50, "--samples", 0, "--seed", 42, "--init", "microgpt",
                                            "--kernels", kernels, "--emit", emit)
            for kernels, emit in BUILDS}


@pytest.mark.parametrize("kernels, emit", BUILDS)
def test_vm_run_matches_microgpt_py_for_50_steps(runs_50_steps, microgpt_losses, kernels, emit):
    code, out, report = runs_50_steps[kernels, emit]
    assert code == 0, out
    assert report["status"] == "ok" and report["engine"] == "host"
    assert (report["kernels"], report["emit"]) == (kernels, emit)
    assert report["params"] == 4192 and report["steps"] == 50
    assert report["losses"][0] == pytest.approx(3.366, abs=1e-3)
    worst = max(abs(a - b) for a, b in zip(report["losses"], microgpt_losses[50]))
    assert len(report["losses"]) == 50 and worst <= 2e-3, worst


def test_native_loops_change_no_result(runs_50_steps):
    # Native code calls the same float routines as the bytecode VM: the losses are identical.
    assert runs_50_steps["python", "native"][2]["losses"] == runs_50_steps["python", "bytecode"][2]["losses"]


def test_c_kernels_equal_the_micropython_ones_within_float32_rounding(runs_50_steps):
    # The VM's MicroPython computes in double between float32 stores, the C in float32 throughout.
    python, c = runs_50_steps["python", "native"][2]["losses"], runs_50_steps["c", "native"][2]["losses"]
    assert max(abs(a - b) for a, b in zip(python, c)) <= 1e-5
    assert python != c  # two implementations, not one run twice


def test_c_kernels_are_the_default_where_built(sim_run):
    code, out, report = sim_run("--steps", 2, "--samples", 0)
    assert code == 0 and report["kernels"] == "c", out


# 0.6 to 0.9 KB above the smallest VM heap that trains 1,000 steps and samples (planner.VM_MIN_HEAP).
HEAP = {"c": 95 * 1024, "python": 101 * 1024}


@pytest.mark.slow
@pytest.mark.parametrize("kernels", ["c", "python"])
def test_vm_trains_1000_steps_in_the_smallest_heap_like_microgpt_py(sim_run, microgpt_losses, docs, kernels):
    # The VM's default build (native loops, on x64); the ESP32 has ~163 KB. A default run: the
    # held-out names too, whose code loads after training.
    heap = HEAP[kernels]
    code, out, report = sim_run("--steps", 1000, "--samples", 20, "--val", payload.VAL, "--heap", heap,
                                "--kernels", kernels)
    assert code == 0, out
    assert report["emit"] == "native" and report["kernels"] == kernels
    assert report["status"] == "ok" and len(report["losses"]) == 1000
    worst_first_50 = max(abs(a - b) for a, b in zip(report["losses"][:50], microgpt_losses[1000][:50]))
    assert worst_first_50 <= 2e-3, worst_first_50
    mean_last = np.mean(report["losses"][-100:])
    assert abs(mean_last - np.mean(microgpt_losses[1000][-100:])) <= 0.02, mean_last
    assert report["peak_heap_bytes"] <= heap and report["ms_per_step"] > 0
    samples = report["samples"]
    assert len(samples) == 20 and all(re.fullmatch("[a-z]+", s) for s in samples), samples
    assert len(set(samples) - set(docs)) >= 5, "the model only repeats training names"
    # Pronounceable: no name without a vowel (y counts), no run of 4 consonants.
    assert all(re.search("[aeiouy]", s) and not re.search("[^aeiouy]{4}", s) for s in samples), samples
    shape, floats = chip.read_weights(open(report["weights"], "rb").read(), "of the run")
    weights = np.frombuffer(floats, dtype="<f4")
    assert shape == chip.DEFAULT and weights.shape == (N_PARAMS,) and np.isfinite(weights).all()


def test_log_every_groups_steps_but_keeps_every_loss(sim_run, tmp_path):
    _, _, each = sim_run("--steps", 25, "--samples", 0, "--log-every", 1, report=tmp_path / "a.json")
    _, _, grouped = sim_run("--steps", 25, "--samples", 0, "--log-every", 10, report=tmp_path / "b.json")
    assert grouped["status"] == "ok" and grouped["losses"] == each["losses"]
    assert open(grouped["uart_log"]).read().count("MGPT step ") == 3  # steps 10, 20, 25


def test_device_init_trains_from_weights_drawn_on_the_chip(sim_run):
    code, out, report = sim_run("--steps", 5, "--samples", 2, "--init", "device", "--seed", 3)
    assert code == 0, out
    assert report["config"]["init"] == "device"
    assert 3.0 < report["losses"][0] < 3.8  # ~ln(27) for small random weights
    assert len(report["samples"]) == 2


def test_too_small_a_heap_ends_in_a_reported_memory_error(docs, micropython, tmp_path):
    # Above the planner's peak (91,968 B), below the VM's smallest heap that trains (96,641 B): a heap the planner
    # refuses with its headroom, so run as scripts/bench.py --min-heap runs, asking none.
    from microgpt.engines.host import HostEngine
    from microgpt.payload import RunOptions
    from microgpt.run import RunDir, run

    with RunDir(tmp_path / "report.json").claim() as rundir:
        engine = HostEngine(rundir.work, heap=93_000, headroom=0, micropython=micropython)
        report = run(engine, rundir, RunOptions(steps=5), docs).to_json()
    assert report["status"] == "error" and "MemoryError" in report["error"]
    assert "MGPT error MemoryError" in open(report["uart_log"]).read()


def test_a_heap_the_planner_knows_is_short_is_refused_before_anything_is_written(sim_run, tmp_path):
    report = tmp_path / "short" / "report.json"
    for heap in (60_000, 96_000):  # below the peak; above it, without the collector's headroom
        code, out, saved = sim_run("--steps", 5, "--heap", heap, report=report)
        assert code != 0 and f"more than the MicroPython VM (x64, --heap)'s {heap:,} B" in out, out
        assert saved is None and not report.parent.exists()


def test_bad_data_is_refused_naming_line_and_character(tmp_path):
    bad = tmp_path / "names.txt"
    bad.write_text("emma\nolivia\nzoë\n")
    code, output = cli("sim", "run", "--data", bad, "--steps", 1)
    assert code != 0
    assert "line 3" in output and "ë" in output


@pytest.mark.parametrize("log_every", [100, 1000])
def test_any_log_every_trains_1000_steps_within_the_chips_heap(sim_run, log_every):
    # The losses of a record wait in a fixed float32 buffer, not as strings that grow.
    code, out, report = sim_run("--steps", 1000, "--samples", 20, "--log-every", log_every)
    assert code == 0, out
    assert len(report["losses"]) == 1000 and None not in report["losses"] and len(report["samples"]) == 20
    assert report["peak_heap_bytes"] <= 100_000
    assert open(report["uart_log"]).read().count("MGPT step ") == 1000 // log_every


def test_a_checkpoint_that_fails_its_check_leaves_no_trace(tmp_path, docs, micropython):
    # A checkpoint of this very run whose CRC fails: its Adam state (all ones here) must not leak
    # into the fresh start: every loss equals a run that never saw it.
    import binascii
    import struct

    from microgpt import image
    from microgpt.engines.host import HostEngine
    from microgpt.run import RunDir, run

    class WithCheckpoint(HostEngine):
        def place(self, placed):
            super().place(placed)
            head = struct.pack("<4sIIIIHHHH", b"MGC4", placed.run_id, placed.options.steps, 3, 0, 16, 4, 1, 16)
            arrays = placed.files["init.bin"] + struct.pack("<f", 1.0) * (2 * N_PARAMS)
            crc = binascii.crc32(head + arrays) ^ 1  # damaged
            bad = {"ckpt.bin": head + arrays + struct.pack("<I", crc)}
            self.flash.write_bytes(image.update_fs(self.flash.read_bytes(), bad))

    options = payload.RunOptions(steps=6, samples=2, ckpt_every=3)
    reports = {}
    for name, engine in (("fresh", HostEngine), ("poisoned", WithCheckpoint)):
        rundir = RunDir(tmp_path / f"{name}.json")
        with rundir.claim():
            reports[name] = run(engine(rundir.work, micropython=micropython), rundir, options, docs)
    fresh, poisoned = reports["fresh"].run, reports["poisoned"].run
    assert poisoned.checkpoints_rejected == ["checksum"] and poisoned.resumed_from is None
    assert poisoned.losses == fresh.losses and poisoned.samples == fresh.samples
    assert poisoned.losses[1] == pytest.approx(3.424273, abs=1e-6)
