"""Hardening: memory (leaks, cache sizes, refused huge requests), threads, checkpoint files
that are truncated, corrupt, hand-crafted or cut short by a kill, and numerics at saturation.
See docs/memory.md and docs/numerics.md for what these tests pin down."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import numpy as np
import pytest

import rnnfast
from rnnfast import _core
from support import CELLS, as_parts

SANITIZED = bool(os.environ.get("RNNFAST_SANITIZE"))


# -- memory ----------------------------------------------------------------------------------

def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.skipif(SANITIZED, reason="ASan's shadow memory and quarantine dominate RSS")
def test_10000_calls_leave_resident_memory_flat():
    rng = np.random.default_rng(0)
    models = [CELLS[c][0](3, 8, num_layers=2, seed=0, **CELLS[c][1]) for c in sorted(CELLS)]

    def calls(n):
        for i in range(n):
            m = models[i % len(models)]
            B, T = 1 + i % 3, 1 + (i * 7) % 6  # varying small shapes
            x = rng.standard_normal((B, T, 3)).astype(np.float32)
            y, state, cache = m.forward(x, lengths=np.full(B, T) if i % 2 else None)
            m.backward(cache, np.ones_like(y), return_grad_norms=bool(i % 3 == 0))

    calls(500)  # warm-up: allocator pools, caches, lazily-built objects
    before = rss_bytes()
    calls(10_000)
    growth = rss_bytes() - before
    print(f"RSS growth over 10,000 forward/backward calls: {growth / 2**20:.2f} MiB")
    assert growth < 50 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB"


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cache_holds_what_the_docs_say(cell, dtype):
    """docs/memory.md: beyond layer 0's input and each layer's initial state, a layer keeps
    (1 + S) values per (b, t, unit): y, plus S = 0 (RNN), 5 (LSTM), 4 (GRU)."""
    B, T, D, H, L = 3, 7, 2, 5, 2
    cls, extra = CELLS[cell]
    m = cls(D, H, num_layers=L, dtype=dtype, seed=0, **extra)
    S = {"rnn_tanh": 0, "rnn_relu": 0, "lstm": 5, "gru": 4}[cell]
    x = np.zeros((B, T, D), dtype)
    _, _, cache = m.forward(x)
    item = np.dtype(dtype).itemsize
    state0 = L * m.state_parts * B * H * item
    assert cache.nbytes == x.nbytes + state0 + L * (1 + S) * B * T * H * item


def test_huge_requests_fail_before_allocating():
    huge = 2**40
    with pytest.raises(MemoryError, match="hidden_size"):
        rnnfast.LSTM(4, 2**20)
    with pytest.raises(MemoryError, match="GiB"):
        rnnfast.Linear(2**20, 2**20)
    for cell in sorted(CELLS):
        cls, extra = CELLS[cell]
        m = cls(4, 8, seed=0, **extra)
        x = np.broadcast_to(np.zeros((1, 1, 4), np.float32), (huge // 4, 4, 4))  # no memory
        with pytest.raises(MemoryError, match="B="):
            m.forward(x)
    lin = rnnfast.Linear(4, 8)
    x = np.broadcast_to(np.zeros(4, np.float32), (huge, 4))
    with pytest.raises(MemoryError, match="Linear"):
        lin.forward(x)
    y, cache = lin.forward(np.zeros((2, 4), np.float32))
    # a huge dy of the wrong shape is refused by its shape, before any copy
    with pytest.raises(ValueError, match="dy"):
        lin.backward(cache, np.broadcast_to(np.zeros(8, np.float32), (huge, 8)))
    m = rnnfast.GRU(4, 8)
    y, _, cache = m.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="dy"):
        m.backward(cache, np.broadcast_to(np.zeros(8, np.float32), (huge, 3, 8)))
    with pytest.raises(ValueError, match="state"):
        m.forward(np.zeros((2, 3, 4), np.float32),
                  np.broadcast_to(np.zeros(8, np.float32), (1, huge, 8)))


# -- threads ---------------------------------------------------------------------------------

def _work(model, seed, n):
    """n forward/backward calls with inputs from ``seed``; every array they return."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        B, T = 2 + i % 3, 5 + i % 7
        x = rng.standard_normal((B, T, model.input_size)).astype(model.dtype)
        y, state, cache = model.forward(x)
        dy = rng.standard_normal(y.shape).astype(model.dtype)
        dx, dstate0, grads = model.backward(cache, dy)
        out.append([y, dx, *as_parts(state), *as_parts(dstate0), *grads.values()])
    return out


@pytest.mark.parametrize("shared", [True, False], ids=["shared-model", "own-models"])
def test_threads_match_serial_bitwise(shared):
    """The GIL is released in C++: 4 threads calling at once give exactly the serial
    results, whether they share one model or each has its own."""
    n, workers = 25, 4
    cells = sorted(CELLS)

    def models():
        if shared:
            one = {c: CELLS[c][0](6, 32, num_layers=2, seed=1, **CELLS[c][1]) for c in cells}
            return [one[cells[w % len(cells)]] for w in range(workers)]
        return [CELLS[c][0](6, 32, num_layers=2, seed=w, **CELLS[c][1])
                for w, c in zip(range(workers), cells)]

    ms = models()
    serial = [_work(ms[w], 100 + w, n) for w in range(workers)]
    threaded = [None] * workers
    barrier = threading.Barrier(workers)

    def run(w):
        barrier.wait()
        threaded[w] = _work(ms[w], 100 + w, n)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in range(workers):
        for i, (a, b) in enumerate(zip(serial[w], threaded[w])):
            for j, (u, v) in enumerate(zip(a, b)):
                assert np.array_equal(u, v), f"worker {w} call {i} array {j} differs"


def test_gil_is_released_during_compute():
    """While one thread runs a long forward, another makes progress in Python."""
    m = rnnfast.LSTM(64, 256, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 1500, 64)).astype(np.float32)
    ticks = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    time.sleep(0.01)
    n0 = len(ticks)
    start = time.perf_counter()
    m.forward(x)
    elapsed = time.perf_counter() - start
    n1 = len(ticks)
    done.set()
    t.join()
    # holding the GIL for the whole call would allow at most a tick or two meanwhile
    assert n1 - n0 >= min(5, elapsed / 0.004), (n1 - n0, elapsed)


# -- checkpoint files ------------------------------------------------------------------------

def _model_and_opt(seed=0, value=None):
    model = rnnfast.Model(rnnfast.GRU(3, 4, seed=seed), rnnfast.Linear(4, 2, seed=seed + 1))
    if value is not None:
        for v in model.params.values():
            v[...] = value
    opt = rnnfast.optim.Adam(model.params, lr=1e-3)
    opt.step({k: np.full_like(v, 0.5) for k, v in model.params.items()})
    return model, opt


def _npz(path, arrays, meta=None):
    if meta is not None:
        arrays = {**arrays, "__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    np.savez(path, **arrays)


@pytest.fixture
def saved(tmp_path):
    model, opt = _model_and_opt()
    path = tmp_path / "ck.npz"
    rnnfast.save(path, model, opt, step=5, epoch=2)
    return path, model


def _meta(path):
    with np.load(path) as z:
        return json.loads(z["__meta__"].tobytes()), {k: z[k] for k in z.files if k != "__meta__"}


def test_truncated_at_every_cut_is_refused(saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.npz"
    for cut in sorted(set(np.linspace(0, len(data) - 1, 60).astype(int))):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="checkpoint"):
            rnnfast.load(bad)


def test_every_byte_flip_is_refused_or_harmless(saved, tmp_path):
    path, model = saved
    data = bytearray(path.read_bytes())
    bad = tmp_path / "flip.npz"
    refused = 0
    for i in range(0, len(data), max(1, len(data) // 400)):
        flipped = bytearray(data)
        flipped[i] ^= 0x5A
        bad.write_bytes(flipped)
        try:
            ck = rnnfast.load(bad)
        except ValueError:
            refused += 1
            continue
        for k, v in model.params.items():  # loaded only if nothing that matters changed
            np.testing.assert_array_equal(ck.model.params[k], v)
    assert refused > 0


@pytest.mark.parametrize("change, words", [
    ({"format_version": 2}, "version 2"),
    ({"format_version": "1"}, "version '1'"),
    ({"format": "something-else"}, "not an rnnfast checkpoint"),
    ({"model": ["RNN"]}, "'model' must be dict"),
    ({"arrays": []}, "'arrays' must be dict"),
    ({"step": "5"}, "'step' must be int"),
    ({"epoch": None}, "'epoch' must be int"),
    ({"metadata": [1]}, "'metadata' must be dict"),
    ({"optimizer": [1]}, "'optimizer' must be dict or null"),
    ({"optimizer": {"type": "Adam"}}, "'optimizer' must hold"),
    ({"model": {"class": "os.system", "input_size": 1}}, "unknown model class"),
    ({"model": {"class": "GRU", "input_size": "3"}}, "cannot be built"),
])
def test_wrong_metadata_is_refused(saved, tmp_path, change, words):
    path, _ = saved
    meta, arrays = _meta(path)
    meta.update(change)
    bad = tmp_path / "meta.npz"
    _npz(bad, arrays, meta)
    with pytest.raises(ValueError) as info:
        rnnfast.load(bad)
    assert words in str(info.value), str(info.value)


def test_array_description_must_match(saved, tmp_path):
    path, _ = saved
    meta, arrays = _meta(path)
    name = next(iter(meta["arrays"]))
    for desc in ({"shape": "x", "dtype": "<f4"}, [1, 2], {"shape": [1], "dtype": "<f4"}):
        meta["arrays"][name] = desc
        bad = tmp_path / "desc.npz"
        _npz(bad, arrays, meta)
        with pytest.raises(ValueError, match="arrays|description"):
            rnnfast.load(bad)


class Boom:
    """Unpickling this would create a file: the test checks that it never happens."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_object_array_and_pickle_are_never_loaded(saved, tmp_path):
    path, _ = saved
    meta, arrays = _meta(path)
    marker = tmp_path / "executed"
    evil = np.empty(1, dtype=object)
    evil[0] = Boom(str(marker))
    name = next(iter(arrays))
    bad = tmp_path / "pickle.npz"
    np.savez(bad, **{**arrays, name: evil,
                     "__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    with pytest.raises(ValueError, match="dtype object"):
        rnnfast.load(bad)
    # a bare pickle renamed to .npz
    import pickle
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps(Boom(str(marker))))
    with pytest.raises(ValueError, match="checkpoint"):
        rnnfast.load(raw)
    assert not marker.exists()


def test_huge_declared_sizes_are_refused_before_allocating(saved, tmp_path):
    path, _ = saved
    meta, arrays = _meta(path)
    # a .npy header declaring 2**40 float64s over a few bytes of data
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    bad = tmp_path / "huge-header.npz"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("__meta__.npy", _npy_bytes(np.frombuffer(json.dumps(meta).encode(),
                                                             np.uint8)))
        zf.writestr(next(iter(arrays)) + ".npy", header.getvalue() + bytes(64))
    with pytest.raises(ValueError, match="header describes"):
        rnnfast.load(bad)
    # a zip entry whose declared sizes are huge (central directory patched)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
    cd = data.find(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # uncompressed size
    bad2 = tmp_path / "huge-zip.npz"
    bad2.write_bytes(data)
    with pytest.raises(ValueError, match="checkpoint"):
        rnnfast.load(bad2)
    assert info.file_size < 2**20
    # compressed members (a zip bomb's tool) are refused outright
    bad3 = tmp_path / "deflated.npz"
    np.savez_compressed(bad3, **arrays,
                        __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(ValueError, match="compression"):
        rnnfast.load(bad3)


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_not_a_file_and_directories(tmp_path):
    with pytest.raises(FileNotFoundError):
        rnnfast.load(tmp_path / "missing.npz")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="checkpoint"):
        rnnfast.load(empty)


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import rnnfast
    path = sys.argv[1]
    models = []
    for value in (1.0, 2.0):
        m = rnnfast.Model(rnnfast.LSTM(64, 256, seed=0), rnnfast.Linear(256, 64, seed=1))
        for v in m.params.values():
            v[...] = value
        models.append(m)
    print("ready", flush=True)
    i = 0
    while True:
        rnnfast.save(path, models[i % 2], epoch=i % 2 + 1)
        i += 1
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_during_save_never_leaves_a_partial_checkpoint(tmp_path):
    """A child saves two ~1 MB checkpoints in turn over one path; it is killed with SIGKILL
    at random moments. The path always loads as one complete checkpoint, old or new."""
    target = tmp_path / "ck.npz"
    first = rnnfast.Model(rnnfast.LSTM(64, 256, seed=0), rnnfast.Linear(256, 64, seed=1))
    for v in first.params.values():
        v[...] = 0.0
    rnnfast.save(target, first, epoch=0)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(12):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(target)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        ck = rnnfast.load(target)
        value = {float(v.flat[0]) for v in ck.model.params.values()}
        assert len(value) == 1 and ck.epoch in (0, 1, 2), (value, ck.epoch)
        assert value == {float(ck.epoch)}
        seen.add(ck.epoch)
    assert seen & {1, 2}, "the child never finished a save: the test proved nothing"
    # left-over temporary files are the only trace, and they never shadow the target
    assert all(p.name.startswith(".rnnfast-") for p in tmp_path.iterdir() if p != target)


# -- numerics --------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_long_saturated_sequences_stay_finite(cell, backend):
    """float32, T = 10,000, inputs of ±1e4: every output and gradient is finite."""
    if backend == "numpy" and SANITIZED:
        pytest.skip("the NumPy reference does not touch C++")
    cls, extra = CELLS[cell]
    m = cls(3, 8, num_layers=2, seed=0, dtype=np.float32, backend=backend, **extra)
    T = 10_000 if backend == "cpp" else 2_000
    rng = np.random.default_rng(0)
    x = (rng.choice([-1e4, 1e4], size=(2, T, 3))).astype(np.float32)
    y, state, cache = m.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dstate0, grads = m.backward(cache, dy)
    for name, a in [("y", y), ("dx", dx), *[(f"state{i}", p) for i, p in
                                               enumerate(as_parts(state))],
                    *[(f"dstate0{i}", p) for i, p in enumerate(as_parts(dstate0))],
                    *grads.items()]:
        assert np.isfinite(a).all(), f"{cell} {backend}: {name} is not finite"
    if cell == "rnn_relu":
        return  # ReLU does not saturate: its state is finite but large
    assert np.abs(y).max() <= 1.0


def test_stable_sigmoid_and_tanh_at_extremes():
    """The gates at ±1e4 and beyond: exactly 0 or 1, never NaN (exp overflow handled)."""
    for cell in ("lstm", "gru"):
        cls, extra = CELLS[cell]
        m = cls(1, 2, seed=0, **extra)
        for v in m.params.values():
            v[...] = 1.0
        for big in (1e4, -1e4, 3e38, -3e38):
            y, _ = m(np.full((1, 3, 1), big, np.float32))
            assert np.isfinite(y).all(), (cell, big)


def test_gradient_overflow_is_reported_and_fit_skips_the_step():
    """Huge but finite dy: backward returns Inf gradients (no error; check_finite looks at
    inputs, not results); train_sequence/fit skip the update and leave the parameters."""
    m = rnnfast.RNN(2, 3, seed=0)
    x = np.ones((1, 4, 2), np.float32)
    y, _, cache = m.forward(x)
    dx, _, grads = m.backward(cache, np.full_like(y, 3e38))
    assert not all(np.isfinite(g).all() for g in grads.values())  # Inf, and NaN from Inf*0

    model = rnnfast.Model(rnnfast.RNN(2, 3, seed=0), rnnfast.Linear(3, 2, seed=1))
    model.readout.params["weight"] *= 1e25  # logits ~1e25: their square overflows float32
    before = {k: v.copy() for k, v in model.params.items()}
    opt = rnnfast.optim.SGD(model.params, lr=0.1)
    with np.errstate(over="ignore", invalid="ignore"):
        out = rnnfast.train_sequence(model, opt, x, np.zeros((1, 4, 2), np.float32),
                                     loss="mse")
        assert out["skipped"] == 1 and out["updates"] == 0
        with pytest.raises(rnnfast.train.NonFiniteError):
            rnnfast.train_sequence(model, opt, x, np.zeros((1, 4, 2), np.float32),
                                   loss="mse", on_nonfinite="stop")
        hist = rnnfast.fit(model, opt, (x, np.zeros((1, 4, 2), np.float32)), loss="mse",
                           progress=False)
    assert hist[0]["skipped"] == 1
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)


def test_core_is_imported():
    assert _core is not None
