"""The real target: the built image in Espressif's QEMU (`qemu-system-xtensa -machine esp32`)
with the official v1.25.0 firmware. Skipped where QEMU is not installed ($QEMU_XTENSA or PATH),
failed instead under MICROGPT_REAL_TARGETS=strict (conftest); the instruction count also needs
QEMU's libinsn.so plugin."""
import json
import re

import pytest
from conftest import OFFICIAL_FIRMWARE, cli
from test_val import AGREE, host_val_loss

from microgpt import chip, chip_speed, payload, planner

pytestmark = pytest.mark.xdist_group("qemu_chip")  # one worker: chip_run boots QEMU once for the module


@pytest.fixture(scope="module")
def chip_run(qemu, tmp_path_factory, names_path):
    """50 steps and 20 samples on the emulated ESP32, from an image built as a user builds it."""
    tmp = tmp_path_factory.mktemp("qemu")
    run = ("--steps", 50, "--samples", 20, "--data", names_path)
    code, out = cli("build", *run, "--firmware", OFFICIAL_FIRMWARE, "--out", tmp / "flash.bin")
    assert code == 0, out
    code, out = cli("sim", "run", "--engine", "qemu", "--qemu", qemu, "--image", tmp / "flash.bin", *run,
                    "--report", tmp / "report.json", "--quiet")
    return code, out, json.loads((tmp / "report.json").read_text())


def test_the_chip_trains_with_the_c_kernels_like_microgpt_py(chip_run, microgpt_losses):
    code, out, report = chip_run
    assert code == 0 and report["status"] == "ok", out
    assert (report["platform"], report["kernels"], report["freq_mhz"]) == ("esp32", "c", 240)
    worst = max(abs(a - b) for a, b in zip(report["losses"], microgpt_losses[50]))
    assert len(report["losses"]) == 50 and worst <= 2e-3, worst
    assert len(report["samples"]) == 20 and all(re.fullmatch("[a-z]*", s) for s in report["samples"])


def test_the_trained_weights_come_back_from_qemus_flash_and_replay_the_chips_names(chip_run):
    # `microgpt sample` with the chip's weights and seed draws the chip's names (float32 on both).
    report = chip_run[2]
    code, out = cli("sample", "--weights", report["weights"], "--count", 20)
    assert code == 0, out
    names = [(line.split(maxsplit=1) + [""])[1] for line in out.splitlines()]  # "NN name"
    assert names == report["samples"]


def test_the_chips_held_out_loss_is_the_hosts_for_the_same_weights(chip_run, docs):
    # Computed on the chip in float32 over the 1,000 held-out names, forward only; the host's in numpy.
    report = chip_run[2]
    host = host_val_loss(report, docs)
    assert report["val_names"] == 1000 and abs(report["val_loss"] - host) <= AGREE, (report["val_loss"], host)
    print(f"held-out loss after 50 steps: chip {report['val_loss']:.6f}, host {host:.6f}")


def test_the_chips_heap_peaks_under_100_kb(chip_run):
    assert chip_run[2]["peak_heap_bytes"] <= 100_000


def test_the_planner_predicts_the_chips_peak_within_5_percent(chip_run):
    predicted = planner.plan(chip.DEFAULT, "c", payload.LOG_EVERY).peak  # the ESP32's, the default platform
    assert abs(chip_run[2]["peak_heap_bytes"] - predicted) <= 0.05 * predicted, (chip_run[2]["peak_heap_bytes"], predicted)


@pytest.mark.slow
def test_a_training_step_costs_the_chip_under_half_a_million_instructions(qemu, insn_plugin, docs):
    # Counted inside the training loop (microgpt.chip_speed): no boot, no flash writes, no UART.
    speed = chip_speed.instructions_per_step(payload.RunOptions(), docs, OFFICIAL_FIRMWARE, qemu, insn_plugin)
    assert all(r.to_json()["kernels"] == "c" for r in speed.reports.values())
    assert 300_000 < speed.per_step <= 500_000, speed.per_step
