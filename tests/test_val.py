"""The held-out loss (--val): names kept out of training, their loss computed on the chip after
training and checked against the host's from the same weights; and the learning rate (--lr)."""
import itertools
import json
from array import array

import numpy as np
import pytest
from click.testing import CliRunner

from microgpt import chip, dataset, mpy, payload, reference
from microgpt.cli import main
from microgpt.errors import BuildError
from microgpt.uart import UartParser

STEPS = 50
AGREE = 1e-3  # the chip's held-out loss against the host's, from the same weights


def host_val_loss(report, docs, val=payload.VAL, seed=42):
    """The held-out loss the host computes (numpy) from the weights the run left."""
    shape, weights = chip.read_weights(open(report["weights"], "rb").read(), report["weights"])
    held_out = payload.split(dataset.microgpt_order(docs, seed, shape)[0], val)[1]
    return reference.val_loss(np.frombuffer(weights, "<f4"), [name[:shape.block_size] for name in held_out], shape)


@pytest.fixture(scope="module")
def vm_runs(sim_run_module):
    return {val: sim_run_module("--steps", STEPS, "--samples", 5, "--val", val) for val in (payload.VAL, 0)}


def test_the_vms_held_out_loss_is_the_hosts_for_the_same_weights(vm_runs, docs):
    code, out, report = vm_runs[payload.VAL]
    assert code == 0, out
    assert report["val_names"] == payload.VAL and report["config"]["val"] == payload.VAL
    host = host_val_loss(report, docs)
    assert abs(report["val_loss"] - host) <= AGREE, (report["val_loss"], host)
    assert 2.4 < report["val_loss"] < 3.3  # 50 steps learn something: uniform over 27 tokens is 3.30
    assert f"held-out loss {report['val_loss']:.4f} (1,000 names never trained on)" in out


def test_the_micropython_kernels_held_out_loss_is_the_hosts_too(sim_run, docs):
    # 100 names: in MicroPython the default's 1,000 take the VM seconds, and the C kernels' run checks those.
    code, out, report = sim_run("--steps", 5, "--samples", 0, "--kernels", "python", "--val", 100)
    assert code == 0 and report["kernels"] == "python", out
    host = host_val_loss(report, docs, val=100)
    assert report["val_names"] == 100 and abs(report["val_loss"] - host) <= AGREE, (report["val_loss"], host)


def test_holding_names_out_changes_no_training_loss_nor_sample(vm_runs):
    # A run of at most len - K steps trains on microgpt.py's own names, in its order.
    (code, out, held), (code0, out0, none) = vm_runs[payload.VAL], vm_runs[0]
    assert code == code0 == 0, out + out0
    assert held["losses"] == none["losses"] and held["samples"] == none["samples"]
    assert none["val_loss"] is None and none["val_names"] is None
    assert open(held["weights"], "rb").read() == open(none["weights"], "rb").read()


def test_the_held_out_names_are_the_last_of_the_order_and_training_cycles_over_the_others(docs):
    ordered = dataset.microgpt_order(docs, 42)[0]
    target = chip_target()
    longest = len(docs) - payload.VAL  # 31,033: every step trains on microgpt.py's name
    for steps, trained in ((longest, ordered[:longest]), (longest + 5, ordered[:longest])):
        files = payload.build(payload.RunOptions(steps=steps), docs, target).files
        assert files[chip.DATA].decode().split("\n")[:-1] == trained
        assert files[chip.VAL].decode().split("\n")[:-1] == ordered[longest:]
        assert json.loads(files[chip.CONFIG])["val"] == payload.VAL
    assert chip.VAL not in payload.build(payload.RunOptions(steps=3, val=0), docs, target).files


def chip_target():
    return mpy.firmware_target("v1.25.0")


def test_holding_out_every_name_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(BuildError, match=r"--val 3 holds out 3 of the 3 names, leaving none to train on: pass --val "
                                         r"below 3 \(--val 0 evaluates no held-out loss\)"):
        payload.build(payload.RunOptions(val=3), ["emma", "olivia", "ava"], chip_target())
    out = tmp_path / "flash.bin"
    result = CliRunner().invoke(main, ["build", "--data", "-", "--val", "5", "--out", str(out)], input="emma\nava\n")
    assert result.exit_code == 1 and "--val 5 holds out 5 of the 2 names" in result.output
    assert not out.exists()
    report = tmp_path / "run" / "report.json"
    result = CliRunner().invoke(main, ["sim", "run", "--data", "-", "--val", "2", "--report", str(report)],
                                input="emma\nava\n")
    assert result.exit_code == 1 and "--val 2 holds out 2 of the 2 names" in result.output
    assert not report.parent.exists()


def test_the_val_record_is_parsed_and_a_malformed_one_counted():
    parser = UartParser()
    parser.feed("MGPT start v=2 params=4192 steps=1 seed=42 val=1000")
    parser.feed("MGPT val loss=2.5 names=300 tokens=2100 ms=40")  # a running record: the last one counts
    parser.feed("MGPT val loss=2.379618 names=1000 tokens=7148 ms=143")
    assert parser.state().val == {"loss": 2.379618, "names": 1000, "tokens": 7148, "ms": 143}
    for bad in ("MGPT val loss=2.3 names=0 tokens=1", "MGPT val loss=2.3 names=1001 tokens=8000",
                "MGPT val loss=x names=1 tokens=7", "MGPT val names=1 tokens=7"):
        parser.feed(bad)
    assert parser.bad_records == 4 and parser.state().val["loss"] == 2.379618


def test_the_learning_rate_is_the_one_asked(sim_run, docs):
    # 20 steps at twice microgpt.py's rate, against the numpy reference trained at that rate.
    code, out, report = sim_run("--steps", 20, "--samples", 0, "--lr", 0.02, "--val", 0)
    assert code == 0, out
    assert report["config"]["lr"] == 0.02
    ordered, init = dataset.microgpt_order(docs, 42)
    losses = reference.train(ordered, init.astype(np.float32).astype(np.float64), 20, lr=0.02)[1]
    default = reference.train(ordered, init.astype(np.float32).astype(np.float64), 20)[1]
    assert max(abs(a - b) for a, b in zip(report["losses"], losses)) <= 1e-4
    assert abs(report["losses"][-1] - default[-1]) > 1e-2  # the rate changed what was learnt


@pytest.mark.parametrize("lr, why", [("0", "0 is not > 0"), ("-1", "-1 is not > 0"), ("nan", "not a finite number"),
                                     ("2", "2 is not <= 1"), ("x", "'x' is not a number")])
def test_a_learning_rate_out_of_bounds_is_refused_before_anything_runs(tmp_path, lr, why):
    report = tmp_path / "r" / "report.json"
    result = CliRunner().invoke(main, ["sim", "run", "--lr", lr, "--report", str(report)])
    assert result.exit_code == 2 and "--lr" in result.output and why in result.output, result.output
    assert not report.parent.exists()



def test_a_slow_evaluation_sends_running_records_and_the_last_covers_every_name(firmware_on_cpython, monkeypatch, capsys):
    # firmware/val.py under CPython (the MicroPython kernels), on a chip so slow that each name takes a second.
    import val

    clock = itertools.count(0, 1000)
    monkeypatch.setattr(val.time, "ticks_ms", lambda: next(clock))
    weights = np.random.default_rng(3).normal(0, 0.3, chip.N_PARAMS).astype(np.float32)
    gpt = firmware_on_cpython.model.GPT(array("f", weights.tobytes()), None)
    names = ["emma", "x", "mariaguadalupeconcepcion", "ava", "olivia", "li", "sophia", "mia", "zoe", "ian", "bo", "kai"]
    stream = iter(name.encode() for name in names)
    val.report(gpt, type("Names", (), {"next": lambda self: next(stream), "close": lambda self: None})(), len(names))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in lines] == ["names=5", "names=10", "names=12"]
    parser = UartParser()
    for line in ["MGPT start v=2 params=4192 steps=1 seed=42 val=12", *lines]:
        parser.feed(line)
    assert parser.state().val["tokens"] == sum(min(len(n) + 1, chip.BLOCK) for n in names)
    assert parser.state().val["loss"] == pytest.approx(reference.val_loss(weights.astype(np.float64), names), abs=1e-5)


def test_a_library_caller_meets_the_options_learning_rate_bound():
    # The one bound, chip.MAX_LR, holds for RunOptions as for --lr.
    from microgpt.payload import RunOptions

    assert RunOptions(lr=chip.MAX_LR).lr == chip.MAX_LR
    with pytest.raises(ValueError, match=r"lr must be in \(0, 1\]"):
        RunOptions(lr=2 * chip.MAX_LR)
