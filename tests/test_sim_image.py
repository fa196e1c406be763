"""`microgpt build` + `microgpt sim run --image`: a run starts from an image's flash, with the run's
own trainer and files written over its filesystem (the options decide what the chip runs, never
what the image held); the image file itself is never written."""
import json

import pytest
from conftest import OFFICIAL_FIRMWARE, cli

from microgpt import image, mpy


@pytest.fixture
def built(tmp_path, names_path):
    out = tmp_path / "build" / "flash.bin"

    def build(*args):
        code, output = cli("build", "--firmware", OFFICIAL_FIRMWARE, "--data", names_path, "--out", out, *args)
        assert code == 0, output
        return out

    return build


def test_build_writes_the_image_and_says_what_it_holds(built):
    flash = built("--steps", 50, "--samples", 0)
    chip = image.read_vfs(flash)
    manifest = json.loads(flash.with_suffix(".json").read_text())
    assert manifest["options"]["steps"] == 50 and manifest["files"] == {name: len(b) for name, b in chip.items()}
    config = json.loads(chip["config.json"])
    assert (config["steps"], config["emit"], config["kernels"], config["docs"]) == (50, "bytecode", "c", 50)
    assert chip["names.txt"].count(b"\n") == 50  # a 50-step run reads 50 names: only those go on the chip


def test_build_then_run_the_image_in_the_vm_matches_microgpt_py(built, sim_run, microgpt_losses):
    flash = built("--steps", 50, "--samples", 0, "--emit", "native")
    assert flash.stat().st_size == 4 << 20
    chip = image.read_vfs(flash)
    assert mpy.parse_header(chip["model.mpy"]).arch == "xtensawin"  # the chip's machine code
    before = flash.read_bytes()
    code, out, report = sim_run("--image", flash, "--steps", 50, "--samples", 0, "--emit", "native")
    assert code == 0, out
    assert flash.read_bytes() == before  # never written
    worst = max(abs(a - b) for a, b in zip(report["losses"], microgpt_losses[50]))
    assert report["status"] == "ok" and len(report["losses"]) == 50 and worst <= 2e-3, worst
    assert report["emit"] == "native"


def test_the_runs_options_decide_what_runs_not_the_image(built, sim_run, tmp_path, monkeypatch):
    flash = built("--steps", 3)  # C kernels, 3 steps
    flash.with_suffix(".json").unlink()  # no manifest, and no firmware to download: the image holds the firmware
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "empty-cache"))
    code, out, report = sim_run("--image", flash, "--steps", 4, "--samples", 1, "--kernels", "python")
    assert code == 0, out
    assert report["steps"] == 4 and report["status"] == "ok" and report["kernels"] == "python"
    assert not (tmp_path / "empty-cache").exists()


def test_a_whole_image_given_as_firmware_builds_on_its_firmware(built, tmp_path, names_path):
    first = built("--steps", 3)
    again = tmp_path / "again.bin"
    code, output = cli("build", "--firmware", first, "--data", names_path, "--steps", 7, "--out", again)
    assert code == 0, output
    assert json.loads(image.read_vfs(again)["config.json"])["steps"] == 7
    assert again.read_bytes()[:0x200000] == first.read_bytes()[:0x200000]  # the same firmware and table


def test_a_file_that_is_not_an_image_is_refused_and_left_alone(sim_run, tmp_path, names_path):
    names = tmp_path / "names.txt"
    names.write_bytes(names_path.read_bytes()[:5000])
    before = names.read_bytes()
    code, out, report = sim_run("--image", names, "--steps", 2, "--samples", 0, report=tmp_path / "r" / "report.json")
    assert code != 0 and "names.txt is not an ESP32 firmware or flash image (text, not firmware)" in out
    assert names.read_bytes() == before and report is None and not (tmp_path / "r").exists()


@pytest.mark.parametrize("init", ["microgpt", "device"])
def test_host_sampling_from_the_weights_replays_the_chips_names(sim_run, init):
    # Whatever --init drew on the chip, its samples come from a PRNG seeded afresh with --seed.
    code, out, report = sim_run("--steps", 20, "--samples", 5, "--seed", 7, "--init", init)
    assert code == 0, out
    code, output = cli("sample", "--weights", report["weights"], "--count", 5, "--seed", 7)
    assert code == 0, output
    assert [line[3:] for line in output.splitlines()] == report["samples"]  # "NN name"
