"""Options a user gives: each one is honoured or refused, never dropped; values that are not numbers
are refused; inputs that cannot be names are refused before anything is read whole; every option
says what it does."""
import json
import os

import pytest
from conftest import OFFICIAL_FIRMWARE, cli

from microgpt.cli import main


@pytest.mark.parametrize("engine, option, value", [
    ("qemu", "--heap", 200000), ("qemu", "--micropython", "micropython"), ("wokwi", "--heap", 200000),
    ("wokwi", "--qemu", "qemu-system-xtensa"), ("host", "--qemu", "qemu-system-xtensa"), ("host", "--firmware", "fw.bin"),
])
def test_an_option_the_engine_does_not_take_is_refused_not_dropped(names_path, engine, option, value, tmp_path):
    code, out = cli("sim", "run", "--engine", engine, option, value, "--data", names_path,
                    "--report", tmp_path / "r" / "report.json")
    assert code == 2 and f"{option} does not apply to the {engine} engine" in out
    assert not (tmp_path / "r").exists()


def test_an_option_the_mode_does_not_take_is_refused(tmp_path):
    code, out = cli("device", "run", "--mode", "upload", "--port", tmp_path / "tty", "--image", "x.bin")
    assert code == 2 and "--image does not apply to --mode upload" in out


@pytest.mark.parametrize("command", [("sim", "run"), ("device", "run")])
def test_a_renamed_option_names_its_new_name(command):
    code, out = cli(*command, "--timeout", 5)
    assert code == 2 and "No such option '--timeout': it is --silence now" in out, out


@pytest.mark.parametrize("args, message", [
    (("sim", "run", "--silence", "nan"), "'nan' is not a finite number"),
    (("sim", "run", "--silence", "0"), "0 is not > 0"),
    (("sim", "run", "--heap", "10000000000000"), "10000000000000 is not in the range"),
    (("sample", "--weights", "w.bin", "--temperature", "nan"), "'nan' is not a finite number"),
    (("sample", "--weights", "w.bin", "--temperature", "inf"), "'inf' is not a finite number"),
])
def test_values_that_are_not_usable_numbers_are_refused(tmp_path, args, message):
    (tmp_path / "w.bin").write_bytes(bytes(16768))
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, out = cli(*args)
    finally:
        os.chdir(old)
    assert code == 2 and message in out


@pytest.mark.parametrize("args, message", [
    (("--n-embd", 24, "--n-head", 5), "n_embd 24 must be a multiple of n_head 5"),
    (("--n-layer", 0), "0 is not in the range x>=1"),
])
def test_a_shape_the_model_cannot_have_is_refused_before_anything_runs(names_path, tmp_path, args, message):
    for command in (("build", "--firmware", OFFICIAL_FIRMWARE, "--out", tmp_path / "flash.bin"),
                    ("sim", "run", "--report", tmp_path / "r.json")):
        code, out = cli(*command, "--data", names_path, *args)
        assert code != 0 and message in out, out
    assert not list(tmp_path.iterdir())


def test_a_shape_the_c_kernels_cannot_take_is_refused_naming_why(names_path, tmp_path):
    code, out = cli("build", "--firmware", OFFICIAL_FIRMWARE, "--out", tmp_path / "flash.bin", "--data", names_path,
                    "--kernels", "c", "--n-embd", 18, "--n-head", 2)
    assert code != 0 and not (tmp_path / "flash.bin").exists()
    assert ("the C kernels cannot take n_embd 18, n_head 2, n_layer 1, block_size 16: n_embd 18 is not a multiple "
            "of 4 up to 64; use --kernels python or another shape") in " ".join(out.split())


def test_the_shape_options_are_run_options(tmp_path):
    code, out = cli("sim", "run", "--resume", tmp_path, "--n-layer", 2)
    assert code == 2 and "--n-layer does not go with --resume" in out


def test_sample_refuses_weights_that_are_not_a_trained_model(tmp_path):
    head = b"MGW1\x10\0\4\0\1\0\x10\0"  # microgpt.py's shape
    short = tmp_path / "short.bin"
    short.write_bytes(head + bytes(16768 + 1))  # one byte too many
    code, out = cli("sample", "--weights", short)
    assert code == 1 and "is 16,781 bytes, not 16,780" in out
    diverged = tmp_path / "nan.bin"
    diverged.write_bytes(head + b"\x00\x00\xc0\x7f" * 4192)  # float32 nan
    code, out = cli("sample", "--weights", diverged)
    assert code == 1 and "4,192 weights that are not numbers" in out and "aaaa" not in out


def test_names_come_from_standard_input_with_a_dash(tmp_path, micropython):
    report = tmp_path / "r" / "report.json"
    code, out = cli("sim", "run", "--data", "-", "--steps", 3, "--samples", 0, "--val", 0, "--report", report, "--quiet",
                    "--micropython", micropython, input="emma\nolivia\nava\n")
    assert code == 0, out
    assert json.loads(report.read_text())["config"]["docs"] == 3


def test_a_huge_data_file_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)  # 3 GB, sparse: nothing is on disk
    code, out = cli("build", "--data", huge, "--out", tmp_path / "f.bin")
    assert code == 1 and "is 3,221,225,472 bytes, more than the 64 MB a names file may hold" in out


def test_a_line_that_cannot_be_a_name_is_refused_with_its_number(tmp_path):
    long = tmp_path / "long.txt"
    long.write_text("emma\n" + "a" * 1_000_000 + "\n")
    code, out = cli("build", "--data", long, "--out", tmp_path / "f.bin")
    assert code == 1 and "line 2 is more than 1,023 bytes, not a name (a name and its newline fit the chip's " \
                         "1,024-byte read buffer)" in out


def test_quiet_means_quiet(sim_run):
    code, out, report = sim_run("--steps", 2, "--samples", 0)
    assert code == 0 and out.splitlines()[0].startswith("ok: 2 steps")  # the summary, no UART echo or progress


def every_option(group=main, path=()):
    for name, command in getattr(group, "commands", {}).items():
        yield from every_option(command, path + (name,))
    for param in getattr(group, "params", []):
        if param.param_type_name == "option" and param.name not in ("help", "version"):
            yield " ".join(path), param


def test_every_option_says_what_it_does():
    missing = [f"{command} {param.opts[0]}" for command, param in every_option() if not (param.help or "").strip()]
    assert missing == []
