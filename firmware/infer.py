# Names on demand from the weights a run left on the board (`microgpt device sample`, over the raw
# REPL): no training, so the weights and the model's buffers are all it allocates. The host asks
# held() first and checks what it says (the file's shape against the firmware's, the prefix
# against the block), then runs names(). The host names the files (train.py defines them): each
# module imported costs flash reads, many of them on a board emulated in QEMU.
import json

from base import BLOCK, N_EMBD, N_HEAD, N_PARAMS, zeros
from rng import Rng
from sample import sample

SHAPE = (N_EMBD, N_HEAD, 1, BLOCK)  # the shape this firmware runs: one layer, in model.py and cmodel.c
HEAD = 12  # bytes of weights.bin's optional header: b"MGW1", then n_embd, n_head, n_layer, block_size (uint16)


def held(weights):
    # (the first bytes of the weights file, its size, the shape this firmware runs), or None without one.
    try:
        f = open(weights, "rb")
    except OSError:
        return None
    with f:
        return f.read(HEAD), f.seek(0, 2), SHAPE


def names(config, weights, count, seed, temperature, prefix):
    # `count` names from a PRNG seeded afresh with `seed`, with the kernels the run trained with:
    # a run's seed and temperature give the names it sampled after training.
    with open(config) as f:
        kernels = json.load(f)["kernels"]
    if kernels == "c":
        from cgpt import GPT
    else:
        from model import GPT
    params = zeros(N_PARAMS)
    with open(weights, "rb") as f:
        f.seek(HEAD if f.read(4) == b"MGW1" else 0)
        f.readinto(params)
    gpt = GPT(params, None)
    rng = Rng(seed)
    for i in range(count):
        print("MGPT sample %d %s" % (i + 1, sample(gpt, rng, temperature, prefix)))
