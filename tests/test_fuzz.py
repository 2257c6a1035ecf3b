"""Fuzzing every public entry point with hypothesis.

Random shapes (0 and 1 included), dtypes, byte orders, layouts (non-contiguous, negative
strides, Fortran order, broadcast and read-only views), values (NaN, Inf, huge, denormal) and
argument types. Every call either succeeds with a correct result (the C++ backend is compared
with the NumPy one, the read-out and losses with a float64 formula) or raises a clear
ValueError or TypeError (MemoryError for absurd sizes), and parameters are unchanged after
any failure.

The budget is fixed and the run derandomized so CI is reproducible: RNNFAST_FUZZ_EXAMPLES
(default 60) examples per test; raise it for a deeper local run, e.g.
RNNFAST_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py.
"""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnfast
from rnnfast import _core, clip, losses, optim
from support import CELLS, as_parts

EXAMPLES = int(os.environ.get("RNNFAST_FUZZ_EXAMPLES", "60"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(autouse=True)
def _no_fp_warnings():
    """An overflow to Inf in a loss or an optimiser step is a legitimate result here (NumPy
    warns, and pytest would make the warning an error); the assertions check how it is
    handled."""
    with np.errstate(all="ignore"):
        yield

CLEAR = (ValueError, TypeError, MemoryError)

FLOAT_DTYPES = ["float32", "float64", "float16", ">f4", ">f8", "longdouble"]
OTHER_DTYPES = ["int32", "int64", "bool", "complex64", "object", "uint8"]
SPECIAL = [np.nan, np.inf, -np.inf, 1e4, -1e4, 1e30, 3e38, 1e300, 1e-40, 5e-324, 0.0, -0.0]


@st.composite
def arrays(draw, shape, bad_dtype_rate=0.05, special_rate=0.2, scale=1.0):
    """An array of ``shape``: a random float dtype and byte order (rarely a non-float one),
    random layout, values standard-normal times ``scale``, sometimes with special values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.floats(0, 1)) < bad_dtype_rate:
        dtype = np.dtype(draw(st.sampled_from(OTHER_DTYPES)))
    else:
        dtype = np.dtype(draw(st.sampled_from(FLOAT_DTYPES)))
    layout = draw(st.sampled_from(["c", "c", "strided", "reversed", "fortran", "broadcast",
                                   "readonly"]))
    values = np.asarray(rng.standard_normal(shape) * scale)
    if values.size and draw(st.floats(0, 1)) < special_rate:
        k = draw(st.integers(1, max(1, values.size)))
        idx = rng.integers(0, values.size, size=k)
        values.flat[idx] = rng.choice(SPECIAL, size=k)
    with np.errstate(all="ignore"):
        if dtype.kind == "O":
            a = values.astype(object)
        elif dtype.kind == "b":
            a = values > 0
        else:
            a = values.astype(dtype)
    if layout == "strided" and a.ndim:
        big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
        big[tuple(slice(None, None, 2) for _ in a.shape)] = a
        a = big[tuple(slice(None, None, 2) for _ in a.shape)]
    elif layout == "reversed" and a.ndim:
        a = np.flip(np.flip(a, 0).copy(), 0)  # same values, negative stride on axis 0
    elif layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "broadcast" and a.ndim and a.shape[0] >= 1:
        a = np.broadcast_to(a[:1], a.shape)
    elif layout == "readonly":
        a.flags.writeable = False
    return a


def maybe_not_array(draw, a):
    """Now and then replace an array by something else: a list, a scalar, None, a string."""
    kind = draw(st.sampled_from(["array"] * 12 + ["list", "scalar", "none", "str"]))
    if kind == "list":
        return a.tolist()
    if kind == "scalar":
        return 1.5
    if kind == "none":
        return None
    if kind == "str":
        return "x"
    return a


def perturb(draw, shape):
    """Usually ``shape``; sometimes one dimension off by one, or a dimension more or less."""
    kind = draw(st.sampled_from(["same"] * 8 + ["off", "more", "less"]))
    shape = list(shape)
    if kind == "off" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = max(0, shape[i] + draw(st.sampled_from([-1, 1])))
    elif kind == "more":
        shape.append(1)
    elif kind == "less" and shape:
        shape.pop()
    return tuple(shape)


def finite_input(*items):
    for a in items:
        for p in as_parts(a) if isinstance(a, tuple) else (a,):
            if isinstance(p, np.ndarray) and p.dtype.kind == "f":
                with np.errstate(all="ignore"):
                    if not np.isfinite(p.astype(np.float64)).all():
                        return False
    return True


def snapshot(params):
    return {k: v.copy() for k, v in params.items()}


def assert_unchanged(params, before):
    assert params.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(params[k], before[k], err_msg=k)


def assert_clear(exc):
    """A clear error: one of the expected types, with a message of some substance."""
    assert isinstance(exc, CLEAR), f"unexpected {type(exc).__name__}: {exc}"
    assert len(str(exc)) >= 10, f"{type(exc).__name__} with a bare message: {exc!r}"


def close(got, ref, dtype, what):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, what
    assert np.array_equal(np.isfinite(got), np.isfinite(ref)), what
    fin = np.isfinite(ref)
    if not fin.any():
        return
    scale = max(1.0, np.abs(ref[fin]).max())
    tol = 2e-3 if np.dtype(dtype) == np.float32 else 1e-9
    err = np.abs(got[fin] - ref[fin]).max() / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


# -- the cells, both backends --------------------------------------------------------------

def run_cell(model, x, state, lengths, dy_fn, dstate_fn, clip_per_step):
    y, state_n, cache = model.forward(x, state, lengths)
    dy = dy_fn(y)
    dstate = dstate_fn(state_n)
    dx, dstate0, grads = model.backward(cache, dy, dstate, clip_per_step=clip_per_step)
    return {"y": y, "dx": dx, **{f"s{i}": p for i, p in enumerate(as_parts(state_n))},
            **{f"ds{i}": p for i, p in enumerate(as_parts(dstate0))},
            **{f"d{k}": v for k, v in grads.items()}}


@st.composite
def cell_case(draw):
    cell = draw(st.sampled_from(sorted(CELLS)))
    B, T = draw(st.integers(0, 3)), draw(st.integers(0, 5))
    D, H, L = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 2))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    check_finite = draw(st.booleans())
    bias = draw(st.booleans())
    # the arguments of bidirectional stacks, dropout and the LSTM's projection
    N = 2 if draw(st.booleans()) else 1
    dropout = draw(st.sampled_from([0.0, 0.0, 0.5])) if L > 1 else 0.0
    proj = draw(st.integers(0, H - 1)) if cell == "lstm" and H > 1 and draw(st.booleans()) \
        else 0
    S = proj or H
    widths = (S, H)
    scale = draw(st.sampled_from([1.0, 1.0, 1e4, 1e-30]))
    x = maybe_not_array(draw, draw(arrays(perturb(draw, (B, T, D)), scale=scale)))
    parts = CELLS[cell][0].state_parts if hasattr(CELLS[cell][0], "state_parts") else 1
    state = None
    if draw(st.booleans()):
        ps = tuple(draw(arrays(perturb(draw, (N * L, B, widths[i])))) for i in range(parts))
        state = ps[0] if parts == 1 else (ps if draw(st.integers(0, 9)) else list(ps))
    lengths = None
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["ok", "ok", "ok", "range", "float", "shape"]))
        lengths = np.asarray(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)),
                             dtype=np.int64)
        if kind == "range" and B:
            lengths[0] = draw(st.sampled_from([-1, T + 1, 2**62]))
        elif kind == "float":
            lengths = lengths.astype(np.float64)
        elif kind == "shape":
            lengths = lengths[:-1] if B else np.zeros(1, np.int64)
    dy_shape = perturb(draw, (B, T, N * S))
    dy = draw(arrays(dy_shape, special_rate=0.1))
    dstate = None
    if draw(st.booleans()):
        ps = tuple(draw(arrays(perturb(draw, (N * L, B, widths[i])))) for i in range(parts))
        dstate = ps[0] if parts == 1 else ps
    clip_per_step = draw(st.sampled_from([None, None, 0.5, 1e30, -1.0, np.nan, "1"]))
    options = {"bidirectional": N == 2, "dropout": dropout,
               **({"proj_size": proj} if proj else {})}
    return dict(cell=cell, D=D, H=H, L=L, dtype=dtype, check_finite=check_finite, bias=bias,
                x=x, state=state, lengths=lengths, dy=dy, dstate=dstate,
                clip_per_step=clip_per_step, options=options)


@fuzz
@given(cell_case())
def test_fuzz_cells_forward_backward(case):
    cls, extra = CELLS[case["cell"]]
    results, errors = {}, {}
    for backend in ("cpp", "numpy"):
        model = cls(case["D"], case["H"], num_layers=case["L"], bias=case["bias"],
                    dtype=case["dtype"], seed=0, backend=backend,
                    check_finite=case["check_finite"], **extra, **case["options"])
        before = snapshot(model.params)
        try:
            results[backend] = run_cell(model, case["x"], case["state"], case["lengths"],
                                        lambda y: case["dy"], lambda s: case["dstate"],
                                        case["clip_per_step"])
        except Exception as e:  # noqa: BLE001 - the point is to classify it
            assert_clear(e)
            errors[backend] = e
        assert_unchanged(model.params, before)
    # Both backends agree on whether the call is valid, and on the error's type.
    assert results.keys() == {"cpp", "numpy"} or not results, (results.keys(), errors)
    if errors:
        assert type(errors["cpp"]) is type(errors["numpy"]), errors
        return
    cpp, ref = results["cpp"], results["numpy"]
    assert cpp.keys() == ref.keys()
    for k in ref:
        assert cpp[k].dtype == np.dtype(case["dtype"]), k
        assert cpp[k].shape == ref[k].shape, k
    if finite_input(case["x"], case["state"], case["dy"], case["dstate"]) and \
            all(np.isfinite(v).all() for v in ref.values()):
        for k in ref:
            close(cpp[k], ref[k], case["dtype"], k)


# -- _core called directly, with arrays that disagree --------------------------------------

@st.composite
def core_case(draw):
    cell = draw(st.sampled_from(["rnn", "lstm", "gru"]))
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    B, T, D, H = (draw(st.integers(0, 3)) for _ in range(4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def arr(shape):
        shape = perturb(draw, shape)
        kind = draw(st.sampled_from(["ok"] * 10 + ["dtype", "fortran", "strided"]))
        a = rng.standard_normal(shape).astype(dtype)
        if kind == "dtype":
            a = a.astype(np.float64 if dtype == np.float32 else np.float32)
        elif kind == "fortran" and a.ndim >= 2:
            a = np.asfortranarray(a)
        elif kind == "strided" and a.ndim >= 1:
            a = np.repeat(a, 2, axis=0)[::2]
        return a

    names = {"x": (B, T, D), "h0": (B, H), "c0": (B, H), "y": (B, T, H),
             "w_ih": (G * H, D), "w_hh": (G * H, H), "b_ih": (G * H,), "b_hh": (G * H,),
             "dy": (B, T, H), "dh_n": (B, H), "dc_n": (B, H),
             "gates": (B, T, G * H) if cell != "gru" else (B, T, 3 * H), "c": (B, T, H),
             "a_hn": (B, T, H)}
    a = {k: arr(s) for k, s in names.items()}
    a["lengths"] = None if draw(st.booleans()) else np.asarray(
        [draw(st.integers(-1, T + 1)) for _ in range(draw(st.sampled_from([B, B, B, B + 1])))],
        dtype=np.int64)
    if draw(st.booleans()):
        a["b_ih"] = a["b_hh"] = None
    elif draw(st.integers(0, 9)) == 0:
        a["b_hh"] = None
    a["clip"] = draw(st.sampled_from([0.0, 0.5, -1.0, float("nan"), float("inf")]))
    a["norms"] = draw(st.booleans())
    a["reverse"] = draw(st.booleans())
    return cell, dtype, a


def _call_core(cell, a):
    if cell == "rnn":
        out = _core.rnn_forward(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                a["lengths"], "tanh", a["reverse"])
        back = _core.rnn_backward(a["x"], a["h0"], a["y"], a["w_ih"], a["w_hh"], a["b_ih"],
                                  a["b_hh"], a["lengths"], "tanh", a["dy"], a["dh_n"],
                                  clip_per_step=a["clip"], grad_norms=a["norms"],
                                  reverse=a["reverse"])
    elif cell == "lstm":
        out = _core.lstm_forward(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"],
                                 a["b_hh"], a["lengths"], a["reverse"])
        back = _core.lstm_backward(a["x"], a["h0"], a["c0"], a["y"], a["gates"], a["c"],
                                   a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["lengths"],
                                   a["dy"], a["dh_n"], a["dc_n"], clip_per_step=a["clip"],
                                   grad_norms=a["norms"], reverse=a["reverse"])
    else:
        out = _core.gru_forward(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                a["lengths"], a["reverse"])
        back = _core.gru_backward(a["x"], a["h0"], a["y"], a["gates"], a["a_hn"], a["w_ih"],
                                  a["w_hh"], a["b_ih"], a["b_hh"], a["lengths"], a["dy"],
                                  a["dh_n"], clip_per_step=a["clip"], grad_norms=a["norms"])
    return out, back


@fuzz
@given(core_case())
def test_fuzz_core_direct(case):
    """The compiled functions re-check every shape: mismatched arrays raise, never read out
    of bounds (the sanitizer build runs this too)."""
    cell, dtype, a = case
    with np.errstate(all="ignore"):
        try:
            _call_core(cell, a)
        except Exception as e:  # noqa: BLE001
            assert_clear(e)


# -- Linear ----------------------------------------------------------------------------------

@st.composite
def linear_case(draw):
    nd = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(0, 3)) for _ in range(nd - 1))
    fin, fout = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(arrays(perturb(draw, shape + (fin,))))
    dy = draw(arrays(perturb(draw, shape + (fout,)), special_rate=0.1))
    return (fin, fout, draw(st.booleans()), draw(st.sampled_from([np.float32, np.float64])),
            draw(st.booleans()), maybe_not_array(draw, x), dy)


@fuzz
@given(linear_case())
def test_fuzz_linear(case):
    fin, fout, bias, dtype, check, x, dy = case
    lin = rnnfast.Linear(fin, fout, bias=bias, dtype=dtype, seed=0, check_finite=check)
    before = snapshot(lin.params)
    try:
        y, cache = lin.forward(x)
        dx, grads = lin.backward(cache, dy)
    except Exception as e:  # noqa: BLE001
        assert_clear(e)
        assert_unchanged(lin.params, before)
        return
    assert_unchanged(lin.params, before)
    W = lin.params["weight"].astype(np.float64)
    x64 = np.asarray(x, dtype=dtype).astype(np.float64)
    dy64 = np.asarray(dy, dtype=dtype).astype(np.float64)
    assert y.dtype == dx.dtype == np.dtype(dtype)
    if finite_input(x, dy):
        with np.errstate(all="ignore"):
            ref_y = x64 @ W.T + (lin.params["bias"] if bias else 0)
            ref_dx = dy64 @ W
            ref_dw = dy64.reshape(-1, fout).T @ x64.reshape(-1, fin)
        for got, ref, name in ((y, ref_y, "y"), (dx, ref_dx, "dx"), (grads["weight"], ref_dw,
                                                                       "dweight")):
            if np.isfinite(ref).all() and np.abs(ref).max(initial=0) < 1e30:
                close(got, ref, dtype, name)


# -- losses ----------------------------------------------------------------------------------

def ref_cross_entropy(logits, targets, ignore_index, reduction, mask):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    counts = targets != ignore_index
    if mask is not None:
        counts &= mask
    safe = np.where(counts, targets, 0)
    picked = np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    loss = -picked[counts].sum()
    n = counts.sum()
    return loss / n if (reduction == "mean" and n) else (loss if n else 0.0)


@st.composite
def loss_case(draw):
    B, T, C = draw(st.integers(0, 3)), draw(st.integers(0, 4)), draw(st.integers(1, 4))
    three = draw(st.booleans())
    shape = (B, T, C) if three else (B, C)
    logits = maybe_not_array(draw, draw(arrays(perturb(draw, shape), special_rate=0.1)))
    tshape = perturb(draw, shape[:-1])
    targets = np.asarray(np.random.default_rng(draw(st.integers(0, 99))).integers(
        -1, C + 1, size=tshape))
    if draw(st.integers(0, 9)) == 0:
        targets = targets.astype(np.float64)
    lengths = None
    if three and draw(st.booleans()):
        lengths = np.asarray([draw(st.integers(0, T)) for _ in range(B)], dtype=np.int64)
    reduction = draw(st.sampled_from(["mean", "sum", "mean", "none"]))
    target_arr = draw(arrays(perturb(draw, shape), special_rate=0.1))
    return logits, targets, lengths, reduction, target_arr


@fuzz
@given(loss_case())
def test_fuzz_losses(case):
    logits, targets, lengths, reduction, target_arr = case
    # cross-entropy
    try:
        loss, d = losses.cross_entropy(logits, targets, ignore_index=-1, reduction=reduction,
                                       lengths=lengths)
    except Exception as e:  # noqa: BLE001
        assert_clear(e)
    else:
        assert d.shape == logits.shape and d.dtype.kind == "f"
        assert d.dtype.itemsize == logits.dtype.itemsize
        if finite_input(logits) and np.abs(np.asarray(logits, np.float64)).max(initial=0) < 1e4:
            mask = None
            if lengths is not None:
                mask = np.arange(logits.shape[1])[None] < lengths[:, None]
            ref = ref_cross_entropy(logits, targets, -1, reduction, mask)
            assert np.isclose(loss, ref, rtol=1e-3, atol=1e-3), (loss, ref)
    # mean-squared error
    try:
        loss, d = losses.mse(logits, target_arr, reduction=reduction, lengths=lengths)
    except Exception as e:  # noqa: BLE001
        assert_clear(e)
    else:
        assert d.shape == logits.shape
        if finite_input(logits, target_arr) and lengths is None:
            with np.errstate(all="ignore"):
                diff = (np.asarray(logits, np.float64) - np.asarray(target_arr, np.float64))
                ref = (diff ** 2).sum() / (diff.size if reduction == "mean" and diff.size else 1)
            if np.isfinite(ref) and ref < 1e30:
                assert np.isclose(loss, ref, rtol=1e-3, atol=1e-6), (loss, ref)
    # many-to-one
    try:
        last = losses.last_step(logits, lengths)
        losses.last_step_backward(last, lengths, logits.shape[1])
    except Exception as e:  # noqa: BLE001
        assert_clear(e)


# -- optimisers and clipping ------------------------------------------------------------------

OPTIMISERS = {
    "SGD": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "Adagrad": lambda p: optim.Adagrad(p, lr=0.1),
    "RMSprop": lambda p: optim.RMSprop(p, lr=0.01, momentum=0.5),
    "Adam": lambda p: optim.Adam(p, lr=0.01),
    "AdamW": lambda p: optim.AdamW(p, lr=0.01),
}


@st.composite
def grads_case(draw):
    params = {"a": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32),
              "c": np.ones((0, 2), np.float32)}
    grads = {}
    for k, p in params.items():
        g = draw(arrays(perturb(draw, p.shape), special_rate=0.1))
        grads[k] = maybe_not_array(draw, g)
    kind = draw(st.sampled_from(["ok"] * 6 + ["missing", "extra", "not_dict"]))
    if kind == "missing":
        grads.pop("b")
    elif kind == "extra":
        grads["z"] = np.ones(1)
    elif kind == "not_dict":
        grads = list(grads.values())
    return params, grads, draw(st.sampled_from(sorted(OPTIMISERS))), \
        draw(st.sampled_from([1.0, 1e-3, 0.0, -1.0, np.nan, np.inf, "1", None]))


@fuzz
@given(grads_case())
def test_fuzz_optimisers_and_clipping(case):
    params, grads, name, limit = case
    opt = OPTIMISERS[name](params)
    before = snapshot(params)
    try:
        opt.step(grads)
    except Exception as e:  # noqa: BLE001
        assert_clear(e)
        assert_unchanged(params, before)
        assert opt.step_count == 0
    else:
        assert opt.step_count == 1
        for k, p in params.items():
            assert p.dtype == np.float32 and p.shape == before[k].shape
            g32 = np.asarray(grads[k], np.float32)
            # finite, with room for momentum's sums, in the params' dtype
            if finite_input(g32) and np.abs(g32).max(initial=0) < 1e30:
                assert np.isfinite(p).all(), k
    for fn in (clip.clip_grad_norm, clip.clip_grad_value):
        g = {k: v.copy() if isinstance(v, np.ndarray) and v.flags.writeable else v
             for k, v in grads.items()} if isinstance(grads, dict) else grads
        try:
            out = fn(g, limit)
        except Exception as e:  # noqa: BLE001
            assert_clear(e)
        else:
            if fn is clip.clip_grad_value:
                for v in g.values():
                    assert not (np.abs(v) > limit).any()
            elif np.isfinite(out) and limit < np.inf:
                # float16 gradients are rescaled in float16 (subnormal near 1e-4)
                low = any(v.dtype.itemsize <= 2 for v in g.values())
                assert clip.global_norm(g) <= limit * (1 + (2e-2 if low else 1e-3)) + 1e-6


# -- the training loop -----------------------------------------------------------------------

@st.composite
def train_case(draw):
    B, T, D = draw(st.integers(0, 3)), draw(st.integers(0, 5)), 2
    cell = draw(st.sampled_from(sorted(CELLS)))
    loss = draw(st.sampled_from(list(rnnfast.train.LOSSES) + ["nope"]))
    x = maybe_not_array(draw, draw(arrays(perturb(draw, (B, T, D)), special_rate=0.1)))
    C = 3
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    if loss.startswith("cross_entropy"):
        tshape = (B,) if loss.endswith("_last") else (B, T)
        targets = rng.integers(0, C, size=perturb(draw, tshape))
    else:
        tshape = (B, C) if loss.endswith("_last") else (B, T, C)
        targets = rng.standard_normal(perturb(draw, tshape))
    lengths = None
    if draw(st.booleans()):
        lengths = np.asarray([draw(st.integers(0, T + 1)) for _ in range(B)], np.int64)
    k1 = draw(st.sampled_from([None, None, 1, 2, 0, 2.5]))
    k2 = draw(st.sampled_from([None, None, 3, 1]))
    return cell, x, targets, lengths, loss, k1, k2, draw(st.booleans())


@fuzz
@given(train_case())
def test_fuzz_train_sequence_and_fit(case):
    cell, x, targets, lengths, loss, k1, k2, use_fit = case
    cls, extra = CELLS[cell]
    model = rnnfast.Model(cls(2, 4, seed=0, **extra), rnnfast.Linear(4, 3, seed=1))
    opt = optim.SGD(model.params, lr=0.1)
    before = snapshot(model.params)
    try:
        if use_fit:
            data = (x, targets) if lengths is None else (x, targets, lengths)
            hist = rnnfast.fit(model, opt, data, epochs=1, batch_size=2, loss=loss, k1=k1,
                               k2=k2, progress=False)
            assert len(hist) == 1
        else:
            out = rnnfast.train_sequence(model, opt, x, targets, lengths, loss=loss, k1=k1,
                                         k2=k2)
            assert out["updates"] + out["skipped"] >= 0
    except Exception as e:  # noqa: BLE001
        assert_clear(e)
        if not use_fit:
            assert_unchanged(model.params, before)
    for k, v in model.params.items():
        assert np.isfinite(v).all(), k


# -- checkpoints -----------------------------------------------------------------------------

def _checkpoint_bytes(tmp_path_factory=None):
    model = rnnfast.Model(rnnfast.LSTM(2, 3, seed=0), rnnfast.Linear(3, 2, seed=1))
    opt = optim.Adam(model.params, lr=0.01)
    grads = {k: np.full_like(v, 0.1) for k, v in model.params.items()}
    opt.step(grads)
    buf = io.BytesIO()
    path = f"/tmp/rnnfast-fuzz-{os.getpid()}.npz"
    rnnfast.save(path, model, opt, step=3, epoch=1, metadata={"note": "fuzz"})
    with open(path, "rb") as f:
        buf.write(f.read())
    os.unlink(path)
    return buf.getvalue(), snapshot(model.params)


GOOD, GOOD_PARAMS = None, None


def good_checkpoint():
    global GOOD, GOOD_PARAMS
    if GOOD is None:
        GOOD, GOOD_PARAMS = _checkpoint_bytes()
    return GOOD, GOOD_PARAMS


@st.composite
def mutated(draw):
    data = bytearray(good_checkpoint()[0])
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "zero_run"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    else:
        i = draw(st.integers(0, len(data) - 1))
        data[i:i + draw(st.integers(1, 64))] = bytes(64)[:len(data[i:i + 64])]
    return bytes(data)


@fuzz
@given(mutated())
def test_fuzz_checkpoint_mutated_bytes(tmp_path_factory, data):
    """A mutated checkpoint loads as the original exactly (the mutation hit nothing that
    matters, e.g. a timestamp) or raises ValueError."""
    path = tmp_path_factory.getbasetemp() / "mutated.npz"
    path.write_bytes(data)
    try:
        ck = rnnfast.load(path)
    except ValueError as e:
        assert str(path) in str(e) or "checkpoint" in str(e)
        return
    _, params = good_checkpoint()
    for k, v in params.items():
        np.testing.assert_array_equal(ck.model.params[k], v, err_msg=k)
        assert ck.model.params[k].dtype == v.dtype


def test_fuzz_budget_is_fixed():
    """The settings CI relies on: fixed budget, derandomized, no deadline."""
    assert fuzz.derandomize and fuzz.deadline is None
    assert fuzz.max_examples == EXAMPLES
