"""The C kernels (firmware/cmodel): the committed builds match their source, the linker's
output loads in the real MicroPython VM, and the C arithmetic equals the reference's."""
import json
import subprocess

import numpy as np
import pytest

from microgpt import mpy, natmod, payload, reference

SOURCE = payload.CMODEL_DIR / "cmodel.c"
MANIFEST = json.loads((payload.CMODEL_DIR / "build.json").read_text())
HAVE_LLVM = all(natmod.compilers().values())
needs_llvm = pytest.mark.skipif(not HAVE_LLVM, reason="LLVM 22 (clang-22, llc-22, llvm-mc-22) is not installed")


def test_committed_builds_are_of_the_committed_source():
    # No compiler needed: a cmodel.c edited without rerunning scripts/build_cmodel.py fails here.
    assert MANIFEST["source_sha256"] == natmod.sha256(SOURCE.read_bytes()), "rerun scripts/build_cmodel.py"
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
def test_builds_are_native_modules_the_targets_import(arch, target):
    blob = payload.cmodel_build(arch).read_bytes()
    header = mpy.parse_header(blob)
    assert (header.version, header.sub_version, header.arch) == (6, 3, arch)
    mpy.check_compatible(blob, target or mpy.vm_target())


def test_qstr_names_follow_the_c_enum():
    assert natmod.qstr_names(SOURCE.read_text()) == ["loss_and_grad", "forward", "adam", "N_PARAMS", "WORK", "ValueError"]


VM_PROBE = """
import json, sys
from array import array
sys.path.insert(0, {lib!r})
import cmodel
case = json.load(open({case!r}))
params = array('f', case['params'])
grads = array('f', bytes(4 * cmodel.N_PARAMS))
work = array('f', bytes(4 * cmodel.WORK))
out = {{'N_PARAMS': cmodel.N_PARAMS, 'losses': [], 'grads': []}}
for tokens in case['names']:
    for i in range(cmodel.N_PARAMS):
        grads[i] = 0.0
    n = min(16, len(tokens) - 1)
    out['losses'].append(cmodel.loss_and_grad(params, grads, work, bytes(tokens), n))
    out['grads'].append(list(grads))
logits = array('f', bytes(4 * 27))
for pos, token in enumerate(case['names'][1][:-1]):
    cmodel.forward(params, work, token, pos, logits)
out['logits'] = list(logits)
try:
    cmodel.loss_and_grad(params, grads, array('f', [0.0]), bytes([26, 0, 26]), 2)
except ValueError:
    out['short_work'] = 'ValueError'
m, v = array('f', bytes(4 * cmodel.N_PARAMS)), array('f', bytes(4 * cmodel.N_PARAMS))
cmodel.adam(params, grads, m, v, 0.01, 1.0)
out['adam'] = [list(params), list(m), list(v), max(abs(g) for g in grads)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def vm_cmodel(tmp_path_factory):
    """The x64 build run in the MicroPython VM on random weights and four names."""
    tmp = tmp_path_factory.mktemp("cmodel")
    (tmp / "cmodel.mpy").write_bytes(payload.cmodel_build("x64").read_bytes())
    params = np.random.default_rng(7).normal(0, 0.3, reference.N_PARAMS).astype(np.float32)
    names = [reference.tokenize(n) for n in ("a", "emma", "xavier", "mariaguadalupeconcepcion")]
    (tmp / "case.json").write_text(json.dumps({"params": params.tolist(), "names": names}))
    script = VM_PROBE.format(lib=str(tmp), case=str(tmp / "case.json"))
    r = subprocess.run(["micropython", "-X", "heapsize=4000000", "-c", script], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr + r.stdout
    return params.astype(np.float64), names, json.loads(r.stdout)


def test_c_gradients_match_the_numpy_reference(vm_cmodel):
    params, names, out = vm_cmodel
    assert out["N_PARAMS"] == reference.N_PARAMS
    for tokens, loss, grad in zip(names, out["losses"], out["grads"]):
        ref_loss, ref_grad = reference.loss_and_grad(params, tokens)
        rel = np.abs(np.array(grad) - ref_grad).max() / np.abs(ref_grad).max()
        assert rel <= 1e-5, rel  # float32 arithmetic against float64
        assert loss == pytest.approx(ref_loss, rel=1e-6)


def test_c_forward_gives_the_reference_logits(vm_cmodel):
    params, names, out = vm_cmodel
    ref = reference.logits(params, names[1][:-1])[-1]
    assert np.abs(np.array(out["logits"]) - ref).max() <= 1e-5


def test_c_adam_is_microgpts_first_adam_step(vm_cmodel):
    params, _, out = vm_cmodel
    grad = np.array(out["grads"][-1])  # what adam() was given: the last name's gradient
    p, m, v = params.copy(), np.zeros_like(params), np.zeros_like(params)
    reference.adam_step(p, grad, m, v, 0, 1)  # step 0 of a 1-step run: lr 0.01, bias corrections of t=1
    new_p, new_m, new_v, grads_left = out["adam"]
    assert np.abs(np.array(new_p) - p).max() <= 1e-6
    # The C keeps m / (1 - beta1) and v / (1 - beta2), as the MicroPython trainer does.
    assert np.allclose(np.array(new_m) * (1 - 0.85), m, rtol=1e-6, atol=0)
    assert np.allclose(np.array(new_v) * (1 - 0.99), v, rtol=1e-6, atol=0)
    assert grads_left == 0.0


def test_c_refuses_a_work_array_too_short(vm_cmodel):
    assert vm_cmodel[2]["short_work"] == "ValueError"
