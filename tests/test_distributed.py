"""fit(..., distributed=True) under `mpiexec -n 2` against the single-process fit.

The MPI runs are subprocesses with a timeout, so that a hang fails the test instead of the
suite; the pytest process itself never initialises MPI.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import rnnfast
from rnnfast import distributed

TIMEOUT = 120


def _mpiexec():
    # The launcher of the environment running the tests first: the mpich wheel puts it there.
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or _mpiexec() is None,
    reason='needs mpi4py and mpiexec: pip install "rnnfast[mpi]"')

# Written into tmp_path and run by every rank; the test imports it too, to build the same
# cases for the single-process runs.
SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import rnnfast
    from rnnfast import optim

    D, H, C, T = 3, 5, 4, 9


    def build(case, rank=0):
        """(model, optimiser, fit's keyword arguments) of a case; the initial weights of
        ranks other than 0 differ, so that only the broadcast can make the runs agree."""
        rng = np.random.default_rng(1)
        seed = 10 * rank
        lengths = rng.integers(1, T + 1, size=11)
        lengths[0] = T
        if case == "bptt":  # full BPTT, an uneven last batch, Adam with state from a warm-up
            x = rng.standard_normal((11, T, D))
            y = rng.integers(0, C, size=(11, T))
            model = rnnfast.Model(rnnfast.RNN(D, H, num_layers=2, dtype=np.float64,
                                              seed=seed), rnnfast.Linear(H, C, dtype=np.float64,
                                                                         seed=seed + 1))
            opt = optim.Adam(model.params, lr=1e-2)
            if rank == 0:
                rnnfast.fit(model, opt, (x[:4], y[:4]), batch_size=2, progress=False)
            kw = dict(data=(x, y), validation=(x[:7], y[:7]), batch_size=4, epochs=2)
        elif case == "lengths":  # the mean over valid steps only, clipped by norm
            x = rng.standard_normal((11, T, D))
            y = rng.integers(0, C, size=(11, T))
            model = rnnfast.Model(rnnfast.LSTM(D, H, dtype=np.float64, seed=seed),
                                  rnnfast.Linear(H, C, dtype=np.float64, seed=seed + 1))
            opt = optim.SGD(model.params, lr=0.5, momentum=0.9)
            kw = dict(data=(x, y, lengths), validation=(x, y, lengths), batch_size=5,
                      epochs=2, clip_norm=0.05)
        elif case == "tbptt":  # BPTT(3, 5) with lengths and an MSE
            x = rng.standard_normal((11, T, D))
            y = rng.standard_normal((11, T, C))
            model = rnnfast.Model(rnnfast.GRU(D, H, dtype=np.float64, seed=seed),
                                  rnnfast.Linear(H, C, dtype=np.float64, seed=seed + 1))
            opt = optim.RMSprop(model.params, lr=1e-2)
            kw = dict(data=(x, y, lengths), batch_size=6, epochs=2, k1=3, k2=5, loss="mse")
        elif case == "pooled":  # token ids, a bidirectional LSTM, one label per sequence
            x = rng.integers(0, 12, size=(11, T))
            y = rng.integers(0, C, size=11)
            model = rnnfast.Model(
                rnnfast.LSTM(4, H, bidirectional=True, dtype=np.float64, seed=seed),
                rnnfast.Linear(2 * H, C, dtype=np.float64, seed=seed + 1),
                embedding=rnnfast.Embedding(12, 4, dtype=np.float64, seed=seed + 2),
                pool="last")
            opt = optim.AdamW(model.params, lr=1e-2)
            kw = dict(data=(x, y, lengths), validation=(x, y, lengths), batch_size=4)
        else:
            raise ValueError(case)
        return model, opt, kw


    if __name__ == "__main__":
        from rnnfast import distributed
        out, cases = sys.argv[1], sys.argv[2:]
        rank = distributed.rank()
        result = {}
        for case in cases:
            model, opt, kw = build(case, rank)
            history = rnnfast.fit(model, opt, kw.pop("data"), **kw, distributed=True,
                                  progress=False)
            np.savez(f"{out}/{case}-{rank}.npz", **model.params)
            result[case] = history
        with open(f"{out}/history-{rank}.json", "w") as f:
            json.dump({"size": distributed.size(), "history": result}, f)
''')

# A rank that fails alone: NaN in its x, or a differently shaped x.
BAD = textwrap.dedent('''
    import sys
    import numpy as np
    import rnnfast
    from rnnfast import distributed

    rng = np.random.default_rng(0)
    rank = distributed.rank()
    N = 13 if sys.argv[1] == "shape" and rank == 1 else 12
    x = rng.standard_normal((N, 6, 3))
    y = rng.integers(0, 4, size=(N, 6))
    if sys.argv[1] == "nan" and rank == 1:
        x[:] = np.nan
    model = rnnfast.Model(rnnfast.RNN(3, 5, seed=0), rnnfast.Linear(5, 4, seed=1))
    rnnfast.fit(model, rnnfast.optim.SGD(model.params, lr=0.1), (x, y), epochs=50,
                batch_size=4, distributed=True, progress=False)
''')

CASES = ("bptt", "lengths", "tbptt", "pooled")


def _run(args, tmp_path, n=2):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = ([_mpiexec(), "-n", str(n)] if n else []) + [sys.executable, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    return proc, time.perf_counter() - start


def _script(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _load(path):
    spec = importlib.util.spec_from_file_location("distributed_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_mpi
def test_two_ranks_train_as_one_process(tmp_path):
    script = _script(tmp_path, "cases.py", SCRIPT)
    proc, _ = _run([str(script), str(tmp_path), *CASES], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    histories = [json.loads((tmp_path / f"history-{r}.json").read_text()) for r in (0, 1)]
    assert [h["size"] for h in histories] == [2, 2]
    # the same history on every rank, timings included (rank 0's)
    assert histories[0]["history"] == histories[1]["history"]
    cases = _load(script)
    for case in CASES:
        ranks = [np.load(tmp_path / f"{case}-{r}.npz") for r in (0, 1)]
        for name in ranks[0]:
            np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=case)
        model, opt, kw = cases.build(case)
        want = rnnfast.fit(model, opt, kw.pop("data"), **kw, progress=False)
        assert set(ranks[0]) == set(model.params)
        for name, p in model.params.items():
            np.testing.assert_allclose(ranks[0][name], p, rtol=0, atol=1e-10,
                                       err_msg=f"{case}: {name}")
        got = histories[0]["history"][case]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert (g["updates"], g["skipped"]) == (w["updates"], w["skipped"])
            for key in ("loss", "val_loss", "val_accuracy"):
                if key in w:
                    assert g[key] == pytest.approx(w[key], rel=0, abs=1e-10), (case, key)


@needs_mpi
def test_without_mpiexec_distributed_is_a_world_of_one(tmp_path):
    script = _script(tmp_path, "cases.py", SCRIPT)
    proc, _ = _run([str(script), str(tmp_path), "lengths"], tmp_path, n=0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "history-0.json").read_text())["size"] == 1
    model, opt, kw = _load(script).build("lengths")
    rnnfast.fit(model, opt, kw.pop("data"), **kw, progress=False)
    got = np.load(tmp_path / "lengths-0.npz")
    for name, p in model.params.items():
        np.testing.assert_array_equal(got[name], p)  # the plain fit, bit for bit


@needs_mpi
def test_a_failing_rank_ends_the_job_and_names_itself(tmp_path):
    script = _script(tmp_path, "bad.py", BAD)
    proc, seconds = _run([str(script), "nan"], tmp_path)
    assert proc.returncode != 0
    assert "rank 1: ValueError: x contains" in proc.stderr, proc.stderr
    assert seconds < 30


@needs_mpi
def test_differently_shaped_data_is_refused_on_every_rank(tmp_path):
    script = _script(tmp_path, "bad.py", BAD)
    proc, seconds = _run([str(script), "shape"], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("ValueError: the ranks were given different") == 2, proc.stderr
    assert "rank 0 has [((12, 6, 3)" in proc.stderr and "rank 1 has [((13, 6, 3)" in proc.stderr
    assert seconds < 30


def test_without_mpi4py_a_world_of_one_and_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if it were not installed
    assert (distributed.rank(), distributed.size()) == (0, 1)
    model = rnnfast.Model(rnnfast.RNN(3, 5, seed=0), rnnfast.Linear(5, 4, seed=1))
    x, y = np.zeros((4, 6, 3), np.float32), np.zeros((4, 6), np.int64)
    with pytest.raises(ImportError, match=r'pip install "rnnfast\[mpi\]"'):
        rnnfast.fit(model, rnnfast.optim.SGD(model.params, lr=0.1), (x, y), progress=False,
                    distributed=True)


def test_import_rnnfast_does_not_import_mpi4py():
    code = "import sys, rnnfast, rnnfast.distributed; assert 'mpi4py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


def test_allreduce_grads_uses_one_allreduce_over_one_buffer(monkeypatch):
    calls = []
    # MPI's constants stand in for themselves: importing mpi4py.MPI here would start MPI
    monkeypatch.setattr(distributed, "require_mpi",
                        lambda: SimpleNamespace(IN_PLACE="in place", SUM="sum"))

    class FakeComm:  # two ranks holding the same values: the sum doubles them
        def Get_size(self):
            return 2

        def Allreduce(self, send, buf, op):
            calls.append((send, op, buf.dtype, buf.shape, buf.flags.c_contiguous))
            buf *= 2

    grads = {"a": np.ones((2, 3), np.float32), "b": np.full(4, 0.5)}
    value, terms = distributed.allreduce_grads(grads, 1.5, 7, comm=FakeComm())
    assert (value, terms) == (3.0, 14.0)
    assert calls == [("in place", "sum", np.float64, (12,), True)]
    np.testing.assert_array_equal(grads["a"], np.full((2, 3), 2, np.float32))
    assert grads["a"].dtype == np.float32
    np.testing.assert_array_equal(grads["b"], np.ones(4))
