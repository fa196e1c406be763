"""The C kernels (firmware/cmodel): the committed builds match their source and generated
header, the linker's output loads in the real MicroPython VM and on the emulated ESP32, and the C
arithmetic equals the reference's."""
import ast
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import OFFICIAL_FIRMWARE

from microgpt import basefw, chip, mpy, natmod, payload, reference
from microgpt.chip import KNOBS, Shape
from microgpt.engines.qemu import QemuEngine

SOURCE = payload.CMODEL_DIR / "cmodel.c"
GLUE = payload.CMODEL_DIR / natmod.GLUE_HEADER
MANIFEST = json.loads((payload.CMODEL_DIR / "build.json").read_text())
HAVE_LLVM = all(natmod.compilers().values())
needs_llvm = pytest.mark.skipif(not HAVE_LLVM, reason="LLVM 22 (clang-22, llc-22, llvm-mc-22) is not installed")


def test_committed_builds_are_of_the_committed_source():
    # No compiler needed: a cmodel.c or header edited without rerunning scripts/build_cmodel.py fails here.
    built_from = [*natmod.sources(SOURCE), GLUE]
    assert sorted(MANIFEST["sources"]) == sorted(p.name for p in built_from), "rerun scripts/build_cmodel.py"
    for source in built_from:
        assert MANIFEST["sources"][source.name] == natmod.sha256(source.read_bytes()), "rerun scripts/build_cmodel.py"
    for arch in natmod.ARCHES:
        built = payload.cmodel_build(arch)
        assert natmod.sha256(built.read_bytes()) == MANIFEST["files"][built.name]


@needs_llvm
@pytest.mark.parametrize("arch", natmod.ARCHES)
def test_rebuilding_gives_the_committed_bytes(arch):
    if natmod.compiler_version() != MANIFEST["compiler"]:
        pytest.skip(f"built with {MANIFEST['compiler']}, this machine has {natmod.compiler_version()}")
    assert natmod.build(SOURCE, arch) == payload.cmodel_build(arch).read_bytes()


@pytest.mark.parametrize("arch, target", [("xtensawin", mpy.firmware_target("v1.25.0")), ("x64", None)])
def test_builds_are_native_modules_the_targets_import(arch, target, micropython):
    blob = payload.cmodel_build(arch).read_bytes()
    header = mpy.parse_header(blob)
    assert (header.version, header.sub_version, header.arch) == (6, 3, arch)
    mpy.check_compatible(blob, target or mpy.vm_target(micropython))


def test_the_committed_glue_header_is_generated_from_natmods_table_and_the_c_source():
    # Fails when FUN_TABLE, cmodel.c's mp-> and QSTR() uses, and mp_glue.h drift apart.
    assert GLUE.read_text() == natmod.glue_header(SOURCE), "rerun scripts/build_cmodel.py"
    text = natmod.source_text(SOURCE)
    assert natmod.qstr_names(text) == ["ValueError", "adam", "forward", "loss_and_grad", "shape"]
    assert "raise_msg" in natmod.fun_table_uses(text)


def test_the_c_files_sources_are_it_and_the_headers_it_includes_from_beside_it(tmp_path):
    # cmodel.c's float arithmetic and MicroPython ABI live in headers: their uses of the function
    # table and qstrs count, and their bytes are part of what build.json records.
    assert [p.name for p in natmod.sources(SOURCE)] == ["cmodel.c", "float_math.h", "mp_abi.h"]
    (tmp_path / "probe.c").write_text('#include <stdint.h>\n#include "abi.h"\n#include "mp_glue.h"\n')
    (tmp_path / "abi.h").write_text('#include "more.h"\nint f(void) { return mp->raise_msg(QSTR(ValueError)); }\n')
    (tmp_path / "more.h").write_text("int g(void) { return QSTR(adam); }\n")
    assert [p.name for p in natmod.sources(tmp_path / "probe.c")] == ["probe.c", "abi.h", "more.h"]
    header = natmod.glue_header(tmp_path / "probe.c")
    assert "mp_raise_msg_t" in header and "enum { Q_FILE, Q_ValueError, Q_adam };" in header


def work_t_fields() -> set[str]:
    """The fields of cmodel.c's work_t: the activations' names in the C, the MicroPython model and
    the numpy reference alike."""
    text = SOURCE.read_text()
    body = text[text.index("typedef struct {\n    // Every position's so far:"):text.index("} work_t;")]
    return set(re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*[,;]", re.sub(r"//[^\n]*", "", body)))


def function(path, name):
    return next(node for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.FunctionDef) and node.name == name)


def test_the_micropython_model_and_the_reference_name_their_activations_as_cmodel_c_does():
    # One name per activation: model.GPT's buffers and the reference's saved activations are work_t's.
    fields = work_t_fields()
    assert {"emb", "attn_in", "query", "att", "attn_out", "after_attn", "mlp_in", "hidden", "after_mlp"} <= fields
    init = function(chip.FIRMWARE_DIR / "model.py", "__init__")
    buffers = {node.attr for node in ast.walk(init) if isinstance(node, ast.Attribute)
               and isinstance(node.ctx, ast.Store) and getattr(node.value, "id", None) == "self"}
    assert buffers - {"params", "grads"} - fields == set()
    forward = function(Path(reference.__file__), "_forward")
    saved = next(node.args[0] for node in ast.walk(forward)
                 if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "append")
    assert {element.id for element in saved.elts} - {"lw", "x"} - fields == set()


def test_fun_table_has_nativeglue_hs_own_landmarks():
    # py/nativeglue.h: "Additional entries for dynamic runtime, starts at index 50"; "The
    # following entries start at index 73" (mpy_ld.py's MP_FUN_TABLE_MP_TYPE_TYPE_OFFSET).
    assert (natmod.FUN_TABLE.index("memset_"), natmod.FUN_TABLE.index("type_type")) == (50, 73)
    assert len(natmod.FUN_TABLE) == len(set(natmod.FUN_TABLE)) == 87


def test_a_use_outside_the_table_or_a_stale_header_is_refused(tmp_path):
    src = tmp_path / "probe.c"
    src.write_text("int f(void) { return mp->no_such_entry(); }\n")
    with pytest.raises(natmod.NatmodError, match="mp->no_such_entry: not in MicroPython's function table"):
        natmod.glue_header(src)
    src.write_text("int f(void) { return QSTR(name); }\n")
    (tmp_path / natmod.GLUE_HEADER).write_text(natmod.glue_header(src).replace("Q_name", "Q_other"))
    with pytest.raises(natmod.NatmodError, match="rerun scripts/build_cmodel.py"):
        natmod.build(src, "x64")


VM_PROBE = """
import json, sys
from array import array
sys.path.insert(0, {lib!r})
import cmodel
case = json.load(open({case!r}))
out = {{'default_work': cmodel.shape(16, 4, 1, 16), 'refused_shapes': []}}
for knobs in [(18, 2, 1, 16), (68, 4, 1, 16), (64, 2, 1, 16), (16, 3, 1, 16), (16, 4, 1, 256)]:
    try:
        cmodel.shape(*knobs)
    except ValueError as e:
        out['refused_shapes'].append(str(e))
out['work'] = cmodel.shape(*case['shape'])
params = array('f', case['params'])
n = len(params)
grads = array('f', bytes(4 * n))
work = array('f', bytes(4 * out['work']))
out['losses'], out['grads'] = [], []
for name in case['names']:
    for i in range(n):
        grads[i] = 0.0
    out['losses'].append(cmodel.loss_and_grad(params, grads, work, name.encode()))
    out['grads'].append(list(grads))
kept = list(grads)
out['losses_alone'] = [cmodel.loss_and_grad(params, None, work, name.encode()) for name in case['names']]
out['grads_untouched'] = list(grads) == kept
logits = array('f', bytes(4 * 27))
for pos, token in enumerate([26] + [ord(c) - 97 for c in case['names'][1]]):
    cmodel.forward(params, work, token, pos, logits)
out['logits'] = list(logits)
out['refused'] = []
for f, args in [
    (cmodel.loss_and_grad, (params, grads, array('f', [0.0]), b'a')),
    (cmodel.loss_and_grad, (params, array('i', bytes(4 * n)), work, b'a')),
    (cmodel.loss_and_grad, (params[:n - 1], grads, work, b'a')),
    (cmodel.loss_and_grad, (params, grads, work, b'emMa')),
    (cmodel.loss_and_grad, (params, grads, work, 26)),
    (cmodel.forward, (params, work, 27, 0, logits)),
    (cmodel.forward, (params, work, 0, case['shape'][3], logits)),
    (cmodel.forward, (params, work, 0, 0, array('f', [0.0]))),
    (cmodel.adam, (params, grads, params, 1.5, 0.01, 1.0)),
]:
    try:
        f(*args)
    except ValueError as e:
        out['refused'].append(str(e))
m, v = array('f', bytes(4 * n)), array('f', bytes(4 * n))
cmodel.adam(params, grads, m, v, 0.01, 1.0)
out['adam'] = [list(params), list(m), list(v), max(abs(g) for g in grads)]
print(json.dumps(out))
"""
# microgpt.py's shape, and shapes that together differ from it in each knob (three layers included).
SHAPES = [Shape(), Shape(n_embd=24), Shape(n_head=2), Shape(n_layer=2), Shape(block_size=8),
          Shape(n_embd=8, n_head=1, n_layer=3, block_size=5)]


@pytest.fixture(scope="module", params=SHAPES, ids=str)
def vm_cmodel(request, tmp_path_factory, micropython):
    """The x64 build run in the MicroPython VM on random weights and four names, for one shape."""
    shape = request.param
    tmp = tmp_path_factory.mktemp("cmodel")
    (tmp / "cmodel.mpy").write_bytes(payload.cmodel_build("x64").read_bytes())
    params = np.random.default_rng(7).normal(0, 0.3, shape.n_params).astype(np.float32)
    names = ["a", "emma", "xavier", "mariaguadalupeconcepcion"]
    (tmp / "case.json").write_text(json.dumps({"params": params.tolist(), "names": names,
                                               "shape": [getattr(shape, k) for k in KNOBS]}))
    script = VM_PROBE.format(lib=str(tmp), case=str(tmp / "case.json"))
    r = subprocess.run([micropython, "-X", "heapsize=32000000", "-c", script], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr + r.stdout
    return shape, params.astype(np.float64), [reference.tokenize(n) for n in names], json.loads(r.stdout)


def test_c_gradients_match_the_numpy_reference(vm_cmodel):
    shape, params, names, out = vm_cmodel
    for tokens, loss, grad in zip(names, out["losses"], out["grads"]):
        ref_loss, ref_grad = reference.loss_and_grad(params, tokens, shape=shape)
        rel = np.abs(np.array(grad) - ref_grad).max() / np.abs(ref_grad).max()
        assert rel <= 1e-5, rel  # float32 arithmetic against float64
        assert loss == pytest.approx(ref_loss, rel=1e-6)


def test_c_loss_alone_is_the_training_loss_and_leaves_the_gradient(vm_cmodel):
    # grads None: the held-out loss's call (val.py), forward only.
    out = vm_cmodel[3]
    assert out["losses_alone"] == out["losses"] and out["grads_untouched"]


def test_c_forward_gives_the_reference_logits(vm_cmodel):
    shape, params, names, out = vm_cmodel
    ref = reference.logits(params, names[1][:-1], shape=shape)[-1]
    assert np.abs(np.array(out["logits"]) - ref).max() <= 1e-5


def test_c_adam_is_microgpts_first_adam_step(vm_cmodel):
    _, params, _, out = vm_cmodel
    grad = np.array(out["grads"][-1])  # what adam() was given: the last name's gradient
    p, m, v = params.copy(), np.zeros_like(params), np.zeros_like(params)
    reference.adam_step(p, grad, m, v, 0, 1)  # step 0 of a 1-step run: lr 0.01, bias corrections of t=1
    new_p, new_m, new_v, grads_left = out["adam"]
    assert np.abs(np.array(new_p) - p).max() <= 1e-6
    # The C keeps m / (1 - beta1) and v / (1 - beta2), as the MicroPython trainer does.
    assert np.allclose(np.array(new_m) * (1 - 0.85), m, rtol=1e-6, atol=0)
    assert np.allclose(np.array(new_v) * (1 - 0.99), v, rtol=1e-6, atol=0)
    assert grads_left == 0.0


def test_c_work_follows_the_shape(vm_cmodel):
    shape, _, _, out = vm_cmodel
    n, rows = shape.n_embd, shape.block_size * shape.n_embd
    # keys and values of every layer, the inputs of the layers above 0, one layer's gradients at
    # keys, values (and outputs, with more than one), one position's scratch
    scratch = 15 * n + 2 * shape.n_hidden + shape.n_head * shape.block_size + shape.block_size + 3 * 27
    assert out["work"] == (3 * shape.n_layer - 1) * rows + 2 * rows + (rows if shape.n_layer > 1 else 0) + scratch
    assert out["default_work"] == 1553


def test_c_refuses_bad_arguments_saying_which_and_why(vm_cmodel):
    assert vm_cmodel[3]["refused"] == [
        "work must be an array('f') of the floats shape() returned",
        "grads must be an array('f') of the shape's parameters",
        "params must be an array('f') of the shape's parameters",
        "name must be letters a-z",
        "name must be bytes-like",
        "token must be an int below 27",
        "pos must be an int below block_size",
        "logits must be an array('f') of 27 floats",
        "v must be an array('f')",
    ]
    assert vm_cmodel[3]["refused_shapes"] == [
        "n_embd must be a multiple of 4 from 4 to 64",
        "n_embd must be a multiple of 4 from 4 to 64",
        "n_head must divide n_embd into heads of at most 16",
        "n_head must divide n_embd into heads of at most 16",
        "block_size must be from 1 to 255",
    ]


def test_the_hosts_check_of_a_shape_for_the_c_kernels_is_the_modules(vm_cmodel):
    # payload.cmodel_refuses decides --kernels auto before anything runs: it must refuse what the module refuses.
    for knobs in [(18, 2, 1, 16), (68, 4, 1, 16), (64, 2, 1, 16), (16, 4, 1, 256)]:
        assert payload.cmodel_refuses(Shape(*knobs))
    assert not any(payload.cmodel_refuses(shape) for shape in SHAPES)


# ---- The module on both targets: its error messages (rodata) and MicroPython's function table ----
TABLE_PROBE = r"""
// Stores the function table's entries 0-2 and 73-76, 82 as a tuple: probe.ENTRIES.
#include <stddef.h>
#include <stdint.h>
typedef void *obj_t;
typedef struct { const void *type; void *globals; const uint16_t *qstr_table; obj_t *obj_table; } module_context_t;
typedef struct { const void *type; const module_context_t *context; } fun_bc_t;
typedef obj_t mp_const_none_t, mp_const_false_t, mp_const_true_t;
typedef obj_t mp_type_type_t, mp_type_str_t, mp_type_list_t, mp_type_dict_t, mp_type_Exception_t;
typedef void *(*mp_swap_globals_t)(void *globals);
typedef void (*mp_store_global_t)(size_t qst, obj_t value);
typedef obj_t (*mp_new_tuple_t)(size_t n, const obj_t *items);
#include "mp_glue.h"
#define QSTR(name) (qstrs[Q_##name])

obj_t mpy_init(const fun_bc_t *self, size_t n_args, size_t n_kw, const obj_t *args) {
    const mp_fun_table_t *mp = (const mp_fun_table_t *)self->context->obj_table[0];
    const uint16_t *qstrs = self->context->qstr_table;
    obj_t entries[] = {mp->const_none, mp->const_false, mp->const_true, mp->type_type, mp->type_str,
                       mp->type_list, mp->type_dict, mp->type_Exception};
    void *globals = mp->swap_globals(self->context->globals);
    mp->store_global(QSTR(ENTRIES), mp->new_tuple(sizeof entries / sizeof entries[0], entries));
    mp->swap_globals(globals);
    return mp->const_none;
}
"""

# Adam's paths, one weight each (params, grads, m, v): ordinary; no gradient yet (left as it is);
# v zero but m not (sqrt(v) + eps is eps); v tiny (on the chip, the long way); ordinary; v just
# above and near the chip's short-way bound; a NaN gradient.
ADAM_CASES = ([0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, 0.8],
              [0.5, 0.0, 0.0, 1e-5, -0.3, 1e-3, 2e-4, float("nan")],
              [0.1, 0.0, 0.001, 0.0, 0.05, 0.0, 0.0, 0.0],
              [0.2, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0, 0.0])

TARGET_PROBE = """
ADAM_CASES = """ + repr(ADAM_CASES).replace("nan", "float('nan')") + """
import cmodel
from array import array
z = array('f', bytes(4 * 4192))
try:
    cmodel.adam(z, z, z, 1.5, 0.01, 1.0)
except ValueError as e:
    print('PROBE message', e)
print('PROBE adam', cmodel.adam(z, z, z, z, 0.01, 1.0))
import binascii
p, g, m, v = (array('f', x) for x in ADAM_CASES)
cmodel.adam(p, g, m, v, 0.01, 1.0)
print('PROBE adam_p', binascii.hexlify(p).decode())
print('PROBE adam_g', binascii.hexlify(g).decode())
try:
    import probe
    print('PROBE entries', probe.ENTRIES == (None, False, True, type, str, list, dict, Exception))
except ImportError:
    pass
print('PROBE end')
"""


def _probe_files(arch, tmp):
    """cmodel.mpy as committed and, where LLVM is installed, probe.mpy built from TABLE_PROBE."""
    files = {"cmodel.mpy": payload.cmodel_build(arch).read_bytes()}
    if HAVE_LLVM:
        src = tmp / "probe.c"
        src.write_text(TABLE_PROBE)
        (tmp / natmod.GLUE_HEADER).write_text(natmod.glue_header(src))
        files["probe.mpy"] = natmod.build(src, arch)
    return files


def _in_the_vm(tmp, micropython):
    lib = tmp / "lib"
    lib.mkdir()
    for name, data in _probe_files("x64", tmp).items():
        (lib / name).write_bytes(data)
    r = subprocess.run([micropython, "-c", f"import sys\nsys.path.insert(0, {str(lib)!r})\n{TARGET_PROBE}"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr + r.stdout
    return r.stdout.splitlines()


def _on_the_chip(tmp, qemu):
    files = {"main.py": TARGET_PROBE.encode(), **_probe_files("xtensawin", tmp)}
    lines = []
    with QemuEngine(tmp / "run", qemu=qemu, silence_s=60, deadline_s=300) as engine:
        engine.flash.parent.mkdir(parents=True)
        engine.flash.write_bytes(basefw.identify(OFFICIAL_FIRMWARE).flash(files))
        for line in engine.lines():
            lines.append(line.decode(errors="replace").strip())
            if lines[-1] == "PROBE end":
                break
    return lines


# Each target's tool is a fixture asked for by name (not from the signature): marked here.
@pytest.fixture(scope="module", params=[pytest.param("vm", marks=pytest.mark.vm),
                                        pytest.param("qemu", marks=pytest.mark.qemu)])
def on_target(request, tmp_path_factory):
    """TARGET_PROBE's answers in the MicroPython VM (x64 builds) or on the emulated ESP32 (xtensawin)."""
    tmp = tmp_path_factory.mktemp(request.param)
    lines = (_in_the_vm(tmp, request.getfixturevalue("micropython")) if request.param == "vm"
             else _on_the_chip(tmp, request.getfixturevalue("qemu")))
    return dict(line.removeprefix("PROBE ").partition(" ")[::2] for line in lines if line.startswith("PROBE "))


def test_errors_carry_their_message_from_rodata(on_target):
    # On the chip the message lives in the RAM the loader allocates for rodata: the ESP32's IRAM
    # takes no byte loads (MicroPython copies its own native preludes out of it for that reason).
    # Espressif's QEMU does not model that, so here it shows the loader's rodata path works on
    # v1.25; tests/test_natmod.py shows the strings stay out of the code.
    assert on_target["message"] == "v must be an array('f')"
    assert on_target["adam"] == "None"  # function table entry 0, const_none


def test_c_adam_takes_every_path_as_microgpt_py_on_the_target(on_target):
    # p -= lr m_hat / (sqrt(v_hat) + eps) with m, v kept divided by 1 - beta (model.adam), in float64.
    p, g, m, v = (np.array(x, dtype=np.float32).astype(np.float64) for x in ADAM_CASES)
    m, v = 0.85 * m + g, 0.99 * v + g * g
    want = p - 0.01 * m / (np.sqrt(v) + 1e-8)
    got = np.frombuffer(bytes.fromhex(on_target["adam_p"]), dtype="<f4").astype(np.float64)
    assert got[1] == p[1]  # never a gradient: left exactly as it is
    assert np.isnan(got[7]) and np.isnan(want[7])
    ok = np.abs(got - want) <= 1e-6 * np.abs(want - p) + 2 * np.spacing(np.float32(np.abs(want)))
    assert ok[:7].all(), (got, want)
    assert bytes.fromhex(on_target["adam_g"]) == bytes(4 * len(p))  # the gradient zeroed for the next step


@needs_llvm
def test_the_function_tables_indices_hold_on_the_target(on_target):
    assert on_target["entries"] == "True"
