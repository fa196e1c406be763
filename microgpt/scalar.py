"""microgpt.py's algorithm on CPython: the oracle for parity and the baseline for speed.

A transcription of Andrej Karpathy's microgpt.py
(https://gist.github.com/karpathy/8627fe009c40f57531cb18360106ce95, rev 14fb0388): the same
scalar autograd `Value`, the same operations in the same order and the same calls to the
global `random` module (seed, shuffle, one gauss per parameter). Only the script became
functions, its four knobs (n_embd, n_head, n_layer, block_size: the top of microgpt.py) an
argument, and the printing went. It is slow on purpose; do not optimise it.
"""
import math
import random
import string
from typing import NamedTuple

learning_rate, beta1, beta2, eps_adam = 0.01, 0.85, 0.99, 1e-8


class Knobs(NamedTuple):
    """The variables microgpt.py sets at its top (its defaults); chip.Shape has the same names."""
    n_embd: int = 16
    n_head: int = 4
    n_layer: int = 1
    block_size: int = 16


MICROGPT = Knobs()


class Value:
    """A scalar that remembers how it was computed, for backpropagation."""
    __slots__ = ("data", "grad", "_children", "_local_grads")

    def __init__(self, data, children=(), local_grads=()):
        self.data = data
        self.grad = 0
        self._children = children
        self._local_grads = local_grads

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), (1, 1))

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), (other.data, self.data))

    def __pow__(self, other): return Value(self.data ** other, (self,), (other * self.data ** (other - 1),))
    def log(self): return Value(math.log(self.data), (self,), (1 / self.data,))
    def exp(self): return Value(math.exp(self.data), (self,), (math.exp(self.data),))
    def relu(self): return Value(max(0, self.data), (self,), (float(self.data > 0),))
    def __neg__(self): return self * -1
    def __radd__(self, other): return self + other
    def __sub__(self, other): return self + (-other)
    def __rsub__(self, other): return other + (-self)
    def __rmul__(self, other): return self * other
    def __truediv__(self, other): return self * other ** -1
    def __rtruediv__(self, other): return other * self ** -1

    def backward(self):
        topo = []
        visited = set()

        def build_topo(v):
            if v not in visited:
                visited.add(v)
                for child in v._children:
                    build_topo(child)
                topo.append(v)
        build_topo(self)
        self.grad = 1
        for v in reversed(topo):
            for child, local_grad in zip(v._children, v._local_grads):
                child.grad += local_grad * v.grad


def make_state_dict(vocab_size, draw, knobs=MICROGPT):
    """microgpt's parameters; `draw()` gives each initial value in state_dict order."""
    n_embd, n_layer, block_size = knobs.n_embd, knobs.n_layer, knobs.block_size
    matrix = lambda nout, nin: [[Value(draw()) for _ in range(nin)] for _ in range(nout)]
    state_dict = {"wte": matrix(vocab_size, n_embd), "wpe": matrix(block_size, n_embd),
                  "lm_head": matrix(vocab_size, n_embd)}
    for i in range(n_layer):
        state_dict[f"layer{i}.attn_wq"] = matrix(n_embd, n_embd)
        state_dict[f"layer{i}.attn_wk"] = matrix(n_embd, n_embd)
        state_dict[f"layer{i}.attn_wv"] = matrix(n_embd, n_embd)
        state_dict[f"layer{i}.attn_wo"] = matrix(n_embd, n_embd)
        state_dict[f"layer{i}.mlp_fc1"] = matrix(4 * n_embd, n_embd)
        state_dict[f"layer{i}.mlp_fc2"] = matrix(n_embd, 4 * n_embd)
    return state_dict


def parameters(state_dict):
    return [p for mat in state_dict.values() for row in mat for p in row]


def linear(x, w):
    return [sum(wi * xi for wi, xi in zip(wo, x)) for wo in w]


def softmax(logits):
    max_val = max(val.data for val in logits)
    exps = [(val - max_val).exp() for val in logits]
    total = sum(exps)
    return [e / total for e in exps]


def rmsnorm(x):
    ms = sum(xi * xi for xi in x) / len(x)
    scale = (ms + 1e-5) ** -0.5
    return [xi * scale for xi in x]


def gpt(state_dict, token_id, pos_id, keys, values, knobs=MICROGPT):
    n_head, n_layer = knobs.n_head, knobs.n_layer
    head_dim = knobs.n_embd // n_head
    tok_emb = state_dict["wte"][token_id]
    pos_emb = state_dict["wpe"][pos_id]
    x = [t + p for t, p in zip(tok_emb, pos_emb)]
    x = rmsnorm(x)

    for li in range(n_layer):
        x_residual = x
        x = rmsnorm(x)
        q = linear(x, state_dict[f"layer{li}.attn_wq"])
        k = linear(x, state_dict[f"layer{li}.attn_wk"])
        v = linear(x, state_dict[f"layer{li}.attn_wv"])
        keys[li].append(k)
        values[li].append(v)
        x_attn = []
        for h in range(n_head):
            hs = h * head_dim
            q_h = q[hs:hs + head_dim]
            k_h = [ki[hs:hs + head_dim] for ki in keys[li]]
            v_h = [vi[hs:hs + head_dim] for vi in values[li]]
            attn_logits = [sum(q_h[j] * k_h[t][j] for j in range(head_dim)) / head_dim ** 0.5 for t in range(len(k_h))]
            attn_weights = softmax(attn_logits)
            head_out = [sum(attn_weights[t] * v_h[t][j] for t in range(len(v_h))) for j in range(head_dim)]
            x_attn.extend(head_out)
        x = linear(x_attn, state_dict[f"layer{li}.attn_wo"])
        x = [a + b for a, b in zip(x, x_residual)]
        x_residual = x
        x = rmsnorm(x)
        x = linear(x, state_dict[f"layer{li}.mlp_fc1"])
        x = [xi.relu() for xi in x]
        x = linear(x, state_dict[f"layer{li}.mlp_fc2"])
        x = [a + b for a, b in zip(x, x_residual)]

    logits = linear(x, state_dict["lm_head"])
    return logits


def doc_loss(state_dict, tokens, knobs=MICROGPT):
    """Mean next-token loss over one tokenised name (a Value, ready for backward())."""
    n = min(knobs.block_size, len(tokens) - 1)
    keys, values = [[] for _ in range(knobs.n_layer)], [[] for _ in range(knobs.n_layer)]
    losses = []
    for pos_id in range(n):
        token_id, target_id = tokens[pos_id], tokens[pos_id + 1]
        logits = gpt(state_dict, token_id, pos_id, keys, values, knobs)
        probs = softmax(logits)
        loss_t = -probs[target_id].log()
        losses.append(loss_t)
    return (1 / n) * sum(losses)


def loss_and_grad(weights, tokens, vocab_size=27, knobs=MICROGPT):
    """Loss and gradient (flat, state_dict order) of one tokenised name at the given weights."""
    state_dict = make_state_dict(vocab_size, iter(weights).__next__, knobs)
    loss = doc_loss(state_dict, tokens, knobs)
    loss.backward()
    return loss.data, [p.grad for p in parameters(state_dict)]


def prepare(docs, seed=42, knobs=MICROGPT):
    """The script's set-up: seed the global `random`, shuffle, vocabulary, initial parameters.

    Returns (shuffled copy of docs, uchars, state_dict).
    """
    random.seed(seed)
    docs = list(docs)
    random.shuffle(docs)
    uchars = sorted(set("".join(docs)))
    state_dict = make_state_dict(len(uchars) + 1, lambda: random.gauss(0, 0.08), knobs)
    return docs, uchars, state_dict


def train_steps(docs, num_steps, seed=42, knobs=MICROGPT):
    """Yield the loss of each step of microgpt.py's run of `num_steps` steps on `docs`."""
    docs, uchars, state_dict = prepare(docs, seed, knobs)
    BOS = len(uchars)
    params = parameters(state_dict)
    m = [0.0] * len(params)
    v = [0.0] * len(params)

    for step in range(num_steps):
        doc = docs[step % len(docs)]
        tokens = [BOS] + [uchars.index(ch) for ch in doc] + [BOS]
        loss = doc_loss(state_dict, tokens, knobs)
        loss.backward()

        lr_t = learning_rate * (1 - step / num_steps)
        for i, p in enumerate(params):
            m[i] = beta1 * m[i] + (1 - beta1) * p.grad
            v[i] = beta2 * v[i] + (1 - beta2) * p.grad ** 2
            m_hat = m[i] / (1 - beta1 ** (step + 1))
            v_hat = v[i] / (1 - beta2 ** (step + 1))
            p.data -= lr_t * m_hat / (v_hat ** 0.5 + eps_adam)
            p.grad = 0
        yield loss.data


def train(docs, steps, seed=42, knobs=MICROGPT):
    """Per-step losses of microgpt.py's run of `steps` steps on `docs`."""
    return list(train_steps(docs, steps, seed, knobs))


def sample(weights, uchars=string.ascii_lowercase, temperature=0.5, knobs=MICROGPT):
    """One name from microgpt.py's inference loop at the given flat weights (draws from the global `random`)."""
    vocab_size = len(uchars) + 1
    BOS = len(uchars)
    state_dict = make_state_dict(vocab_size, iter(weights).__next__, knobs)
    keys, values = [[] for _ in range(knobs.n_layer)], [[] for _ in range(knobs.n_layer)]
    token_id = BOS
    sample = []
    for pos_id in range(knobs.block_size):
        logits = gpt(state_dict, token_id, pos_id, keys, values, knobs)
        probs = softmax([l / temperature for l in logits])
        token_id = random.choices(range(vocab_size), weights=[p.data for p in probs])[0]
        if token_id == BOS:
            break
        sample.append(uchars[token_id])
    return "".join(sample)
