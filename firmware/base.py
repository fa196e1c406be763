# What the model's two implementations share (model.py, in MicroPython; cgpt.py, over the C
# kernels), with train.py and sample.py: microgpt's sizes, the flat parameter layout, the
# float32 arrays everything lives in, and the shifted softmax of the loss and of sampling.
# The host reads these constants from this file (microgpt/chip.py).
import math
from array import array

import micropython
from micropython import const

VOCAB = const(27)  # a-z are 0-25
BOS = const(26)  # begins and ends every name
# The model's shape, microgpt.py's four knobs: its own here; a run's from set_shape (train.py, from
# config.json, before the model's modules import these names).
N_EMBD = 16
N_HEAD = 4
N_LAYER = 1
BLOCK = 16


def set_shape(n_embd, n_head, n_layer, block_size):
    # The shape and what follows from it: head and MLP sizes, and the offsets into the flat
    # parameter array, in microgpt's state_dict order, each matrix [out][in]: wte, wpe, lm_head,
    # then N_LAYER layers of LAYER_SIZE floats from LAYER0, each wq, wk, wv, wo, fc1, fc2 (WQ...
    # FC2: offsets in a layer).
    global N_EMBD, N_HEAD, N_LAYER, BLOCK, HEAD_DIM, N_HIDDEN, WTE, WPE, LM_HEAD, LAYER0
    global WQ, WK, WV, WO, FC1, FC2, LAYER_SIZE, N_PARAMS
    N_EMBD, N_HEAD, N_LAYER, BLOCK = n_embd, n_head, n_layer, block_size
    HEAD_DIM = n_embd // n_head
    N_HIDDEN = 4 * n_embd
    WTE = 0
    WPE = WTE + VOCAB * n_embd
    LM_HEAD = WPE + block_size * n_embd
    LAYER0 = LM_HEAD + VOCAB * n_embd
    WQ = 0
    WK = WQ + n_embd * n_embd
    WV = WK + n_embd * n_embd
    WO = WV + n_embd * n_embd
    FC1 = WO + n_embd * n_embd
    FC2 = FC1 + N_HIDDEN * n_embd
    LAYER_SIZE = FC2 + n_embd * N_HIDDEN
    N_PARAMS = LAYER0 + n_layer * LAYER_SIZE  # 4,192 for microgpt.py's shape


set_shape(N_EMBD, N_HEAD, N_LAYER, BLOCK)


def knobs(shape):
    # config.json's shape as set_shape's arguments.
    return shape["n_embd"], shape["n_head"], shape["n_layer"], shape["block_size"]


# weights.bin: this header, then the float32 weights in the flat order above.
WEIGHTS_HEAD = "<4sHHHH"  # magic, n_embd, n_head, n_layer, block_size
WEIGHTS_MAGIC = b"MGW1"

RMS_EPS = 1e-5
BETA1 = 0.85  # Adam's
BETA2 = 0.99
ADAM_EPS = 1e-8


def zeros(n):
    # array("f", bytes(4 * n)) would first need a temporary as large as the array; an
    # initializer with a length (a range) lets MicroPython allocate the array once, in place.
    a = array("f", range(n))
    clear(a, n)
    return a


@micropython.native
def exp_logits(logits, temperature, out):
    # out = exp((logits - max) / temperature), the softmax before normalising (shifted by the max
    # so exp cannot overflow); returns (max, sum of out).
    top = logits[0]
    for i in range(1, VOCAB):
        if logits[i] > top:
            top = logits[i]
    total = 0.0
    for i in range(VOCAB):
        e = math.exp((logits[i] - top) / temperature)
        out[i] = e
        total += e
    return top, total


@micropython.native
def clear(a, n):
    for i in range(n):
        a[i] = 0.0
