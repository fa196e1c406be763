"""numpy reference of microgpt, for any of its shapes: forward, explicit backward, Adam, sampling.

The same model as microgpt.py and the firmware (README.md, "Exactness"), written over one flat
parameter vector in microgpt's state_dict order (chip.Shape.matrices; docs/chip-files.md, init.bin).
All positions of a name go through the network at once (causal mask), because at these sizes the
cost is numpy call overhead, not arithmetic. Arithmetic follows the dtype of the parameters:
float64 for gradient checks and parity, float32 to mirror the chip.
"""
import numpy as np

from .chip import ADAM_EPS, BETA1, BETA2, BOS, DEFAULT, LR, RMS_EPS, TEMPERATURE, VOCAB, Shape
from .errors import MicrogptError

# The temperatures the chip's sampler takes. It holds the temperature in float32 and divides each
# logit's gap below the largest by it: whatever the logits' range those quotients are <= 0, and
# one that overflows is -inf, whose exp is 0 (the limit), so the bound is the temperature itself:
# float32's smallest normal number. Below it the temperature is zero on the chip (1e-300: a division
# by zero) or a subnormal; the host, which divides the logits before shifting them, stays finite
# down to it for logits below 1e270 (at 1e-308 they overflowed into nan: letters no model chose).
# At the smallest, every draw is the likeliest letter; at the largest, the letters are about even.
MIN_TEMPERATURE = float(np.finfo(np.float32).tiny)
MAX_TEMPERATURE = 100.0
PER_LAYER = ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")


def check_temperature(temperature: float) -> float:
    """`temperature`, if the chip's sampler can take it; else MicrogptError naming the range."""
    if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:  # nan fails both
        raise MicrogptError(f"temperature {temperature:g} is outside {MIN_TEMPERATURE:.8g}..{MAX_TEMPERATURE:g}: "
                            "the chip samples in float32, whose smallest normal number is the least it can divide "
                            "by (it is greedy there: every draw the likeliest letter)")
    return temperature


def offsets(shape: Shape = DEFAULT) -> dict[str, tuple[int, int, int]]:
    """name -> (start, rows, columns) in the flat vector."""
    table, start = {}, 0
    for name, rows, cols in shape.matrices():
        table[name] = (start, rows, cols)
        start += rows * cols
    return table


def views(flat, shape: Shape = DEFAULT) -> dict:
    """name -> 2-D view into the flat parameter (or gradient) vector, no copies."""
    return {name: flat[start:start + rows * cols].reshape(rows, cols)
            for name, (start, rows, cols) in offsets(shape).items()}


def tokenize(name):
    """[BOS, letters..., BOS]; letters a-z map to 0-25."""
    ids = [ord(ch) - ord("a") for ch in name]
    if not all(0 <= i < 26 for i in ids):
        raise ValueError(f"{name!r}: names may only hold lowercase letters a-z")
    return [BOS] + ids + [BOS]


def _rmsnorm(x, n):
    rstd = ((x * x).sum(axis=1, keepdims=True) / n + RMS_EPS) ** -0.5
    return x * rstd, rstd


def _rmsnorm_back(x, rstd, dout, n):
    # out = x * rstd with rstd = (mean(x^2) + eps)^-1/2, so d rstd / dx = -rstd^3 x / n
    return rstd * dout - x * (rstd ** 3 * (dout * x).sum(axis=1, keepdims=True) / n)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _forward(w, inp, shape):
    """Run positions 0..T-1 for input ids `inp`; return logits (T, VOCAB) and what backward needs.
    The activations have the names of cmodel.c's work_t (microgpt.py's in brackets there)."""
    t, e, h, d = len(inp), shape.n_embd, shape.n_head, shape.head_dim
    future = np.triu(np.ones((t, t), dtype=bool), k=1)  # causal mask
    emb_sum = w["wte"][inp] + w["wpe"][:t]
    emb, emb_rstd = _rmsnorm(emb_sum, e)
    x = emb  # layer 0's input
    layers = []
    for i in range(shape.n_layer):
        lw = {name: w[f"layer{i}.{name}"] for name in PER_LAYER}
        attn_in, attn_in_rstd = _rmsnorm(x, e)
        query, keys, values = (attn_in @ lw[m].T for m in ("attn_wq", "attn_wk", "attn_wv"))
        query, keys, values = (a.reshape(t, h, d).transpose(1, 0, 2) for a in (query, keys, values))  # each (H, T, D)
        att = _softmax(np.where(future, -np.inf, query @ keys.transpose(0, 2, 1) / d ** 0.5))
        attn_out = (att @ values).transpose(1, 0, 2).reshape(t, e)
        after_attn = attn_out @ lw["attn_wo"].T + x
        mlp_in, mlp_in_rstd = _rmsnorm(after_attn, e)
        hidden = np.maximum(mlp_in @ lw["mlp_fc1"].T, 0)
        after_mlp = hidden @ lw["mlp_fc2"].T + after_attn
        layers.append((lw, x, attn_in_rstd, attn_in, query, keys, values, att, attn_out, after_attn, mlp_in_rstd,
                       mlp_in, hidden))
        x = after_mlp  # the next layer's input
    logits = x @ w["lm_head"].T
    return logits, (emb_sum, emb_rstd, layers, x)


def logits(params, tokens, shape: Shape = DEFAULT):
    """Next-token logits (T, VOCAB) after each of `tokens` (at most block_size of them)."""
    return _forward(views(params, shape), tokens, shape)[0]


def loss_and_grad(params, tokens, shape: Shape = DEFAULT):
    """Loss as microgpt.py computes it, and its gradient w.r.t. the flat params (same dtype)."""
    t = min(shape.block_size, len(tokens) - 1)  # a longer name is cut, as microgpt.py cuts it
    inp, tgt = tokens[:t], tokens[1:t + 1]
    e, h, d = shape.n_embd, shape.n_head, shape.head_dim
    w = views(params, shape)
    logits, (emb_sum, emb_rstd, layers, after_mlp) = _forward(w, inp, shape)
    probs = _softmax(logits)
    eye = np.eye(VOCAB, dtype=params.dtype)
    loss_value = -np.log(probs[np.arange(t), tgt]).mean()

    grad = np.zeros_like(params)
    g = views(grad, shape)
    dlogits = (probs - eye[tgt]) / t
    np.matmul(dlogits.T, after_mlp, out=g["lm_head"])
    dout = dlogits @ w["lm_head"]  # the gradient at the top layer's output, after_mlp
    for i, layer in reversed(list(enumerate(layers))):
        lw, x, attn_in_rstd, attn_in, query, keys, values, att, attn_out, after_attn, mlp_in_rstd, mlp_in, hidden = layer
        lg = {name: g[f"layer{i}.{name}"] for name in PER_LAYER}
        # MLP (its residual passes dout straight to after_attn)
        np.matmul(dout.T, hidden, out=lg["mlp_fc2"])
        dhidden = (dout @ lw["mlp_fc2"]) * (hidden > 0)
        np.matmul(dhidden.T, mlp_in, out=lg["mlp_fc1"])
        dafter_attn = dout + _rmsnorm_back(after_attn, mlp_in_rstd, dhidden @ lw["mlp_fc1"], e)
        # attention (its residual passes dafter_attn straight to the layer's input x)
        np.matmul(dafter_attn.T, attn_out, out=lg["attn_wo"])
        dattn_out = (dafter_attn @ lw["attn_wo"]).reshape(t, h, d).transpose(1, 0, 2)  # (H, T, D)
        datt = dattn_out @ values.transpose(0, 2, 1)
        dattn_logits = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) / d ** 0.5  # [attn_logits]
        dquery = dattn_logits @ keys
        dkeys = dattn_logits.transpose(0, 2, 1) @ query
        dvalues = att.transpose(0, 2, 1) @ dattn_out
        dattn_in = 0
        for name, dproj in (("attn_wq", dquery), ("attn_wk", dkeys), ("attn_wv", dvalues)):
            dproj = dproj.transpose(1, 0, 2).reshape(t, e)
            np.matmul(dproj.T, attn_in, out=lg[name])
            dattn_in = dattn_in + dproj @ lw[name]
        dx = dafter_attn + _rmsnorm_back(x, attn_in_rstd, dattn_in, e)
        dout = dx  # the gradient at the output of the layer below
    demb_sum = _rmsnorm_back(emb_sum, emb_rstd, dout, e)
    np.matmul(eye[inp].T, demb_sum, out=g["wte"])  # sums rows of repeated letters
    g["wpe"][:t] = demb_sum
    return float(loss_value), grad


def val_loss(params, names, shape: Shape = DEFAULT):
    """The held-out loss the chip reports: the mean next-token cross-entropy over every token of
    `names`, each read as training reads it (its first block_size positions)."""
    total, count = 0.0, 0
    for name in names:
        tokens = tokenize(name)
        t = min(shape.block_size, len(tokens) - 1)  # a longer name is cut, as microgpt.py cuts it
        probs = _softmax(logits(params, tokens[:t], shape).astype(np.float64))
        total -= float(np.log(probs[np.arange(t), tokens[1:t + 1]]).sum())
        count += t
    return total / count


def adam_step(params, grad, m, v, step, num_steps, lr=LR):
    """One Adam update in place, exactly microgpt.py's (0-based step, lr decaying linearly to 0)."""
    lr_t = lr * (1 - step / num_steps)
    m *= BETA1
    m += (1 - BETA1) * grad
    v *= BETA2
    v += (1 - BETA2) * grad ** 2
    m_hat = m / (1 - BETA1 ** (step + 1))
    v_hat = v / (1 - BETA2 ** (step + 1))
    params -= lr_t * m_hat / (v_hat ** 0.5 + ADAM_EPS)


def train(ordered_docs, init, steps, shape: Shape = DEFAULT, lr=LR):
    """Train `steps` steps from `init` (its dtype is kept) at learning rate `lr`; step s uses ordered_docs[s % len]."""
    params = np.array(init, copy=True)
    m, v = np.zeros_like(params), np.zeros_like(params)
    losses = []
    for step in range(steps):
        loss_value, grad = loss_and_grad(params, tokenize(ordered_docs[step % len(ordered_docs)]), shape)
        adam_step(params, grad, m, v, step, steps, lr)
        losses.append(loss_value)
    return params, losses


def sample(params, uniform, temperature=TEMPERATURE, shape: Shape = DEFAULT, prefix: str = ""):
    """One name, beginning with `prefix`. `uniform()` gives floats in [0, 1); the token is the
    first whose cumulative softmax(logits / T) exceeds it (the last if rounding leaves none): the
    chip's rule, and the one random.choices applies in microgpt.py, so the same uniforms give the
    same name."""
    tokens = tokenize(prefix)[:-1]
    letters = list(prefix)
    while len(tokens) <= shape.block_size:
        probs = _softmax(logits(params, tokens, shape)[-1] / temperature)
        token = min(int(np.searchsorted(np.cumsum(probs), uniform(), side="right")), VOCAB - 1)
        if token == BOS:
            break
        letters.append(chr(ord("a") + token))
        tokens.append(token)
    return "".join(letters)
