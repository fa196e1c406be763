"""The MicroPython VM behind a serial port (a pseudo-terminal): a board on USB, without a board.

The host opens `VmPort.path` (/dev/pts/N) with pyserial as it would /dev/ttyUSB0. Behind it a
relay thread plays the USB-serial bridge: it copies bytes to and from a `micropython` process on
a second pty, so the VM can be restarted while the port stays open (`reset()`, a board reset),
and the port can vanish under the host (`unplug()`, a cable pulled). With no VM started the port
is open but silent (a board that is off); `start(argv)` can run any real program instead.
"""
import os
import queue
import select
import signal
import subprocess
import threading
import tty
from pathlib import Path

from microgpt.chip import ESP32_HEAP
from microgpt.engines.host import find_micropython


class VmPort:
    def __init__(self, cwd, heap: int = ESP32_HEAP):
        self.cwd = Path(cwd)  # the board's filesystem
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.micropython = [find_micropython(), "-X", f"heapsize={heap}"]
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or newline translation before the host configures the port
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.proc = None
        self._vm = None  # pty master of the current VM
        self._new_vms = queue.SimpleQueue()
        self._ready = threading.Event()  # the current VM printed its REPL prompt
        self._stop = threading.Event()
        self._relay = threading.Thread(target=self._copy, daemon=True)
        self._relay.start()

    def start(self, argv=None):
        """Start the VM's REPL (or `argv`) on its own pty behind the port."""
        vm_master, vm_slave = os.openpty()
        tty.setraw(vm_slave)  # a UART translates nothing
        os.set_blocking(vm_master, False)
        self._ready.clear()
        self.proc = subprocess.Popen(argv or self.micropython, stdin=vm_slave, stdout=vm_slave, stderr=vm_slave,
                                     cwd=self.cwd, start_new_session=True)
        os.close(vm_slave)
        self._vm = vm_master
        self._new_vms.put(vm_master)
        if argv is None and not self._ready.wait(10):  # a board is up before the host talks to it
            raise RuntimeError("the MicroPython VM printed no prompt within 10 s")
        return self

    def kill(self):
        """Stop the process behind the port (the port itself stays open)."""
        self._vm = None
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def reset(self):
        """A board reset: the VM restarts, boots main.py if the board has one, then offers its REPL
        (with MicroPython's banner), as a board does."""
        self.kill()
        boot = ["-i", "main.py"] if (self.cwd / "main.py").exists() else []
        return self.start(self.micropython + boot)

    def unplug(self):
        """Close the port's far end: the host's next read fails as when a cable is pulled."""
        self.kill()
        self._stop.set()
        self._relay.join()
        for fd in (self.master, self._slave):
            os.close(fd)

    def close(self):
        if not self._stop.is_set():
            self.unplug()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _copy(self):
        vms = []  # pty masters of VMs (current and just killed) whose output may still be in flight
        while not self._stop.is_set():
            while not self._new_vms.empty():
                vms.append(self._new_vms.get())
            ready, _, _ = select.select([self.master, *vms], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                except OSError:  # that VM exited and its pty hung up
                    vms.remove(fd)
                    if self._vm == fd:
                        self._vm = None
                    os.close(fd)
                    continue
                if fd != self.master:
                    if b">>> " in data:
                        self._ready.set()
                    self._send(self.master, data)
                elif self._vm is not None:  # bytes sent while no VM runs are lost, as on a board
                    self._send(self._vm, data)
        for fd in vms:
            os.close(fd)

    def _send(self, fd, data):
        while data and not self._stop.is_set():
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                select.select([], [fd], [], 0.05)
            except OSError:  # the VM died while we wrote to it
                return
