"""Checkpointed BPTT (``forward(..., checkpoint=k)``): the full cache's results in less memory.

Every configuration runs the same model twice, with the full cache and with checkpoints, and
compares everything backward returns with ``array_equal``: outputs, states, dx, dstate0, every
weight gradient and the per-step gradient norms are the full cache's bit for bit, in both
backends, at one thread and at two. The compiled backend rounds k up to a multiple of its unit
(``segment_unit``), so the sizes here are ones where that still leaves several segments.
"""

import itertools

import numpy as np
import pytest

import rnnfast
from rnnfast import _checkpointed, _core, charlm, cli

CELLS = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = rnnfast.get_num_threads()
    rnnfast.set_num_threads(request.param)
    yield request.param
    rnnfast.set_num_threads(before)


def _tuple(state):
    return state if isinstance(state, tuple) else (state,)


def _rel(a, b):
    scale = max(float(np.abs(a).max(initial=0.0)), 1e-30)
    return float(np.abs(np.asarray(a, np.float64) - b).max(initial=0.0)) / scale


def _both(make, x, lengths, k, rng, **backward):
    """forward + backward of two identical models, full cache and ``checkpoint=k``."""
    full, ck = make(), make()
    y1, s1, c1 = full.forward(x, lengths=lengths)
    y2, s2, c2 = ck.forward(x, lengths=lengths, checkpoint=k)
    dy = rng.standard_normal(y1.shape).astype(full.dtype)
    ds = tuple(rng.standard_normal(a.shape).astype(full.dtype) for a in _tuple(s1))
    ds = ds if isinstance(s1, tuple) else ds[0]
    r1 = full.backward(c1, dy, ds, **backward)
    r2 = ck.backward(c2, dy, ds, **backward)
    return (y1, s1, c1, r1), (y2, s2, c2, r2)


def _assert_equal(a, b, segments=None):
    """Everything the two runs returned is equal bit for bit; the checkpointed one had
    ``segments`` segments (at least two when not given)."""
    (y1, s1, _, r1), (y2, s2, c2, r2) = a, b
    assert isinstance(c2, rnnfast.CheckpointCache)
    J = len(c2.edges) - 1
    assert J == segments if segments is not None else J >= 2, J
    pairs = [("y", y1, y2), ("dx", r1[0], r2[0])]
    pairs += [(f"state[{j}]", p, q) for j, (p, q) in enumerate(zip(_tuple(s1), _tuple(s2)))]
    pairs += [(f"dstate0[{j}]", p, q)
              for j, (p, q) in enumerate(zip(_tuple(r1[1]), _tuple(r2[1])))]
    assert r1[2].keys() == r2[2].keys()
    pairs += [(name, r1[2][name], r2[2][name]) for name in r1[2]]
    if len(r1) > 3:
        pairs.append(("grad_norms", r1[3], r2[3]))
    for name, p, q in pairs:
        assert p.shape == q.shape and p.dtype == q.dtype, name
        assert np.array_equal(p, q), (name, _rel(p, q))


@pytest.mark.parametrize("cell, dtype, layers, bidirectional, lengths, backend", [
    c for c in itertools.product(CELLS, (np.float32, np.float64), (1, 2), (False, True),
                                 (False, True), ("cpp", "numpy"))
], ids=lambda v: getattr(v, "__name__", str(v)))
def test_checkpointed_backward_equals_the_full_cache(cell, dtype, layers, bidirectional, lengths,
                                                     backend, threads):
    rng = np.random.default_rng(0)
    B, T, D, H = 16, 200, 4, 5
    if backend == "numpy":
        B, T = 3, 23

    def make():
        return CELLS[cell](D, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                           seed=3, backend=backend)

    x = rng.standard_normal((B, T, D)).astype(dtype)
    lens = None
    if lengths:
        lens = rng.integers(0, T + 1, B)
        lens[:2] = T, 0
    for k in (1, 5, "auto", T - T // 4):
        a, b = _both(make, x, lens, k, rng, clip_per_step=0.7, return_grad_norms=True)
        _assert_equal(a, b)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_lstm_with_projection(backend, threads):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 150, 3))

    def make():
        return rnnfast.LSTM(3, 6, num_layers=2, proj_size=4, bidirectional=True,
                            dtype=np.float64, seed=0, backend=backend)

    _assert_equal(*_both(make, x, np.arange(150, 0, -9)[:16], 4, rng))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B, T, D, H", [(1, 3000, 16, 32), (16, 400, 32, 64)])
def test_at_sizes_that_use_every_kernel_path(cell, B, T, D, H, threads):
    # long windows at batch 1, the helper thread's short ones and the batch split at two
    # threads, Eigen's blocked products: all with a segment's rows where the full cache has
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    for bidirectional in (False, True):
        def make():
            return CELLS[cell](D, H, num_layers=2, bidirectional=bidirectional,
                               dtype=np.float32, seed=0)

        _assert_equal(*_both(make, x, None, "auto", rng))


def test_bidirectional_dropout_draws_the_full_caches_masks(threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 150, 4))

    def make():
        return rnnfast.GRU(4, 5, num_layers=3, bidirectional=True, dropout=0.4,
                           dtype=np.float64, seed=7)

    _assert_equal(*_both(make, x, None, 6, rng))


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_one_direction_dropout_gradient_matches_finite_differences(backend):
    # its masks are drawn segment by segment (not the full cache's draw): the gradient is
    # checked against the loss of the same masks, replayed from the generator's state
    rng = np.random.default_rng(4)
    model = rnnfast.LSTM(3, 4, num_layers=3, dropout=0.5, dtype=np.float64, seed=1,
                         backend=backend)
    B, T = (16, 200) if backend == "cpp" else (2, 17)
    x = rng.standard_normal((B, T, 3))
    start = model.rng_state

    def loss(params=None):
        model.rng_state = start
        y, _, cache = model.forward(x, checkpoint=4)
        return float((y * w).sum()), cache

    w = rng.standard_normal((B, T, 4))
    _, cache = loss()
    assert isinstance(cache, rnnfast.CheckpointCache) and len(cache.edges) > 2
    after = model.rng_state
    _, _, grads = model.backward(cache, w)
    assert model.rng_state == after  # backward's replay puts the generator back
    eps = 1e-6
    for name in ("weight_hh_l0", "weight_ih_l2", "bias_ih_l1"):
        direction = rng.standard_normal(model.params[name].shape)
        p = model.params[name]
        p += eps * direction
        up, _ = loss()
        p -= 2 * eps * direction
        down, _ = loss()
        p += eps * direction
        numeric = (up - down) / (2 * eps)
        assert abs(numeric - float((grads[name] * direction).sum())) <= 1e-6 * max(1, abs(numeric))


def test_the_cache_holds_the_states_not_the_steps():
    before = rnnfast.get_num_threads()
    rnnfast.set_num_threads(1)
    try:
        x = np.zeros((1, 1024, 8), np.float32)
        model = rnnfast.LSTM(8, 32, num_layers=2, seed=0)
        _, _, full = model.forward(x)
        _, _, ck = model.forward(x, checkpoint="auto")
    finally:
        rnnfast.set_num_threads(before)
    # "auto" asks for 32 steps; one thread's weight-gradient window at batch 1 is 128 steps
    assert _checkpointed.segment_unit(model, 1, 1024) == 128
    assert ck.segment_steps == 128
    # x itself, and (h, c) of both layers at the start of each of the 8 segments
    assert ck.nbytes == x.nbytes + 8 * 2 * 2 * (1 * 32 * 4)
    assert ck.nbytes < 0.05 * full.nbytes


def test_requested_steps():
    assert _checkpointed.requested_steps(None, 100) is None
    assert _checkpointed.requested_steps("auto", 100) == 10
    assert _checkpointed.requested_steps("auto", 101) == 11
    assert _checkpointed.requested_steps("auto", 1) == 1
    assert _checkpointed.requested_steps(7, 100) == 7


def test_segment_steps_round_up_to_the_unit(threads):
    ref = rnnfast.GRU(4, 8, backend="numpy")
    assert _checkpointed.segment_unit(ref, 3, 100) == 1
    assert _checkpointed.segment_steps(ref, 7, 3, 100) == 7
    assert _checkpointed.segment_steps(ref, 100, 3, 100) is None  # one segment: the full cache
    assert _checkpointed.segment_steps(ref, "auto", 3, 1) is None
    assert _checkpointed.segment_steps(ref, 2, 0, 100) is None  # nothing to save
    model = rnnfast.GRU(4, 8)
    unit = _checkpointed.segment_unit(model, 16, 1000)
    assert 1 <= unit < 1000
    assert _checkpointed.segment_steps(model, 1, 16, 1000) == unit
    assert _checkpointed.segment_steps(model, unit + 1, 16, 1000) == 2 * unit
    assert _checkpointed.segment_steps(model, 999, 16, 1000) is None
    # the unit never exceeds one thread's longest window at batch 1 (128 steps),
    # rounded to the 16-step chunks of the input side
    assert _checkpointed.segment_unit(model, 1, 10 ** 6) <= 128


def test_a_segment_call_checks_its_place_in_the_whole_call():
    rng = np.random.default_rng(8)
    model = rnnfast.RNN(3, 4, seed=0)
    w_ih, w_hh, b_ih, b_hh = (model.params[n] for n in
                              ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
    x = rng.standard_normal((2, 10, 3)).astype(np.float32)
    h0 = np.zeros((2, 4), np.float32)
    args = (x, h0, w_ih, w_hh, b_ih, b_hh, None, "tanh", False)
    with pytest.raises(ValueError, match="0 <= offset <= plan_steps - T, got plan_steps = 15, "
                                         "offset = 6"):
        _core.rnn_forward(*args, plan_steps=15, offset=6)
    with pytest.raises(ValueError, match="got plan_steps = 20, offset = -1"):
        _core.rnn_forward(*args, plan_steps=20, offset=-1)
    y, _ = _core.rnn_forward(*args, plan_steps=20, offset=10)
    sums = _core.GradSum32(w_ih, w_hh, True, None)
    backward = (x, h0, y, w_ih, w_hh, b_ih, b_hh, None, "tanh", np.ones_like(y), h0)
    other = _core.GradSum32(model.params["weight_ih_l0"][:, :2].copy(), w_hh, True, None)
    with pytest.raises(ValueError, match="into was made for another layer"):
        _core.rnn_backward(*backward, plan_steps=20, offset=10, into=other)
    out = _core.rnn_backward(*backward, plan_steps=20, offset=10, into=sums)
    assert out[2] is None and out[3] is None  # the weight gradients went into sums
    dw_ih, dw_hh, db_ih, db_hh, dw_hr = sums.result()
    assert dw_ih.shape == w_ih.shape and db_hh.shape == (4,) and dw_hr is None
    with pytest.raises(ValueError, match=r"result\(\) was taken"):
        _core.rnn_backward(*backward, plan_steps=20, offset=10, into=sums)


def test_one_segment_or_empty_input_is_the_plain_forward():
    model = rnnfast.RNN(2, 3, seed=0)
    _, _, cache = model.forward(np.ones((2, 5, 2)), checkpoint=5)
    assert isinstance(cache, rnnfast.ForwardCache)
    y, h, cache = model.forward(np.ones((0, 9, 2)), checkpoint=2)
    assert y.shape == (0, 9, 3)
    dx, _, grads = model.backward(cache, np.ones((0, 9, 3), np.float32))
    assert dx.shape == (0, 9, 2) and not any(g.any() for g in grads.values())


@pytest.mark.parametrize("value, error, match", [
    ("half", ValueError, "checkpoint must be None, a positive int or 'auto', got 'half'"),
    (0, ValueError, "checkpoint must be at least 1, got 0"),
    (2.5, TypeError, "checkpoint must be an int, got float"),
    (True, TypeError, "checkpoint must be an int, got bool"),
])
def test_bad_checkpoint_values_are_refused_by_name(value, error, match):
    model = rnnfast.GRU(2, 3, seed=0)
    with pytest.raises(error, match=match):
        model.forward(np.ones((1, 4, 2)), checkpoint=value)
    mlp = rnnfast.Model(rnnfast.GRU(2, 3), rnnfast.Linear(3, 2))
    with pytest.raises(error, match=match):
        rnnfast.fit(mlp, rnnfast.optim.SGD(mlp.params, lr=0.1),
                    (np.ones((4, 4, 2), np.float32), np.zeros((4, 4), np.int64)),
                    checkpoint=value, progress=False)


def test_a_cache_serves_backward_twice_and_only_its_own_model():
    rng = np.random.default_rng(5)
    model, other = rnnfast.LSTM(3, 4, seed=0), rnnfast.LSTM(3, 4, seed=0)
    x = rng.standard_normal((2, 12, 3)).astype(np.float32)
    y, _, cache = model.forward(x, checkpoint=5)
    first = model.backward(cache, np.ones_like(y))
    second = model.backward(cache, np.ones_like(y))
    assert np.array_equal(first[0], second[0])
    assert all(np.array_equal(first[2][k], second[2][k]) for k in first[2])
    with pytest.raises(ValueError, match="another model's forward"):
        other.backward(cache, np.ones_like(y))


@pytest.mark.parametrize("model_kind", ["per-step", "embedding-pool"])
def test_training_with_checkpoints_follows_training_without(model_kind):
    rng = np.random.default_rng(6)
    if model_kind == "per-step":
        x = rng.standard_normal((8, 30, 3))
        targets, loss = rng.integers(0, 2, (8, 30)), "cross_entropy"

        def make():
            return rnnfast.Model(rnnfast.GRU(3, 8, num_layers=2, dtype=np.float64, seed=0),
                                 rnnfast.Linear(8, 2, dtype=np.float64, seed=1))
    else:
        x = rng.integers(1, 20, (8, 30))
        targets, loss = rng.integers(0, 2, 8), "cross_entropy"

        def make():
            return rnnfast.Model(
                rnnfast.LSTM(6, 8, bidirectional=True, dtype=np.float64, seed=0),
                rnnfast.Linear(16, 2, dtype=np.float64, seed=1),
                embedding=rnnfast.Embedding(20, 6, dtype=np.float64, seed=2), pool="mean")
    runs = []
    for checkpoint in (None, "auto"):
        model = make()
        hist = rnnfast.fit(model, rnnfast.optim.Adam(model.params, lr=1e-2), (x, targets),
                           epochs=2, batch_size=4, loss=loss, progress=False,
                           checkpoint=checkpoint)
        runs.append((model, hist))
    (a, ha), (b, hb) = runs
    assert abs(ha[-1]["loss"] - hb[-1]["loss"]) <= 1e-10
    for name in a.params:
        assert _rel(a.params[name], b.params[name]) <= 1e-10, name


def test_train_sequence_with_truncation_and_checkpoints():
    rng = np.random.default_rng(7)
    x, targets = rng.standard_normal((2, 60, 3)), rng.integers(0, 3, (2, 60))
    results = []
    for checkpoint in (None, 6):
        model = rnnfast.Model(rnnfast.LSTM(3, 5, dtype=np.float64, seed=0),
                              rnnfast.Linear(5, 3, dtype=np.float64, seed=1))
        out = rnnfast.train_sequence(model, rnnfast.optim.SGD(model.params, lr=0.1), x,
                                     targets, k1=20, k2=30, checkpoint=checkpoint)
        results.append((model, out))
    assert abs(results[0][1]["loss"] - results[1][1]["loss"]) <= 1e-12
    for name in results[0][0].params:
        assert _rel(results[0][0].params[name], results[1][0].params[name]) <= 1e-10


def test_the_command_line_option(capsys):
    text = charlm.default_text()[:3000]
    kw = dict(hidden=8, batch=2, k1=16, k2=48, sample_length=0, progress=False,
              log=lambda *a: None, dtype=np.float64)
    plain, _, h1 = charlm.train(text, epochs=1, **kw)
    ck, _, h2 = charlm.train(text, epochs=1, bptt_checkpoint="auto", **kw)
    assert abs(h1[0]["loss"] - h2[0]["loss"]) <= 1e-9
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--max-chars", "3000", "--hidden", "8", "--batch", "2",
                  "--bptt-checkpoint", "zero", "--no-progress"])
    assert stop.value.code == 2
    assert "argument --bptt-checkpoint: expected 'auto' or an integer >= 1, got 'zero'" in \
        capsys.readouterr().err
