# The held-out loss, after training (records: docs/uart-protocol.md): a module of its own, imported
# only then, so that its code is not on the heap while training is (the heap's peak).
import math
import time

import base
from base import BOS, exp_logits

# A running val record at least this often: with the MicroPython kernels the evaluation takes
# minutes on the chip, and the host takes a silent chip for a dead one.
PROGRESS_MS = 5000


def name_loss(gpt, name, n):
    # The sum of the n next-token losses of `name` (its first n positions, as training reads it),
    # forward only: the weights, their gradient and Adam's state are not touched. -log
    # softmax(logits)[target] is log(sum(exp(logits - max))) - (logits[target] - max), exp_logits'
    # shifted sum at temperature 1.
    loss, token = 0.0, BOS
    for pos in range(n):
        gpt.forward(token, pos)
        token = name[pos] - 97 if pos < len(name) else BOS
        top, total = exp_logits(gpt.logits, 1.0, gpt.dlogits)
        loss += math.log(total) + top - gpt.logits[token]
    return loss


def report(gpt, names, count):
    # The mean loss per token of the next `count` names `names` streams (a name's sum first: fewer
    # large sums to round in float32), in val records: a running one every PROGRESS_MS, the last
    # over them all. Closes `names`.
    loss_of = name_loss
    if hasattr(gpt, "work"):  # the C kernels' model (cgpt.py): the C's loss_and_grad, without a gradient
        # (called from here, not from cgpt.py, whose code is on the heap all through training)
        from cmodel import loss_and_grad

        def loss_of(gpt, name, n):  # the C's mean over the same n positions
            return loss_and_grad(gpt.params, None, gpt.work, name) * n

    t0 = last = time.ticks_ms()
    total, tokens = 0.0, 0
    for done in range(1, count + 1):
        name = names.next()
        n = min(len(name) + 1, base.BLOCK)  # training's positions: a longer name is cut at block_size
        total += loss_of(gpt, name, n)
        tokens += n
        now = time.ticks_ms()
        if done == count or time.ticks_diff(now, last) >= PROGRESS_MS:
            print("MGPT val loss=%.6f names=%d tokens=%d ms=%d" % (total / tokens, done, tokens, time.ticks_diff(now, t0)))
            last = now
    names.close()
