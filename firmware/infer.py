# Names on demand from the weights a run left on the board (`microgpt device sample`, over the raw
# REPL): no training, so the weights and the model's buffers are all it allocates. The host asks
# held() first and checks what it says (the file's shape against the run's, the prefix against
# the block), then runs names(). The host names the files (train.py defines them): each module
# imported costs flash reads, many of them on a board emulated in QEMU.
import json
import struct

import base
from rng import Rng

HEAD = struct.calcsize(base.WEIGHTS_HEAD)


def run_of(config):
    # (shape, kernels) of the run whose config.json is on the board; a config from before the
    # shape was an option is microgpt.py's shape.
    with open(config) as f:
        cfg = json.load(f)
    s = cfg.get("shape")
    shape = base.knobs(s) if s else (base.N_EMBD, base.N_HEAD, base.N_LAYER, base.BLOCK)
    return shape, cfg["kernels"]


def held(weights, config):
    # (the first bytes of the weights file, its size, the shape the run trained), or None without one.
    try:
        f = open(weights, "rb")
    except OSError:
        return None
    with f:
        head, size = f.read(HEAD), f.seek(0, 2)
    return head, size, run_of(config)[0]


def names(config, weights, count, seed, temperature, prefix):
    # `count` names from a PRNG seeded afresh with `seed`, with the shape and kernels the run
    # trained with: a run's seed and temperature give the names it sampled after training.
    shape, kernels = run_of(config)
    base.set_shape(*shape)  # before the model's modules import its names
    from sample import sample

    if kernels == "c":
        from cgpt import GPT
    else:
        from model import GPT
    params = base.zeros(base.N_PARAMS)
    with open(weights, "rb") as f:
        f.seek(HEAD)  # the host checked the header (held)
        f.readinto(params)
    gpt = GPT(params, None)
    rng = Rng(seed)
    for i in range(count):
        print("MGPT sample %d %s" % (i + 1, sample(gpt, rng, temperature, prefix)))
