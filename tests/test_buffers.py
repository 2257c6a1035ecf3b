"""The block cache of large arrays (cpp/buffers.hpp, rnnfast.set_cache_limit)."""

import pickle

import numpy as np
import pytest

import rnnfast
from rnnfast import _core

LARGE = (8, 100, 16, 64)  # B, T, D, H: the LSTM's gates are 8*100*256*4 = 800 KiB


@pytest.fixture
def limit():
    """Restores the default limit (and an empty cache) after the test."""
    before = rnnfast.cache_info()["limit"]
    yield
    rnnfast.set_cache_limit(before)


def step(m, x):
    y, state, cache = m.forward(x)
    return m.backward(cache, np.ones_like(y))


def lstm_and_x(dtype=np.float32):
    B, T, D, H = LARGE
    m = rnnfast.LSTM(D, H, dtype=dtype, seed=0)
    x = np.random.default_rng(0).standard_normal((B, T, D)).astype(dtype)
    return m, x


def test_a_repeated_step_reuses_its_blocks(limit):
    rnnfast.empty_cache()
    m, x = lstm_and_x()
    step(m, x)
    first = rnnfast.cache_info()
    assert first["cached_blocks"] > 0 and first["cached_bytes"] >= 8 * 100 * 256 * 4
    step(m, x)
    second = rnnfast.cache_info()
    assert second["misses"] == first["misses"]  # no new block: every large one was reused
    assert second["hits"] > first["hits"]
    assert second["cached_bytes"] == first["cached_bytes"]


def test_reused_blocks_give_the_same_results(limit):
    m, x = lstm_and_x(np.float64)
    rnnfast.set_cache_limit(0)  # every block fresh
    dx0, dstate0, grads0 = step(m, x)
    rnnfast.set_cache_limit(1 << 30)
    for _ in range(3):  # blocks from the cache, holding the last step's numbers (or NaN)
        dx, dstate, grads = step(m, x)
        np.testing.assert_array_equal(dx, dx0)
        for name in grads0:
            np.testing.assert_array_equal(grads[name], grads0[name])


def test_limit_zero_keeps_nothing_and_empty_cache_frees_all(limit):
    m, x = lstm_and_x()
    step(m, x)
    assert rnnfast.cache_info()["cached_bytes"] > 0
    rnnfast.empty_cache()
    info = rnnfast.cache_info()
    assert info["cached_bytes"] == 0 and info["cached_blocks"] == 0
    assert info["limit"] == 1 << 30  # unchanged by empty_cache
    rnnfast.set_cache_limit(0)
    step(m, x)
    assert rnnfast.cache_info()["cached_bytes"] == 0


def test_the_limit_is_kept(limit):
    m, x = lstm_and_x()
    rnnfast.set_cache_limit(1 << 20)  # room for one 800 KiB block, not two
    step(m, x)
    assert rnnfast.cache_info()["cached_bytes"] <= 1 << 20


def test_arrays_outlive_an_emptied_cache_and_behave_as_arrays(limit):
    m, x = lstm_and_x()
    y, state, cache = m.forward(x)
    copy = y.copy()
    rnnfast.empty_cache()
    rnnfast.set_cache_limit(0)
    step(m, x)  # would overwrite y's block if it had been handed out again
    np.testing.assert_array_equal(y, copy)
    assert y.flags.c_contiguous and y.flags.writeable
    y[0, 0, 0] = 1.0
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(y)), y)
    del y, state, cache  # gives the blocks back with the limit at 0: freed, not kept
    assert rnnfast.cache_info()["cached_bytes"] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("dims", [(1, 100, 64, 64), LARGE], ids=["small", "large"])
def test_every_output_is_64_byte_aligned(cell, dims, dtype):
    """Small outputs too (views into a slightly longer NumPy array), so that the vectorised
    loops over their rows never start on single elements; they behave as ordinary arrays."""
    B, T, D, H = dims
    m = getattr(rnnfast, cell)(D, H, dtype=dtype, seed=0)
    x = np.random.default_rng(0).standard_normal((B, T, D)).astype(dtype)
    for _ in range(5):  # NumPy's own allocations land at several offsets
        y, state, cache = m.forward(x)
        dx, dstate, grads = m.backward(cache, np.ones_like(y))
        saved = [a for layer in cache.layers for a in layer[3]]
        for a in [y, dx, *saved, *grads.values()]:
            assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
    grads["weight_hh_l0"] += 1  # an output is an array like any other: written, pickled
    assert np.array_equal(pickle.loads(pickle.dumps(dx)), dx)


def test_the_suite_runs_with_poisoned_buffers():
    # conftest.py turns it on for every test; small outputs take the poisoned path too, so
    # an element the C++ code forgot to write would show up as NaN.
    m = rnnfast.RNN(3, 4, seed=0)
    y, h = m(np.zeros((2, 5, 3), np.float32))
    assert np.isfinite(y).all() and np.isfinite(h).all()


@pytest.mark.parametrize("bad", [-1, 1.5, "1", None, True])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValueError, match="nbytes must be an int >= 0"):
        rnnfast.set_cache_limit(bad)


@pytest.fixture
def threads():
    before = rnnfast.get_num_threads()
    yield rnnfast.set_num_threads
    rnnfast.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_running_out_of_memory_anywhere_is_a_memory_error(cell, n_threads, threads):
    # Every allocation of a step in turn fails (the outputs too: the suite poisons, so they
    # all come from the block cache), including those made inside the threads of a split
    # call: each must surface as MemoryError, leave the parameters alone, and the next step
    # must be right.
    from support import make, run_step
    threads(n_threads)
    B, T, D, H = 67, 70, 8, 40  # big enough to split (tests/test_threads.py)
    model = make(cell, D, H, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((B, T, D)), rng.standard_normal((B, T, H))
    want = run_step(model, x, None, None, dy, None)
    params = {k: v.copy() for k, v in model.params.items()}
    failures = 0
    for k in range(200):
        _core._set_cache_fail_after(k)
        try:
            got = run_step(model, x, None, None, dy, None)
        except MemoryError:
            failures += 1
            continue
        finally:
            _core._set_cache_fail_after(-1)
        break  # the step made fewer than k allocations: every one has failed once
    assert failures > 5
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, params[name])
