"""Bad input gets a clear Python exception naming the argument, never a crash, and leaves the
parameters exactly as they were. Every case runs on both backends and every cell."""

import numpy as np
import pytest

import rnnfast
from rnnfast import _core
from support import CELLS, as_parts, make

B, T, D, H, L = 3, 4, 2, 5, 2


@pytest.fixture(params=[(c, b) for c in CELLS for b in ("cpp", "numpy")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def model(request):
    cell, backend = request.param
    m = make(cell, D, H, L, dtype=np.float32, backend=backend, seed=0)
    before = {k: v.copy() for k, v in m.params.items()}
    yield m
    assert m.params.keys() == before.keys()
    for k in before:  # whatever failed, the parameters are untouched
        np.testing.assert_array_equal(m.params[k], before[k], err_msg=k)


def x_ok(dtype=np.float32, shape=(B, T, D)):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def state_ok(model, b=B, layers=L, dtype=np.float32):
    parts = tuple(np.zeros((layers, b, H), dtype) for _ in range(model.state_parts))
    return parts[0] if len(parts) == 1 else parts


def raises(exc, *words):
    """pytest.raises whose message must contain every one of ``words``."""
    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *a):
            out = self.ctx.__exit__(*a)
            msg = str(self.info.value)
            for w in words:
                assert w in msg, f"{w!r} not in message: {msg}"
            return out
    return _Ctx()


# -- x ----------------------------------------------------------------------------------------

def test_x_wrong_ndim(model):
    with raises(ValueError, "x", "3-D", "2-D"):
        model.forward(x_ok()[0])


def test_x_wrong_features(model):
    with raises(ValueError, "x", "input_size = 2", "(3, 4, 7)"):
        model.forward(x_ok(shape=(B, T, 7)))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex64, object])
def test_x_non_float_dtype(model, dtype):
    with raises(TypeError, "x", "floating", np.dtype(dtype).name):
        model.forward(np.zeros((B, T, D), dtype=dtype))


def test_x_list(model):
    with raises(TypeError, "x", "numpy.ndarray", "list"):
        model.forward(x_ok().tolist())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_x_non_finite(model, bad):
    x = x_ok()
    x[1, 2, 0] = bad
    with raises(ValueError, "x", "non-finite", "(1, 2, 0)", "check_finite=False"):
        model.forward(x)


def test_non_finite_check_can_be_switched_off(model):
    model.check_finite = False
    x = x_ok()
    x[0, 0, 0] = np.nan
    y, _ = model(x)
    assert np.isnan(y[0]).any() and np.isfinite(y[1:]).all()


def test_huge_finite_x_is_not_mistaken_for_inf(model):
    x = np.full((B, T, D), 3e38, np.float32)  # its sum overflows, its elements do not
    y, _ = model(x)
    assert y.shape == (B, T, H)


@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed", "big-endian", "float16",
                                    "float64"])
def test_x_other_layouts_and_float_dtypes_are_accepted(model, layout):
    x = x_ok(np.float64)
    variants = {
        "fortran": np.asfortranarray(x),
        "strided": np.repeat(x, 2, axis=1)[:, ::2],
        "reversed": x[:, ::-1].copy()[:, ::-1],
        "big-endian": x.astype(">f4"),
        "float16": x.astype(np.float16),
        "float64": x,
    }
    given = variants[layout]
    want, _ = model(np.ascontiguousarray(given, dtype=np.float32))
    got, _ = model(given)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_empty_batch_and_empty_sequence(model):
    y, state, cache = model.forward(np.zeros((0, T, D), np.float32))
    assert y.shape == (0, T, H)
    assert all(p.shape == (L, 0, H) for p in as_parts(state))
    dx, dstate0, grads = model.backward(cache, np.zeros((0, T, H), np.float32))
    assert dx.shape == (0, T, D) and all(not g.any() for g in grads.values())

    s0 = state_ok(model)
    s0 = tuple(p + 0.25 for p in as_parts(s0))
    s0 = s0[0] if len(s0) == 1 else s0
    y, state, cache = model.forward(np.zeros((B, 0, D), np.float32), s0)
    assert y.shape == (B, 0, H)
    for got, given in zip(as_parts(state), as_parts(s0)):  # T = 0 leaves the state as it was
        np.testing.assert_array_equal(got, given)
    ds = tuple(np.ones_like(p) for p in as_parts(s0))
    dx, dstate0, grads = model.backward(cache, np.zeros((B, 0, H), np.float32),
                                        ds[0] if len(ds) == 1 else ds)
    assert dx.shape == (B, 0, D)
    for got in as_parts(dstate0):
        np.testing.assert_array_equal(got, 1.0)
    assert all(not g.any() for g in grads.values())


def test_too_large_to_allocate(model):
    huge = np.broadcast_to(np.float32(0), (2**22, 2**22, D))  # a view: costs no memory
    with raises(MemoryError, "forward", "GiB"):
        model.forward(huge)


def test_too_large_model():
    with raises(MemoryError, "hidden_size=4294967296", "GiB"):
        rnnfast.RNN(4, 2**32)


# -- state ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers,batch", [(L + 1, B), (L, B + 1), (1, B)])
def test_state_wrong_shape(model, layers, batch):
    with raises(ValueError, "state", "(num_layers, B, hidden_size)", f"({L}, {B}, {H})",
                f"({layers}, {batch}, {H})"):
        model.forward(x_ok(), state_ok(model, batch, layers))


def test_state_non_finite(model):
    s = as_parts(state_ok(model))
    s[-1][0, 0, 0] = np.nan
    with raises(ValueError, "state", "non-finite"):
        model.forward(x_ok(), s[0] if len(s) == 1 else s)


def test_state_wrong_type(model):
    if model.state_parts == 1:
        with raises(TypeError, "state", "numpy.ndarray", "list"):
            model.forward(x_ok(), state_ok(model).tolist())
    else:
        with raises(TypeError, "state", "tuple (h, c)"):
            model.forward(x_ok(), as_parts(state_ok(model))[0])


def test_state_int_dtype(model):
    s = tuple(p.astype(np.int32) for p in as_parts(state_ok(model)))
    with raises(TypeError, "state", "floating", "int32"):
        model.forward(x_ok(), s[0] if len(s) == 1 else s)


# -- lengths ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths,exc,words", [
    ([4, 5, 1], ValueError, ("lengths", "[0, 4]", "5", "index 1")),
    ([4, -1, 1], ValueError, ("lengths", "[0, 4]", "-1")),
    ([4, 4], ValueError, ("lengths", "(3,)", "(2,)")),
    ([[4, 4, 4]], ValueError, ("lengths", "(3,)", "(1, 3)")),
    ([4.0, 2.0, 1.0], TypeError, ("lengths", "integers", "float64")),
    ([True, True, False], TypeError, ("lengths", "integers", "bool")),
    ("abc", TypeError, ("lengths", "integers")),
])
def test_bad_lengths(model, lengths, exc, words):
    with raises(exc, *words):
        model.forward(x_ok(), None, lengths)


# -- backward ---------------------------------------------------------------------------------

def test_dy_wrong_shape(model):
    y, _, cache = model.forward(x_ok())
    with raises(ValueError, "dy", "(B, T, hidden_size)", f"({B}, {T}, {H})", f"({B}, {T - 1}, {H})"):
        model.backward(cache, np.zeros((B, T - 1, H), np.float32))


def test_dy_non_finite(model):
    y, _, cache = model.forward(x_ok())
    dy = np.ones_like(y)
    dy[0, 0, 0] = np.inf
    with raises(ValueError, "dy", "non-finite"):
        model.backward(cache, dy)


def test_dstate_wrong_shape(model):
    _, _, cache = model.forward(x_ok())
    with raises(ValueError, "dstate", f"({L}, {B}, {H})"):
        model.backward(cache, np.zeros((B, T, H), np.float32), state_ok(model, B + 1))


def test_cache_from_another_model(model):
    other = make(next(iter(CELLS)), D, H, L, dtype=np.float32, seed=0)
    _, _, cache = other.forward(x_ok())
    with raises(ValueError, "cache", "another model"):
        model.backward(cache, np.zeros((B, T, H), np.float32))


def test_cache_not_a_cache(model):
    with raises(TypeError, "cache", "ForwardCache", "dict"):
        model.backward({}, np.zeros((B, T, H), np.float32))


# -- parameters and constructor -----------------------------------------------------------------

def test_replaced_parameter_of_wrong_shape_is_refused(model):
    name = "weight_hh_l1"
    good = model.params[name]
    model.params[name] = np.zeros((good.shape[0], good.shape[1] + 1), np.float32)
    try:
        with raises(ValueError, f"params['{name}']", str(good.shape), "float32"):
            model.forward(x_ok())
    finally:
        model.params[name] = good


def test_replaced_parameter_of_wrong_dtype_is_refused(model):
    name = "weight_ih_l0"
    good = model.params[name]
    model.params[name] = good.astype(np.float64)
    try:
        with raises(ValueError, f"params['{name}']", "float64"):
            model.forward(x_ok())
    finally:
        model.params[name] = good


@pytest.mark.parametrize("kwargs,exc,words", [
    ({"input_size": 0}, ValueError, ("input_size", "at least 1", "0")),
    ({"hidden_size": 2.0}, TypeError, ("hidden_size", "int", "float")),
    ({"num_layers": True}, TypeError, ("num_layers", "int", "bool")),
    ({"dtype": np.int32}, TypeError, ("dtype", "float32", "int32")),
    ({"dtype": "banana"}, TypeError, ("dtype", "banana")),
    ({"backend": "gpu"}, ValueError, ("backend", "'cpp'", "'gpu'")),
    ({"bias": "yes"}, TypeError, ("bias", "'yes'")),
])
@pytest.mark.parametrize("cell", CELLS)
def test_bad_constructor_arguments(cell, kwargs, exc, words):
    cls, extra = CELLS[cell]
    args = {"input_size": 2, "hidden_size": 3, **extra, **kwargs}
    with raises(exc, *words):
        cls(**args)


def test_bad_nonlinearity():
    with raises(ValueError, "nonlinearity", "'tanh'", "'sigmoid'"):
        rnnfast.RNN(2, 3, nonlinearity="sigmoid")


# -- the compiled module called directly ---------------------------------------------------------

def test_core_checks_shapes_itself():
    x = np.zeros((2, 3, 4))
    w_ih, w_hh, h0 = np.zeros((5, 4)), np.zeros((5, 5)), np.zeros((2, 5))
    with raises(ValueError, "weight_ih", "(5, 4)", "(5, 3)"):
        _core.rnn_forward(x, h0, np.zeros((5, 3)), w_hh, None, None, None, "tanh")
    with raises(ValueError, "h0", "(2, 5)", "(3, 5)"):
        _core.rnn_forward(x, np.zeros((3, 5)), w_ih, w_hh, None, None, None, "tanh")
    with raises(ValueError, "lengths", "[0, 3]", "9"):
        _core.rnn_forward(x, h0, w_ih, w_hh, None, None, np.array([9, 1]), "tanh")
    with raises(ValueError, "nonlinearity"):
        _core.rnn_forward(x, h0, w_ih, w_hh, None, None, None, "gelu")
    y, h = _core.rnn_forward(x, h0, w_ih, w_hh, None, None, None, "tanh")
    with raises(ValueError, "dy", "(2, 3, 5)"):
        _core.rnn_backward(x, h0, y, w_ih, w_hh, None, None, None, "tanh", np.zeros((2, 3, 4)), h)


def test_core_refuses_silent_conversion():
    x = np.zeros((2, 3, 4))
    with pytest.raises(TypeError):  # float32 weights with float64 x: no overload matches
        _core.rnn_forward(x, np.zeros((2, 5)), np.zeros((5, 4), np.float32),
                          np.zeros((5, 5)), None, None, None, "tanh")
    with pytest.raises(TypeError):  # a Fortran-ordered array is not silently copied
        _core.rnn_forward(np.asfortranarray(x), np.zeros((2, 5)), np.zeros((5, 4)),
                          np.zeros((5, 5)), None, None, None, "tanh")
