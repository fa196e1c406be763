"""The Wokwi engine and project files: token and tool checks, the project it writes for each run
(from any directory, for any image), the wokwi-cli command line, a stand-in wokwi-cli process, and
the wokwi-client SDK path against a local stand-in of Wokwi's simulation API (same websocket
protocol, so the real SDK code runs end to end)."""
import asyncio
import base64
import json
import threading
import tomllib
from pathlib import Path

import pytest
import websockets
import yaml
from conftest import OFFICIAL_FIRMWARE
from test_qemu import call_of, simulator

from microgpt import mpy, payload
from microgpt.engines.wokwi import FLASH, WokwiEngine, diagram, wokwi_toml
from microgpt.errors import EngineError, Silence
from microgpt.report import from_log

REPO = Path(__file__).resolve().parents[1]
TRANSCRIPT = REPO / "sim" / "wokwi-esp32-train.uart"
TINY = payload.Payload(payload.RunOptions(), mpy.firmware_target("v1.25.0"), {"main.py": b"print('MGPT start')\n"}, 0)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A token, no wokwi-cli on PATH, and a working directory that is not the repository."""
    monkeypatch.setenv("WOKWI_CLI_TOKEN", "test-token")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def placed(tmp_path, **kwargs) -> WokwiEngine:
    """An engine whose run (a tiny payload on the official firmware) is placed in its workdir."""
    engine = WokwiEngine(tmp_path / "run", firmware=OFFICIAL_FIRMWARE, **kwargs)
    engine.place(TINY)
    return engine


def test_the_repositorys_project_is_the_one_the_engine_writes():
    # wokwi-cli . from a checkout simulates build/flash.bin with the same board and wiring.
    assert tomllib.loads((REPO / "wokwi.toml").read_text()) == tomllib.loads(wokwi_toml("build/flash.bin"))
    assert json.loads((REPO / "diagram.json").read_text()) == diagram(4)
    (board,) = diagram(4)["parts"]
    assert board["type"] == "board-esp32-devkit-c-v4" and board["attrs"]["flashSize"] == "4"
    wires = {(a, b) for a, b, *_ in diagram(4)["connections"]}
    assert wires == {(f"{board['id']}:TX", "$serialMonitor:RX"), (f"{board['id']}:RX", "$serialMonitor:TX")}
    # The rules wokwi-cli's TestScenario.validate() applies, with the step kinds it registers.
    scenario = yaml.safe_load((REPO / "sim" / "train.test.yaml").read_text())
    assert isinstance(scenario["name"], str) and scenario["version"] == 1
    assert scenario["steps"] == [{"wait-serial": "MGPT start"}, {"wait-serial": "MGPT end"}]


def test_each_run_is_a_project_of_its_own_in_any_directory(env, tmp_path):
    engine = placed(tmp_path)
    work = tmp_path / "run"
    assert tomllib.loads((work / "wokwi.toml").read_text())["wokwi"] == {"version": 1, "firmware": FLASH, "elf": FLASH}
    assert json.loads((work / "diagram.json").read_text()) == diagram(4)
    assert (work / FLASH).stat().st_size == 4 << 20 and engine.command()[-1] == str(work)


def test_token_is_required(env, monkeypatch):
    monkeypatch.delenv("WOKWI_CLI_TOKEN")
    with pytest.raises(EngineError, match=r"https://wokwi.com/dashboard/ci and set WOKWI_CLI_TOKEN"):
        WokwiEngine(env / "run")


def test_tools_are_checked_before_any_firmware(env, tmp_path, monkeypatch):
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EngineError, match="nowhere/wokwi-cli: no such wokwi-cli executable"):
        WokwiEngine(env / "run", wokwi_cli=str(tmp_path / "nowhere" / "wokwi-cli"), firmware=tmp_path / "missing.bin")
    assert not (tmp_path / "cache").exists()


def test_wokwi_cli_command(env, monkeypatch):
    cli = simulator(env / "bin", "wokwi-cli")
    monkeypatch.setenv("PATH", str(cli.parent))
    engine = WokwiEngine(env / "run", sim_time_s=90, expect_text="MGPT end", fail_text="MGPT error")
    assert engine.command() == [
        str(cli), "--quiet", "--timeout", "90000", "--timeout-exit-code", "42",
        "--expect-text", "MGPT end", "--fail-text", "MGPT error", str(env / "run")]


def test_wokwi_cli_run_streams_the_serial_monitor(env, monkeypatch):
    cli = simulator(env / "bin", "wokwi-cli")
    monkeypatch.setenv("PATH", str(cli.parent))
    monkeypatch.setenv("FAKE_UART", str(TRANSCRIPT))
    monkeypatch.setenv("FAKE_AFTER", "0")  # success, as when wokwi-cli sees its --expect-text
    with WokwiEngine(env / "run", token="from-argument", expect_text="MGPT end") as engine:
        lines = list(engine.lines())
    assert call_of(cli)["argv"] == engine.command()[1:]
    assert call_of(cli)["token"] == "from-argument"
    assert lines[-1] == b">>> "  # the partial last line, yielded at end of stream
    report = from_log(lines, engine="wokwi")
    assert report.status == "ok" and report.run.steps == 20 and report.run.checkpoints == [10, 20]
    assert report.run.samples == ["jrvi", "odio", "cicoxa"] and report.run.bad_records == 0


@pytest.mark.parametrize("code, stderr, error, message", [
    (42, "Timeout: simulation did not finish in 1000ms\n", Silence, r"within 1 s of simulated time"),
    (1, 'Error: Unexpected text found: "MGPT error"\nTEST FAILED.\n', EngineError,
     r'(?s)wokwi-cli exited with code 1:\nError: Unexpected text found: "MGPT error"\nTEST FAILED.'),
])
def test_wokwi_cli_failures(env, monkeypatch, code, stderr, error, message):
    monkeypatch.setenv("PATH", str(simulator(env / "bin", "wokwi-cli").parent))
    monkeypatch.setenv("FAKE_STDERR", stderr)
    monkeypatch.setenv("FAKE_AFTER", str(code))
    with WokwiEngine(env / "run", sim_time_s=1) as engine:
        with pytest.raises(error, match=message):
            list(engine.lines())


class WokwiApi:
    """A local stand-in for Wokwi's simulation API: hello, command responses, serial and pause
    events, as wokwi_client's transport speaks them. On sim:resume it plays the transcript on the
    serial monitor; with `pause_after_uart` it then reports the requested simulated time reached."""

    def __init__(self, uart: bytes, pause_after_uart: bool = False):
        self.uart, self.pause_after_uart = uart, pause_after_uart
        self.uploads, self.commands, self.headers = {}, [], None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        self._ready.wait(5)

    async def _serve(self):
        self._stop = asyncio.get_running_loop().create_future()
        async with websockets.serve(self._session, "127.0.0.1", 0, max_size=None) as server:
            self.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            self._ready.set()
            await self._stop

    async def _session(self, ws):
        self.headers = ws.request_headers
        await ws.send(json.dumps({"type": "hello", "protocolVersion": 1, "appName": "stand-in", "appVersion": "0"}))
        async for raw in ws:
            msg = json.loads(raw)
            command, params = msg["command"], msg["params"]
            self.commands.append((command, params))
            if command == "file:upload":
                self.uploads[params["name"]] = base64.b64decode(params["binary"]) if "binary" in params else params["text"]
            await ws.send(json.dumps({"type": "response", "command": command, "id": msg["id"], "result": {}, "error": False}))
            if command == "sim:resume":
                for i in range(0, len(self.uart), 64):
                    event = {"event": "serial-monitor:data", "payload": {"bytes": list(self.uart[i:i + 64])}}
                    await ws.send(json.dumps({"type": "event", "nanos": 0, **event}))
                if self.pause_after_uart:
                    await ws.send(json.dumps({"type": "event", "event": "sim:pause", "payload": {},
                                              "nanos": params["pauseAfter"]}))

    def stop(self):
        self._stop.get_loop().call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(5)


@pytest.fixture
def api(monkeypatch):
    servers = []

    def start(**kw):
        servers.append(WokwiApi(**kw))
        monkeypatch.setenv("WOKWI_CLI_SERVER", servers[-1].url)
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_sdk_run_without_wokwi_cli(env, api):
    server = api(uart=TRANSCRIPT.read_bytes())
    with placed(env, expect_text="MGPT end", silence_s=10) as engine:
        assert engine.cli is None
        lines = list(engine.lines())
    assert lines[-1].startswith(b"MGPT end steps=20")  # stops at the expected text, like wokwi-cli
    assert from_log(lines, engine="wokwi").status == "ok"
    assert server.headers["Authorization"] == "Bearer test-token"
    work = env / "run"
    assert server.uploads == {"diagram.json": (work / "diagram.json").read_text(), FLASH: (work / FLASH).read_bytes()}
    start = dict(server.commands)["sim:start"]
    assert start["firmware"] == start["elf"] == FLASH and start["pause"] is True
    order = [command for command, _ in server.commands]
    assert order.index("serial-monitor:listen") < order.index("sim:start") < order.index("sim:resume")


def test_sdk_time_limit_is_simulated_time(env, api):
    server = api(uart=TRANSCRIPT.read_bytes()[:900], pause_after_uart=True)
    with placed(env, sim_time_s=2, silence_s=10) as engine:
        lines = []
        with pytest.raises(Silence, match="within 2 s of simulated time"):
            for line in engine.lines():
                lines.append(line)
    assert any(line.startswith(b"MGPT start") for line in lines)
    assert dict(server.commands)["sim:resume"]["pauseAfter"] == 2_000_000_000


def test_sdk_fail_text(env, api):
    api(uart=TRANSCRIPT.read_bytes())
    with placed(env, fail_text="MGPT ckpt", silence_s=10) as engine:
        with pytest.raises(EngineError, match='fail text "MGPT ckpt" found'):
            list(engine.lines())


def test_sdk_unreachable_api(env, monkeypatch):
    monkeypatch.setenv("WOKWI_CLI_SERVER", "ws://127.0.0.1:9")  # nothing listens on the discard port
    with placed(env, silence_s=10) as engine:
        with pytest.raises(EngineError, match=r"Wokwi simulation API \((ConnectionRefused|OS)Error\)"):
            list(engine.lines())
