"""Espressif's QEMU (`qemu-system-xtensa -machine esp32`): the `qemu` engine, which boots the run's
flash and reads UART0 on QEMU's stdout, and the virtual board (`microgpt sim board`), which offers
UART0 on a serial port for the board commands.

Follows Espressif's QEMU guide (github.com/espressif/esp-toolchain-docs, qemu/esp32/README.md):
the ROM first-stage bootloader is built into QEMU, the flash image is an `if=mtd` raw drive of
exactly 2, 4, 8 or 16 MB, and with `-nographic` UART0 is the process's stdout unless `-serial`
sends it elsewhere.
"""
import collections
import ctypes
import errno
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .. import basefw, image, mpy, qemu_install
from ..errors import EngineError, OutputError
from ..fileio import output_error, write_atomic
from ..payload import Payload
from ..qemu_install import BINARY, EXE
from . import ProcessEngine

try:
    import fcntl
except ImportError:  # Windows: no lock on a board's flash
    fcntl = None

FLASH = "qemu-flash.bin"
FLASH_SIZES = tuple(mb << 20 for mb in (2, 4, 8, 16))  # the only sizes QEMU's esp32 flash accepts
INSTALL_HELP = (
    f"{BINARY} (Espressif's QEMU fork) was not found. Install it into the tool's cache with:\n"
    "    microgpt sim install-qemu\n"
    "or with ESP-IDF (python $IDF_PATH/tools/idf_tools.py install qemu-xtensa), or unpack a qemu-xtensa release\n"
    "from https://github.com/espressif/qemu/releases (Linux also needs: sudo apt-get install -y libgcrypt20\n"
    "libglib2.0-0 libpixman-1-0 libsdl2-2.0-0 libslirp0) and put it on PATH, set QEMU_XTENSA=/path/to/"
    f"{BINARY}, or pass --qemu PATH."
)
# Documented switch that stops QEMU emulating the Timer Group watchdogs (TG0's is armed at reset,
# TG1's is ESP-IDF's interrupt watchdog). Off by default: QEMU's timers follow the host's clock, so
# on a busy host, and in flash operations (which take QEMU ~10 ms each, a chip tens of
# microseconds), they fire where a board's never would.
NO_WATCHDOG = ["-global", "driver=timer.esp32.timg,property=wdt_disable,value=true"]
# QEMU's instruction-counting TCG plugin (tests/plugin/insn.c, built as libinsn.so): it writes
# "cpu N insns: COUNT" per guest CPU when QEMU exits. MicroPython runs on cpu 1 of the ESP32.
INSN_PLUGIN = "libinsn.so"
MICROPYTHON_CPU = 1
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent ends (Linux)


def find_qemu(explicit: str | os.PathLike | None = None) -> str:
    """The qemu-system-xtensa to run, in one order everywhere: --qemu PATH, $QEMU_XTENSA, PATH, the
    tool's install (`microgpt sim install-qemu`), then an ESP-IDF tools install."""
    for given, origin in ((explicit, "--qemu"), (os.environ.get("QEMU_XTENSA"), "$QEMU_XTENSA")):
        if given:
            if Path(given).is_file() and os.access(given, os.X_OK):
                return str(given)
            raise EngineError(f"{origin} {given}: no such executable file.\n{INSTALL_HELP}")
    on_path = shutil.which(BINARY)
    if on_path:
        return on_path
    ours = qemu_install.installed()
    if ours:
        return str(ours)
    # idf_tools.py installs to $IDF_TOOLS_PATH/tools/qemu-xtensa/<version>/qemu/bin (default ~/.espressif).
    tools = Path(os.environ.get("IDF_TOOLS_PATH") or Path.home() / ".espressif") / "tools" / "qemu-xtensa"
    installed = sorted(tools.glob(f"*/qemu/bin/{EXE}"), key=lambda p: [int(n) for n in re.findall(r"\d+", p.parts[-4])])
    if installed:
        return str(installed[-1])  # newest version
    raise EngineError(INSTALL_HELP)


def find_insn_plugin(explicit: str | os.PathLike | None = None, qemu: str | None = None) -> Path | None:
    """libinsn.so: the given path, $QEMU_INSN_PLUGIN, or beside QEMU (its build's tests/plugin/, or plugins/)."""
    for given in (explicit, os.environ.get("QEMU_INSN_PLUGIN")):
        if given:
            if not Path(given).is_file():
                raise EngineError(f"QEMU plugin {given}: no such file (build QEMU's tests/plugin/{INSN_PLUGIN})")
            return Path(given)
    if qemu:
        home = Path(qemu).resolve().parent
        for near in (home / "tests/plugin", home.parent / "lib", home.parent / "plugins"):
            if (near / INSN_PLUGIN).is_file():
                return near / INSN_PLUGIN
    return None


def read_insn_counts(log: str) -> dict[int, int]:
    """{cpu: guest instructions} from the insn plugin's exit lines."""
    return {int(cpu): int(n) for cpu, n in re.findall(r"^cpu (\d+) insns: (\d+)$", log, re.M)}


def qemu_argv(qemu: str, flash: Path, *, serial: str | None = None, watchdog: bool = False,
              plugin: Path | None = None, plugin_log: Path | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The documented invocation, without the Timer Group watchdogs unless `watchdog` (see NO_WATCHDOG).
    `serial`: where UART0 goes instead of stdout (a board's port: "pty", "tcp:...")."""
    # Checked against Espressif's hw/xtensa/esp32.c and hw/timer/esp32_timg.c as stored from its
    # esp-develop branch (the tree at tag esp-develop-9.2.2-20250228 could not be read here) and against
    # the 7.2.50 build in ../shared: the machine is "esp32"; the flash is the first if=mtd drive, of
    # 2, 4, 8 or 16 MB only; the first -serial is UART0; wdt_disable is a property of timer.esp32.timg
    # (an unknown one stops QEMU at once: "can't apply global"). QEMU 9.x prints "char device
    # redirected to <pty> (label serial0)" on stdout (qemu_printf), older QEMU on stderr: the board
    # reads both. No -icount: the 7.2.50 build hangs with it after the second-stage bootloader.
    argv = [qemu, "-nographic", "-machine", "esp32", "-drive", f"file={flash},if=mtd,format=raw"]
    if serial:
        argv += ["-serial", serial, "-monitor", "none"]
    # A plugin is built against one QEMU's plugin API (QEMU refuses another version's), so it is looked
    # for beside the QEMU used; Espressif's release archives carry none.
    if plugin:  # its counts go to a log of their own, not to the UART
        argv += ["-plugin", str(plugin), "-d", "plugin", "-D", str(plugin_log)]
    return argv + ([] if watchdog else NO_WATCHDOG) + list(extra)


class QemuEngine(ProcessEngine):
    """Boot the run's flash (`workdir`/qemu-flash.bin) in `qemu-system-xtensa -machine esp32`;
    UART0 is QEMU's stdout. QEMU writes the chip's flash back to that file, so after the run it
    holds what the chip wrote (weights.bin), and a cut run can boot it again to resume."""

    name = "qemu"
    what = "QEMU"
    OPTIONS = ("qemu", "image", "firmware")

    def __init__(self, workdir, *, qemu: str | os.PathLike | None = None, image: str | os.PathLike | None = None,
                 firmware: str | os.PathLike | None = None, silence_s: float = 120.0,
                 deadline_s: float | None = None, watchdog: bool = False, insn_plugin: str | os.PathLike | None = None,
                 extra_args: Sequence[str] = ()):
        super().__init__(workdir, silence_s, deadline_s)
        self.qemu = find_qemu(qemu)
        self.base = basefw.FirmwareBase(image, firmware)
        self.watchdog, self.extra_args = watchdog, list(extra_args)
        self.flash = self.workdir / FLASH
        self.insn_plugin = insn_plugin
        self.insn_log = self.workdir / "qemu-insn.log"
        self.insn_output = ""  # with insn_plugin: all the plugin wrote, after stop() (the work dir may go)

    def settings(self) -> dict:
        return {"qemu": self.qemu}

    def target(self) -> mpy.Target:
        fw = self.base.resolve()
        if fw.flash_size not in FLASH_SIZES:
            raise EngineError(f"{fw.path.name} is for a {fw.flash_size >> 20} MB flash; Espressif's QEMU emulates "
                              "2, 4, 8 or 16 MB")
        return mpy.firmware_target(fw.version)

    def place(self, payload: Payload) -> None:
        write_atomic(self.flash, self.base.resolve().flash(dict(payload.files), keep=self.base.keep))

    def command(self) -> list[str]:
        return qemu_argv(self.qemu, self.flash, watchdog=self.watchdog, plugin=self.insn_plugin,
                         plugin_log=self.insn_log, extra=self.extra_args)

    def stop(self) -> None:
        super().stop()  # SIGTERM first: QEMU exits cleanly and the plugin writes its counts
        if self.insn_plugin and self.insn_log.is_file():
            self.insn_output = self.insn_log.read_text(errors="replace")

    @property
    def instructions(self) -> dict[int, int]:
        """With insn_plugin, after stop(): guest instructions per CPU."""
        return read_insn_counts(self.insn_output)

    def read_file(self, name: str) -> bytes | None:
        """From QEMU's flash, as the chip left it."""
        return image.read_vfs(self.flash).get(name) if self.flash.is_file() else None


class VirtualBoard:
    """Espressif's QEMU as an ESP32 on a serial port: UART0 on a pseudo-terminal (or, where there is
    none, a TCP socket: `socket://127.0.0.1:PORT`), the flash in a file that persists, so starting
    it again on the same file is a power cycle. `microgpt device run/pull`, mpremote or a serial
    terminal talk to `port` as to a board on USB.

    The flash file is locked from here until stop(): a second board on it (whose writes the first
    would undo at its next power cycle) is refused. `new`: a new board's flash (new_flash), written
    into the file once it is held."""

    def __init__(self, flash: Path, *, qemu: str | os.PathLike | None = None, tcp: int | None = None,
                 new: bytes | None = None):
        self.qemu = find_qemu(qemu)
        self.flash = Path(flash)
        self.tcp = tcp if tcp is not None or os.name == "posix" else _free_port()
        self.port: str | None = None
        self._proc: subprocess.Popen | None = None
        self._listener: threading.Thread | None = None
        self._said: collections.deque = collections.deque(maxlen=20)  # QEMU's own messages, for errors
        self._relay: _Relay | None = None
        self._lock = None
        self._hold(new)

    @staticmethod
    def new_flash(base: basefw.FirmwareBase) -> bytes:
        """A new board's flash: a whole-flash image as it is (with `base.keep`), or the firmware
        with its filesystem erased, as a board comes after MicroPython is first flashed."""
        fw = base.resolve()
        return fw.data if base.keep and fw.offset == 0 else fw.flash(None)

    def _hold(self, new: bytes | None = None) -> None:
        """Open the flash file and lock it (see the class). QEMU inherits the lock, so it holds
        while a QEMU left by a killed board still runs."""
        made = new is not None and not self.flash.exists()
        try:  # "rb+": a flash that QEMU could not write back to is refused now, not after the board is announced
            held = open(self.flash, "xb+" if made else "rb+")
        except FileNotFoundError:
            raise EngineError(f"{self.flash}: no board flash there (make one with `microgpt sim board`)") from None
        except FileExistsError:  # made meanwhile: another board is starting on it
            raise EngineError(_in_use(self.flash)) from None
        except OSError as e:
            raise OutputError(f"{output_error(e, self.flash)} (--flash PATH)") from None
        try:
            if fcntl:
                try:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    made = False  # the board that holds it made it
                    raise EngineError(_in_use(self.flash)) from None
            size = os.fstat(held.fileno()).st_size if new is None else len(new)
            if size not in FLASH_SIZES:  # checked before writing: a flash QEMU would refuse never replaces a board's
                raise EngineError(f"{self.flash if new is None else 'the new flash'} is {size:,} bytes; Espressif's "
                                  "QEMU needs a whole flash of exactly 2, 4, 8 or 16 MB")
            if new is not None:
                try:
                    held.write(new)
                    held.truncate()
                    held.flush()
                except OSError as e:
                    raise OutputError(f"{output_error(e, self.flash)} (--flash PATH)") from None
        except BaseException:
            held.close()
            if made:  # a file this board made and could not fill goes
                self.flash.unlink(missing_ok=True)
            raise
        self._lock = held

    def start(self, timeout_s: float = 10.0) -> str:
        """Power on; returns the port to pass as --port (a new one after each power cycle)."""
        if self._lock is None:
            self._hold()
        self.port = None
        self._said.clear()
        public = uart = None
        try:
            if self.tcp is not None:  # QEMU's own server for UART0 on a private port, behind the relay
                public, uart = _Relay.listen(self.tcp), _free_port()  # a port in use is refused before QEMU starts
            serial = f"tcp:127.0.0.1:{uart},server=on,wait=off" if uart else "pty"
            self._proc = subprocess.Popen(qemu_argv(self.qemu, self.flash, serial=serial), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          start_new_session=os.name == "posix", preexec_fn=_ends_with_this_process(),
                                          pass_fds=(self._lock.fileno(),) if fcntl else ())
            found = threading.Event()
            self._listener = threading.Thread(target=self._listen, args=(found,), daemon=True)
            self._listener.start()
            if uart:
                self._relay = _Relay(public, _connect(uart, self._proc, timeout_s, self._what_qemu_said))
                self.port = f"socket://127.0.0.1:{self.tcp}"
            elif not found.wait(timeout_s) or self.port is None:
                raise EngineError(f"QEMU did not start as a board: {self._what_qemu_said()}")
        except BaseException:
            if public and not self._relay:
                public.close()
            self.stop()
            raise
        return self.port

    def _listen(self, found: threading.Event) -> None:
        # Keeps reading QEMU's messages, so that QEMU never blocks on a full pipe. QEMU names the pty
        # it made: "char device redirected to /dev/pts/3 (label serial0)".
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._said.append(line)
            named = re.search(r"redirected to (\S+) \(label serial0\)", line)
            if named and self.port is None:
                self.port = named[1]
                found.set()
        found.set()

    def _what_qemu_said(self) -> str:
        if self._proc and self._proc.poll() is not None and self._listener:
            self._listener.join(timeout=5)  # QEMU has ended: the rest of what it said is in the pipe
        return "\n".join(line for line in self._said if line) or "no output"

    def wait(self) -> None:
        """Until the board's QEMU ends by itself (killed, or failed): raises EngineError saying so."""
        code = self._proc.wait()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise EngineError(f"the virtual board is off: its QEMU ended ({how}); QEMU's output: {self._what_qemu_said()}")

    def stop(self) -> None:
        """Power off (QEMU ends; the flash file keeps what the chip wrote) and let go of the flash."""
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._relay:
            self._relay.close()
        if self._proc:
            if self._listener:
                self._listener.join(timeout=5)  # QEMU has ended: its stdout is at its end
            self._proc.stdout.close()
        if self._lock:
            self._lock.close()
        self._proc = self._listener = self._relay = self._lock = None

    def kill(self) -> None:
        """A power cut: QEMU is killed at once."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _in_use(flash: Path) -> str:
    return (f"{flash} is the flash of a virtual board that is running (or of the QEMU a killed one left): power "
            "that board off first, or give this one another --flash")


def _ends_with_this_process():
    """A preexec_fn (Linux): QEMU gets SIGTERM when the thread that started it ends, so a killed
    `sim board` leaves no QEMU on the flash and the port. Elsewhere None: the flash's lock, which
    QEMU inherits, keeps a second board off the flash while a QEMU left behind runs."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here: the child between fork and exec loads nothing
    parent = os.getpid()

    def preexec():
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the board's process died before prctl: no signal would ever come
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class _Relay:
    """UART0 offered on the public TCP port to one client at a time. QEMU's own server leaves a
    second client connected but unheard (waiting in its backlog); here a second client is closed at
    once, so its tools can say the board is in use (ports.open_serial)."""

    def __init__(self, public: socket.socket, uart: socket.socket):
        self._public, self._uart = public, uart
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def listen(port: int) -> socket.socket:
        server = socket.socket()
        if os.name == "posix":  # a port the last board left in TIME_WAIT is free; one that listens is not
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("127.0.0.1", port))
            server.listen()
        except OSError as e:
            server.close()
            why = "another program (or virtual board) listens there" if e.errno == errno.EADDRINUSE else e.strerror
            raise EngineError(f"cannot offer the board on 127.0.0.1:{port}: {why}: pick another --tcp PORT") from None
        return server

    def _run(self) -> None:
        client = None
        while not self._stopping:
            ready = select.select([s for s in (client, self._uart, self._public) if s], [], [], 0.2)[0]
            # The client first: one that left frees the board for a client arriving in the same turn.
            if client in ready:
                data = _recv(client)
                if data:
                    try:
                        self._uart.sendall(data)
                    except OSError:  # QEMU ended
                        break
                else:
                    client.close()
                    client = None
            if self._uart in ready:
                data = _recv(self._uart)
                if not data:  # QEMU ended
                    break
                if client:
                    try:
                        client.sendall(data)
                    except OSError:
                        client.close()
                        client = None
            if self._public in ready:
                conn = self._public.accept()[0]
                if client:
                    conn.close()  # in use
                else:
                    client = conn
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if client:
            client.close()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(timeout=5)
        self._public.close()
        self._uart.close()


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(4096)
    except OSError:  # reset by the peer: gone, as at its end
        return b""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int, proc: subprocess.Popen, timeout_s: float, said) -> socket.socket:
    """A connection to QEMU's server on `port`, once it listens; `said()`: QEMU's messages, for errors."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineError(f"QEMU did not start as a board (exit code {proc.returncode}): {said()}")
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        except OSError:
            time.sleep(0.1)
            continue
        conn.settimeout(None)  # the relay's writes wait for QEMU as long as it takes
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn
    raise EngineError(f"QEMU did not listen on 127.0.0.1:{port} within {timeout_s:g} s: {said()}")
