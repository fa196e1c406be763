"""Run the flash image on Wokwi's cloud ESP32 simulator and stream the serial monitor.

The project is the directory holding `wokwi.toml` (which names the image) and
`diagram.json` (an ESP32 DevKitC V4 whose TX/RX are wired to the serial monitor). With
`wokwi-cli` on PATH the engine runs it exactly as Wokwi CI documents
(docs.wokwi.com/wokwi-ci/cli-usage); otherwise it does the same through the `wokwi-client`
Python SDK. Both need an API token in WOKWI_CLI_TOKEN.
"""
import asyncio
import os
import queue
import shutil
import threading
import tomllib
from pathlib import Path
from typing import Iterator

from wokwi_client import GET_TOKEN_URL, WokwiClient

from . import EngineError, ProcessEngine, Silence, queue_reader, split_lines

TIMEOUT_EXIT_CODE = 42  # wokwi-cli's documented --timeout-exit-code default, passed explicitly


class WokwiEngine(ProcessEngine):
    """Simulate `image`, which must be the firmware that `project`'s wokwi.toml names (wokwi-cli
    reads it from there). `timeout_s` is simulated time (Wokwi's --timeout); `silence_s` is
    wall-clock time without serial output."""

    name = "wokwi"
    what = "wokwi-cli"

    def __init__(self, image: str | os.PathLike, *, project: str | os.PathLike = ".", timeout_s: float = 3600.0,
                 silence_s: float = 120.0, expect_text: str | None = None, fail_text: str | None = None,
                 serial_log: str | os.PathLike | None = None, wokwi_cli: str | os.PathLike | None = None,
                 token: str | None = None):
        self.token = token or os.environ.get("WOKWI_CLI_TOKEN")
        if not self.token:
            raise EngineError(
                f"Wokwi needs an API token: create one at {GET_TOKEN_URL} and set WOKWI_CLI_TOKEN=<token>."
            )
        self.image, self.project = Path(image), Path(project)
        self._check_project()
        self.timeout_s, self.silence_s = timeout_s, silence_s
        self.expect_text, self.fail_text = expect_text, fail_text
        self.serial_log = serial_log
        if wokwi_cli and not shutil.which(wokwi_cli):
            raise EngineError(f"{wokwi_cli}: no such wokwi-cli executable (without one the wokwi-client SDK is used).")
        self.cli = shutil.which(wokwi_cli or "wokwi-cli")
        self._sdk: tuple[asyncio.AbstractEventLoop, asyncio.Task, threading.Thread] | None = None

    def _check_project(self) -> None:
        for required in ("wokwi.toml", "diagram.json"):
            if not (self.project / required).is_file():
                raise EngineError(f"{self.project / required} not found: run from the repository root, which has both.")
        with open(self.project / "wokwi.toml", "rb") as f:
            firmware = self.project / tomllib.load(f)["wokwi"]["firmware"]
        if not self.image.is_file():
            raise EngineError(f"flash image {self.image} not found; build it with `microgpt build`.")
        if self.image.resolve() != firmware.resolve():
            raise EngineError(f"{self.project / 'wokwi.toml'} simulates {firmware}, not {self.image}: "
                              "build the image there or point wokwi.toml's firmware (and elf) at it.")

    def command(self) -> list[str]:
        """wokwi-cli with stdout reduced to the serial output (--quiet); status goes to stderr."""
        argv = [self.cli, "--quiet", "--timeout", str(round(self.timeout_s * 1000)),
                "--timeout-exit-code", str(TIMEOUT_EXIT_CODE)]
        for flag, value in (("--expect-text", self.expect_text), ("--fail-text", self.fail_text),
                            ("--serial-log-file", self.serial_log)):
            if value is not None:
                argv += [flag, str(value)]
        return argv + [str(self.project)]

    def _timed_out(self) -> Silence:
        return Silence(f"the Wokwi run did not finish within {self.timeout_s:g} s of simulated time (raise --timeout)")

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
            await client.upload_file("diagram.json", self.project / "diagram.json")
            await client.upload_file("firmware.bin", self.image)
            # Listen before the start, as wokwi-cli does: sleep(0) lets the monitor task send its
            # request ahead of sim:start, so it is subscribed before the chip leaves reset.
            client.serial_monitor(put)
            await asyncio.sleep(0)
            await client.start_simulation(firmware="firmware.bin", elf="firmware.bin", pause=True)
            await client.wait_until_simulation_time(self.timeout_s)  # resumes, returns at the limit
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
