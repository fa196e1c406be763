"""MicroPython's raw REPL on a serial port, in one class on pyserial: enter it, run code, stream a
long run, stop it, and move files at the speed of the line.

The protocol (MicroPython's docs, reference/repl.rst, "raw mode and raw-paste mode"): Ctrl-C stops
a running program; Ctrl-A enters the raw REPL, which answers "raw REPL; CTRL-B to exit\\r\\n>".
Code goes in raw-paste mode (Ctrl-E A Ctrl-A; the board answers "R\\x01" and a 16-bit window, and
sends \\x01 each time the host may send another window; Ctrl-D ends the code and the board echoes
it). The program's output follows, then \\x04, its error output (a traceback), \\x04, and ">".

Files go through small programs the board runs (see _HELPERS): uploads as base64 in windows the
board acknowledges one by one, so they never overrun the board's input buffer (259 bytes on the
ESP32) and never carry the Ctrl-C byte (so Ctrl-C always stops a transfer); downloads as raw
bytes after their length. Both are checked with CRC-32; a transfer that fails removes its partial
file (and `sync` rewrites any file whose CRC differs, so a cut one is never used).

Why not mpremote (a test dependency here, checked to work beside this): it is a command-line
tool, and its Python side says it is not yet a library (mpremote 1.29.0's transport_serial.py:
SerialTransport "is just the old Pyboard+PyboardExtended class", whose "API is going to change
significantly"). Nor do its file copies do what a run needs: Transport.fs_writefile and
fs_readfile send each 256 bytes as a Python literal in a raw-REPL command of its own, check no
checksum, and leave a partial file on the board when cut.
"""
import ast
import base64
import contextlib
import struct
import time
import zlib

from .errors import EngineError, MissingFile
from .ports import UART_BAUD, open_serial, watch_link

BANNER = b"raw REPL; CTRL-B to exit\r\n"
PROMPTS = (b">>> ", b"\x04>")  # the friendly REPL's; the raw REPL's after a command's error output
ENTER_TIMEOUT_S = 10
READ_TIMEOUT_S = 0.1  # each serial read; the loops above it keep their own deadlines
# What a board command may take beyond the time its bytes need on the line, however busily the
# board talks meanwhile (the silence timer restarts on every byte, so a board that streams bytes
# forever would hold a command for ever). Its work is a soft reset, the fast mount, the helpers and
# an import or two: on the virtual board, whose flash QEMU makes slow, a whole `device pull` took
# 14 s and a `device sample` of 20 names 27-39 s on a loaded host; 120 s is three times that, and
# still an answer for a user or a CI job waiting on a broken board.
COMMAND_S = 120.0
BITS_PER_BYTE = 10  # on the line: a start bit, 8 data bits, a stop bit
WINDOW = 128  # base64 characters per acknowledged window of an upload
IN_FLIGHT = 2  # windows sent ahead of their acknowledgement: 256 bytes, within the ESP32's input buffer
# Ports whose Ctrl-D exits the process instead of soft-resetting (MicroPython's unix/windows VM).
VM_PLATFORMS = ("linux", "darwin", "win32")
# The ESP32 ROM's SYNC request (esptool's serial protocol): a board in download mode answers it.
_ROM_SYNC = b"\xc0\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32 + b"\xc0"

# The ESP32's littlefs mounted again with 4 KB reads and 256-byte programs (its defaults are 32 and
# 32): the same filesystem (littlefs keeps neither size on disk) in an eighth of the flash
# operations, which QEMU makes ~10 ms each (measured: 45 KB upload 19.9 s -> 6.8 s; an import,
# whose search for a module stats several paths, ~8 s -> ~1 s). It costs 8 KB of RAM until the
# soft reset before the trainer starts, which mounts the defaults again. Nothing on the VM.
_FAST_FLASH = """
try:
    import esp32, vfs
    _p = esp32.Partition.find(esp32.Partition.TYPE_DATA, label='vfs')[0]
    vfs.umount('/')
    try:
        vfs.mount(vfs.VfsLfs2(_p, readsize=4096, progsize=256, lookahead=64), '/')
    except OSError:
        vfs.mount(_p, '/')
except (ImportError, IndexError, OSError):
    pass
"""
# Run on the board once per session (a soft reset forgets them), on the fast mount: _mgput receives
# a file, _mgget sends one, _mgsums says which files the board already holds (size, CRC-32).
_HELPERS = """
import sys, os, binascii
def _mgput(path, size, window):
    f = open(path, 'wb')
    crc = 0
    buf = bytearray(window)
    left = 4 * ((size + 2) // 3)
    try:
        while left:
            m = memoryview(buf)[:min(left, window)]
            got = 0
            while got < len(m):
                got += sys.stdin.buffer.readinto(m[got:])
            data = binascii.a2b_base64(m)
            f.write(data)
            crc = binascii.crc32(data, crc)
            left -= len(m)
            sys.stdout.write('.')
        f.close()
    except BaseException:
        f.close()
        os.remove(path)
        raise
    print(crc)
def _mgget(path):
    f = open(path, 'rb')
    size = f.seek(0, 2)
    f.seek(0)
    print(size)
    buf = bytearray(512)
    crc = 0
    while True:
        n = f.readinto(buf)
        if not n:
            break
        m = memoryview(buf)[:n]
        sys.stdout.buffer.write(m)
        crc = binascii.crc32(m, crc)
    f.close()
    print(crc)
def _mgsums(paths):
    out = []
    buf = bytearray(512)
    for p in paths:
        try:
            f = open(p, 'rb')
        except OSError:
            out.append(None)
            continue
        crc = size = 0
        while True:
            n = f.readinto(buf)
            if not n:
                break
            crc = binascii.crc32(memoryview(buf)[:n], crc)
            size += n
        f.close()
        out.append((size, crc))
    return out
"""


class RawRepl:
    """A MicroPython board on `port` in its raw REPL. `answer_s`: how long it may take to open the
    REPL (default ENTER_TIMEOUT_S); `silence_s`: how long a command may go without a byte from the
    board (writing flash can keep it busy for seconds)."""

    def __init__(self, port: str, baud: int = UART_BAUD, answer_s: float | None = None, silence_s: float = 120.0):
        self.port, self.baud, self.silence_s = port, baud, silence_s
        self.answer_s = ENTER_TIMEOUT_S if answer_s is None else answer_s
        self.serial = open_serial(port, baud, timeout=READ_TIMEOUT_S)
        self.running = False  # a program started with start() has not ended
        self._eot = 0  # end-of-output markers seen for the running program
        self._deadline = None  # (monotonic time, seconds, what): set by within()
        self._helpers = self._fast = False
        try:
            self.enter()
            self.platform = self.eval("__import__('sys').platform")
        except BaseException:
            self.serial.close()
            raise

    # ---- the line ----

    def _write(self, data: bytes) -> None:
        with watch_link(self.port):
            self.serial.write(data)

    def _read(self, n: int = 0) -> bytes:
        """What arrived (up to n bytes; 0: all waiting), after at most one read timeout. Past the
        deadline of within(), an EngineError instead."""
        if self._deadline and time.monotonic() > self._deadline[0]:
            _, seconds, what = self._deadline
            raise EngineError(f"the board on {self.port} did not finish {what} within {seconds:.0f} s, though it kept "
                              "sending: reset it (EN) and try again, or flash MicroPython with `microgpt device flash`")
        with watch_link(self.port):
            return self.serial.read(n or max(1, self.serial.in_waiting))

    def _read_until(self, marker: bytes | tuple[bytes, ...], what: str) -> bytes:
        """Bytes up to and including the first `marker` (or any of several)."""
        markers = marker if isinstance(marker, tuple) else (marker,)
        return self._collect(lambda data: data.endswith(markers), lambda data: 1,
                             lambda data: f"{what}; it said {data[-120:]!r}")

    def _read_exact(self, n: int, what: str) -> bytes:
        return self._collect(lambda data: len(data) >= n, lambda data: n - len(data),
                             lambda data: f"{what}, {len(data)} of {n} bytes")

    def _collect(self, done, size, describe) -> bytes:
        """Bytes read (size(data) at a time) until done(data); raises, with describe(data), if the
        board falls silent for silence_s."""
        data = b""
        last = time.monotonic()
        while not done(data):
            chunk = self._read(size(data))
            if chunk:
                data += chunk
                last = time.monotonic()
            elif time.monotonic() - last > self.silence_s:
                raise EngineError(f"the board on {self.port} stopped answering ({describe(data)})")
        return data

    def line_s(self, size: int) -> float:
        """The seconds `size` bytes take on the line at the port's baud rate."""
        return size * BITS_PER_BYTE / self.baud

    @contextlib.contextmanager
    def within(self, what: str, extra_s: float = 0.0):
        """The commands inside the block (`what`, to the user) must end within COMMAND_S plus
        `extra_s` (their own work: line time, computing on the board), however busily the board talks."""
        seconds = COMMAND_S + extra_s
        self._deadline = (time.monotonic() + seconds, seconds, what)
        try:
            yield
        finally:
            self._deadline = None

    # ---- the REPL ----

    def enter(self) -> None:
        """Stop whatever runs and open the raw REPL, or say what is on the port instead."""
        self._write(b"\r\x03\x03")  # Ctrl-C twice: stop a running program
        time.sleep(0.05)
        said = self._read()
        self._write(b"\r\x01")  # Ctrl-A: raw REPL
        deadline = nudged = time.monotonic()
        deadline += self.answer_s
        while not said.endswith(BANNER + b">"):
            chunk = self._read()
            said += chunk
            # Our Ctrl-A can go unheard: a board still booting offers its friendly REPL after it; a
            # board stopped mid-command (a transfer reading its input when a host was cut off) may
            # have read it as data, then prints its KeyboardInterrupt and the raw REPL's prompt.
            # Ask again, once it has been quiet at either prompt for a while (never twice for one answer).
            if not chunk and said.endswith(PROMPTS) and time.monotonic() - nudged > 1:
                self._write(b"\r\x01")
                nudged = time.monotonic()
            if time.monotonic() > deadline:
                raise EngineError(self._not_micropython(said))
        self.running = False
        self._helpers = self._fast = False  # after a reset the board has forgotten them; installing again is cheap

    def _not_micropython(self, said: bytes) -> str:
        fix = "Flash MicroPython with `microgpt device flash`."
        if not said:
            self._write(_ROM_SYNC)
            time.sleep(0.3)
            if self._read().startswith(b"\xc0\x01\x08"):
                return (f"the board on {self.port} is in its ROM bootloader's download mode (BOOT held at reset), "
                        f"not running MicroPython: reset it without holding BOOT. {fix}")
            return (f"no answer from {self.port} within {self.answer_s:g} s: is the board powered and running "
                    f"MicroPython at {self.baud} baud? {fix}")
        return (f"{self.port} refused the raw REPL (no 'raw REPL; CTRL-B to exit' banner); it answered "
                f"{said[-200:]!r}. Is MicroPython running there? {fix}")

    def _submit(self, code: str) -> None:
        """Send `code` in raw-paste mode (the board paces it); its output follows."""
        self._write(b"\x05A\x01")
        answer = self._read_exact(2, "raw-paste mode")
        if answer != b"R\x01":
            raise EngineError(f"the board on {self.port} has no raw-paste mode (it answered {answer!r}): "
                              "use MicroPython v1.23 or newer")
        window = remaining = struct.unpack("<H", self._read_exact(2, "raw-paste window"))[0]
        data = code.encode()
        while data:
            while remaining == 0 or self.serial.in_waiting:
                flow = self._read_exact(1, "raw-paste flow control")
                if flow == b"\x01":
                    remaining += window
                elif flow == b"\x04":  # the board ended the paste early
                    self._write(b"\x04")
                    break
                else:
                    raise EngineError(f"unexpected {flow!r} from {self.port} while sending code")
            self._write(data[:remaining])
            remaining, data = remaining - len(data[:remaining]), data[remaining:]
        self._write(b"\x04")
        self._read_until(b"\x04", "end of code")

    def _finish(self, what: str) -> bytes:
        """After a command: its output; its error output raises EngineError naming the error."""
        out = self._read_until(b"\x04", what)[:-1]
        err = self._read_until(b"\x04", what)[:-1]
        self._read_until(b">", what)
        if err:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise EngineError(f"the board failed running {what}: {last[0]}")
        return out

    def exec(self, code: str) -> bytes:
        """Run `code` to completion and return what it printed; an exception on the board is an EngineError."""
        self._submit(code)
        return self._finish(repr(code.splitlines()[0] if code.strip() else code))

    def eval(self, expression: str):
        return ast.literal_eval(self.exec(f"print(repr({expression}))").decode())

    def soft_reset(self) -> None:
        """Restart MicroPython for a clean heap (boot.py runs, main.py does not). On the VM Ctrl-D
        would end the process instead, and a fresh VM process is clean already, so there it is skipped."""
        if self.platform not in VM_PLATFORMS:
            self._write(b"\x04")
            self._read_until(b"soft reboot\r\n", "soft reset")
            self._read_until(BANNER + b">", "soft reset")
            self._helpers = self._fast = False

    def start(self, code: str) -> None:
        """Start `code` and return at once; read its output with read()."""
        self._submit(code)
        self.running, self._eot = True, 0

    def read(self) -> bytes | None:
        """What the running program printed since the last call (b"" if nothing within the read
        timeout); None once it has ended. Its output and its error output (a traceback) are both
        returned; the markers and the prompt after them are not."""
        if not self.running:
            return None
        parts = self._read().split(b"\x04")
        ends = 2 - self._eot  # markers still to come: the parts before them are the program's
        data = b"".join(parts[:ends])
        self._eot += len(parts) - 1
        if self._eot >= 2:
            self.running = False
            if b">" not in b"".join(parts[ends:]):  # the prompt that follows the second marker
                self._read_until(b">", "end of the program")
            return data or None
        return data

    def stop(self, wait_s: float | None = None) -> None:
        """Stop the running program (Ctrl-C), as a user would, and wait (`wait_s`, default answer_s)
        until the board is back at its prompt."""
        if not self.running:
            return
        self._write(b"\x03")
        deadline = time.monotonic() + (self.answer_s if wait_s is None else wait_s)
        while self.running and time.monotonic() < deadline:
            self.read()
        if self.running:
            raise EngineError(f"the board on {self.port} did not stop its program on Ctrl-C")

    def close(self) -> None:
        """Stop a program still running, leave the board at its friendly REPL, and free the port."""
        if not self.serial.is_open:
            return
        try:
            self.stop(wait_s=2)
            self._write(b"\r\x02")  # Ctrl-B: friendly REPL
        except EngineError:
            pass  # the board or its port is gone: nothing left to leave tidy
        finally:
            self.serial.close()

    # ---- files ----

    def fast_flash(self) -> None:
        """Mount the board's filesystem with large caches until the next soft reset (see _FAST_FLASH):
        reading files and importing modules take far fewer flash operations."""
        if not self._fast:
            self.exec(_FAST_FLASH)
            self._fast = True

    def _install_helpers(self) -> None:
        if not self._helpers:
            self.fast_flash()
            self.exec(_HELPERS)
            self._helpers = True

    def write_file(self, path: str, data: bytes) -> None:
        self._install_helpers()
        text = base64.b64encode(data)
        windows = [text[i:i + WINDOW] for i in range(0, len(text), WINDOW)]
        what = f"writing {path}"
        self._submit(f"_mgput({path!r}, {len(data)}, {WINDOW})")
        sent = acked = 0
        while acked < len(windows):
            while sent < len(windows) and sent - acked < IN_FLIGHT:
                self._write(windows[sent])
                sent += 1
            ack = self._read_exact(1, what)
            if ack != b".":  # the receiver failed: its traceback follows, then the prompt
                said = (ack + self._read_until(b"\x04>", what)).decode(errors="replace")
                self.enter()  # windows still in flight went to the prompt: start it afresh
                full = ": the board's filesystem is full" if "ENOSPC" in said or "28]" in said else ""
                error = said.strip("\x04>").strip().splitlines()[-1:] or ["?"]
                raise EngineError(f"cannot write {path} ({len(data):,} bytes) on the board: {error[0]}{full}")
            acked += 1
        crc = int(self._finish(what))
        if crc != zlib.crc32(data):
            raise EngineError(f"{path} arrived damaged on the board (CRC-32 {crc:08x}, sent {zlib.crc32(data):08x}): "
                              "check the cable, or lower --baud")

    def read_file(self, path: str) -> bytes:
        self._install_helpers()
        self._submit(f"_mgget({path!r})")
        what = f"reading {path}"
        head = self._read_until((b"\n", b"\x04"), what)
        if head.endswith(b"\x04"):  # the board raised before it sent the length
            error = self._read_until(b"\x04", what)[:-1].decode(errors="replace")
            self._read_until(b">", what)
            if "ENOENT" in error:
                raise MissingFile(f"there is no {path} on the board")
            raise EngineError(f"cannot read {path} from the board: {error.strip().splitlines()[-1:]}")
        data = self._read_exact(int(head), what)
        crc = int(self._finish(what))
        if crc != zlib.crc32(data):
            raise EngineError(f"{path} arrived damaged from the board (CRC-32 mismatch): check the cable, or lower --baud")
        return data

    def sync(self, files: dict[str, bytes], progress=None) -> list[str]:
        """Write the files the board does not already hold byte for byte; returns those written."""
        self._install_helpers()
        held = self.eval(f"_mgsums({list(files)!r})") if files else []
        written = []
        for (path, data), sums in zip(files.items(), held):
            if sums != (len(data), zlib.crc32(data)):
                if progress:
                    progress(path, len(data))
                self.write_file(path, data)
                written.append(path)
        return written

    def remove(self, *paths: str) -> None:
        """Delete these files where they exist."""
        self.exec(f"import os\nfor p in {paths!r}:\n try:\n  os.remove(p)\n except OSError:\n  pass")

    def remove_own(self, path: str, mark: bytes) -> bool:
        """Delete `path` if it begins with `mark` (a file this tool wrote); True if it did."""
        code = (f"import os\ntry:\n f = open({path!r}, 'rb')\n own = f.read({len(mark)}) == {mark!r}\n f.close()\n"
                f"except OSError:\n own = False\nif own:\n os.remove({path!r})\nprint(own)")
        return self.exec(code).strip() == b"True"
