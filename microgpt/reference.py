"""numpy reference of microgpt, for any of its shapes: forward, explicit backward, Adam, sampling.

The same model as microgpt.py and the firmware (docs: DEVELOPERS.md, "The model"), written over
one flat parameter vector in microgpt's state_dict order (chip.Shape.matrices). All positions of
a name go through the network at once (causal mask), because at these sizes the cost is numpy call
overhead, not arithmetic. Arithmetic follows the dtype of the parameters: float64 for gradient
checks and parity, float32 to mirror the chip.
"""
import numpy as np

from .chip import ADAM_EPS, BETA1, BETA2, BOS, DEFAULT, RMS_EPS, VOCAB, Shape

TEMPERATURE = 0.5  # microgpt.py's; the host ships it to the chip in config.json
LR = 0.01  # microgpt.py's learning_rate, the default of --lr; shipped to the chip in config.json too
PER_LAYER = ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")


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
    scale = ((x * x).sum(axis=1, keepdims=True) / n + RMS_EPS) ** -0.5
    return x * scale, scale


def _rmsnorm_back(x, scale, dy, n):
    # y = x * s with s = (mean(x^2) + eps)^-1/2, so ds/dx = -s^3 x / n
    return scale * dy - x * (scale ** 3 * (dy * x).sum(axis=1, keepdims=True) / n)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _forward(w, inp, shape):
    """Run positions 0..T-1 for input ids `inp`; return logits (T, VOCAB) and what backward needs."""
    t, e, h, d = len(inp), shape.n_embd, shape.n_head, shape.head_dim
    future = np.triu(np.ones((t, t), dtype=bool), k=1)  # causal mask
    emb = w["wte"][inp] + w["wpe"][:t]
    x, s0 = _rmsnorm(emb, e)
    layers = []
    for i in range(shape.n_layer):
        lw = {name: w[f"layer{i}.{name}"] for name in PER_LAYER}
        x_in = x  # the attention block's residual
        x1, s1 = _rmsnorm(x_in, e)
        q, k, v = (x1 @ lw[m].T for m in ("attn_wq", "attn_wk", "attn_wv"))
        q, k, v = (a.reshape(t, h, d).transpose(1, 0, 2) for a in (q, k, v))  # each (H, T, D)
        att = _softmax(np.where(future, -np.inf, q @ k.transpose(0, 2, 1) / d ** 0.5))
        heads = (att @ v).transpose(1, 0, 2).reshape(t, e)
        x2 = heads @ lw["attn_wo"].T + x_in  # the MLP block's residual
        x3, s3 = _rmsnorm(x2, e)
        hidden = x3 @ lw["mlp_fc1"].T
        relu = np.maximum(hidden, 0)
        x = relu @ lw["mlp_fc2"].T + x2
        layers.append((lw, x_in, s1, x1, q, k, v, att, heads, x2, s3, x3, hidden, relu))
    logits = x @ w["lm_head"].T
    return logits, (emb, s0, layers, x)


def logits(params, tokens, shape: Shape = DEFAULT):
    """Next-token logits (T, VOCAB) after each of `tokens` (at most block_size of them)."""
    return _forward(views(params, shape), tokens, shape)[0]


def loss_and_grad(params, tokens, shape: Shape = DEFAULT):
    """Loss as microgpt.py computes it, and its gradient w.r.t. the flat params (same dtype)."""
    t = min(shape.block_size, len(tokens) - 1)  # a longer name is cut, as microgpt.py cuts it
    inp, tgt = tokens[:t], tokens[1:t + 1]
    e, h, d = shape.n_embd, shape.n_head, shape.head_dim
    w = views(params, shape)
    z, (emb, s0, layers, x) = _forward(w, inp, shape)
    probs = _softmax(z)
    eye = np.eye(VOCAB, dtype=params.dtype)
    loss_value = -np.log(probs[np.arange(t), tgt]).mean()

    grad = np.zeros_like(params)
    g = views(grad, shape)
    dz = (probs - eye[tgt]) / t
    np.matmul(dz.T, x, out=g["lm_head"])
    dx = dz @ w["lm_head"]
    for i, (lw, x_in, s1, x1, q, k, v, att, heads, x2, s3, x3, hidden, relu) in reversed(list(enumerate(layers))):
        lg = {name: g[f"layer{i}.{name}"] for name in PER_LAYER}
        # MLP (its residual passes dx straight to x2)
        np.matmul(dx.T, relu, out=lg["mlp_fc2"])
        dhidden = (dx @ lw["mlp_fc2"]) * (hidden > 0)
        np.matmul(dhidden.T, x3, out=lg["mlp_fc1"])
        dx2 = dx + _rmsnorm_back(x2, s3, dhidden @ lw["mlp_fc1"], e)
        # attention (its residual passes dx2 straight to the layer's input)
        np.matmul(dx2.T, heads, out=lg["attn_wo"])
        dheads = (dx2 @ lw["attn_wo"]).reshape(t, h, d).transpose(1, 0, 2)  # (H, T, D)
        datt = dheads @ v.transpose(0, 2, 1)
        dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) / d ** 0.5
        dq, dk, dv = dscores @ k, dscores.transpose(0, 2, 1) @ q, att.transpose(0, 2, 1) @ dheads
        dx1 = 0
        for name, da in (("attn_wq", dq), ("attn_wk", dk), ("attn_wv", dv)):
            da = da.transpose(1, 0, 2).reshape(t, e)
            np.matmul(da.T, x1, out=lg[name])
            dx1 = dx1 + da @ lw[name]
        dx = dx2 + _rmsnorm_back(x_in, s1, dx1, e)
    demb = _rmsnorm_back(emb, s0, dx, e)
    np.matmul(eye[inp].T, demb, out=g["wte"])  # sums rows of repeated letters
    g["wpe"][:t] = demb
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
