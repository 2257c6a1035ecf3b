"""rnnfast.set_num_threads(n > 1): an RNN, GRU or LSTM layer call big enough splits its batch
over n threads (cpp/common.hpp split_count); one whose batch is not split, as at batch 1, hands
the products outside its time loop to a helper thread (cpp/helper.hpp). Both must match the
NumPy reference like the serial path, repeat bit for bit, and leave the serial (n = 1) results
untouched. NumPy's BLAS inside rnnfast's read-out runs at _blas.blas_threads() threads and the
user's BLAS settings are given back after every call (the tests at the end)."""

import numpy as np
import pytest
import threadpoolctl

import rnnfast
from support import make, random_lengths, rel_err, run_step, state_like

# Above split_count's threshold (B*T*G*H*(D+H) >= 2^22 MACs, G = 1, 3, 4 for RNN, GRU,
# LSTM), B not a multiple of 2 or 3, and each thread's chunk long enough in T for several of
# backward's windows (common.hpp WindowGrads: ceil(1024 / B) steps; 31 or 32 here).
SPLIT_CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
B, T, D, H = 67, 70, 8, 40
TOL = {np.float64: 1e-10, np.float32: 1e-4}


@pytest.fixture
def threads():
    before = rnnfast.get_num_threads()
    yield rnnfast.set_num_threads
    rnnfast.set_num_threads(before)


def _step(model, x, state, lengths, dy, dstate, clip):
    return run_step(model, x, state, lengths, dy, dstate, clip_per_step=clip,
                    return_grad_norms=True)


def _data(model, lengths_mode, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, D))
    state = state_like(model, B, rng)
    lengths = random_lengths(rng, B, T, lengths_mode)
    dy = rng.standard_normal((B, T, H))
    dstate = state_like(model, B, rng, scale=1.0)
    return x, state, lengths, dy, dstate


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("lengths_mode", ["none", "partial"])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", SPLIT_CELLS)
def test_split_matches_reference_and_repeats(threads, cell, n, lengths_mode, clip, dtype):
    fast = make(cell, D, H, L=2, dtype=dtype, seed=3)
    ref = make(cell, D, H, L=2, dtype=np.float64, seed=3, backend="numpy")
    ref.params = {k: np.asarray(v, np.float64) for k, v in fast.params.items()}
    data = _data(fast, lengths_mode)
    threads(n)
    got = _step(fast, *data, clip)
    again = _step(fast, *data, clip)
    want = _step(ref, *data, clip)
    for k in want:
        assert rel_err(got[k], want[k]) <= TOL[dtype], k
        np.testing.assert_array_equal(got[k], again[k], err_msg=k)


@pytest.mark.parametrize("cell", SPLIT_CELLS)
def test_serial_unchanged_by_split(threads, cell):
    model = make(cell, D, H, dtype=np.float32, seed=1)
    data = _data(model, "partial", seed=1)
    threads(1)
    serial = _step(model, *data, None)
    threads(2)
    _step(model, *data, None)
    threads(1)
    for k, v in _step(model, *data, None).items():
        np.testing.assert_array_equal(v, serial[k], err_msg=k)


# Batches that split_count leaves whole and that helper_for takes: T >= 32 and input-side
# MACs B*T*G*H*D >= 2^18 for every cell and layer. T = 37 ends both loops on a part of a
# chunk (InputSide: 16 steps) and of a window (WindowGrads: 16 steps).
HELPER_DIMS = [(1, 100, 64, 64), (1, 37, 128, 64), (2, 50, 64, 32)]


@pytest.mark.parametrize("dims", HELPER_DIMS, ids=lambda d: "B{}T{}D{}H{}".format(*d))
@pytest.mark.parametrize("lengths_mode", ["none", "partial"])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", SPLIT_CELLS)
def test_helper_matches_reference_and_repeats(threads, cell, dims, lengths_mode, clip, dtype):
    b, t, d, h = dims
    fast = make(cell, d, h, L=2, dtype=dtype, seed=4)
    ref = make(cell, d, h, L=2, dtype=np.float64, seed=4, backend="numpy")
    ref.params = {k: np.asarray(v, np.float64) for k, v in fast.params.items()}
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((b, t, d)), state_like(fast, b, rng),
            random_lengths(rng, b, t, lengths_mode), rng.standard_normal((b, t, h)),
            state_like(fast, b, rng, scale=1.0))
    threads(2)
    got = _step(fast, *data, clip)
    want = _step(ref, *data, clip)
    for k in want:
        assert rel_err(got[k], want[k]) <= TOL[dtype], k
    # Which thread wrote which chunk or window changes from call to call; the result must not.
    for _ in range(3):
        again = _step(fast, *data, clip)
        for k in want:
            np.testing.assert_array_equal(got[k], again[k], err_msg=k)


@pytest.mark.parametrize("dims", [(B, T, D, H)] + HELPER_DIMS,
                         ids=lambda d: "B{}T{}D{}H{}".format(*d))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", SPLIT_CELLS)
def test_bidirectional_on_two_threads(threads, cell, dims, dtype):
    """The reverse walk through the split batch (the first dims) and through the helper's
    chunks and windows taken in its order (the others), with lengths and clipping; the LSTM
    with a projection (its dW_hr summed over the split batch's chunks)."""
    b, t, d, h = dims
    kw = {"bidirectional": True, **({"proj_size": h // 4} if cell == "lstm" else {})}
    fast = make(cell, d, h, L=2, dtype=dtype, seed=6, **kw)
    ref = make(cell, d, h, L=2, dtype=np.float64, seed=6, backend="numpy", **kw)
    ref.params = {k: np.asarray(v, np.float64) for k, v in fast.params.items()}
    rng = np.random.default_rng(7)
    data = (rng.standard_normal((b, t, d)), state_like(fast, b, rng),
            random_lengths(rng, b, t, "partial"), rng.standard_normal((b, t, fast.output_size)),
            state_like(fast, b, rng, scale=1.0))
    threads(2)
    got = _step(fast, *data, 0.5)
    want = _step(ref, *data, 0.5)
    for k in want:
        assert rel_err(got[k], want[k]) <= TOL[dtype], k
    again = _step(fast, *data, 0.5)
    for k in want:
        np.testing.assert_array_equal(got[k], again[k], err_msg=k)
    # The two directions of a layer ran side by side, one thread each: one thread's bits.
    threads(1)
    serial = _step(fast, *data, 0.5)
    for k in want:
        np.testing.assert_array_equal(got[k], serial[k], err_msg=k)


def test_concurrent_python_threads_share_the_helper(threads):
    """Two Python threads making calls at once, split ones and batch-1 ones: one call at a time
    gets the helper (the batch's second chunk, or a batch-1 call's products); the other runs
    that chunk on a thread of its own, or those products itself. Results as one at a time."""
    import threading
    threads(2)
    jobs = []
    for k, (cell, (b, t, d, h)) in enumerate([("lstm", (B, T, D, H)), ("gru", HELPER_DIMS[0]),
                                              ("rnn_tanh", (B, T, D, H)),
                                              ("lstm", HELPER_DIMS[0])]):
        model = make(cell, d, h, dtype=np.float32, seed=k)
        rng = np.random.default_rng(k)
        data = (rng.standard_normal((b, t, d)), None, None, rng.standard_normal((b, t, h)),
                None)
        jobs.append((model, data, _step(model, *data, None)))
    got = [[] for _ in jobs]
    barrier = threading.Barrier(len(jobs))

    def run(j):
        model, data, _ = jobs[j]
        barrier.wait()
        for _ in range(4):
            got[j].append(_step(model, *data, None))

    workers = [threading.Thread(target=run, args=(j,)) for j in range(len(jobs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for (_, _, want), results in zip(jobs, got):
        assert len(results) == 4
        for result in results:
            for k in want:
                np.testing.assert_array_equal(result[k], want[k], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", [None, 0, "middle", -1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_long_finiteness_scan_on_two_threads(threads, dtype, where, bad):
    """A scan of 2^18 elements or more goes in two halves at 2 threads: a bad value in either
    half, or at their border, is found; none is reported when there is none."""
    from rnnfast import _core
    n = (1 << 18) + 3  # halves of unequal length
    a = np.random.default_rng(0).standard_normal(n).astype(dtype)
    if where is not None:
        a[n // 2 if where == "middle" else where] = bad
    threads(2)
    assert _core.all_finite(a) == (where is None)
    model = make("rnn_tanh", 64, 8, dtype=dtype)
    x = (a[:64 * 4096] if where == 0 else a[-64 * 4096:]).reshape(1, 4096, 64)  # holds it
    if where is None:
        model.forward(x)
    else:
        with pytest.raises(ValueError, match="non-finite"):
            model.forward(x)


def _thread_names():
    import os
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/task"), reason="Linux only")
def test_helper_thread_is_started_by_a_batch_1_call(threads):
    model = make("lstm", 64, 64, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((1, 100, 64)).astype(np.float32)
    threads(2)
    model.forward(x)
    assert "rnnfast-helper" in _thread_names()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_helper_after_fork(threads):
    """A child forked while the parent's helper runs has no helper thread; its calls must still
    finish, with the parent's results."""
    import os
    import pickle
    import warnings
    model = make("gru", 64, 64, dtype=np.float64, seed=2)
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((1, 100, 64)), rng.standard_normal((1, 100, 64))
    threads(2)
    want = run_step(model, x, None, None, dy, None)
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            got = run_step(model, x, None, None, dy, None)
            os.write(write, pickle.dumps(got))
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    got = pickle.loads(data)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("value, want", [("2", 2), ("3,1", 3), (" 1 ", 1), ("0", None),
                                         ("-2", None), ("two", None), ("", None)])
def test_omp_num_threads_is_read(value, want):
    from rnnfast._platform import threads_from_env
    assert threads_from_env({"OMP_NUM_THREADS": value}) == want
    assert threads_from_env({}) is None


def test_omp_num_threads_sets_the_default_at_import():
    import os
    import subprocess
    import sys
    code = "import rnnfast; print(rnnfast.get_num_threads())"
    for value, want in (("2", "2"), ("junk", "1")):
        env = dict(os.environ, OMP_NUM_THREADS=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == want, (value, out)


# NumPy's BLAS inside rnnfast's calls (rnnfast/_blas.py): the read-out's products run with at
# most _blas.blas_threads() BLAS threads, and the user's counts are given back afterwards.
def _blas_counts():
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas"]


@pytest.fixture
def blas_at_3():
    """NumPy's BLAS set to 3 threads, a count no default gives on a small machine (so that a
    restore to the default would show), and given back after the test."""
    if not _blas_counts():
        pytest.skip("threadpoolctl finds no BLAS library in this NumPy")
    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        assert _blas_counts() == [3] * len(_blas_counts())
        yield 3


class _Spy(np.ndarray):
    """A weight that records NumPy's BLAS thread counts whenever it takes part in a product."""

    seen = []

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is np.matmul:
            _Spy.seen.append(_blas_counts())
        inputs = tuple(a.view(np.ndarray) if isinstance(a, _Spy) else a for a in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)


@pytest.mark.parametrize("n", [1, 2])
def test_readout_products_run_at_rnnfast_blas_threads(threads, blas_at_3, n):
    from rnnfast import _blas
    threads(n)
    assert 1 <= _blas.blas_threads() <= rnnfast.get_num_threads()
    model = rnnfast.Model(rnnfast.LSTM(6, 8, seed=0), rnnfast.Linear(8, 5, seed=1))
    model.readout.params["weight"] = model.readout.params["weight"].view(_Spy)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    _Spy.seen = []
    logits, _, cache = model.forward(x)
    assert _blas_counts() == [blas_at_3] * len(_blas_counts())  # given back
    model.backward(cache, np.ones_like(logits))
    assert _blas_counts() == [blas_at_3] * len(_blas_counts())
    want = [_blas.blas_threads()] * len(_blas_counts())
    assert _Spy.seen == [want, want]  # forward's x W^T and backward's dy W


def test_readout_results_unchanged_by_the_limit(monkeypatch):
    import contextlib

    from rnnfast import _blas
    rng = np.random.default_rng(1)
    lin = rnnfast.Linear(64, 96, seed=2)
    x = rng.standard_normal((16, 40, 64)).astype(np.float32)
    dy = rng.standard_normal((16, 40, 96)).astype(np.float32)
    y, cache = lin.forward(x)
    dx, grads = lin.backward(cache, dy)
    monkeypatch.setattr(_blas, "LIMITED", contextlib.nullcontext())
    y0, cache0 = lin.forward(x)
    dx0, grads0 = lin.backward(cache0, dy)
    w = lin.params["weight"]
    np.testing.assert_allclose(y, x @ w.T + lin.params["bias"], rtol=1e-5, atol=1e-5)
    for got, want in [(y, y0), (dx, dx0), (grads["weight"], grads0["weight"]),
                      (grads["bias"], grads0["bias"])]:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_lower_user_count_is_kept():
    """Inside rnnfast's calls BLAS may use fewer threads than the user allowed, never more."""
    from rnnfast import _blas
    if not _blas_counts():
        pytest.skip("threadpoolctl finds no BLAS library in this NumPy")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        with _blas.LIMITED:
            assert max(_blas_counts()) <= 1
        assert _blas_counts() == [1] * len(_blas_counts())


def test_limit_given_back_after_an_error(blas_at_3):
    from rnnfast import _blas
    with pytest.raises(ZeroDivisionError):
        with _blas.LIMITED:
            assert _blas_counts() == [_blas.blas_threads()] * len(_blas_counts())
            1 / 0
    assert _blas_counts() == [3] * len(_blas_counts())


def test_sections_nest_and_overlap_across_threads(blas_at_3):
    """The first section to open lowers the counts, the last to close gives them back, in
    whichever Python threads they run; a section that closes while another is open leaves
    the counts lowered."""
    import threading

    from rnnfast import _blas
    low = [_blas.blas_threads()] * len(_blas_counts())
    entered, leave = threading.Event(), threading.Event()

    def other():
        with _blas.LIMITED:
            entered.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    with _blas.LIMITED:
        with _blas.LIMITED:
            t.start()
            assert entered.wait(10)
        assert _blas_counts() == low
    assert _blas_counts() == low  # the other thread's section is still open
    leave.set()
    t.join(10)
    assert _blas_counts() == [3] * len(_blas_counts())


def test_concurrent_readouts_give_the_counts_back(threads, blas_at_3):
    import threading
    threads(2)
    lin = rnnfast.Linear(32, 48, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 20, 32)).astype(np.float32)
    want = lin.forward(x)[0]
    barrier = threading.Barrier(4)
    errors = []

    def run():
        barrier.wait()
        for _ in range(50):
            y, cache = lin.forward(x)
            lin.backward(cache, y)
            if not np.array_equal(y, want):
                errors.append("forward changed")

    workers = [threading.Thread(target=run) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert _blas_counts() == [3] * len(_blas_counts())


def test_user_numpy_outside_rnnfast_is_untouched_at_import():
    """Importing rnnfast and running a step change no BLAS setting the user's own code sees."""
    import os
    import subprocess
    import sys
    code = ("import threadpoolctl, numpy as np\n"
            "def counts():\n"
            "    return [i['num_threads'] for i in threadpoolctl.threadpool_info()"
            " if i['user_api'] == 'blas']\n"
            "before = counts()\n"
            "import rnnfast\n"
            "after_import = counts()\n"
            "lin = rnnfast.Linear(8, 4)\n"
            "y, c = lin.forward(np.ones((2, 3, 8), np.float32))\n"
            "lin.backward(c, y)\n"
            "print(before == after_import == counts(), before)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("True"), out
