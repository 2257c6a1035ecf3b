"""The gated cells (LSTM, GRU) pinned to their equations.

- The finite-difference checks (tests/test_gradcheck.py) make each reference consistent with
  itself; the hand-computed values here make it the right function.
- B = T = D = H = 1 values worked out here from DESIGN.md's equations with scalar math (σ as
  1 / (1 + exp(-a)), not the library's tanh form), on both backends.
- Saturating inputs stay finite in float32; the cache is the size the docstrings say.
"""

import math

import numpy as np
import pytest

import rnnfast
from support import as_parts, make, state_like

GATED = ["lstm", "gru"]


# -- values by hand -----------------------------------------------------------------------------

def _sig(a):
    return 1.0 / (1.0 + math.exp(-a))


def _scalar_model(cls, backend, w_ih, w_hh, b_ih, b_hh):
    model = cls(1, 1, dtype=np.float64, backend=backend)
    model.params["weight_ih_l0"][:, 0] = w_ih
    model.params["weight_hh_l0"][:, 0] = w_hh
    model.params["bias_ih_l0"][:] = b_ih
    model.params["bias_hh_l0"][:] = b_hh
    return model


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_lstm_by_hand(backend):
    # Rows in the order i, f, g, o.
    w_ih, w_hh = [0.5, -0.3, 0.8, 0.1], [0.2, 0.4, -0.6, 0.7]
    b_ih, b_hh = [0.1, 0.2, -0.1, 0.05], [-0.2, 0.3, 0.15, 0.0]
    model = _scalar_model(rnnfast.LSTM, backend, w_ih, w_hh, b_ih, b_hh)
    xs, h, c = [0.7, -1.2], 0.3, -0.5
    h0, c0 = h, c
    want_y, steps = [], []
    for x in xs:
        a = [w_ih[k] * x + b_ih[k] + w_hh[k] * h + b_hh[k] for k in range(4)]
        i, f, g, o = _sig(a[0]), _sig(a[1]), math.tanh(a[2]), _sig(a[3])
        c_prev = c
        c = f * c + i * g
        h = o * math.tanh(c)
        want_y.append(h)
        steps.append((i, f, g, o, c_prev, c))

    y, (h_n, c_n), cache = model.forward(np.array([[[v] for v in xs]]),
                                         (np.full((1, 1, 1), h0), np.full((1, 1, 1), c0)))
    np.testing.assert_allclose(y[0, :, 0], want_y, rtol=1e-13)
    np.testing.assert_allclose([h_n.item(), c_n.item()], [h, c], rtol=1e-13)

    # L = c_2 alone. c_0 reaches c_2 along the carousel c_0 -> c_1 -> c_2 (factors f_1 f_2)
    # and through h_1 = o_1 tanh(c_1), which feeds step 2's gates via W_hh.
    _, (_, dc0), _ = model.backward(cache, np.zeros_like(y),
                                    (np.zeros((1, 1, 1)), np.ones((1, 1, 1))))
    (_, f1, _, o1, _, c1), (i2, f2, g2, _, _, _) = steps
    dc2_dh1 = (i2 * (1 - i2) * g2 * w_hh[0] + f2 * (1 - f2) * c1 * w_hh[1]
               + i2 * (1 - g2 * g2) * w_hh[2])
    dh1_dc1 = o1 * (1 - math.tanh(c1) ** 2)
    np.testing.assert_allclose(dc0.item(), (f2 + dc2_dh1 * dh1_dc1) * f1, rtol=1e-13)
    # One step, L = c_1: the bias gradients by hand.
    one, _, cache1 = model.forward(np.array([[[xs[0]]]]),
                                   (np.full((1, 1, 1), h0), np.full((1, 1, 1), c0)))
    _, _, g1 = model.backward(cache1, np.zeros_like(one),
                              (np.zeros((1, 1, 1)), np.ones((1, 1, 1))))
    i, f, g, o, c_prev, _ = steps[0]
    # c_1 = f c_0 + i g  =>  dc_1/d(b_i, b_f, b_g, b_o) = (i(1-i) g, f(1-f) c_0, i(1-g²), 0)
    np.testing.assert_allclose(g1["bias_ih_l0"], [i * (1 - i) * g, f * (1 - f) * c_prev,
                                                  i * (1 - g * g), 0.0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g1["bias_hh_l0"], g1["bias_ih_l0"], rtol=0, atol=0)


def _gru_step(x, h, w_ih, w_hh, b_ih, b_hh, variant="pytorch"):
    r = _sig(w_ih[0] * x + b_ih[0] + w_hh[0] * h + b_hh[0])
    z = _sig(w_ih[1] * x + b_ih[1] + w_hh[1] * h + b_hh[1])
    if variant == "pytorch":  # r multiplies W_hn h + b_hn
        n = math.tanh(w_ih[2] * x + b_ih[2] + r * (w_hh[2] * h + b_hh[2]))
    else:  # Cho et al.: r multiplies h before W_hn
        n = math.tanh(w_ih[2] * x + b_ih[2] + w_hh[2] * (r * h) + b_hh[2])
    return (1 - z) * n + z * h, (r, z, n)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_gru_by_hand(backend):
    # Rows in the order r, z, n; b_hn = 0.9 so that where r is applied shows in the result.
    w_ih, w_hh = [0.6, -0.4, 1.1], [-0.5, 0.3, 0.9]
    b_ih, b_hh = [0.2, -0.1, 0.3], [0.1, 0.25, 0.9]
    model = _scalar_model(rnnfast.GRU, backend, w_ih, w_hh, b_ih, b_hh)
    xs, h0 = [0.7, -1.2], 0.4
    h, want_y, cho = h0, [], h0
    for x in xs:
        h, _ = _gru_step(x, h, w_ih, w_hh, b_ih, b_hh)
        cho, _ = _gru_step(x, cho, w_ih, w_hh, b_ih, b_hh, variant="cho")
        want_y.append(h)
    assert abs(cho - h) > 1e-2  # the two variants really differ here

    y, h_n, _ = model.forward(np.array([[[v] for v in xs]]), np.full((1, 1, 1), h0))
    np.testing.assert_allclose(y[0, :, 0], want_y, rtol=1e-13)
    np.testing.assert_allclose(h_n.item(), h, rtol=1e-13)

    # One step, L = h_1: every path from h0 and both n biases, by hand.
    y1, _, cache = model.forward(np.array([[[xs[0]]]]), np.full((1, 1, 1), h0))
    _, dh0, grads = model.backward(cache, np.zeros_like(y1), np.ones((1, 1, 1)))
    _, (r, z, n) = _gru_step(xs[0], h0, w_ih, w_hh, b_ih, b_hh)
    a_hn = w_hh[2] * h0 + b_hh[2]
    dn = (1 - z) * (1 - n * n)  # dh_1 / d(a_in)
    dh0_want = (z                                           # h_1 = ... + z h_0
                + (h0 - n) * z * (1 - z) * w_hh[1]          # through z
                + dn * r * w_hh[2]                          # through W_hn h_0
                + dn * a_hn * r * (1 - r) * w_hh[0])        # through r
    np.testing.assert_allclose(dh0.item(), dh0_want, rtol=1e-13)
    np.testing.assert_allclose(grads["bias_ih_l0"][2], dn, rtol=1e-13)  # b_in: directly
    np.testing.assert_allclose(grads["bias_hh_l0"][2], dn * r, rtol=1e-13)  # b_hn: through r


# -- numerics and memory --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", GATED)
def test_saturated_gates_stay_finite_in_float32(cell, backend):
    """Pre-activations of ±1e4 would overflow exp in float32; σ and its gradient must not."""
    model = make(cell, 2, 3, 2, dtype=np.float32, backend=backend, seed=0)
    for p in model.params.values():
        p *= 100.0
    x = np.array([[[100.0, -100.0], [-100.0, 100.0], [50.0, 50.0]]] * 2, np.float32)
    y, state, cache = model.forward(x, None, np.array([3, 2]))
    dx, dstate0, grads = model.backward(cache, np.ones_like(y))
    for a in (y, dx, *as_parts(state), *as_parts(dstate0), *grads.values()):
        assert np.isfinite(a).all()
    assert np.abs(y).max() <= 1.0


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", GATED)
def test_cache_holds_what_the_docstring_says(cell, backend):
    B, T, D, H, L = 3, 5, 4, 6, 2
    model = make(cell, D, H, L, dtype=np.float32, backend=backend)
    x = np.zeros((B, T, D), np.float32)
    _, _, cache = model.forward(x)
    per_unit = {"lstm": 5, "gru": 4}[cell]
    assert model.saved_per_step == per_unit
    for _, _, y, saved in cache.layers:
        assert sum(a.nbytes for a in saved) == per_unit * B * T * H * 4
    state_bytes = model.state_parts * L * B * H * 4
    assert cache.nbytes == x.nbytes + state_bytes + L * (1 + per_unit) * B * T * H * 4


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)], ids=["B0", "T0"])
@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", GATED)
def test_empty_batch_or_sequence(cell, backend, shape):
    B, T = shape
    model = make(cell, 2, 3, 2, backend=backend)
    state = state_like(model, B, np.random.default_rng(0))
    y, state_n, cache = model.forward(np.zeros((B, T, 2)), state)
    assert y.shape == (B, T, 3)
    for a, b in zip(as_parts(state_n), as_parts(state)):
        np.testing.assert_array_equal(a, b)  # no step taken: the state is unchanged
    dstate = state_like(model, B, np.random.default_rng(1))
    dx, dstate0, grads = model.backward(cache, np.zeros((B, T, 3)), dstate)
    assert dx.shape == (B, T, 2)
    for a, b in zip(as_parts(dstate0), as_parts(dstate)):
        np.testing.assert_array_equal(a, b)
    for g in grads.values():
        assert not g.any()


# -- the compiled functions called directly ---------------------------------------------------

def test_core_checks_gated_shapes_itself():
    from rnnfast import _core
    B, T, D, H = 2, 3, 4, 5
    x, h0 = np.zeros((B, T, D)), np.zeros((B, H))
    lstm_w = (np.zeros((4 * H, D)), np.zeros((4 * H, H)))
    gru_w = (np.zeros((3 * H, D)), np.zeros((3 * H, H)))
    with pytest.raises(ValueError, match=r"c0 must have shape \(2, 5\), got \(3, 5\)"):
        _core.lstm_forward(x, h0, np.zeros((3, H)), *lstm_w, None, None, None)
    with pytest.raises(ValueError, match=r"weight_hh must have shape \(20, 5\), got \(15, 5\)"):
        _core.lstm_forward(x, h0, h0, lstm_w[0], gru_w[1], None, None, None)
    y, h_n, c_n, gates, c = _core.lstm_forward(x, h0, h0, *lstm_w, None, None, None)
    with pytest.raises(ValueError, match=r"gates must have shape \(2, 3, 20\), got \(2, 3, 5\)"):
        _core.lstm_backward(x, h0, h0, y, c, c, *lstm_w, None, None, None, y, h_n, c_n)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 3\], got 4"):
        _core.gru_forward(x, h0, *gru_w, None, None, np.array([4, 1]))
    y, h_n, gates, a_hn = _core.gru_forward(x, h0, *gru_w, None, None, None)
    with pytest.raises(ValueError, match=r"a_hn must have shape \(2, 3, 5\), got \(2, 3, 15\)"):
        _core.gru_backward(x, h0, y, gates, gates, *gru_w, None, None, None, y, h_n)
    with pytest.raises(TypeError):  # float32 weights with float64 x: no overload, no copy
        _core.gru_forward(x, h0, gru_w[0].astype(np.float32), gru_w[1], None, None, None)
