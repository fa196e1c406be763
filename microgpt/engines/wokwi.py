"""Run the trainer on Wokwi's cloud ESP32 simulator and stream its serial monitor.

Each run is a Wokwi project of its own in the engine's workdir: the run's flash image,
`wokwi.toml` naming it, and `diagram.json` (an ESP32 DevKitC V4 whose TX/RX are wired to the serial
monitor), so the engine works from any directory and on any image. With `wokwi-cli` on PATH it is
run exactly as Wokwi CI documents (docs.wokwi.com/wokwi-ci/cli-usage); otherwise the same through
the `wokwi-client` Python SDK. Both need an API token in WOKWI_CLI_TOKEN. The repository's own
wokwi.toml and diagram.json are the same project for `microgpt build`'s build/flash.bin.
"""
import asyncio
import json
import os
import queue
import shutil
import threading
from collections.abc import Iterator

from wokwi_client import GET_TOKEN_URL, WokwiClient

from .. import basefw, mpy
from ..errors import EngineError, Silence
from ..fileio import write_atomic
from ..payload import Payload
from . import ProcessEngine, queue_reader, split_lines

TIMEOUT_EXIT_CODE = 42  # wokwi-cli's documented --timeout-exit-code default, passed explicitly
FLASH = "flash.bin"


def diagram(flash_mb: int = 4) -> dict:
    """An ESP32 DevKitC V4 with `flash_mb` MB of flash, its UART0 wired to the serial monitor."""
    return {
        "version": 1, "author": "microgpt-esp32", "editor": "wokwi",
        "parts": [{"type": "board-esp32-devkit-c-v4", "id": "esp", "top": 0, "left": 0,
                   "attrs": {"flashSize": str(flash_mb)}}],
        "connections": [["esp:TX", "$serialMonitor:RX", "", []], ["esp:RX", "$serialMonitor:TX", "", []]],
        "dependencies": {},
    }


def wokwi_toml(firmware: str) -> str:
    # wokwi-cli requires an `elf` entry; like Wokwi's MicroPython examples, it names the same .bin.
    return f"[wokwi]\nversion = 1\nfirmware = '{firmware}'\nelf = '{firmware}'\n"


class WokwiEngine(ProcessEngine):
    """Simulate the run's flash. `sim_time_s` is the limit in simulated time (Wokwi's --timeout);
    `silence_s` is wall-clock time without serial output."""

    name = "wokwi"
    what = "wokwi-cli"
    OPTIONS = ("image", "firmware")

    def __init__(self, workdir, *, image=None, firmware=None, sim_time_s: float = 3600.0, silence_s: float = 120.0,
                 expect_text: str | None = None, fail_text: str | None = None, wokwi_cli: str | None = None,
                 token: str | None = None):
        super().__init__(workdir, silence_s, None)
        self.token = token or os.environ.get("WOKWI_CLI_TOKEN")
        if not self.token:
            raise EngineError(
                f"Wokwi needs an API token: create one at {GET_TOKEN_URL} and set WOKWI_CLI_TOKEN=<token>.")
        if wokwi_cli and not shutil.which(wokwi_cli):
            raise EngineError(f"{wokwi_cli}: no such wokwi-cli executable (without one the wokwi-client SDK is used).")
        self.cli = shutil.which(wokwi_cli or "wokwi-cli")
        self.base = basefw.FirmwareBase(image, firmware)
        self.sim_time_s = sim_time_s
        self.expect_text, self.fail_text = expect_text, fail_text
        self._sdk: tuple[asyncio.AbstractEventLoop, asyncio.Task, threading.Thread] | None = None

    def target(self) -> mpy.Target:
        return mpy.firmware_target(self.base.resolve().version)

    def place(self, payload: Payload) -> None:
        fw = self.base.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.workdir / FLASH, fw.flash(dict(payload.files), keep=self.base.keep))
        write_atomic(self.workdir / "wokwi.toml", wokwi_toml(FLASH).encode())
        write_atomic(self.workdir / "diagram.json", json.dumps(diagram(fw.flash_size >> 20), indent=2).encode())

    def command(self) -> list[str]:
        """wokwi-cli with stdout reduced to the serial output (--quiet); status goes to stderr."""
        argv = [self.cli, "--quiet", "--timeout", str(round(self.sim_time_s * 1000)),
                "--timeout-exit-code", str(TIMEOUT_EXIT_CODE)]
        for flag, value in (("--expect-text", self.expect_text), ("--fail-text", self.fail_text)):
            if value is not None:
                argv += [flag, value]
        return argv + [str(self.workdir)]

    def _timed_out(self) -> Silence:
        return Silence(f"the Wokwi run did not finish within {self.sim_time_s:g} s of simulated time")

    def env(self) -> dict:
        return {**os.environ, "WOKWI_CLI_TOKEN": self.token}

    def lines(self) -> Iterator[bytes]:
        # wokwi-cli where installed (a process like the other simulators), else the SDK.
        yield from super().lines() if self.cli else self._sdk_lines()

    def check_exit(self, code: int | None) -> None:
        if code == TIMEOUT_EXIT_CODE:
            raise self._timed_out()
        super().check_exit(code)  # e.g. --fail-text matched, bad token, API error

    def _sdk_lines(self) -> Iterator[bytes]:
        # The SDK is asyncio: run it on its own loop in a thread that feeds the serial bytes to a queue.
        chunks: queue.Queue = queue.Queue()
        loop = asyncio.new_event_loop()
        task = loop.create_task(self._simulate(chunks.put))
        thread = threading.Thread(target=loop.run_until_complete, args=(task,), daemon=True)
        self._sdk = (loop, task, thread)
        thread.start()
        for line in split_lines(queue_reader(chunks), self.silence_s):
            yield line
            # The same expect/fail text semantics as wokwi-cli's.
            if self.fail_text is not None and self.fail_text.encode() in line:
                raise EngineError(f'fail text "{self.fail_text}" found in the output')
            if self.expect_text is not None and self.expect_text.encode() in line:
                return

    async def _simulate(self, put) -> None:
        client = WokwiClient(self.token)
        try:
            await client.connect()
            await client.upload_file("diagram.json", self.workdir / "diagram.json")
            await client.upload_file(FLASH, self.workdir / FLASH)
            # Listen before the start, as wokwi-cli does: sleep(0) lets the monitor task send its
            # request ahead of sim:start, so it is subscribed before the chip leaves reset.
            client.serial_monitor(put)
            await asyncio.sleep(0)
            await client.start_simulation(firmware=FLASH, elf=FLASH, pause=True)
            await client.wait_until_simulation_time(self.sim_time_s)  # resumes, returns at the limit
            put(self._timed_out())
        except asyncio.CancelledError:
            pass  # close() ended the run
        except Exception as e:
            put(EngineError(f"Wokwi simulation API ({type(e).__name__}): {e}"))
        finally:
            await client.disconnect()
            put(None)

    def stop(self) -> None:
        super().stop()
        if self._sdk:
            loop, task, thread = self._sdk
            if thread.is_alive():
                loop.call_soon_threadsafe(task.cancel)  # disconnects from the simulator
                thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()
            self._sdk = None
