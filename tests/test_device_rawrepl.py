"""The raw REPL client against the MicroPython VM behind a pty, and against peers that are not
MicroPython: a silent port, `cat`, a cable pulled mid-run."""
import time

import pytest
from vm_pty import VmPort

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
