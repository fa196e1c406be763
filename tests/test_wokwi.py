"""The Wokwi engine and project files: token and firmware checks, the wokwi-cli command line, a
stand-in wokwi-cli process, and the wokwi-client SDK path against a local stand-in of Wokwi's
simulation API (same websocket protocol, so the real SDK code runs end to end)."""
import asyncio
import base64
import json
import shutil
import threading
import tomllib
from pathlib import Path

import pytest
import websockets
import yaml

from microgpt.engines import EngineError, Silence
from microgpt.engines.wokwi import WokwiEngine
from microgpt.uart import parse_lines
from test_qemu import MiB, call_of, simulator

REPO = Path(__file__).resolve().parents[1]
TRANSCRIPT = REPO / "sim" / "wokwi-esp32-train.uart"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the repository's Wokwi project with a built (blank) 4 MB image, as the working
    directory; a token; no wokwi-cli."""
    for name in ("wokwi.toml", "diagram.json"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "build").mkdir()
    with open(tmp_path / "build" / "flash.bin", "wb") as f:
        f.truncate(4 * MiB)
    monkeypatch.setenv("WOKWI_CLI_TOKEN", "test-token")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


IMAGE = Path("build/flash.bin")  # what `microgpt sim run --engine wokwi` passes by default


def test_project_files_describe_a_devkit_with_serial_monitor():
    config = tomllib.loads((REPO / "wokwi.toml").read_text())["wokwi"]
    assert config == {"version": 1, "firmware": "build/flash.bin", "elf": "build/flash.bin"}
    diagram = json.loads((REPO / "diagram.json").read_text())
    (board,) = diagram["parts"]
    assert board["type"] == "board-esp32-devkit-c-v4" and board["attrs"]["flashSize"] == "4"
    wires = {(a, b) for a, b, *_ in diagram["connections"]}
    assert wires == {(f"{board['id']}:TX", "$serialMonitor:RX"), (f"{board['id']}:RX", "$serialMonitor:TX")}
    # The rules wokwi-cli's TestScenario.validate() applies, with the step kinds it registers.
    scenario = yaml.safe_load((REPO / "sim" / "train.test.yaml").read_text())
    assert isinstance(scenario["name"], str) and scenario["version"] == 1
    assert scenario["steps"] == [{"wait-serial": "MGPT start"}, {"wait-serial": "MGPT end"}]


def test_token_is_required(project, monkeypatch):
    monkeypatch.delenv("WOKWI_CLI_TOKEN")
    with pytest.raises(EngineError, match=r"https://wokwi.com/dashboard/ci and set WOKWI_CLI_TOKEN"):
        WokwiEngine(IMAGE)


def test_project_image_and_cli_must_exist(project, tmp_path):
    with pytest.raises(EngineError, match="nowhere/wokwi-cli: no such wokwi-cli executable"):
        WokwiEngine(IMAGE, wokwi_cli=tmp_path / "nowhere" / "wokwi-cli")
    other = project / "other.bin"
    other.write_bytes(bytes(4 * MiB))
    with pytest.raises(EngineError, match=r"wokwi.toml simulates build/flash.bin, not .*other.bin"):
        WokwiEngine(other)
    assert WokwiEngine(project / IMAGE).image == project / IMAGE  # the same file, however named
    (project / IMAGE).unlink()
    with pytest.raises(EngineError, match=r"flash image build/flash.bin not found; build it with `microgpt build`"):
        WokwiEngine(IMAGE)
    with pytest.raises(EngineError, match="elsewhere/wokwi.toml not found"):
        WokwiEngine(IMAGE, project=tmp_path / "elsewhere")


def test_wokwi_cli_command(project, monkeypatch):
    cli = simulator(project / "bin", "wokwi-cli")
    monkeypatch.setenv("PATH", str(cli.parent))
    engine = WokwiEngine(IMAGE, timeout_s=90, expect_text="MGPT end", fail_text="MGPT error",
                         serial_log=project / "serial.log")
    assert engine.command() == [
        str(cli), "--quiet", "--timeout", "90000", "--timeout-exit-code", "42",
        "--expect-text", "MGPT end", "--fail-text", "MGPT error",
        "--serial-log-file", str(project / "serial.log"), ".",
    ]
    assert WokwiEngine(project / IMAGE, project=project, timeout_s=2.5).command() == [
        str(cli), "--quiet", "--timeout", "2500", "--timeout-exit-code", "42", str(project)]


def test_wokwi_cli_run_streams_the_serial_monitor(project, monkeypatch):
    cli = simulator(project / "bin", "wokwi-cli")
    monkeypatch.setenv("PATH", str(cli.parent))
    monkeypatch.setenv("FAKE_UART", str(TRANSCRIPT))
    monkeypatch.setenv("FAKE_AFTER", "0")  # success, as when wokwi-cli sees its --expect-text
    with WokwiEngine(IMAGE, token="from-argument", expect_text="MGPT end") as engine:
        lines = list(engine.lines())
    assert call_of(cli)["argv"] == engine.command()[1:]
    assert call_of(cli)["token"] == "from-argument"
    assert lines[-1] == b">>> "  # the partial last line, yielded at end of stream
    report = parse_lines(lines, engine="wokwi")
    assert report.status == "ok" and report.steps == 20 and report.checkpoints == [10, 20]
    assert report.samples == ["jrvi", "odio", "cicoxa"] and report.bad_records == 0


@pytest.mark.parametrize("code, stderr, error, message", [
    (42, "Timeout: simulation did not finish in 1000ms\n", Silence, r"within 1 s of simulated time \(raise --timeout\)"),
    (1, 'Error: Unexpected text found: "MGPT error"\nTEST FAILED.\n', EngineError,
     r'(?s)wokwi-cli exited with code 1:\nError: Unexpected text found: "MGPT error"\nTEST FAILED.'),
])
def test_wokwi_cli_failures(project, monkeypatch, code, stderr, error, message):
    monkeypatch.setenv("PATH", str(simulator(project / "bin", "wokwi-cli").parent))
    monkeypatch.setenv("FAKE_STDERR", stderr)
    monkeypatch.setenv("FAKE_AFTER", str(code))
    with WokwiEngine(IMAGE, timeout_s=1) as engine:
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
            self.url = "ws://127.0.0.1:%d" % server.sockets[0].getsockname()[1]
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


def test_sdk_run_without_wokwi_cli(project, api):
    server = api(uart=TRANSCRIPT.read_bytes())
    with WokwiEngine(IMAGE, expect_text="MGPT end", silence_s=10) as engine:
        assert engine.cli is None
        lines = list(engine.lines())
    assert lines[-1].startswith(b"MGPT end steps=20")  # stops at the expected text, like wokwi-cli
    assert parse_lines(lines, engine="wokwi").status == "ok"
    assert server.headers["Authorization"] == "Bearer test-token"
    assert server.uploads == {"diagram.json": (project / "diagram.json").read_text(), "firmware.bin": bytes(4 * MiB)}
    start = dict(server.commands)["sim:start"]
    assert start["firmware"] == start["elf"] == "firmware.bin" and start["pause"] is True
    order = [command for command, _ in server.commands]
    assert order.index("serial-monitor:listen") < order.index("sim:start") < order.index("sim:resume")


def test_sdk_timeout_is_simulated_time(project, api):
    server = api(uart=TRANSCRIPT.read_bytes()[:900], pause_after_uart=True)
    with WokwiEngine(IMAGE, timeout_s=2, silence_s=10) as engine:
        lines = []
        with pytest.raises(Silence, match="within 2 s of simulated time"):
            for line in engine.lines():
                lines.append(line)
    assert any(line.startswith(b"MGPT start") for line in lines)
    assert dict(server.commands)["sim:resume"]["pauseAfter"] == 2_000_000_000


def test_sdk_fail_text(project, api):
    api(uart=TRANSCRIPT.read_bytes())
    with WokwiEngine(IMAGE, fail_text="MGPT ckpt", silence_s=10) as engine:
        with pytest.raises(EngineError, match='fail text "MGPT ckpt" found'):
            list(engine.lines())


def test_sdk_unreachable_api(project, monkeypatch):
    monkeypatch.setenv("WOKWI_CLI_SERVER", "ws://127.0.0.1:9")  # nothing listens on the discard port
    with WokwiEngine(IMAGE, silence_s=10) as engine:
        with pytest.raises(EngineError, match=r"Wokwi simulation API \((ConnectionRefused|OS)Error\)"):
            list(engine.lines())
