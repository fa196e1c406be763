"""numpy reference of microgpt: forward, explicit backward, Adam, sampling.

The same model as microgpt.py and the firmware (docs: DEVELOPERS.md, "The model"), written
over one flat parameter vector in microgpt's state_dict order. All positions of a name go
through the network at once (causal mask), because at n_embd 16 the cost is numpy call
overhead, not arithmetic. Arithmetic follows the dtype of the parameters: float64 for
gradient checks and parity, float32 to mirror the chip.
"""
import numpy as np

from .chip import BETA1, BETA2, BOS, HEAD_DIM, N_EMBD, N_HEAD, N_HIDDEN, RMS_EPS, VOCAB
from .chip import ADAM_EPS as EPS_ADAM
from .chip import BLOCK as BLOCK_SIZE
from .chip import LR as LEARNING_RATE
from .chip import N_PARAMS as CHIP_N_PARAMS

TEMPERATURE = 0.5  # microgpt.py's; the host ships it to the chip in config.json

# microgpt's state_dict order; each matrix row-major [out][in]
LAYOUT = (
    ("wte", VOCAB, N_EMBD),
    ("wpe", BLOCK_SIZE, N_EMBD),
    ("lm_head", VOCAB, N_EMBD),
    ("wq", N_EMBD, N_EMBD),
    ("wk", N_EMBD, N_EMBD),
    ("wv", N_EMBD, N_EMBD),
    ("wo", N_EMBD, N_EMBD),
    ("fc1", N_HIDDEN, N_EMBD),
    ("fc2", N_EMBD, N_HIDDEN),
)


def _offsets():
    table, start = {}, 0
    for name, rows, cols in LAYOUT:
        table[name] = (start, rows, cols)
        start += rows * cols
    return table, start


OFFSETS, N_PARAMS = _offsets()
assert N_PARAMS == CHIP_N_PARAMS, "LAYOUT disagrees with firmware/base.py"
# wq, wk, wv are adjacent in the flat vector: one (48, 16) view does all three projections.
_QKV = slice(OFFSETS["wq"][0], OFFSETS["wo"][0])

_FUTURE = np.triu(np.ones((BLOCK_SIZE, BLOCK_SIZE), dtype=bool), k=1)  # causal mask


def views(flat):
    """name -> 2-D view into the flat parameter (or gradient) vector, no copies."""
    return {name: flat[start:start + rows * cols].reshape(rows, cols) for name, (start, rows, cols) in OFFSETS.items()}


def tokenize(name):
    """[BOS, letters..., BOS]; letters a-z map to 0-25."""
    ids = [ord(ch) - ord("a") for ch in name]
    if not all(0 <= i < 26 for i in ids):
        raise ValueError(f"{name!r}: names may only hold lowercase letters a-z")
    return [BOS] + ids + [BOS]


def _rmsnorm(x):
    scale = ((x * x).sum(axis=1, keepdims=True) / N_EMBD + RMS_EPS) ** -0.5
    return x * scale, scale


def _rmsnorm_back(x, scale, dy):
    # y = x * s with s = (mean(x^2) + eps)^-1/2, so ds/dx = -s^3 x / n
    return scale * dy - x * (scale ** 3 * (dy * x).sum(axis=1, keepdims=True) / N_EMBD)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _forward(w, inp):
    """Run positions 0..T-1 for input ids `inp`; return logits (T, VOCAB) and what backward needs."""
    t = len(inp)
    emb = w["wte"][inp] + w["wpe"][:t]
    x0, s0 = _rmsnorm(emb)  # x0 is also the attention block's residual
    x1, s1 = _rmsnorm(x0)
    qkv = x1 @ w["qkv"].T  # (T, 48)
    q, k, v = qkv.reshape(t, 3, N_HEAD, HEAD_DIM).transpose(1, 2, 0, 3)  # each (H, T, D)
    att = _softmax(np.where(_FUTURE[:t, :t], -np.inf, q @ k.transpose(0, 2, 1) / HEAD_DIM ** 0.5))
    heads = (att @ v).transpose(1, 0, 2).reshape(t, N_EMBD)
    x2 = heads @ w["wo"].T + x0
    x3, s3 = _rmsnorm(x2)
    hidden = x3 @ w["fc1"].T
    relu = np.maximum(hidden, 0)
    x4 = relu @ w["fc2"].T + x2
    logits = x4 @ w["lm_head"].T
    return logits, (emb, s0, x0, s1, x1, q, k, v, att, heads, x2, s3, x3, hidden, relu, x4)


def _weights(params):
    w = views(params)
    w["qkv"] = params[_QKV].reshape(3 * N_EMBD, N_EMBD)
    return w


def logits(params, tokens):
    """Next-token logits (T, VOCAB) after each of `tokens` (at most BLOCK_SIZE of them)."""
    return _forward(_weights(params), tokens)[0]


def loss_and_grad(params, tokens):
    """Loss as microgpt.py computes it, and its gradient w.r.t. the flat params (same dtype)."""
    t = min(BLOCK_SIZE, len(tokens) - 1)  # names longer than 15 letters are cut, like microgpt.py
    inp, tgt = tokens[:t], tokens[1:t + 1]
    w = _weights(params)
    z, (emb, s0, x0, s1, x1, q, k, v, att, heads, x2, s3, x3, hidden, relu, x4) = _forward(w, inp)
    probs = _softmax(z)
    eye = np.eye(VOCAB, dtype=params.dtype)
    loss_value = -np.log(probs[np.arange(t), tgt]).mean()

    grad = np.zeros_like(params)
    g = _weights(grad)
    dz = (probs - eye[tgt]) / t
    np.matmul(dz.T, x4, out=g["lm_head"])
    dx4 = dz @ w["lm_head"]
    # MLP (its residual passes dx4 straight to x2)
    np.matmul(dx4.T, relu, out=g["fc2"])
    dhidden = (dx4 @ w["fc2"]) * (hidden > 0)
    np.matmul(dhidden.T, x3, out=g["fc1"])
    dx2 = dx4 + _rmsnorm_back(x2, s3, dhidden @ w["fc1"])
    # attention (its residual passes dx2 straight to x0)
    np.matmul(dx2.T, heads, out=g["wo"])
    dheads = (dx2 @ w["wo"]).reshape(t, N_HEAD, HEAD_DIM).transpose(1, 0, 2)  # (H, T, D)
    datt = dheads @ v.transpose(0, 2, 1)
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) / HEAD_DIM ** 0.5
    dqkv = np.stack((dscores @ k, dscores.transpose(0, 2, 1) @ q, att.transpose(0, 2, 1) @ dheads))
    dqkv = dqkv.transpose(2, 0, 1, 3).reshape(t, 3 * N_EMBD)
    np.matmul(dqkv.T, x1, out=g["qkv"])
    dx0 = dx2 + _rmsnorm_back(x0, s1, dqkv @ w["qkv"])
    demb = _rmsnorm_back(emb, s0, dx0)
    np.matmul(eye[inp].T, demb, out=g["wte"])  # sums rows of repeated letters
    g["wpe"][:t] = demb
    return float(loss_value), grad


def adam_step(params, grad, m, v, step, num_steps):
    """One Adam update in place, exactly microgpt.py's (0-based step, lr decaying linearly to 0)."""
    lr_t = LEARNING_RATE * (1 - step / num_steps)
    m *= BETA1
    m += (1 - BETA1) * grad
    v *= BETA2
    v += (1 - BETA2) * grad ** 2
    m_hat = m / (1 - BETA1 ** (step + 1))
    v_hat = v / (1 - BETA2 ** (step + 1))
    params -= lr_t * m_hat / (v_hat ** 0.5 + EPS_ADAM)


def train(ordered_docs, init, steps):
    """Train `steps` steps from `init` (its dtype is kept); step s uses ordered_docs[s % len]."""
    params = np.array(init, copy=True)
    m, v = np.zeros_like(params), np.zeros_like(params)
    losses = []
    for step in range(steps):
        loss_value, grad = loss_and_grad(params, tokenize(ordered_docs[step % len(ordered_docs)]))
        adam_step(params, grad, m, v, step, steps)
        losses.append(loss_value)
    return params, losses


def sample(params, uniform, temperature=TEMPERATURE):
    """One name. `uniform()` gives floats in [0, 1); the token is the first whose cumulative
    softmax(logits / T) exceeds it (the last if rounding leaves none): the chip's rule, and the
    one random.choices applies in microgpt.py, so the same uniforms give the same name."""
    tokens, letters = [BOS], []
    for _ in range(BLOCK_SIZE):
        probs = _softmax(logits(params, tokens)[-1] / temperature)
        token = min(int(np.searchsorted(np.cumsum(probs), uniform(), side="right")), VOCAB - 1)
        if token == BOS:
            break
        letters.append(chr(ord("a") + token))
        tokens.append(token)
    return "".join(letters)
