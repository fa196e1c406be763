"""The raw REPL client against the MicroPython VM behind a pty, and against peers that are not
MicroPython: a silent port, `cat`, a cable pulled mid-run, a board that talks without end."""
import threading
import time

import pytest
from vm_pty import VmPort

from microgpt import chip, rawrepl
from microgpt.engines import split_lines
from microgpt.errors import EngineError, Silence
from microgpt.rawrepl import RawRepl


@pytest.fixture
def repl(vm_board):
    r = RawRepl(vm_board.path)
    yield r
    r.close()


def test_enters_raw_repl_and_runs_code(repl):
    assert repl.platform == "linux"  # the unix port, a stand-in for the board
    assert repl.exec("print(6 * 7)") == b"42\n"
    assert repl.eval("[1, 'a', b'\\x00']") == [1, "a", b"\x00"]


def test_board_side_exception_is_an_engine_error_naming_it(repl):
    with pytest.raises(EngineError, match="the board failed running 'x = 1 / 0': ZeroDivisionError: divide by zero"):
        repl.exec("x = 1 / 0")
    assert repl.exec("print('still usable')") == b"still usable\n"


def test_files_round_trip_byte_exact(repl, vm_board):
    data = bytes(range(256)) * 70 + b"\x04\x03\x01\r\n>"  # every byte value, the REPL's control bytes too
    repl.write_file("blob.bin", data)
    assert (vm_board.cwd / "blob.bin").read_bytes() == data  # it landed on the "board's" filesystem
    assert repl.read_file("blob.bin") == data


def test_missing_file(repl):
    with pytest.raises(EngineError, match="there is no weights.bin on the board"):
        repl.read_file("weights.bin")


def test_streams_a_running_program_line_by_line(repl):
    repl.start("import time\nprint('MGPT one')\ntime.sleep(1.5)\nprint('MGPT two')\nraise ValueError('boom')\n")
    t0 = time.monotonic()
    lines = split_lines(repl.read, silence_s=10)
    assert next(lines) == b"MGPT one"
    assert time.monotonic() - t0 < 1.0  # arrived while the program still ran
    rest = list(lines)  # ends with the program: stdout, then the traceback the raw REPL sends apart
    assert rest[0] == b"MGPT two"
    assert rest[-1] == b"ValueError: boom"
    assert repl.read() is None
    assert repl.exec("print('next')") == b"next\n"  # the prompt is back for the next command


def test_soft_reset_keeps_the_vm_alive(repl, vm_board):
    repl.soft_reset()  # Ctrl-D would end the VM process: on the unix port it is skipped
    assert vm_board.proc.poll() is None
    assert repl.exec("print(1)") == b"1\n"


def test_silent_port(tmp_path):
    with VmPort(tmp_path) as port:  # nothing behind the port: a board that is off
        with pytest.raises(EngineError, match=r"no answer from /dev/pts/\d+ within 1 s: is the board powered"):
            RawRepl(port.path, answer_s=1)


def test_a_peer_that_is_not_micropython_refuses_the_raw_repl(tmp_path):
    with VmPort(tmp_path) as port:
        port.start(["cat"])  # echoes what it gets: alive, but no raw REPL banner
        with pytest.raises(EngineError, match=r"refused the raw REPL \(no 'raw REPL; CTRL-B to exit' banner\); "
                                              r"it answered b'\\r\\x03\\x03\\r\\x01'.*device flash"):
            RawRepl(port.path, answer_s=1)


def test_cable_pulled_mid_run(repl, vm_board):
    repl.start("import time\nfor i in range(100):\n print('MGPT tick', i)\n time.sleep(0.05)\n")
    lines = split_lines(repl.read, silence_s=10)
    assert next(lines) == b"MGPT tick 0"
    vm_board.unplug()
    with pytest.raises(EngineError, match=r"serial connection to /dev/pts/\d+ lost .*check the USB cable") as e:
        list(lines)
    assert not isinstance(e.value, Silence)


def test_board_dies_silently(repl, vm_board):
    repl.start("print('MGPT alive')\nwhile True: pass\n")
    lines = split_lines(repl.read, silence_s=1)
    assert next(lines) == b"MGPT alive"
    vm_board.kill()  # the board stops; its USB bridge stays: silence, not a lost port
    with pytest.raises(Silence, match="no output from the chip for 1 s"):
        list(lines)


def test_busy_port(vm_board):
    first = RawRepl(vm_board.path)
    try:
        with pytest.raises(EngineError, match="is busy"):
            RawRepl(vm_board.path)
    finally:
        first.close()


# --- a board that enters the raw REPL, then talks forever: device pull and device sample end all the same ---

def _ends_within(seconds, *args):
    """`microgpt ARGS` in a thread -> (exit code, output), failing if it has not ended after `seconds`."""
    from click.testing import CliRunner

    from microgpt.cli import main

    results = []
    thread = threading.Thread(target=lambda: results.append(CliRunner().invoke(main, [str(a) for a in args])),
                              daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"`microgpt {' '.join(map(str, args))}` still runs after {seconds} s"
    return results[0].exit_code, results[0].output


@pytest.fixture
def short_deadlines(monkeypatch):
    monkeypatch.setattr(rawrepl, "COMMAND_S", 2.0)
    monkeypatch.setattr("microgpt.board.NAME_S", 0.5)
    monkeypatch.setattr("microgpt.board.LARGEST_RUN_FILE", 11_520)  # a second on the line at 115200 baud


def test_pull_from_a_board_that_streams_forever(short_deadlines, tmp_path):
    # Its weights.bin reads as /dev/zero: the board announces 0 bytes, then sends zeros, never its end.
    with VmPort(tmp_path / "board") as board:
        (board.cwd / "weights.bin").symlink_to("/dev/zero")
        t0 = time.monotonic()
        code, out = _ends_within(60, "device", "pull", "--port", board.start().path, "--out", tmp_path / "w.bin")
    assert code == 1 and out.count("\n") == 1, out
    assert "did not finish reading weights.bin within 3 s, though it kept sending: reset it" in out
    assert time.monotonic() - t0 < 20 and not (tmp_path / "w.bin").exists()


def test_sample_on_a_board_that_streams_forever(short_deadlines, tmp_path):
    # A sampler on the board that says its weights are fine, then prints lines without end.
    shape = chip.DEFAULT
    head = chip.WEIGHTS_HEAD.pack(chip.WEIGHTS_MAGIC, *(getattr(shape, k) for k in chip.KNOBS))
    size = chip.WEIGHTS_HEAD.size + 4 * shape.n_params
    with VmPort(tmp_path / "board") as board:
        (board.cwd / "infer.py").write_text(
            f"def held(weights, config):\n    return {head!r}, {size}, {tuple(getattr(shape, k) for k in chip.KNOBS)}\n"
            "def names(*args):\n    while True:\n        print('still thinking')\n")
        code, out = _ends_within(60, "device", "sample", "--port", board.start().path, "--count", 4)
    assert code == 1 and out.count("\n") == 1, out
    assert "did not finish sampling 4 names within 4 s, though it kept sending" in out


def test_a_board_stopped_mid_command_is_entered_again(vm_board):
    # A host cut off mid-upload left the board's receiver reading its input: it takes the next
    # host's Ctrl-C and Ctrl-A as data before its KeyboardInterrupt (as the ESP32 under QEMU did
    # when the interrupt came late), then sits at the raw REPL's prompt after the traceback.
    from microgpt.ports import open_serial

    with open_serial(vm_board.path) as cut_off:
        cut_off.write(b"\r\x03\x01")
        cut_off.read_until(b"raw REPL; CTRL-B to exit\r\n>")
        cut_off.write(b"import micropython, sys\nmicropython.kbd_intr(-1)\nsys.stdin.buffer.read(5)\n"
                      b"raise KeyboardInterrupt\n\x04")
        assert cut_off.read_until(b"OK") == b"OK"
    repl = RawRepl(vm_board.path)
    try:
        assert repl.exec("print('usable')") == b"usable\n"
    finally:
        repl.close()
