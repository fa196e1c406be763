"""The UART parser: sample logs as engines capture them, edge cases, and fuzzing."""
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import step_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgpt.report import Report, diagnose, from_log
from microgpt.uart import UartParser

LOGS = Path(__file__).parent / "data" / "uart"
REPORT_KEYS = {
    "engine", "status", "error", "interrupted", "steps", "params", "shape", "losses", "samples", "loss_mean", "loss_window",
    "val_loss", "val_names",
    "ms_per_step", "peak_heap_bytes", "uart_log", "config", "boots", "resumed_from", "checkpoints",
    "checkpoints_rejected", "heap_total", "platform", "emit", "kernels", "freq_mhz", "ms_train",
    "peak_src", "alloc_per_step", "bad_records", "weights", "loss_curve", "resume_step",
}
START = ("MGPT start v=2 params=4192 steps={steps} seed=42 init=microgpt docs=32033 log_every={every} ckpt_every=0"
         " samples=2 temp=0.5 lr=0.01 platform=linux impl=1.29.0 emit=bytecode freq_mhz=none"
         " freq_boot_mhz=none heap_total=166592")
END = "MGPT end steps={steps} ms_train=50 ms_per_step=5.0 peak_heap=70000 alloc_per_step=none heap_total=166592"


def flat(report):
    """The report as report.json has it, but with the parser's own losses (a nan stays nan)."""
    return SimpleNamespace(**{**report.to_json(), "losses": report.run.losses, "report": report})


def parse_lines(lines, uart_log=None):
    return flat(from_log(lines, uart_log=uart_log))


def report_of(state, engine="x", uart_log=None, engine_error=None):
    return flat(Report(engine, diagnose(state, uart_log, engine_error), None, state, uart_log))


def parse(name, **kw):
    return parse_lines((LOGS / name).open("rb"), uart_log=str(LOGS / name), **kw)


def start(steps=10, every=1):
    return START.format(steps=steps, every=every)


def f32(*values):
    """The values as the chip's float32 holds them (what a step record carries exactly)."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def step(n, *losses, ms=5.0, heap=58000):
    return step_record(n, *losses, ms=ms, heap=heap)


def end(steps=10):
    return END.format(steps=steps)


def check_report(report):
    assert REPORT_KEYS == report.report.to_json().keys()
    assert report.status in ("ok", "error")
    assert (report.status == "ok") == (report.error is None)
    assert report.error is None or isinstance(report.error, str) and report.error
    assert isinstance(report.steps, int) and report.steps >= 0
    assert len(report.losses) == report.steps
    assert all(x is None or isinstance(x, float) for x in report.losses)
    assert all(isinstance(s, str) for s in report.samples)
    assert isinstance(report.bad_records, int) and report.bad_records >= 0
    json.dumps(report.report.to_json(), allow_nan=False)  # only JSON types, strict


# --- sample logs -------------------------------------------------------------------------


def test_vm_run():
    r = parse("vm_ok.log")
    check_report(r)
    assert r.status == "ok" and r.error is None
    assert (r.steps, r.params, r.boots, r.bad_records) == (20, 4192, 1, 0)
    assert r.losses[:3] == f32(3.365967, 3.424273, 3.177578) and r.losses[-1] == f32(2.774931)[0]
    assert r.samples == ["ieodnne", "bmaen", "dho", "oi", "bvieei"]
    assert (r.ms_per_step, r.ms_train, r.peak_heap_bytes, r.peak_src) == (4.85, 97, 58464, "end")
    assert r.alloc_per_step == 5814940
    assert (r.platform, r.emit, r.freq_mhz) == ("linux", "bytecode", None)
    assert r.heap_total == 166592
    assert r.config["seed"] == 42 and r.config["init"] == "microgpt" and r.config["freq_boot_mhz"] is None
    assert r.uart_log.endswith("vm_ok.log") and r.resumed_from is None and r.checkpoints == []


def test_board_run_with_rom_noise_banner_and_crlf_reads_like_the_vm_run():
    vm, board = parse("vm_ok.log"), parse("esp32_ok.log")
    check_report(board)
    assert board.status == "ok" and board.bad_records == 0 and board.boots == 1
    for key in ("steps", "losses", "samples", "params"):
        assert getattr(board, key) == getattr(vm, key)
    assert (board.platform, board.emit, board.freq_mhz) == ("esp32", "native", 240)
    assert board.config["freq_boot_mhz"] == 160
    assert board.ms_per_step == 183.55 and board.alloc_per_step is None


def test_memory_error_before_start_reports_exception_and_traceback():
    r = parse("memory_error.log")
    check_report(r)
    assert r.status == "error" and r.steps == 0 and r.losses == [] and r.params is None
    assert r.error.startswith('MemoryError: memory allocation failed, allocating 16768 bytes (traceback: '
                              'File "main.py", line 9, in <module>; File "train.py", line 108, in main; '
                              'File "model.py", line 37, in zeros): the trainer needs a GC heap of about ')
    assert "in the VM raise --heap" in r.error and "--emit" not in r.error


def test_memory_error_while_importing_names_the_bytecode_build():
    r = parse_lines(["MGPT error MemoryError: memory allocation failed, allocating 4214 bytes",
                     'MGPT tb   File "main.py", line 9, in <module>', 'MGPT tb   File "train.py", line 12, in <module>'])
    assert r.status == "error" and "build with `--emit bytecode`" in r.error
    assert "--emit" not in parse("memory_error.log").error  # out of heap later: no such advice


def test_error_mid_run():
    r = parse_lines([start(), step(1, 3.0), "MGPT error OSError: [Errno 28] ENOSPC",
                     'MGPT tb   File "checkpoint.py", line 30, in save'])
    assert r.error == 'OSError: [Errno 28] ENOSPC (traceback: File "checkpoint.py", line 30, in save)'
    assert r.losses == [3.0] and r.status == "error"


def test_run_cut_mid_step_line():
    r = parse("cut_mid_step.log")
    check_report(r)
    assert r.status == "error"
    assert r.error == "the run stopped after step 6 of 20: no MGPT end line"
    assert r.steps == 6 and r.bad_records == 1  # the cut record counted, not used
    assert r.ms_per_step == pytest.approx(sum([5.3, 5.0, 4.7, 5.4, 5.1, 4.8]) / 6)
    assert r.peak_heap_bytes == 58208 and r.peak_src == "step"


def test_reset_loop():
    r = parse("reset_loop.log")
    check_report(r)
    assert r.status == "error" and r.boots == 4
    assert r.error.startswith("reset loop: the chip rebooted 4 times without progress")


def test_reset_mid_run_resumes_from_checkpoint():
    r = parse("reset_resume.log")
    check_report(r)
    assert r.status == "ok" and r.resumed_from == 10 and r.boots == 2
    assert r.checkpoints == [10, 20, 30]
    assert r.bad_records == 1  # the step record the reset cut in half
    assert len(r.losses) == 30 and None not in r.losses
    assert r.losses[0] == f32(3.365967)[0] and r.losses[15:20] == f32(2.845018, 3.054155, 2.827918, 2.824256, 2.718260)
    assert r.ms_train == 3688 and len(r.samples) == 5


def test_log_every_groups_give_every_step():
    r = parse("log_every10.log")
    check_report(r)
    assert r.status == "ok" and r.steps == 25 and len(r.losses) == 25
    assert r.losses[9] == f32(3.229071)[0] and r.losses[20:] == f32(3.360040, 2.763430, 2.882194, 2.388742, 3.345801)
    assert r.config["log_every"] == 10


# --- errors and edge cases ---------------------------------------------------------------

ROM = ["ets Jun  8 2016 00:22:57", "", "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)", "entry 0x400805b0"]
BANNER = ["MicroPython v1.25.0 on 2025-04-15; Generic ESP32 module with ESP32",
          'Type "help()" for more information.', ">>> "]


def test_never_started_names_the_fix():
    r = parse_lines(ROM + BANNER, uart_log="run.log")
    assert r.status == "error" and r.steps == 0 and r.bad_records == 0
    assert r.error.startswith("the trainer never started: no MGPT start line")
    assert "microgpt build" in r.error and "run.log" in r.error


def test_engine_error_is_the_reason_when_nothing_started():
    parser = UartParser()
    r = report_of(parser.state(), "qemu", "q.log", engine_error="qemu-system-xtensa not found: install it")
    assert r.error == "the trainer never started: no MGPT start line — qemu-system-xtensa not found: install it"


def test_engine_error_after_steps_and_after_end():
    parser = UartParser()
    for line in [start(10), step(1, 3.3), step(2, 3.2)]:
        parser.feed(line)
    r = report_of(parser.state(), "serial", "s.log", engine_error="no output from the chip for 30 s")
    assert r.error == "the run stopped after step 2 of 10: no MGPT end line — no output from the chip for 30 s"
    parser.feed(end(2).replace("steps=2", "steps=10"))
    assert report_of(parser.state(), "serial", "s.log", engine_error="port vanished").status == "ok"


def test_restart_without_resume_restarts_the_losses():
    lines = [start(5), step(1, 3.0), step(2, 2.9), step(3, 2.8),
             start(5), "MGPT ckpt-bad reason=checksum", *(step(n, 1.0 + n) for n in range(1, 6)), end(5)]
    r = parse_lines(lines)
    assert r.status == "ok" and r.boots == 2 and r.resumed_from is None
    assert r.losses == [2.0, 3.0, 4.0, 5.0, 6.0] and r.checkpoints_rejected == ["checksum"]


def test_a_new_boot_drops_the_steps_it_will_redo():
    assert parse_lines([start(5), step(1, 3.0), step(2, 2.9), step(3, 2.8), start(5), step(1, 9.0)]).losses == [9.0]
    r = parse_lines([start(5), *(step(n, 3.0 - n / 10) for n in range(1, 5)), start(5), "MGPT resume step=2", step(3, 9.0)])
    assert r.losses == f32(2.9, 2.8, 9.0) and r.steps == 3


def test_resume_overwrites_redone_steps_without_duplicates():
    lines = [start(6, 2), step(2, 3.0, 2.9), step(4, 2.8, 2.7), start(6, 2), "MGPT resume step=2",
             step(4, 2.5, 2.4), step(6, 2.3, 2.2), end(6)]
    r = parse_lines(lines)
    assert r.losses == f32(3.0, 2.9, 2.5, 2.4, 2.3, 2.2) and r.resumed_from == 2


def test_reset_loop_in_the_vm_and_progress_breaking_it():
    assert parse_lines([start()] * 3).error.startswith("reset loop: the chip rebooted 3 times")
    r = parse_lines([start(), step(1, 3.0), start(), "MGPT resume step=1", step(2, 2.9), start()])
    assert r.error == "the run stopped after step 2 of 10: no MGPT end line"


def test_restarts_that_never_pass_the_furthest_step_are_a_reset_loop():
    lines = [start(), step(1, 3.0), step(2, 2.9)] + [start(), step(1, 3.0), step(2, 2.9)] * 3
    assert parse_lines(lines).error.startswith("reset loop: the chip rebooted 3 times")


def test_rom_reset_before_start_is_one_boot():
    parser = UartParser()
    for line in ROM + [start()] + ROM + [start()]:
        parser.feed(line)
    assert parser.boots == 2 and not parser.finished
    assert report_of(parser.state(), "x", None).error == "the run stopped after step 0 of 10: no MGPT end line"


def test_records_inside_garbage_lone_cr_and_glued_records():
    line = b"\xff\x00junk" + start(2).encode() + b"\r" + step(1, 3.0).encode() + step(2, 2.0).encode()
    parser = UartParser()
    assert [kind for kind, _ in parser.feed(line)] == ["start", "step", "step"]
    parser.feed(end(2) + "\r\n")
    r = report_of(parser.state(), "x", None)
    assert r.status == "ok" and r.losses == [3.0, 2.0] and r.bad_records == 0


def test_str_and_bytes_lines_parse_alike():
    text = (LOGS / "esp32_ok.log").read_bytes()
    assert parse_lines(text.split(b"\n")) == parse_lines(text.decode().split("\n"))


@pytest.mark.parametrize("bad", [
    step(1, 3.0).replace("n=1", "n=x"),  # bad number
    step(1, 3.0).replace(" heap=58000", ""),  # missing heap
    step(3, 3.0, 2.0, 1.0, 0.5),  # more losses than steps
    step(11, 3.0),  # beyond the run
    step(2, 3.0, 2.0)[:-3],  # losses cut short (not whole base64)
    step(2, 3.0, 2.0)[:-4] + "AAA=",  # losses cut short (whole base64, not whole floats)
    step(2, 3.0, 2.0).replace("loss=", "loss=3.0,2.0 x"),  # the decimal losses of protocol v1
    step(1, 3.0) + " Jun",  # token without a value
    "MGPT end steps=10 ms_train=50",  # end cut short
    "MGPT resume step=99",  # beyond the run
    "MGPT sample x kamon",  # bad index
    "MGPT tb   File \"x.py\", line 1",  # traceback without an error
    "MGPT bogus a=1",  # unknown record
    "MGPT ",  # tag alone
])
def test_malformed_records_are_counted_and_ignored(bad):
    r = parse_lines([start(), step(1, 3.0), bad, step(2, 2.0)])
    assert r.bad_records == 1 and r.losses == [3.0, 2.0]


def test_the_start_names_the_models_shape():
    r = parse_lines([start(1) + " shape=20,2,3,8", step(1, 3.0), end(1)])
    assert r.status == "ok" and r.shape == {"n_embd": 20, "n_head": 2, "n_layer": 3, "block_size": 8}
    assert r.config["shape"] == r.shape
    # A trainer before shapes sent none: it trained microgpt.py's.
    assert parse_lines([start(1), step(1, 3.0), end(1)]).shape == {"n_embd": 16, "n_head": 4, "n_layer": 1,
                                                                   "block_size": 16}


@pytest.mark.parametrize("shape", ["16,4,1", "16,3,1,16", "16,4,0,16", "a,b,c,d", "16,4,1,16,1"])
def test_a_start_with_a_shape_that_is_none_is_a_bad_record(shape):
    r = parse_lines([start(1) + f" shape={shape}", step(1, 3.0), end(1)])
    assert r.bad_records >= 1 and r.status == "error"


def test_steps_before_any_start_are_out_of_place():
    r = parse_lines([step(1, 3.0), end(1)])
    assert r.bad_records == 2 and r.status == "error" and "never started" in r.error


def test_lost_step_record_leaves_a_gap_not_a_shift():
    r = parse_lines([start(3), step(1, 3.0), step(3, 2.0), end(3)])
    assert r.losses == [3.0, None, 2.0]


def test_diverged_loss_is_kept_as_nan():
    r = parse_lines([start(2), step(1, 3.0), step(2, float("nan")), end(2)])
    assert r.status == "ok" and r.losses[0] == 3.0 and r.losses[1] != r.losses[1]


def test_samples_keep_order_and_empty_names():
    r = parse_lines([start(1), step(1, 3.0), "MGPT sample 2 ava", "MGPT sample 1 kamon", "MGPT sample 3 ", end(1)])
    assert r.samples == ["kamon", "ava", ""]


def test_finished_after_end_or_after_the_traceback():
    parser = UartParser()
    for line in [start(), step(1, 3.0), "MGPT error ValueError: bad", "MGPT tb   File \"train.py\", line 3"]:
        parser.feed(line)
        assert not parser.finished
    parser.feed(BANNER[0])
    assert parser.finished
    assert report_of(parser.state(), "x", None).error == 'ValueError: bad (traceback: File "train.py", line 3)'
    parser = UartParser()
    parser.feed(start(1))
    parser.feed(end(1))
    assert parser.finished


def test_a_chip_running_another_configuration_is_stale():
    parser = UartParser(expect_steps=50)
    parser.feed(start(1000))
    assert parser.finished
    assert "1000-step configuration but 50 steps were asked" in report_of(parser.state(), "serial", None).error
    assert parse_lines([start(1), step(1, 3.0), end(1)]).status == "ok"


def test_a_step_record_longer_than_the_payloads_log_every_is_garbled():
    # The parser takes the run's steps and log_every from its payload, not from what the chip says.
    parser = UartParser(expect_steps=10, log_every=2)
    for line in [start(10, every=5), step(2, 3.0, 2.0), step(5, 3.0, 2.0, 1.0)]:
        parser.feed(line)
    assert parser.bad_records == 1 and parser.state().losses == [3.0, 2.0]


# --- fuzzing: any bytes, never an exception, always a complete report ------------------------

SAMPLES = [p.read_bytes() for p in sorted(LOGS.glob("*.log"))]
FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def parse_blob(blob):
    r = parse_lines(blob.split(b"\n"), uart_log="fuzz.log")
    check_report(r)
    return r


@FUZZ
@given(st.binary(max_size=4000))
def test_fuzz_random_bytes(blob):
    parse_blob(blob)


@st.composite
def mutated_logs(draw):
    """A real log with byte flips, cuts, CR/garbage insertions, then lines dropped or repeated."""
    blob = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(blob)))
        op = draw(st.sampled_from(["flip", "truncate", "cr", "insert"]))
        if op == "flip" and at < len(blob):
            blob[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del blob[at:]
        elif op == "cr":
            blob[at:at] = b"\r"
        elif op == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=12))
    lines = bytes(blob).split(b"\n")
    for _ in range(draw(st.integers(0, 6))):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        if draw(st.booleans()):
            del lines[at]
        else:
            lines[at:at] = [lines[at]] * draw(st.integers(1, 3))
    return b"\n".join(lines)


@FUZZ
@given(mutated_logs())
def test_fuzz_mutated_real_logs(blob):
    parse_blob(blob)


ABSURD = st.sampled_from(["nan", "inf", "-1e9", "1e400", "none", "", "3.5.1", "1,2,3,4,5,6,7,8,9,10,11,12,13",
                          "9" * 5000, "\ufffd", "１２", "2.5,,2.4", "AAAA", "AAA=", "////" * 40, "=AAA"])


@st.composite
def protocol_line(draw):
    """A plausible line of a run (any record, ROM reset, banner), sometimes damaged."""
    i, j = draw(st.integers(0, 12)), draw(st.integers(0, 3))
    losses = draw(st.lists(st.floats(0, 4, width=32), min_size=1, max_size=3))
    line = draw(st.sampled_from([
        f"MGPT start v=2 params=4192 steps={i + 3} log_every={j} platform=esp32 freq_mhz=none",
        f"MGPT resume step={i}", "MGPT ckpt-bad reason=checksum", f"MGPT ckpt step={i}",
        *[step(i, *losses, ms=j, heap=j)] * 6,  # the common record
        f"MGPT sample {i} ab",
        f"MGPT end steps={i} ms_train=9 ms_per_step={j} peak_heap=9 alloc_per_step=none heap_total=9",
        "MGPT error MemoryError: memory allocation failed", 'MGPT tb   File "train.py", line 3, in run',
        "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)", "MicroPython v1.25.0 on 2025-04-15", "MGPT bogus x=1",
    ]))
    damage = draw(st.sampled_from(["none", "none", "none", "value", "cut", "junk"]))
    if damage == "value" and "=" in line:
        key = line.index("=", draw(st.integers(0, line.rindex("="))))
        line = line[:key + 1] + draw(ABSURD) + " " + line[key + 1:].partition(" ")[2]
    elif damage == "cut":
        line = line[:draw(st.integers(0, len(line)))]
    elif damage == "junk":
        line = draw(st.sampled_from(["\x00", "\ufffd", "\r", "xMGPT "])) + line
    return line


@settings(FUZZ, max_examples=300)
@given(st.integers(0, 12), st.integers(1, 3), st.lists(protocol_line(), max_size=30), st.sampled_from([None, 3, 12]))
def test_fuzz_protocol_soup(steps, every, lines, expect_steps):
    parser = UartParser(expect_steps)
    for line in [start(steps, every)] + lines:
        parser.feed(line)
        assert parser.finished in (True, False)  # asking never raises
    check_report(report_of(parser.state(), "fuzz", None, engine_error="timeout"))
