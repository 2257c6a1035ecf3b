"""What the per-step fast paths must not change: ``params`` are read afresh at every call (a
replaced, reshaped or retyped array is seen, in forward and in backward), the zero states a
model keeps between calls never reach the user, and ``grads`` follows the order of ``params``."""

import numpy as np
import pytest

from support import CELLS, as_parts, make

B, T, D, H = 2, 5, 3, 4


@pytest.fixture(params=[(c, b, L) for c in CELLS for b in ("cpp", "numpy") for L in (1, 2)],
                ids=lambda p: f"{p[0]}-{p[1]}-L{p[2]}")
def model(request):
    cell, backend, L = request.param
    return make(cell, D, H, L, dtype=np.float32, backend=backend, seed=0)


def data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, T, D)).astype(np.float32),
            rng.standard_normal((B, T, H)).astype(np.float32))


def test_replaced_parameters_are_used_at_once(model):
    x, dy = data()
    y0, _, _ = model.forward(x)
    model.params["weight_hh_l0"] = 2 * model.params["weight_hh_l0"]  # a new array
    y1, _, cache = model.forward(x)
    assert not np.array_equal(y0, y1)
    _, _, grads = model.backward(cache, dy)
    config = {k: v for k, v in model.config().items() if k != "class"}
    twin = type(model)(**config, seed=0)
    twin.params["weight_hh_l0"][...] = model.params["weight_hh_l0"]
    y2, _, cache2 = twin.forward(x)
    _, _, grads2 = twin.backward(cache2, dy)
    np.testing.assert_array_equal(y1, y2)
    for k in grads:
        np.testing.assert_array_equal(grads[k], grads2[k], err_msg=k)


@pytest.mark.parametrize("change", ["shape", "dtype"])
@pytest.mark.parametrize("when", ["before forward", "between forward and backward"])
def test_parameter_changed_in_place_is_refused(model, change, when):
    x, dy = data()
    name = f"weight_hh_l{model.num_layers - 1}"
    a = model.params[name]
    shape, dtype = a.shape, a.dtype
    if when != "before forward":
        _, _, cache = model.forward(x)
    try:
        if change == "shape":
            a.shape = (a.size,)
            words = (f"params['{name}']", str(shape), f"({a.size},)")
        else:
            a.dtype = np.int32
            words = (f"params['{name}']", "float32", "int32")
        with pytest.raises(ValueError) as info:
            if when == "before forward":
                model.forward(x)
            else:
                model.backward(cache, dy)
        for w in words:
            assert w in str(info.value)
    finally:
        a.dtype, a.shape = dtype, shape


def test_returned_states_are_the_callers_own(model):
    """The zero initial state and dstate are kept read-only between calls; what forward and
    backward return is fresh and writable, and writing to it changes no later result."""
    x, dy = data()
    for steps in (T, 0):
        y, state, cache = model.forward(x[:, :steps])
        _, dstate0, _ = model.backward(cache, dy[:, :steps])
        for part in as_parts(state) + as_parts(dstate0):
            assert part.flags.writeable and part.flags.c_contiguous
            assert part.shape == (model.num_layers, B, H)
            part[...] = 7.0
    y0, state0, cache = model.forward(x)
    _, dstate00, _ = model.backward(cache, dy)
    for part in as_parts(state0):
        part[...] = 7.0
    y1, state1, cache = model.forward(x)
    _, dstate01, _ = model.backward(cache, dy)
    np.testing.assert_array_equal(y0, y1)
    for a, b in zip(as_parts(dstate00), as_parts(dstate01)):
        np.testing.assert_array_equal(a, b)
    assert not any(np.shares_memory(a, b) for a in as_parts(state0) for b in as_parts(state1))


def test_batch_size_may_change_between_calls(model):
    x, dy = data()
    for b in (B, 1, B, 3):
        xb = np.resize(x, (b, T, D))
        y, state, cache = model.forward(xb)
        assert y.shape == (b, T, H)
        dx, _, _ = model.backward(cache, np.resize(dy, (b, T, H)))
        assert dx.shape == (b, T, D)


def test_grads_follow_the_order_of_params(model):
    x, dy = data()
    _, _, cache = model.forward(x)
    _, _, grads = model.backward(cache, dy)
    assert list(grads) == list(model.params)
    for k, g in grads.items():
        assert g.shape == model.params[k].shape and g.dtype == model.params[k].dtype


def test_without_bias_grads_have_the_weights_only():
    for cell in CELLS:
        m = make(cell, D, H, 2, dtype=np.float32, bias=False)
        x, dy = data()
        _, _, cache = m.forward(x)
        _, _, grads = m.backward(cache, dy)
        assert list(grads) == list(m.params) == [
            f"{w}_l{k}" for k in range(2) for w in ("weight_ih", "weight_hh")]
