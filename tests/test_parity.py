"""The compiled path against the NumPy reference, tensor by tensor.

float64: relative error <= 1e-10 against the float64 reference.
float32: relative error <= 1e-4 against the float64 reference run on the same (float32) weights
and inputs.

Every configuration runs unidirectional and bidirectional (the reverse direction walks the same
loops down in time, so each code path below is taken by both walks), the bidirectional stacks
with dropout between layers: both models are seeded alike, so they draw the same masks.
"""

import numpy as np
import pytest

from rnnfast.bench import at_offset
from support import CELLS, as_parts, cast_state, make, random_lengths, record, rel_err, \
    run_step, state_like

# (B, T, D, H, L, lengths, bias)
CONFIGS = [
    (1, 1, 1, 1, 1, "none", True),
    (1, 7, 1, 3, 1, "none", True),
    (3, 1, 4, 1, 1, "full", True),
    (2, 5, 3, 4, 1, "partial", True),
    (4, 9, 5, 6, 2, "none", True),
    (5, 8, 3, 7, 3, "partial", True),
    (3, 6, 2, 5, 2, "partial", False),
    (1, 30, 8, 16, 2, "none", True),
    # batch 1's forward reads a tiled transposed copy of W_hh (products.hpp transpose_into):
    # 13 units leave a remainder of both rows and columns after the 8 x 8 / 4 x 4 tiles
    (1, 9, 5, 13, 1, "none", True),
    (16, 12, 10, 32, 1, "partial", True),
    # several of backward's windows (window_grads.hpp WindowGrads: ceil(1024 / B) steps each)
    (100, 25, 3, 4, 1, "partial", True),
    (1100, 3, 2, 3, 2, "none", True),
    # the input side written 16 steps ahead of the loop, 12 in the last chunk (products.hpp
    # InputSide: steps of <= 16 KiB, arrays of > 1 MiB)
    (2, 1100, 3, 128, 1, "partial", True),
    # rows of more than 256 units go through chains of Eigen expressions instead of packet
    # loops (elementwise.hpp kPacketRowsUpTo); 256 is the longest packet row
    (3, 5, 4, 257, 1, "partial", True),
    (2, 4, 3, 256, 1, "none", True),
    # batch 1 at 1 thread: one window would be all T steps in over 64 KiB, so two of
    # ceil(T / 2) = 151 and 150 steps (window_grads.hpp WindowGrads::window_steps), every cell
    (1, 301, 3, 64, 1, "full", True),
    # the RNN's and LSTM's backward read a copy of their per-step arrays, made a few steps at a
    # time (staged.hpp StagedSteps: arrays of >= 4 MiB). At 1 thread, float32: 13 MiB of LSTM
    # arrays, 21 steps a copy; 4.3 MiB of RNN arrays, 64 steps a copy, the last 12. At 2
    # threads (chunks of 4 sequences) the LSTM's in both dtypes and the RNN's in float64
    (8, 1100, 3, 64, 1, "partial", True),
]
TOL = {np.float64: 1e-10, np.float32: 1e-4}

# One unit, one step, three sequences: the forward direction's dW_hh is the single number
# Σ_b da_b h0_b = 0.00154 + 0.00860 - 0.00973 = 0.00042, cancelling 25-fold, so the float32
# rounding of da (1e-7, as in db's 1.5e-6) moves it by 1.1e-4 relative; the compiled value is
# the float64 sum of its own float32 terms to 1e-7. A float32 accuracy limit of a 1-element
# gradient, not a wrong one: kept visible, not tuned away with another seed.
CANCELLING = ("rnn_tanh", CONFIGS[2], np.float32, True)


def _data(model, B, T, D, lengths_mode, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, D))
    state = state_like(model, B, rng)
    lengths = random_lengths(rng, B, T, lengths_mode)
    dy = rng.standard_normal((B, T, model.output_size))
    dstate = state_like(model, B, rng, scale=1.0)
    return x, state, lengths, dy, dstate


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "B{}T{}D{}H{}L{}-{}-bias{}".format(*c))
@pytest.mark.parametrize("cell", CELLS)
def test_compiled_matches_reference(cell, config, dtype, bidirectional, request):
    if (cell, config, dtype, bidirectional) == CANCELLING:
        request.applymarker(pytest.mark.xfail(
            reason="float32, a 1-element gradient cancelling 25-fold: see CANCELLING",
            strict=True))
    B, T, D, H, L, lengths_mode, bias = config
    kw = {"bidirectional": True, "dropout": 0.25 if L > 1 else 0.0} if bidirectional else {}
    fast = make(cell, D, H, L, dtype=dtype, backend="cpp", seed=1, bias=bias, **kw)
    ref = make(cell, D, H, L, dtype=np.float64, backend="numpy", seed=1, bias=bias, **kw)
    for name, p in fast.params.items():  # the very same weights, whatever the dtype
        ref.params[name][...] = p
    x, state, lengths, dy, dstate = _data(fast, B, T, D, lengths_mode, seed=CONFIGS.index(config))
    # Both see the same values: rounded to the fast model's dtype first.
    x, dy = x.astype(dtype), dy.astype(dtype)
    state, dstate = cast_state(state, dtype), cast_state(dstate, dtype)

    got = run_step(fast, x, state, lengths, dy, dstate)
    want = run_step(ref, x.astype(np.float64), cast_state(state, np.float64), lengths,
                    dy.astype(np.float64), cast_state(dstate, np.float64))
    assert got.keys() == want.keys()
    errors = {k: rel_err(got[k], want[k]) for k in want}
    for k, err in errors.items():
        record(f"parity {cell}{' bi' if bidirectional else ''} {k.split('_l')[0]}", dtype, err)
        assert got[k].dtype == dtype, k
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL[dtype], f"worst: {worst} rel err {errors[worst]:.3e}"


# The LSTM's projection on every configuration with room for one (P = H // 2 < H), every
# other one bidirectional: its per-step products and the gate gradients started from dL/dm_t,
# through the same code paths as above.
PROJ_CONFIGS = [c for c in CONFIGS if c[3] >= 2]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", PROJ_CONFIGS,
                         ids=lambda c: "B{}T{}D{}H{}L{}-{}-bias{}".format(*c))
def test_projection_matches_reference(config, dtype):
    B, T, D, H, L, lengths_mode, bias = config
    kw = {"proj_size": H // 2, "bidirectional": PROJ_CONFIGS.index(config) % 2 == 1}
    fast = make("lstm", D, H, L, dtype=dtype, backend="cpp", seed=1, bias=bias, **kw)
    ref = make("lstm", D, H, L, dtype=np.float64, backend="numpy", seed=1, bias=bias, **kw)
    for name, p in fast.params.items():
        ref.params[name][...] = p
    x, state, lengths, dy, dstate = _data(fast, B, T, D, lengths_mode, seed=3)
    x, dy = x.astype(dtype), dy.astype(dtype)
    state, dstate = cast_state(state, dtype), cast_state(dstate, dtype)
    got = run_step(fast, x, state, lengths, dy, dstate)
    want = run_step(ref, x.astype(np.float64), cast_state(state, np.float64), lengths,
                    dy.astype(np.float64), cast_state(dstate, np.float64))
    assert got.keys() == want.keys() and any(k.startswith("dweight_hr") for k in got)
    errors = {k: rel_err(got[k], want[k]) for k in want}
    for k, err in errors.items():
        record(f"parity lstm proj {k.split('_l')[0]}", dtype, err)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL[dtype], f"worst: {worst} rel err {errors[worst]:.3e}"


@pytest.mark.parametrize("cell", CELLS)
def test_lengths_equal_to_running_each_sequence_alone(cell):
    """Packed-sequence semantics: a padded batch gives what each sequence gives by itself."""
    rng = np.random.default_rng(5)
    B, T, D, H, L = 4, 7, 3, 5, 2
    model = make(cell, D, H, L, seed=2)
    x = rng.standard_normal((B, T, D))
    state = state_like(model, B, rng)
    lengths = np.array([7, 3, 0, 5])
    y, state_n, _ = model.forward(x, state, lengths)
    for b, n in enumerate(lengths):
        alone_state = cast_state(tuple(p[:, b:b + 1] for p in as_parts(state)), np.float64)
        y_b, s_b = model(x[b:b + 1, :n], alone_state)
        np.testing.assert_allclose(y[b, :n], y_b[0], rtol=1e-12, atol=1e-12)
        assert not y[b, n:].any(), "outputs past the length must be zero"
        for whole, alone in zip(as_parts(state_n), as_parts(s_b)):
            np.testing.assert_allclose(whole[:, b], alone[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("cell", CELLS)
def test_padding_gets_no_gradient_and_changes_nothing(cell, backend):
    rng = np.random.default_rng(6)
    B, T, D, H = 3, 6, 2, 4
    model = make(cell, D, H, 2, seed=3, backend=backend)
    x = rng.standard_normal((B, T, D))
    lengths = np.array([6, 2, 4])
    dy = rng.standard_normal((B, T, H))
    base = run_step(model, x, None, lengths, dy, None)
    x2, dy2 = x.copy(), dy.copy()
    for b, n in enumerate(lengths):
        x2[b, n:] = 100.0  # padding values must not matter
        dy2[b, n:] = -7.0  # nor gradients sent to padded outputs
    moved = run_step(model, x2, None, lengths, dy2, None)
    for k in base:
        if k == "dx":
            for b, n in enumerate(lengths):
                np.testing.assert_array_equal(moved[k][b, :n], base[k][b, :n])
                assert not moved[k][b, n:].any()
        else:
            np.testing.assert_allclose(moved[k], base[k], rtol=1e-13, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("B", [3, 1])  # 1: backward's product is a GEMV, on a copy of an
@pytest.mark.parametrize("dtype", [np.float64, np.float32])  # unaligned W_hh (products.hpp)
@pytest.mark.parametrize("cell", CELLS)
def test_results_do_not_depend_on_memory_alignment(cell, dtype, B):
    """Bit for bit, wherever the arrays lie: SIMD code that peels unaligned heads, or sums in
    an order chosen by alignment, would make training runs unrepeatable."""
    rng = np.random.default_rng(8)
    T, D, H = 7, 5, 12
    model = make(cell, D, H, 2, dtype=dtype, seed=0)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    dy = rng.standard_normal((B, T, H)).astype(dtype)
    results = []
    for offset in (0, 8, 16, 24, 32, 48):
        for k, v in list(model.params.items()):
            model.params[k] = at_offset(v, offset)
        y, _, cache = model.forward(at_offset(x, offset), None, [7, 4, 6][:B])
        _, _, grads, norms = model.backward(cache, at_offset(dy, offset), clip_per_step=1.0,
                                            return_grad_norms=True)
        results.append({"y": y, "norms": norms, **grads})
    for other in results[1:]:
        for k in results[0]:
            np.testing.assert_array_equal(other[k], results[0][k], err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
def test_repeated_calls_are_bit_identical_wherever_buffers_land(cell):
    """The C++ path allocates its outputs and workspaces per call; shifting where they land
    (by allocating in between) must not change a bit of the result."""
    rng = np.random.default_rng(9)
    B, T, D, H = 4, 9, 3, 6  # small: Eigen's small-product path is the alignment-sensitive one
    model = make(cell, D, H, 2, seed=1)
    x, dy = rng.standard_normal((B, T, D)), rng.standard_normal((B, T, H))
    first, keep = None, []
    for i in range(60):
        keep.append(np.empty(int(rng.integers(1, 300)), np.uint8))
        out = run_step(model, x, None, [9, 5, 1, 7], dy, None)
        if first is None:
            first = out
            continue
        for k in first:
            np.testing.assert_array_equal(out[k], first[k], err_msg=f"call {i}: {k}")
