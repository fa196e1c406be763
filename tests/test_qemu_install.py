"""`microgpt sim install-qemu`: Espressif's QEMU installed into the tool's cache, from archives in the
release's layout (`qemu/bin/qemu-system-xtensa`, `qemu/share/qemu/…`) built here from the real QEMU
the tests run (../shared/qemu in CI), served by a local HTTP server or given as files; then found by every QEMU command
with no --qemu, $QEMU_XTENSA or QEMU on PATH, and trained on (strict mode: the real chip)."""
import functools
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import OFFICIAL_FIRMWARE
from test_user_files import in_namespace, one_line_error

from microgpt import qemu_install
from microgpt.cli import main
from microgpt.engines.qemu import find_insn_plugin, find_qemu
from microgpt.errors import MicrogptError
from microgpt.qemu_install import BINARY

CLI = [sys.executable, "-c", "from microgpt.cli import main; main()"]


def release_modes(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Modes as a release archive has them (../shared/qemu is read-only): writable by the owner."""
    info.mode |= 0o200
    info.uid = info.gid = 0
    return info


def build_archive(path, qemu, insn_plugin, *, libraries=True):
    """A .tar.xz of the QEMU the tests run (`qemu`, in its tree bin/, share/ and lib/) in the release's layout; the
    insn plugin in qemu/plugins/ (Espressif's release has none: a QEMU built with plugins has them beside it).
    `libraries`: its lib/ (../shared/qemu's holds libslirp.so.0, found through its RUNPATH, which this machine
    lacks otherwise)."""
    tree = Path(qemu).resolve().parents[1]
    parts = ["bin", "share"] + (["lib"] if libraries and (tree / "lib").is_dir() else [])
    with tarfile.open(path, "w:xz", preset=0) as tar:
        for part in parts:
            tar.add(tree / part, f"qemu/{part}", filter=release_modes)
        tar.add(insn_plugin, "qemu/plugins/libinsn.so", filter=release_modes)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, qemu, insn_plugin):
    return build_archive(tmp_path_factory.mktemp("release") / "qemu-xtensa-softmmu-test-x86_64-linux-gnu.tar.xz",
                         qemu, insn_plugin)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty tool cache, and no QEMU anywhere else: only the tool's install can be found."""
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("QEMU_XTENSA", raising=False)
    monkeypatch.delenv("QEMU_INSN_PLUGIN", raising=False)
    monkeypatch.setenv("IDF_TOOLS_PATH", str(tmp_path / "idf-tools"))
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if not os.path.exists(os.path.join(p, BINARY))))
    return tmp_path / "cache"


def installed_files(cache):
    """What the cache holds besides the install's lock file."""
    return sorted(p.name for p in cache.iterdir() if p.name != ".qemu-xtensa.lock") if cache.exists() else []


class Server(http.server.SimpleHTTPRequestHandler):
    """Serves its directory; under /cut/ it announces a file's whole length and sends half of it."""

    def do_GET(self):
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        data = open(os.path.join(self.directory, self.path[len("/cut/"):]), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(directory served, its base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Server, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def install_qemu(*args):
    return CliRunner().invoke(main, ["sim", "install-qemu", *map(str, args)])


def test_installs_from_a_url_and_every_qemu_command_finds_it(archive, cache, server):
    served, url = server
    path, sha256 = archive
    (served / path.name).write_bytes(path.read_bytes())
    result = install_qemu("--archive", f"{url}/{path.name}", "--sha256", sha256)
    assert result.exit_code == 0, result.output
    binary = cache / "qemu-xtensa" / "qemu" / "bin" / BINARY
    assert f"Espressif's QEMU: {binary} (QEMU emulator version" in result.output
    assert os.access(binary, os.X_OK)  # the archive's modes are kept
    assert find_qemu() == str(binary)  # no --qemu, no $QEMU_XTENSA, none on PATH
    assert find_insn_plugin(qemu=find_qemu()) == cache / "qemu-xtensa" / "qemu" / "plugins" / "libinsn.so"
    assert installed_files(cache) == sorted([path.name, "qemu-xtensa"])  # the archive is kept, nothing partial


def test_a_second_install_only_checks(archive, cache, server):
    served, url = server
    path, sha256 = archive
    (served / path.name).write_bytes(path.read_bytes())
    assert install_qemu("--archive", f"{url}/{path.name}", "--sha256", sha256).exit_code == 0
    binary = cache / "qemu-xtensa" / "qemu" / "bin" / BINARY
    before = binary.stat()
    (served / path.name).unlink()  # a second download would fail
    again = install_qemu("--archive", f"{url}/{path.name}", "--sha256", sha256)
    assert again.exit_code == 0 and "installed already" in again.output, again.output
    assert (binary.stat().st_ino, binary.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_wrong_sha256_installs_nothing(archive, cache, server):
    served, url = server
    path, sha256 = archive
    (served / path.name).write_bytes(path.read_bytes())
    wrong = "0" * 64
    by_url = install_qemu("--archive", f"{url}/{path.name}", "--sha256", wrong)
    assert by_url.exit_code != 0 and f"has sha256 {sha256}, expected {wrong}" in by_url.output, by_url.output
    by_file = install_qemu("--archive", path, "--sha256", wrong)
    assert by_file.exit_code != 0 and "nothing was installed" in by_file.output, by_file.output
    assert installed_files(cache) == []
    assert "not a sha256" in install_qemu("--archive", path, "--sha256", "abc").output


def test_a_download_cut_short_installs_nothing(archive, cache, server):
    served, url = server
    path, sha256 = archive
    (served / path.name).write_bytes(path.read_bytes())
    result = install_qemu("--archive", f"{url}/cut/{path.name}", "--sha256", sha256)
    assert result.exit_code != 0 and "was cut short" in result.output, result.output
    assert installed_files(cache) == []


def tar_with(path, *entries):
    """A .tar.xz with a stand-in qemu/bin/qemu-system-xtensa and `entries` (TarInfo, bytes)."""
    with tarfile.open(path, "w:xz") as tar:
        exe = tarfile.TarInfo(f"qemu/bin/{BINARY}")
        exe.size, exe.mode = 2, 0o755
        tar.addfile(exe, io.BytesIO(b"#!"))
        for info, data in entries:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


@pytest.mark.parametrize("entry", [
    (tarfile.TarInfo("../escaped"), b"x"),
    (tarfile.TarInfo("qemu/../../escaped"), b"x"),
    (tarfile.TarInfo("/tmp/escaped-absolute"), b"x"),
    link("qemu/share/link", "../../../escaped"),
    link("qemu/share/link", "/etc/passwd"),
    link("qemu/share/hard", "../escaped", tarfile.LNKTYPE),
], ids=["dotdot", "dotdot-inside", "absolute", "symlink-out", "symlink-absolute", "hardlink-out"])
def test_entries_that_escape_the_install_are_refused(tmp_path, cache, entry):
    path, sha256 = tar_with(tmp_path / "evil.tar.xz", entry)
    result = install_qemu("--archive", path, "--sha256", sha256)
    assert result.exit_code != 0 and "outside the install" in result.output, result.output
    assert entry[0].name in result.output
    assert installed_files(cache) == []
    assert not (tmp_path / "escaped").exists() and not (cache / "escaped").exists()


def test_an_archive_without_qemu_is_refused(tmp_path, cache):
    path = tmp_path / "other.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        tar.addfile(tarfile.TarInfo("README"), io.BytesIO(b""))
    result = install_qemu("--archive", path, "--sha256", hashlib.sha256(path.read_bytes()).hexdigest())
    assert result.exit_code != 0 and "has no qemu/bin/qemu-system-xtensa" in result.output, result.output
    assert installed_files(cache) == []


def test_a_read_only_cache_is_one_line(archive, tmp_path):
    path, sha256 = archive
    (tmp_path / "cache").mkdir()
    result = in_namespace(f'mount -t tmpfs -o ro tmpfs cache\nMICROGPT_CACHE=cache "$PYTHON" -c '
                          f'"from microgpt.cli import main; main()" sim install-qemu --archive {path} --sha256 {sha256}\n',
                          tmp_path)
    line = one_line_error(result)
    assert "cannot write cache" in line and "read-only" in line and "MICROGPT_CACHE" in line, line


def test_two_installs_at_once_make_one(archive, cache):
    path, sha256 = archive
    both = [subprocess.Popen([*CLI, "sim", "install-qemu", "--archive", str(path), "--sha256", sha256],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    assert sum("installed already" in out for out in outputs) == 1, outputs  # the second waited, then checked
    assert installed_files(cache) == ["qemu-xtensa"]  # no staging directory left
    assert subprocess.run([find_qemu(), "--version"], capture_output=True).returncode == 0


def test_missing_libraries_are_named_with_the_install_command(tmp_path, qemu, insn_plugin, cache):
    path, sha256 = build_archive(tmp_path / "no-libs.tar.xz", qemu, insn_plugin, libraries=False)
    result = install_qemu("--archive", path, "--sha256", sha256)
    if result.exit_code == 0:
        pytest.skip("this machine has libslirp0: the QEMU without its lib/ starts here")
    assert "lacks libslirp.so.0" in result.output and "sudo apt-get install -y libslirp0" in result.output, result.output
    binary = cache / "qemu-xtensa" / "qemu" / "bin" / BINARY
    before = binary.stat()
    path.unlink()  # kept installed: a second call only checks again
    again = install_qemu("--archive", path.with_name("gone.tar.xz"), "--sha256", sha256)
    assert "no such file" in again.output  # a given archive must exist...
    (tmp_path / "no-libs.tar.xz").write_bytes(b"")  # ...but is not read when its install is there
    again = install_qemu("--archive", path, "--sha256", sha256)
    assert again.exit_code != 0 and "installed already" in again.output and "libslirp0" in again.output, again.output
    assert binary.stat().st_ino == before.st_ino


def test_a_host_without_a_pinned_build_is_told_how_to_install_by_hand(cache, monkeypatch):
    monkeypatch.setattr("platform.system", lambda: "Linux")
    monkeypatch.setattr("platform.machine", lambda: "riscv64")
    result = install_qemu()
    assert result.exit_code != 0 and "no Espressif QEMU build is pinned for Linux riscv64" in result.output
    assert "--archive FILE --sha256 HEX" in result.output and "--qemu PATH" in result.output
    assert installed_files(cache) == []


@pytest.mark.parametrize("system, machine, host", [("Linux", "x86_64", "x86_64-linux-gnu"),
                                                   ("Linux", "aarch64", "aarch64-linux-gnu"),
                                                   ("Darwin", "arm64", "aarch64-apple-darwin"),
                                                   ("Windows", "AMD64", "x86_64-w64-mingw32")])
def test_the_pinned_release_for_each_host(monkeypatch, system, machine, host):
    monkeypatch.setattr("platform.system", lambda: system)
    monkeypatch.setattr("platform.machine", lambda: machine)
    url, sha256 = qemu_install.pinned_archive()
    assert url == (f"https://github.com/espressif/qemu/releases/download/esp-develop-9.2.2-20250817/"
                   f"qemu-xtensa-softmmu-esp_develop_9.2.2_20250817-{host}.tar.xz")
    assert len(sha256) == 64 and int(sha256, 16)


def test_archive_and_sha256_go_together(cache):
    result = install_qemu("--archive", "x.tar.xz")
    assert result.exit_code == 2 and "--archive and --sha256 go together" in result.output


def test_a_cache_that_is_a_file_is_one_line_naming_the_variable(tmp_path, cache, monkeypatch, names_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "a-file"))
    for argv in (["sim", "install-qemu"], ["build", "--data", str(names_path), "--out", str(tmp_path / "f.bin")]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [f"Error: MICROGPT_CACHE={tmp_path / 'a-file'} is a file, not a "
                                                      "directory: point it at a directory (made if missing), or "
                                                      "unset it to use ~/.cache/microgpt"]
    assert not (tmp_path / "f.bin").exists()
    with pytest.raises(MicrogptError, match="MICROGPT_CACHE"):
        find_qemu()


def test_installed_into_an_empty_cache_then_a_qemu_run_trains(archive, cache, tmp_path, names_path):
    path, sha256 = archive
    assert install_qemu("--archive", path, "--sha256", sha256).exit_code == 0
    assert find_qemu() == str(cache / "qemu-xtensa" / "qemu" / "bin" / BINARY)  # the only QEMU there is
    report = tmp_path / "run" / "report.json"
    result = CliRunner().invoke(main, ["sim", "run", "--engine", "qemu", "--steps", "10", "--samples", "2",
                                       "--val", "0", "--data", str(names_path), "--firmware", str(OFFICIAL_FIRMWARE),
                                       "--report", str(report), "--quiet"])
    assert result.exit_code == 0, result.output
    ran = json.loads(report.read_text())
    assert ran["status"] == "ok" and len(ran["losses"]) == 10 and len(ran["samples"]) == 2, ran["error"]
