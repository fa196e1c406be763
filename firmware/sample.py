# Sampling: microgpt's inference loop: feed BOS, draw each next letter from
# softmax(logits / temperature), stop at BOS or after block_size letters.
import math
from model import BOS, BLOCK, VOCAB


def pick(logits, temperature, u, probs):
    # The first token whose cumulative probability exceeds u (u uniform in [0, 1)).
    top = logits[0]
    for i in range(1, VOCAB):
        if logits[i] > top:
            top = logits[i]
    total = 0.0
    for i in range(VOCAB):
        e = math.exp((logits[i] - top) / temperature)
        probs[i] = e
        total += e
    target = u * total
    acc = 0.0
    for i in range(VOCAB):
        acc += probs[i]
        if target < acc:
            return i
    return VOCAB - 1


def sample(gpt, rng, temperature):
    letters = []
    token = BOS
    for pos in range(BLOCK):
        gpt.forward(token, pos)
        token = pick(gpt.logits, temperature, rng.uniform(), gpt.dlogits)
        if token == BOS:
            break
        letters.append(chr(97 + token))
    return "".join(letters)
