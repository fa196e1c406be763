# microgpt's model with its arithmetic in C (cmodel.mpy, built from cmodel/cmodel.c): the same
# interface as model.GPT, for train.py and sample.py. In MicroPython every float is a heap
# object; in C they stay in registers, so a training step costs the chip ~400x fewer instructions.
import cmodel
from base import N_PARAMS, VOCAB, zeros

if cmodel.N_PARAMS != N_PARAMS:
    raise ImportError("cmodel.mpy was built for another model: rebuild it (scripts/build_cmodel.py)")

adam = cmodel.adam  # (params, grads, m, v, step, unbias), as train.adam


class GPT:
    def __init__(self, params, grads):
        self.params, self.grads = params, grads
        self.work = zeros(cmodel.WORK)  # keys, values and scratch of the name in progress
        self.logits = zeros(VOCAB)
        self.dlogits = zeros(VOCAB)  # sampling's scratch, as in model.GPT

    def loss_and_grad(self, name):
        return cmodel.loss_and_grad(self.params, self.grads, self.work, name)

    def forward(self, token, pos):
        cmodel.forward(self.params, self.work, token, pos, self.logits)
