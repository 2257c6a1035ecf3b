"""Truncated BPTT against an explicit loop, the fit loop, and checkpoints."""

import os

import numpy as np
import pytest

import rnnfast
from rnnfast import optim
from support import CELLS

D, H, C = 3, 6, 4


def model_for(cell="rnn_tanh", dtype=np.float64, seed=0, out=C):
    cls, extra = CELLS[cell]
    return rnnfast.Model(cls(D, H, num_layers=2, dtype=dtype, seed=seed, **extra),
                         rnnfast.Linear(H, out, dtype=dtype, seed=seed + 1))


def char_data(N=12, T=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, D))
    targets = rng.integers(0, C, size=(N, T))
    return x, targets


class RecordingSGD(optim.SGD):
    """SGD that also keeps every gradient it was given."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.seen = []

    def step(self, grads):
        self.seen.append({k: v.copy() for k, v in grads.items()})
        super().step(grads)


def explicit_tbptt(model, opt, x, targets, k1, k2):
    """BPTT(k1, k2) by its definition, one timestep per call, states kept per timestep."""
    T = x.shape[1]
    states = {0: None}  # the state at time t, as last computed
    prev_end = 0
    while prev_end < T:
        end = min(prev_end + k1, T)
        start = max(0, end - k2)
        s, caches, logits = states[start], [], []
        for t in range(start, end):
            out, s, cache = model.forward(x[:, t:t + 1], s)
            states[t + 1] = s
            caches.append(cache)
            logits.append(out)
        logits = np.concatenate(logits, axis=1)
        new = slice(prev_end - start, end - start)
        _, dnew = rnnfast.losses.cross_entropy(logits[:, new], targets[:, prev_end:end])
        dlogits = np.zeros_like(logits)
        dlogits[:, new] = dnew
        grads, dstate = None, None
        for i in reversed(range(len(caches))):
            _, dstate, g = model.backward(caches[i], dlogits[:, i:i + 1], dstate)
            grads = g if grads is None else {k: grads[k] + g[k] for k in g}
        opt.step(grads)
        prev_end = end


@pytest.mark.parametrize("k1,k2", [(5, 5), (4, 7), (3, 10), (20, 20), (6, 6), (7, 9)])
@pytest.mark.parametrize("cell", CELLS)
def test_truncated_bptt_matches_the_explicit_loop(cell, k1, k2):
    x, targets = char_data(N=3, T=20)
    a, b = model_for(cell), model_for(cell)
    opt_a, opt_b = RecordingSGD(a.params, 0.1), RecordingSGD(b.params, 0.1)
    out = rnnfast.train_sequence(a, opt_a, x, targets, k1=k1, k2=k2)
    explicit_tbptt(b, opt_b, x, targets, k1, k2)
    assert out["updates"] == len(opt_b.seen) == -(-20 // k1)
    for ga, gb in zip(opt_a.seen, opt_b.seen):
        for k in ga:
            np.testing.assert_allclose(ga[k], gb[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-9, atol=1e-12)


def test_full_bptt_is_one_forward_backward_and_update():
    x, targets = char_data(N=4, T=9)
    a, b = model_for(), model_for()
    rnnfast.train_sequence(a, optim.SGD(a.params, lr=0.1), x, targets)
    logits, _, cache = b.forward(x)
    _, d = rnnfast.losses.cross_entropy(logits, targets)
    _, _, grads = b.backward(cache, d)
    optim.SGD(b.params, lr=0.1).step(grads)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_truncation_refuses_bad_windows():
    x, targets = char_data(N=2, T=10)
    m = model_for()
    with pytest.raises(ValueError, match="k2 must be >= k1 = 5, got 3"):
        rnnfast.train_sequence(m, optim.SGD(m.params), x, targets, k1=5, k2=3)
    with pytest.raises(ValueError, match="needs a per-step loss"):
        rnnfast.train_sequence(m, optim.SGD(m.params), x, targets[:, 0], k1=5,
                               loss="cross_entropy_last")


def test_fit_learns_and_same_seed_is_bit_identical():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 12, D))
    targets = (x[..., 0] > 0).astype(np.int64)  # the sign of the current input's first feature
    runs = []
    for _ in range(2):
        m = model_for(dtype=np.float32, out=2)
        hist = rnnfast.fit(m, optim.Adam(m.params, lr=0.02), (x.astype(np.float32), targets),
                           epochs=6, batch_size=16, seed=3, validation=(x, targets),
                           progress=False)
        runs.append((m, hist))
    (m1, h1), (m2, h2) = runs
    assert h1[-1]["val_accuracy"] > 0.9 and h1[-1]["loss"] < h1[0]["loss"]
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2]
    for k in m1.params:
        np.testing.assert_array_equal(m1.params[k], m2.params[k])


def test_fit_with_lengths_batches_callbacks_and_early_stopping():
    x, targets = char_data(N=10, T=8)
    lengths = np.random.default_rng(2).integers(1, 9, size=10)
    batches = [(x[:5], targets[:5], lengths[:5]), (x[5:], targets[5:], lengths[5:])]
    m = model_for()
    seen = []
    hist = rnnfast.fit(m, optim.SGD(m.params, lr=0.0), batches, epochs=10, progress=False,
                       validation=(x, targets, lengths), patience=2,
                       callbacks=[lambda epoch, logs: seen.append(epoch)])
    assert len(hist) == 3 and seen == [1, 2, 3]  # lr = 0: never better, stops after 2 more
    stopper = rnnfast.fit(m, optim.SGD(m.params, lr=0.0), batches, epochs=10, progress=False,
                          callbacks=[lambda epoch, logs: epoch == 2])
    assert len(stopper) == 2


def test_nonfinite_gradient_skips_the_update_and_keeps_parameters():
    x, targets = char_data(N=2, T=6)
    m = model_for()
    m.recurrent.check_finite = False
    m.readout.check_finite = False
    before = {k: v.copy() for k, v in m.params.items()}
    bad = x.copy()
    bad[0, 0, 0] = bad[1, 4, 0] = np.nan  # one in each window of 3 steps
    out = rnnfast.train_sequence(m, optim.SGD(m.params, lr=0.1), bad, targets, k1=3)
    assert out["skipped"] == 2 and out["updates"] == 0
    for k in before:
        np.testing.assert_array_equal(m.params[k], before[k])
    with pytest.raises(rnnfast.train.NonFiniteError, match=r"steps \[0, 3\).*left as they were"):
        rnnfast.train_sequence(m, optim.SGD(m.params, lr=0.1), bad, targets, k1=3,
                               on_nonfinite="stop")


def test_fit_refuses_bad_data():
    m = model_for()
    with pytest.raises(TypeError, match="data must be a tuple of arrays"):
        rnnfast.fit(m, optim.SGD(m.params), np.zeros((2, 3, D)), progress=False)
    with pytest.raises(ValueError, match="targets must have 2 rows like x, got 3"):
        rnnfast.fit(m, optim.SGD(m.params), (np.zeros((2, 3, D)), np.zeros((3, 3), int)),
                    progress=False)
    with pytest.raises(ValueError, match="loss must be one of"):
        rnnfast.fit(m, optim.SGD(m.params), char_data(), loss="hinge", progress=False)


# -- checkpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_checkpoint_round_trip_and_bit_identical_resume(cell, tmp_path):
    x, targets = char_data(N=16, T=10)
    kw = dict(batch_size=4, seed=7, progress=False, k1=4, k2=6)

    straight = model_for(cell)
    opt = optim.Adam(straight.params, lr=0.01)
    rnnfast.fit(straight, opt, (x, targets), epochs=4, **kw)

    first = model_for(cell)
    opt1 = optim.Adam(first.params, lr=0.01)
    sched1 = optim.StepLR(opt1, step_size=10)
    rnnfast.fit(first, opt1, (x, targets), epochs=2, schedule=sched1, **kw)
    path = tmp_path / "run.npz"
    rnnfast.save(path, first, opt1, schedule=sched1, step=8, epoch=2, metadata={"note": "hi"})
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]  # no temporary file left behind

    ck = rnnfast.load(path)
    assert (ck.step, ck.epoch, ck.metadata) == (8, 2, {"note": "hi"})
    assert repr(ck.model) == repr(first)
    for k in first.params:
        np.testing.assert_array_equal(ck.model.params[k], first.params[k])
    opt2 = optim.Adam(ck.model.params, lr=0.5)
    opt2.load_state_dict(ck.optimizer_state)
    assert opt2.lr == 0.01
    rnnfast.fit(ck.model, opt2, (x, targets), epochs=2, initial_epoch=ck.epoch, **kw)
    for k in straight.params:
        np.testing.assert_array_equal(ck.model.params[k], straight.params[k])


def test_checkpoint_refuses_bad_files(tmp_path):
    m = model_for()
    good = tmp_path / "good.npz"
    rnnfast.save(good, m, optim.SGD(m.params, momentum=0.9))
    data = good.read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        rnnfast.load(truncated)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        rnnfast.load(garbage)

    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="not an rnnfast checkpoint"):
        rnnfast.load(other)

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __meta__=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(ValueError, match="truncated or corrupt|not an rnnfast checkpoint"):
        rnnfast.load(pickled)

    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    name = "params/recurrent.weight_hh_l0"
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, **{**arrays, name: np.zeros((2, 2))})
    with pytest.raises(ValueError, match="does not match the checkpoint's description"):
        rnnfast.load(wrong_shape)

    import json
    meta = json.loads(arrays["__meta__"].tobytes())
    meta["format_version"] = 99
    future = tmp_path / "future.npz"
    np.savez(future, **{**arrays, "__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    with pytest.raises(ValueError, match="format version 99"):
        rnnfast.load(future)

    with pytest.raises(FileNotFoundError):
        rnnfast.load(tmp_path / "missing.npz")


def test_an_exploding_forward_is_skipped_not_raised():
    """ReLU with identity recurrence and a huge learning rate overflows within a few updates;
    with the default check_finite=True the overflow must still be a skipped update, since the
    hidden states and their gradients are the library's own, not the user's input."""
    rng = np.random.default_rng(9)
    x = np.abs(rng.standard_normal((8, 40, D))).astype(np.float32) * 10
    y = rng.standard_normal((8, 40, 1)).astype(np.float32)
    rec = rnnfast.init.identity(rnnfast.RNN(D, H, nonlinearity="relu", seed=0), scale=1.5)
    m = rnnfast.Model(rec, rnnfast.Linear(H, 1, seed=1))
    opt = optim.SGD(m.params, lr=10.0)
    out = [rnnfast.train_sequence(m, opt, x, y, loss="mse", k1=10) for _ in range(5)]
    assert sum(o["skipped"] for o in out) > 0
    assert all(np.isfinite(p).all() for p in m.params.values())
