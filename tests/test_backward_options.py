"""backward's two per-step options: clip_per_step and return_grad_norms.

Both act on dL/dh_t, the total gradient reaching the hidden state at step t (from the output at
t plus from step t+1), inside the time loop of every layer, one sequence (batch row) at a time.
The compiled path is checked against the NumPy reference with the same tolerances as
test_parity.py: float64 <= 1e-10, float32 <= 1e-4 relative (against the float64 reference).
With clipping on, backward no longer returns the gradient of the loss, so there is no
finite-difference check of it here.
"""

import numpy as np
import pytest

import rnnfast
from rnnfast import _core, optim, reference
from support import CELLS, as_parts, cast_state, make, random_lengths, record, rel_err, \
    state_like

# (B, T, D, H, L, lengths, bias)
CONFIGS = [
    (1, 7, 2, 3, 1, "none", True),
    (3, 6, 4, 5, 1, "full", True),
    (5, 8, 3, 7, 3, "partial", True),
    (4, 9, 5, 6, 2, "partial", False),
    (16, 12, 10, 32, 2, "partial", True),
]
TOL = {np.float64: 1e-10, np.float32: 1e-4}


def _pair(cell, config, dtype):
    """The compiled model in ``dtype`` and the float64 reference with the very same weights."""
    B, T, D, H, L, _, bias = config
    fast = make(cell, D, H, L, dtype=dtype, backend="cpp", seed=1, bias=bias)
    ref = make(cell, D, H, L, dtype=np.float64, backend="numpy", seed=1, bias=bias)
    for name, p in fast.params.items():
        ref.params[name][...] = p
    return fast, ref


def _data(model, config, dtype, seed):
    """Inputs rounded to ``dtype``, with large dy so that gradients are worth clipping."""
    B, T, D, H, L, lengths_mode, _ = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    state = cast_state(state_like(model, B, rng), dtype)
    lengths = random_lengths(rng, B, T, lengths_mode)
    dy = (3 * rng.standard_normal((B, T, H))).astype(dtype)
    dstate = cast_state(state_like(model, B, rng, scale=2.0), dtype)
    return x, state, lengths, dy, dstate


def _backward(model, data, **options):
    """forward + backward with ``options``: every gradient as one dict (norms included)."""
    x, state, lengths, dy, dstate = data
    if model.dtype == np.float64:
        x, dy = x.astype(np.float64), dy.astype(np.float64)
        state, dstate = cast_state(state, np.float64), cast_state(dstate, np.float64)
    _, _, cache = model.forward(x, state, lengths)
    dx, dstate0, grads, *norms = model.backward(cache, dy, dstate, **options)
    out = {"dx": dx, **{f"d{k}": v for k, v in grads.items()}}
    for i, p in enumerate(as_parts(dstate0)):
        out[f"dstate0[{i}]"] = p
    if norms:
        out["grad_norms"] = norms[0]
    return out


def _threshold(ref, data):
    """A clip_per_step that bites: half the median of the non-zero unclipped norms."""
    norms = _backward(ref, data, return_grad_norms=True)["grad_norms"]
    return 0.5 * float(np.median(norms[norms > 0]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "B{}T{}D{}H{}L{}-{}-bias{}".format(*c))
@pytest.mark.parametrize("cell", CELLS)
def test_options_match_reference(cell, config, dtype):
    fast, ref = _pair(cell, config, dtype)
    data = _data(fast, config, dtype, seed=CONFIGS.index(config))
    clip = _threshold(ref, data)
    for options, check in [({"return_grad_norms": True}, "norms"),
                           ({"clip_per_step": clip, "return_grad_norms": True}, "clip")]:
        got, want = _backward(fast, data, **options), _backward(ref, data, **options)
        assert got.keys() == want.keys()
        assert got["grad_norms"].shape == (config[4], config[1])
        errors = {k: rel_err(got[k], want[k]) for k in want}
        for k, err in errors.items():
            record(f"{check} {cell} {k.split('_l')[0]}", dtype, err)
            assert got[k].dtype == dtype, k
        worst = max(errors, key=errors.get)
        assert errors[worst] <= TOL[dtype], f"{check}: worst {worst} rel err {errors[worst]:.3e}"

    # The threshold bites: clipping changed the gradients, in both implementations.
    for model in (fast, ref):
        plain = _backward(model, data)
        clipped = _backward(model, data, clip_per_step=clip)
        assert rel_err(clipped["dweight_hh_l0"], plain["dweight_hh_l0"]) > 1e-3
        assert rel_err(clipped["dx"], plain["dx"]) > 1e-3


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", CELLS)
def test_off_changes_nothing(cell, backend):
    """None is off and leaves the gradients bit for bit as they were; asking for norms, or a
    threshold never reached, changes them by rounding at most (the loop then forms dL/dh_t
    before multiplying by f', which FMA contraction may round differently)."""
    config = (4, 7, 3, 5, 2, "partial", True)
    model = make(cell, 3, 5, 2, dtype=np.float64, backend=backend, seed=4)
    data = _data(model, config, np.float64, seed=11)
    plain = _backward(model, data)
    for options in ({"clip_per_step": None}, {"return_grad_norms": True},
                    {"clip_per_step": 1e30, "return_grad_norms": True}):
        out = _backward(model, data, **options)
        out.pop("grad_norms", None)
        assert out.keys() == plain.keys()
        for k in plain:
            if options == {"clip_per_step": None}:
                np.testing.assert_array_equal(out[k], plain[k], err_msg=f"{options} {k}")
            else:
                np.testing.assert_allclose(out[k], plain[k], rtol=1e-12, atol=1e-15,
                                           err_msg=f"{options} {k}")


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", CELLS)
def test_norms_are_the_norms_of_dh_total(cell, backend):
    """At the top layer's last step, dL/dh_t = dy[:, T-1] + dstate[-1]: checkable by hand.
    Steps where no sequence runs report 0; a step's mean counts only the running ones."""
    rng = np.random.default_rng(3)
    B, T, D, H, L = 3, 6, 2, 4, 2
    model = make(cell, D, H, L, backend=backend, seed=5)
    x = rng.standard_normal((B, T, D))
    dy = rng.standard_normal((B, T, H))
    dstate = state_like(model, B, rng)
    dh_n = as_parts(dstate)[0]
    _, _, cache = model.forward(x)
    *_, norms = model.backward(cache, dy, dstate, return_grad_norms=True)
    want = np.linalg.norm(dy[:, T - 1] + dh_n[L - 1], axis=1).mean()
    np.testing.assert_allclose(norms[L - 1, T - 1], want, rtol=1e-13)
    assert (norms > 0).all()

    lengths = np.array([4, 2, 0])  # steps 4 and 5: nobody runs; steps 2, 3: one sequence
    _, _, cache = model.forward(x, lengths=lengths)
    *_, norms = model.backward(cache, dy, dstate, return_grad_norms=True)
    assert not norms[:, 4:].any()
    want = np.linalg.norm(dy[0, 3] + dh_n[L - 1, 0])  # sequence 0's last valid step: alone
    np.testing.assert_allclose(norms[L - 1, 3], want, rtol=1e-13)
    assert (norms[:, :4] > 0).all()


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", CELLS)
def test_core_norms_are_per_sequence_and_zero_past_length(cell, backend):
    """The layer functions return (B, T) norms, 0 at steps past each sequence's length; the
    model's (L, T) is their mean over the running sequences."""
    rng = np.random.default_rng(8)
    B, T, D, H = 3, 5, 2, 4
    model = make(cell, D, H, 1, backend=backend, seed=6)
    x = rng.standard_normal((B, T, D))
    dy = rng.standard_normal((B, T, H))
    lengths = np.array([5, 3, 1])
    _, _, cache = model.forward(x, lengths=lengths)
    *_, norms = model.backward(cache, dy, return_grad_norms=True)
    xl, s0, y, saved = cache.layers[0]
    p = model._layer_params()[0]
    step = {"clip_per_step": 0.0, "grad_norms": True}
    *_, per_seq = model._layer_backward(xl, s0, y, saved, p, cache.lengths, dy,
                                        tuple(np.zeros_like(s) for s in s0), step, False)
    assert per_seq.shape == (B, T)
    running = np.arange(T) < lengths[:, None]
    assert not per_seq[~running].any() and (per_seq[running] > 0).all()
    np.testing.assert_allclose(norms[0], per_seq.sum(0) / running.sum(0), rtol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_clipping_is_per_sequence(cell):
    """A sequence's clipped gradient does not depend on what else is in the batch."""
    rng = np.random.default_rng(9)
    B, T, D, H, L = 4, 6, 3, 5, 2
    model = make(cell, D, H, L, seed=7)
    x = rng.standard_normal((B, T, D))
    dy = 3 * rng.standard_normal((B, T, H))
    dy[1] *= 100  # one sequence with far larger gradients than the others
    lengths = np.array([6, 6, 4, 5])
    _, _, cache = model.forward(x, lengths=lengths)
    dx, _, _ = model.backward(cache, dy, clip_per_step=0.5)
    for b in range(B):
        _, _, cache_b = model.forward(x[b:b + 1], lengths=lengths[b:b + 1])
        dx_b, _, _ = model.backward(cache_b, dy[b:b + 1], clip_per_step=0.5)
        np.testing.assert_allclose(dx[b], dx_b[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu"])
def test_clipping_acts_inside_the_loop(cell, backend):
    """Loss at the last step only. There dL/dh_t is clipped to norm c, so what reaches step
    t-1 is (f'(a_t) ⊙ clipped) W_hh, of norm at most ||W_hh||_2 c (|f'| <= 1): the norms
    reported for the earlier steps (before their own clipping) show it."""
    rng = np.random.default_rng(10)
    B, T, D, H = 3, 6, 3, 5
    model = make(cell, D, H, 1, seed=8, backend=backend)
    model.params["weight_hh_l0"] *= 3  # gradients that grow back in time
    dy = np.zeros((B, T, H))
    dy[:, -1] = 10 * rng.standard_normal((B, H))
    _, _, cache = model.forward(rng.standard_normal((B, T, D)))
    *_, free = model.backward(cache, dy, return_grad_norms=True)
    c = 0.1
    *_, clipped = model.backward(cache, dy, clip_per_step=c, return_grad_norms=True)
    bound = np.linalg.norm(model.params["weight_hh_l0"], 2) * c
    assert clipped[0, -1] == free[0, -1] > c  # the last step's norm is taken before clipping
    assert (clipped[0, :-1] <= bound * (1 + 1e-12)).all(), (clipped, bound)
    assert (free[0, :-1] > bound).any()  # without clipping the bound does not hold


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_bad_clip_per_step_is_refused(bad, backend):
    model = make("gru", 2, 3, backend=backend)
    _, _, cache = model.forward(np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="clip_per_step must be a positive finite float"):
        model.backward(cache, np.zeros((1, 2, 3)), clip_per_step=bad)
    for wrong in ("1.0", True, [1.0]):
        with pytest.raises(TypeError, match="clip_per_step"):
            model.backward(cache, np.zeros((1, 2, 3)), clip_per_step=wrong)


def test_layer_functions_refuse_non_finite_threshold():
    """The compiled and reference layer functions: 0 or negative is off, NaN/Inf refused."""
    rng = np.random.default_rng(0)
    x, h0 = rng.standard_normal((2, 3, 4)), np.zeros((2, 5))
    w_ih, w_hh = rng.standard_normal((5, 4)), 0.1 * rng.standard_normal((5, 5))
    y, _ = _core.rnn_forward(x, h0, w_ih, w_hh, None, None, None, "tanh")
    dy = rng.standard_normal(y.shape)
    args = (x, h0, y, w_ih, w_hh, None, None, None, "tanh", dy, h0)
    for impl in (_core, reference):
        plain = impl.rnn_backward(*args)
        off = impl.rnn_backward(*args, -1.0, False)
        for a, b in zip(plain, off):
            assert (a is None and b is None) or np.array_equal(a, b)
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="clip_per_step must be finite"):
                impl.rnn_backward(*args, bad, True)
    assert len(_core.rnn_backward(*args, 0.0, True)) == 7


def test_vanishing_and_non_vanishing_gradients():
    """Loss at the last step only. A tanh RNN whose weight_hh has spectral norm 0.5 loses at
    least half of the gradient's norm per step back (|tanh'| <= 1); an identity-initialised
    ReLU RNN with positive inputs keeps every unit active and passes it back unchanged."""
    rng = np.random.default_rng(1)
    B, T, D, H = 4, 20, 3, 16
    dy = np.zeros((B, T, H))
    dy[:, -1] = rng.standard_normal((B, H))

    tanh = make("rnn_tanh", D, H, seed=2)
    w = tanh.params["weight_hh_l0"]
    w *= 0.5 / np.linalg.norm(w, 2)
    _, _, cache = tanh.forward(rng.standard_normal((B, T, D)))
    *_, norms = tanh.backward(cache, dy, return_grad_norms=True)
    n = norms[0]
    assert (n[:-1] <= 0.5 * n[1:] * (1 + 1e-12)).all(), n
    assert n[0] < 1e-5 * n[-1]

    relu = make("rnn_relu", D, H, seed=3)
    relu.params["weight_hh_l0"][...] = np.eye(H)
    relu.params["weight_ih_l0"][...] = np.abs(relu.params["weight_ih_l0"])
    relu.params["bias_ih_l0"][...] = 0
    relu.params["bias_hh_l0"][...] = 0
    _, _, cache = relu.forward(rng.uniform(0.1, 1.0, (B, T, D)))
    *_, norms = relu.backward(cache, dy, return_grad_norms=True)
    np.testing.assert_allclose(norms[0], norms[0, -1], rtol=1e-12)


def test_model_backward_forwards_options():
    rng = np.random.default_rng(2)
    model = rnnfast.Model(make("lstm", 3, 4, 2, seed=1), rnnfast.Linear(4, 5, dtype=np.float64,
                                                                      seed=1))
    x = rng.standard_normal((2, 6, 3))
    logits, _, cache = model.forward(x)
    dlogits = rng.standard_normal(logits.shape)
    dx, dstate0, grads, norms = model.backward(cache, dlogits, clip_per_step=0.1,
                                               return_grad_norms=True)
    assert norms.shape == (2, 6) and norms.dtype == np.float64
    plain = model.backward(cache, dlogits)
    assert len(plain) == 3
    assert not np.allclose(plain[0], dx)
    np.testing.assert_array_equal(plain[2]["readout.weight"], grads["readout.weight"])


def test_fit_with_per_step_clipping_runs():
    rng = np.random.default_rng(4)
    V, N, T = 5, 12, 8
    x = np.eye(V, dtype=np.float32)[rng.integers(0, V, (N, T))]
    targets = rng.integers(0, V, (N, T))
    model = rnnfast.Model(rnnfast.GRU(V, 8, seed=0), rnnfast.Linear(8, V, seed=0))
    before = {k: v.copy() for k, v in model.params.items()}
    hist = rnnfast.fit(model, optim.Adam(model.params, lr=0.01), (x, targets), epochs=2,
                       batch_size=4, k1=4, progress=False,
                       backward_options={"clip_per_step": 1.0})
    assert len(hist) == 2 and all(np.isfinite(r["loss"]) for r in hist)
    assert hist[0]["updates"] == 6 and hist[0]["skipped"] == 0
    assert any(not np.array_equal(before[k], v) for k, v in model.params.items())
    with pytest.raises(ValueError, match="return_grad_norms"):
        rnnfast.fit(model, optim.SGD(model.params), (x, targets), progress=False,
                    backward_options={"return_grad_norms": True})
