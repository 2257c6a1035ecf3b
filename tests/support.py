"""Shared helpers for the tests: model factories, random data, error measures."""

import numpy as np

import rnnfast

# Each cell variant the suite runs over: name -> (class, extra constructor arguments).
CELLS = {
    "rnn_tanh": (rnnfast.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnfast.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnfast.LSTM, {}),
    "gru": (rnnfast.GRU, {}),
}

# Worst errors seen, by (check, dtype), printed at the end of the run (see conftest.py).
WORST = {}


def make(cell, D, H, L=1, dtype=np.float64, backend="cpp", seed=0, bias=True, **kw):
    cls, extra = CELLS[cell]
    return cls(D, H, num_layers=L, bias=bias, dtype=dtype, seed=seed, backend=backend,
               **extra, **kw)


def rel_err(got, ref):
    """max |got - ref| / max |ref|: the error relative to the tensor's scale."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    if ref.size == 0:
        return 0.0
    scale = np.abs(ref).max()
    diff = np.abs(got - ref).max()
    return float(diff / scale) if scale > 0 else float(diff)


def record(check, dtype, err):
    key = (check, np.dtype(dtype).name)
    WORST[key] = max(WORST.get(key, 0.0), err)


def state_like(model, B, rng, scale=0.5):
    """A random state of the model's structure, float64."""
    widths = (model.state_size, model.hidden_size)[:model.state_parts]  # h (S), c (H)
    parts = tuple(rng.uniform(-scale, scale, (model.num_layers * model.num_directions, B, w))
                  for w in widths)
    return parts[0] if model.state_parts == 1 else parts


def as_parts(state):
    return state if isinstance(state, tuple) else (state,)


def cast_state(state, dtype):
    parts = tuple(np.asarray(p, dtype) for p in as_parts(state))
    return parts[0] if len(parts) == 1 else parts


def random_lengths(rng, B, T, mode):
    """None, all full, or a mix of full, partial and (when T allows) empty sequences."""
    if mode == "none":
        return None
    if mode == "full":
        return np.full(B, T)
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0] = T  # at least one full sequence
    return lengths


def run_step(model, x, state, lengths, dy, dstate, **backward_options):
    """forward + backward; everything they return, as one dict of arrays (with "norms" when
    backward_options asks for return_grad_norms)."""
    y, state_n, cache = model.forward(x, state, lengths)
    dx, dstate0, grads, *norms = model.backward(cache, dy, dstate, **backward_options)
    out = {"y": y, "dx": dx}
    if norms:
        out["norms"] = norms[0]
    for i, p in enumerate(as_parts(state_n)):
        out[f"state_n[{i}]"] = p
    for i, p in enumerate(as_parts(dstate0)):
        out[f"dstate0[{i}]"] = p
    out.update({f"d{k}": v for k, v in grads.items()})
    return out


def numeric_grad(f, a, eps=1e-6):
    """Central differences of f() with respect to every element of a (perturbed in place and
    restored)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        keep = a[i]
        a[i] = keep + eps
        up = f()
        a[i] = keep - eps
        down = f()
        a[i] = keep
        g[i] = (up - down) / (2 * eps)
    return g
