# Sampling: microgpt's inference loop: feed BOS, draw each next letter from
# softmax(logits / temperature), stop at BOS or after block_size letters.
from base import BLOCK, BOS, VOCAB, exp_logits


def pick(logits, temperature, u, probs):
    # The first token whose cumulative probability exceeds u (u uniform in [0, 1)).
    total = exp_logits(logits, temperature, probs)[1]
    target = u * total
    acc = 0.0
    for i in range(VOCAB):
        acc += probs[i]
        if target < acc:
            return i
    return VOCAB - 1


def sample(gpt, rng, temperature, prefix=""):
    # A name that begins with `prefix` (letters a-z, fewer than BLOCK): its letters are fed after
    # BOS as the model's input, drawing nothing, so the draws that follow are the host's
    # (microgpt/reference.py's sample) for the same seed.
    letters = []
    token = BOS
    for pos in range(BLOCK):
        gpt.forward(token, pos)
        if pos < len(prefix):
            token = ord(prefix[pos]) - 97
        else:
            token = pick(gpt.logits, temperature, rng.uniform(), gpt.dlogits)
            if token == BOS:
                break
        letters.append(chr(97 + token))
    return "".join(letters)
