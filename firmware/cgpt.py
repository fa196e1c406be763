# microgpt's model with its arithmetic in C (cmodel.mpy, built from cmodel/cmodel.c): the same
# interface as model.GPT, for train.py and sample.py. In MicroPython every float is a heap
# object; in C they stay in registers, so a training step costs the chip ~400x fewer instructions.
import cmodel
from base import BLOCK, N_EMBD, N_HEAD, N_LAYER, VOCAB, zeros

adam = cmodel.adam  # (params, grads, m, v, step, unbias), as model.adam


class GPT:
    def __init__(self, params, grads):
        self.params, self.grads = params, grads
        # The C module takes the model's shape once; keys, values and scratch of the name in progress.
        self.work = zeros(cmodel.shape(N_EMBD, N_HEAD, N_LAYER, BLOCK))
        self.logits = zeros(VOCAB)
        self.dlogits = zeros(VOCAB)  # sampling's scratch, as in model.GPT

    def loss_and_grad(self, name):
        return cmodel.loss_and_grad(self.params, self.grads, self.work, name)

    def forward(self, token, pos):
        cmodel.forward(self.params, self.work, token, pos, self.logits)
