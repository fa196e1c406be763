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
N_EMBD = const(16)
N_HEAD = const(4)
HEAD_DIM = const(4)
BLOCK = const(16)
N_HIDDEN = const(64)

# Offsets into the flat parameter array: microgpt's state_dict order, each matrix [out][in].
WTE = const(0)
WPE = const(WTE + VOCAB * N_EMBD)
LM_HEAD = const(WPE + BLOCK * N_EMBD)
WQ = const(LM_HEAD + VOCAB * N_EMBD)
WK = const(WQ + N_EMBD * N_EMBD)
WV = const(WK + N_EMBD * N_EMBD)
WO = const(WV + N_EMBD * N_EMBD)
FC1 = const(WO + N_EMBD * N_EMBD)
FC2 = const(FC1 + N_HIDDEN * N_EMBD)
N_PARAMS = const(FC2 + N_EMBD * N_HIDDEN)  # 4,192

RMS_EPS = 1e-5


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
