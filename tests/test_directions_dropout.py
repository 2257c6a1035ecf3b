"""Bidirectional stacks and dropout between layers: what the parity tests (test_parity.py,
test_torch.py, test_threads.py) do not show: the reference's gradients through the reverse walk
and through dropout against finite differences, packed-sequence semantics of the reverse walk,
when dropout acts and how it repeats, and the refusals of the new arguments."""

import numpy as np
import pytest

import rnnfast
from support import CELLS, as_parts, make, numeric_grad, record, rel_err, run_step, state_like

EPS = 1e-6
TOL = 1e-6


def _finite_difference_check(model, x, state, lengths, train):
    """Every parameter, x and the initial state against central differences of
    L = sum(y * R) + sum(state_n * S), through ``forward`` (train: dropout with the masks
    fixed by restoring the generator before each pass) or the inference call."""
    rng = np.random.default_rng(12)
    packed = state if model.state_parts > 1 else state[0]
    y, _ = model(x, packed, lengths)
    R = rng.standard_normal(y.shape)
    S = tuple(rng.standard_normal(p.shape) for p in as_parts(state))
    start = model.rng_state

    def run():
        model.rng_state = start
        if train:
            y, state_n, cache = model.forward(x, packed, lengths)
        else:
            (y, state_n), cache = model(x, packed, lengths), None
        return y, state_n, cache

    def loss():
        y, state_n, _ = run()
        return float((y * R).sum() + sum((p * s).sum() for p, s in zip(as_parts(state_n), S)))

    _, _, cache = run() if train else model.forward(x, packed, lengths)
    if not train:  # the inference call and a forward without dropout are the same function
        assert model.dropout == 0
    dx, dstate0, grads = model.backward(cache, R, S if model.state_parts > 1 else S[0])
    checks = {name: (model.params[name], grads[name]) for name in model.params}
    checks["x"] = (x, dx)
    for i, (p, d) in enumerate(zip(as_parts(state), as_parts(dstate0))):
        checks[f"state[{i}]"] = (p, d)
    for name, (arr, analytic) in checks.items():
        numeric = numeric_grad(loss, arr, EPS)
        err = rel_err(analytic, numeric)
        record(f"gradcheck {type(model).__name__} directions/dropout", np.float64, err)
        assert err <= TOL, f"{name}: relative error {err:.3e}"


@pytest.mark.parametrize("dropout", [0.0, 0.4], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("lengths", [None, [5, 2, 0]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_gradients_bidirectional(cell, lengths, dropout):
    B, T, D, H, L = 3, 5, 2, 3, 2
    model = make(cell, D, H, L, backend="numpy", seed=4, bidirectional=True, dropout=dropout)
    for p in model.params.values():
        p *= 3.0  # gates away from their linear regime
    rng = np.random.default_rng(11)
    x = rng.standard_normal((B, T, D))
    state = tuple(p.copy() for p in as_parts(state_like(model, B, rng)))
    _finite_difference_check(model, x, state, lengths, train=dropout > 0)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("lengths", [None, [5, 2, 0]], ids=["full", "lengths"])
def test_reference_gradients_projection(lengths, bidirectional):
    B, T, D, H, L = 3, 5, 2, 4, 2
    model = make("lstm", D, H, L, backend="numpy", seed=5, proj_size=2,
                 bidirectional=bidirectional)
    for p in model.params.values():
        p *= 3.0
    rng = np.random.default_rng(13)
    x = rng.standard_normal((B, T, D))
    state = tuple(p.copy() for p in as_parts(state_like(model, B, rng)))
    _finite_difference_check(model, x, state, lengths, train=False)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", CELLS)
def test_reverse_walk_equals_each_sequence_reversed_alone(cell, backend):
    """Packed-sequence semantics: the reverse direction of sequence b reads steps
    lengths[b] - 1, ..., 0, as a forward layer reading that sequence reversed would."""
    rng = np.random.default_rng(5)
    B, T, D, H = 4, 7, 3, 5
    bi = make(cell, D, H, 1, seed=2, backend=backend, bidirectional=True)
    uni = make(cell, D, H, 1, seed=2, backend=backend)
    for name, p in uni.params.items():
        p[...] = bi.params[name + "_reverse"]
    x = rng.standard_normal((B, T, D))
    state = state_like(bi, B, rng)
    lengths = np.array([7, 3, 0, 5])
    y, state_n, _ = bi.forward(x, state, lengths)
    for b, n in enumerate(lengths):
        alone = tuple(p[1:2, b:b + 1] for p in as_parts(state))
        y_b, s_b = uni(x[b:b + 1, :n][:, ::-1], alone if len(alone) > 1 else alone[0])
        np.testing.assert_allclose(y[b, :n, H:], y_b[0, ::-1], rtol=1e-12, atol=1e-12)
        assert not y[b, n:].any(), "outputs past the length must be zero"
        for whole, part in zip(as_parts(state_n), as_parts(s_b)):
            np.testing.assert_allclose(whole[1, b], part[0, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_acts_in_forward_only_and_repeats_with_the_seed(cell, backend):
    B, T, D, H, L = 4, 6, 3, 8, 3
    x = np.random.default_rng(0).standard_normal((B, T, D))
    plain = make(cell, D, H, L, seed=9, backend=backend, bidirectional=True)
    model = make(cell, D, H, L, seed=9, backend=backend, bidirectional=True, dropout=0.5)
    for name, p in plain.params.items():  # dropout does not change the initial weights
        np.testing.assert_array_equal(model.params[name], p)
    y_plain, _ = plain(x)
    y_infer, _ = model(x)
    np.testing.assert_array_equal(y_infer, y_plain)  # inference never drops

    y1, _, cache1 = model.forward(x)
    y2, _, cache2 = model.forward(x)
    assert not np.array_equal(y1, y2), "each training pass draws new masks"
    # The masks: between layers only, scaled by 1 / (1 - p), about half of them zero.
    assert cache1.masks[-1] is None
    for mask in cache1.masks[:-1]:
        assert mask.shape == (B, T, 2 * H)
        assert set(np.unique(mask)) <= {0.0, 2.0}
        assert 0.3 < (mask == 0).mean() < 0.7
    assert cache1.nbytes > plain.forward(x)[2].nbytes  # the masks are kept

    again = make(cell, D, H, L, seed=9, backend=backend, bidirectional=True, dropout=0.5)
    np.testing.assert_array_equal(again.forward(x)[0], y1)  # the same seed, the same masks
    state = again.rng_state
    y_next = again.forward(x)[0]
    np.testing.assert_array_equal(y_next, y2)
    again.rng_state = state  # restoring the generator repeats the pass, bit for bit
    np.testing.assert_array_equal(again.forward(x)[0], y_next)


def test_dropout_with_one_layer_warns_as_torch():
    with pytest.warns(UserWarning, match="dropout=0.3 acts between layers.*num_layers=1"):
        rnnfast.GRU(3, 4, dropout=0.3)


@pytest.mark.parametrize("cell", CELLS)
def test_grad_norms_rows_follow_the_state_order(cell):
    B, T, D, H, L = 2, 5, 3, 4, 2
    model = make(cell, D, H, L, seed=1, bidirectional=True)
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((B, T, D)), np.zeros((B, T, 2 * H))
    dy[:, :, H:] = rng.standard_normal((B, T, H))  # a loss on the reverse outputs only
    out = run_step(model, x, None, None, dy, None, return_grad_norms=True)
    norms = out["norms"]
    assert norms.shape == (2 * L, T)
    assert not norms[2].any(), "layer 1 forward sees no gradient"
    assert norms[3].all() and norms[0].all() and norms[1].all()


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"bidirectional": 1}, TypeError, ["bidirectional must be True or False, got 1"]),
    ({"dropout": 1.0}, ValueError, ["dropout must be a float in [0, 1), got 1.0"]),
    ({"dropout": -0.1}, ValueError, ["dropout must be a float in [0, 1), got -0.1"]),
    ({"dropout": "0.5"}, TypeError, ["dropout must be a float in [0, 1), got str"]),
    ({"dropout": float("nan")}, ValueError, ["dropout must be a float in [0, 1), got nan"]),
    # every wrong argument is named, not only the first
    ({"hidden_size": 0, "dropout": 2.0, "bidirectional": "yes", "num_layers": 2.5}, TypeError,
     ["4 arguments are wrong", "hidden_size must be at least 1, got 0",
      "num_layers must be an int, got float", "bidirectional must be True or False",
      "dropout must be a float in [0, 1), got 2.0"]),
])
@pytest.mark.parametrize("cell", CELLS)
def test_constructor_refusals_name_everything_wrong(cell, kwargs, exc, words):
    args = {"input_size": 3, "hidden_size": 4, "num_layers": 2, **kwargs}
    cls, extra = CELLS[cell]
    with pytest.raises(exc) as info:
        cls(**args, **extra)
    for w in words:
        assert w in str(info.value), str(info.value)


@pytest.mark.parametrize("proj_size, exc, words", [
    (4, ValueError, "proj_size must lie in [0, hidden_size) = [0, 4), got 4"),
    (-1, ValueError, "proj_size must lie in [0, hidden_size) = [0, 4), got -1"),
    (2.0, TypeError, "proj_size must be an int, got float"),
    (True, TypeError, "proj_size must be an int, got bool"),
])
def test_projection_refusals(proj_size, exc, words):
    with pytest.raises(exc) as info:
        rnnfast.LSTM(3, 4, proj_size=proj_size)
    assert words in str(info.value)


def test_projection_state_shapes_are_named():
    model = rnnfast.LSTM(3, 4, num_layers=2, proj_size=2, dtype=np.float64)
    h, c = np.zeros((2, 5, 2)), np.zeros((2, 5, 4))
    y, (h_n, c_n) = model(np.zeros((5, 6, 3)), (h, c))
    assert y.shape == (5, 6, 2) and h_n.shape == (2, 5, 2) and c_n.shape == (2, 5, 4)
    with pytest.raises(ValueError, match=r"state\[0\] \(h\).*\(num_layers, B, proj_size\) = "
                                         r"\(2, 5, 2\), got \(2, 5, 4\)"):
        model(np.zeros((5, 6, 3)), (c, c))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\).*\(num_layers, B, hidden_size\)"):
        model(np.zeros((5, 6, 3)), (h, h))


def test_nonlinearity_is_named_with_the_rest():
    with pytest.raises(ValueError, match="2 arguments are wrong: nonlinearity must be 'tanh' or "
                                         "'relu', got 'gelu'; dropout must be"):
        rnnfast.RNN(3, 4, num_layers=2, nonlinearity="gelu", dropout=1.5)


@pytest.mark.parametrize("cell", CELLS)
def test_state_and_dy_shapes_name_the_directions(cell):
    B, T, D, H, L = 2, 3, 3, 4, 2
    model = make(cell, D, H, L, bidirectional=True)
    x = np.zeros((B, T, D))
    wrong = tuple(np.zeros((L, B, H)) for _ in range(model.state_parts))
    with pytest.raises(ValueError, match=r"state.*\(2 \* num_layers, B, hidden_size\): "
                                         r"bidirectional, "
                                         r"layer 0 forward, layer 0 reverse.*= \(4, 2, 4\), "
                                         r"got \(2, 2, 4\)"):
        model.forward(x, wrong if len(wrong) > 1 else wrong[0])
    _, _, cache = model.forward(x)
    with pytest.raises(ValueError, match=r"dy.*\(B, T, 2 \* hidden_size\): bidirectional.*"
                                         r"= \(2, 3, 8\), got \(2, 3, 4\)"):
        model.backward(cache, np.zeros((B, T, H)))


@pytest.mark.parametrize("cell", CELLS)
def test_config_and_repr_carry_the_new_arguments(cell):
    model = make(cell, 3, 4, 2, bidirectional=True, dropout=0.25)
    config = model.config()
    assert config["bidirectional"] is True and config["dropout"] == 0.25
    assert "bidirectional=True" in repr(model) and "dropout=0.25" in repr(model)
    again = rnnfast.checkpoint.build(config)
    assert again.params.keys() == model.params.keys()
    assert model.params["weight_ih_l1_reverse"].shape == (model.gates * 4, 8)
