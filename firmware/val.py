# The held-out loss, after training (record: docs/uart-protocol.md): a module of its own, imported
# only then, so that its code is not on the heap while training is (the heap's peak).
import math
import time

import base
from base import BOS, exp_logits


def val_loss(gpt, names, count):
    # The mean next-token loss over every token of the next `count` names, forward only: the
    # weights, their gradient and Adam's state are not touched. -log softmax(logits)[target] is
    # log(sum(exp(logits - max))) - (logits[target] - max), exp_logits' shifted sum at temperature 1.
    total, tokens = 0.0, 0
    for _ in range(count):
        name = names.next()
        n = min(len(name) + 1, base.BLOCK)  # training's positions: a longer name is cut at block_size
        loss, token = 0.0, BOS
        for pos in range(n):
            gpt.forward(token, pos)
            token = name[pos] - 97 if pos < len(name) else BOS
            top, total_exp = exp_logits(gpt.logits, 1.0, gpt.dlogits)
            loss += math.log(total_exp) + top - gpt.logits[token]
        total += loss  # a name's sum first: fewer large sums to round in float32
        tokens += n
    return total / tokens, tokens


def report(gpt, names, count):
    # The val record of the `count` names `names` streams; closes it.
    t0 = time.ticks_us()
    loss, tokens = val_loss(gpt, names, count)
    names.close()
    print("MGPT val loss=%.6f names=%d tokens=%d ms=%d"
          % (loss, count, tokens, time.ticks_diff(time.ticks_us(), t0) // 1000))
