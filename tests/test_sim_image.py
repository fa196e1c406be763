"""`microgpt build` + `microgpt sim run --image`: the VM boots the image's own filesystem."""

import pytest
from click.testing import CliRunner

from conftest import OFFICIAL_FIRMWARE
from microgpt import image, mpy
from microgpt.cli import main


@pytest.fixture
def built(tmp_path, names_path):
    out = tmp_path / "build" / "flash.bin"

    def build(*args):
        result = CliRunner().invoke(main, ["build", "--firmware", str(OFFICIAL_FIRMWARE), "--data", str(names_path),
                                           "--out", str(out), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return out

    return build


def test_build_then_run_the_image_in_the_vm_matches_microgpt_py(built, sim_run, microgpt_losses):
    flash = built("--steps", 50, "--samples", 0, "--emit", "native")
    assert flash.stat().st_size == 4 << 20
    chip = image.read_vfs(flash)
    assert mpy.parse_header(chip["model.mpy"]).arch == "xtensawin"  # the chip's machine code
    stamp = flash.stat().st_mtime_ns
    code, out, report = sim_run("--image", flash, "--steps", 50, "--samples", 0, "--emit", "native",
                                "--firmware", OFFICIAL_FIRMWARE)
    assert code == 0, out
    assert flash.stat().st_mtime_ns == stamp  # fresh: used as built, not rebuilt
    worst = max(abs(a - b) for a, b in zip(report["losses"], microgpt_losses[50]))
    assert report["status"] == "ok" and len(report["losses"]) == 50 and worst <= 2e-3, worst
    assert report["emit"] == "native"


def test_an_image_runs_as_it_is_with_the_runs_options_in_a_copy(built, sim_run, tmp_path, monkeypatch):
    flash = built("--steps", 3)
    flash.with_suffix(".json").unlink()  # no manifest, and no firmware to download: the image holds both
    before = flash.read_bytes()
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "empty-cache"))
    code, out, report = sim_run("--image", flash, "--steps", 4, "--samples", 1)
    assert code == 0, out
    assert report["steps"] == 4 and report["status"] == "ok"
    assert flash.read_bytes() == before  # never rewritten
    assert not (tmp_path / "empty-cache").exists()


def test_a_file_that_is_not_an_image_is_refused_and_left_alone(sim_run, tmp_path, names_path):
    names = tmp_path / "names.txt"
    names.write_bytes(names_path.read_bytes()[:5000])
    before = names.read_bytes()
    code, out, report = sim_run("--image", names, "--steps", 2, "--samples", 0, report=tmp_path / "r" / "report.json")
    assert code != 0 and "is not a flash image made by `microgpt build`" in out
    assert names.read_bytes() == before and report is None and not (tmp_path / "r").exists()


def test_host_sampling_from_pulled_weights_replays_the_chips_names(sim_run, tmp_path):
    code, out, report = sim_run("--steps", 20, "--samples", 5, "--seed", 7)
    assert code == 0, out
    result = CliRunner().invoke(main, ["sample", "--weights", report["weights"], "--count", "5", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert [line[3:] for line in result.output.splitlines()] == report["samples"]  # "NN name"
