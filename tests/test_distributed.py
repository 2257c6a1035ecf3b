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
        elif case == "dropout":  # the same seed on every rank: only their rows differ
            x = rng.standard_normal((11, T, D))
            y = rng.integers(0, C, size=(11, T))
            model = rnnfast.Model(rnnfast.LSTM(D, H, num_layers=2, dropout=0.3,
                                               dtype=np.float64, seed=0),
                                  rnnfast.Linear(H, C, dtype=np.float64, seed=1))
            opt = optim.Adam(model.params, lr=1e-2)
            kw = dict(data=(x, y), batch_size=4, epochs=2)
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

# Checkpoints under mpiexec (any world size): "save" trains the case's 2 epochs, saving
# after each from a callback on every rank; "resume" loads the file on every rank and trains
# a third epoch; "straight" trains the 3 epochs without a break.
CKPT = textwrap.dedent('''
    import sys
    import numpy as np
    import rnnfast
    from rnnfast import distributed
    from cases import build

    mode, case, out = sys.argv[1:4]
    rank, size = distributed.rank(), distributed.size()
    path = f"{out}/{case}.npz"
    model, opt, kw = build(case, rank)
    data = kw.pop("data")
    kw.pop("epochs")


    def save(epoch, logs):
        rnnfast.save(path, model, opt, epoch=epoch, distributed=True)
        # every rank may read the file as soon as save returns: it is complete
        assert rnnfast.load(path).epoch == epoch


    if mode == "save":
        rnnfast.fit(model, opt, data, epochs=2, callbacks=[save], **kw, distributed=True,
                    progress=False)
    elif mode == "resume":
        ck = rnnfast.load(path, distributed=True)
        model = ck.model
        opt = getattr(rnnfast.optim, ck.optimizer_state["type"])(model.params)
        opt.load_state_dict(ck.optimizer_state)
        rnnfast.fit(model, opt, data, epochs=1, initial_epoch=ck.epoch, **kw,
                    distributed=True, progress=False)
    else:
        rnnfast.fit(model, opt, data, epochs=3, **kw, distributed=True, progress=False)
    np.savez(f"{out}/{mode}-{case}-{size}-{rank}.npz", **model.params)
''')

# Rank 1's parameters drift after the first epoch.
DRIFT = textwrap.dedent('''
    import numpy as np
    import rnnfast
    from rnnfast import distributed

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 6, 3)), rng.integers(0, 4, size=(12, 6))
    model = rnnfast.Model(rnnfast.RNN(3, 5, seed=0), rnnfast.Linear(5, 4, seed=1))


    def drift(epoch, logs):
        if distributed.rank() == 1:
            model.params["readout.weight"][0, 0] += 1e-3


    rnnfast.fit(model, rnnfast.optim.SGD(model.params, lr=0.1), (x, y), epochs=200,
                batch_size=4, callbacks=[drift], distributed=True, progress=False)
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


def _params(path):
    with np.load(path) as f:
        return dict(f)


@needs_mpi
def test_a_checkpoint_saved_on_two_ranks_resumes_on_one_or_two(tmp_path):
    cases = _load(_script(tmp_path, "cases.py", SCRIPT))
    ckpt = _script(tmp_path, "ckpt.py", CKPT)
    for mode, n in (("save", 2), ("resume", 2), ("resume", 0)):
        proc, _ = _run([str(ckpt), mode, "bptt", str(tmp_path)], tmp_path, n=n)
        assert proc.returncode == 0, (mode, n, proc.stdout + proc.stderr)
    # written once, by a rename: no temporary file is left beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    model, opt, kw = cases.build("bptt")
    kw.pop("epochs")
    rnnfast.fit(model, opt, kw.pop("data"), epochs=3, **kw, progress=False)
    for size, ranks in ((2, (0, 1)), (1, (0,))):
        for r in ranks:
            got = _params(tmp_path / f"resume-bptt-{size}-{r}.npz")
            for name, p in model.params.items():
                np.testing.assert_allclose(got[name], p, rtol=0, atol=1e-10,
                                           err_msg=f"resumed on {size} rank(s), rank {r}: {name}")


@needs_mpi
def test_a_resumed_run_on_two_ranks_draws_each_ranks_dropout_masks(tmp_path):
    _script(tmp_path, "cases.py", SCRIPT)
    ckpt = _script(tmp_path, "ckpt.py", CKPT)
    for mode in ("save", "resume", "straight"):
        proc, _ = _run([str(ckpt), mode, "dropout", str(tmp_path)], tmp_path)
        assert proc.returncode == 0, (mode, proc.stdout + proc.stderr)
    # the uneven shards drew different numbers of masks: the ranks' generators differ, so
    # the file must hold both for the resume to be the uninterrupted run
    meta = json.loads(np.load(tmp_path / "dropout.npz")["__meta__"].tobytes())
    states = meta["rank_rng_states"]
    assert len(states) == 2 and states[0] != states[1] and meta["rng_state"] == states[0]
    for r in (0, 1):
        got = _params(tmp_path / f"resume-dropout-2-{r}.npz")
        want = _params(tmp_path / f"straight-dropout-2-{r}.npz")
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-10,
                                       err_msg=f"rank {r}: {name}")


@needs_mpi
def test_parameters_that_drift_apart_stop_every_rank(tmp_path):
    script = _script(tmp_path, "drift.py", DRIFT)
    proc, seconds = _run([str(script)], tmp_path)
    assert proc.returncode != 0
    message = ("RankMismatchError: the parameters differ between ranks after epoch 1: "
               "rank 1 differs from rank 0 (rank 0: sum ")
    assert proc.stderr.count(message) == 2, proc.stderr  # raised on both ranks together
    assert seconds < 30


def test_check_params_agree_names_the_ranks_that_differ():
    params = {"w": np.arange(6.0).reshape(2, 3)}
    same, other = distributed.checksum(params), distributed.checksum({"w": params["w"] + 1})

    class FakeComm:  # four ranks; ranks 1 and 3 hold other parameters
        def Get_size(self):
            return 4

        def allgather(self, mine):
            return [(t.hex(), c, e) for (t, c), e in zip((same, other, same, other), "abcd")]

    comm = FakeComm()
    with pytest.raises(distributed.RankMismatchError,
                       match=r"after epoch 3: ranks 1, 3 differ from rank 0 \(rank 0: sum 15\.0"):
        distributed.check_params_agree(params, "after epoch 3", comm)
    comm.allgather = lambda mine: [(same[0].hex(), same[1], e) for e in "abcd"]
    assert distributed.check_params_agree(params, comm=comm, extra="a") == list("abcd")
    # the crc32 sees what the sum cannot: two values swapped
    assert distributed.checksum({"w": params["w"][:, ::-1]})[1] != same[1]


def _rnnfast_command():
    beside = Path(sys.executable).parent / "rnnfast"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "rnnfast"]


@needs_mpi
def test_rnnfast_train_distributed_under_mpiexec(tmp_path):
    from rnnfast import charlm

    small = ["--max-chars", "6000", "--hidden", "16", "--batch", "4", "--k1", "20",
             "--sample-length", "40", "--no-progress", "--dtype", "float64", "--epochs", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ck = tmp_path / "lm.npz"
    start = time.perf_counter()
    proc = subprocess.run([_mpiexec(), "-n", "2", *_rnnfast_command(), "train", "--distributed",
                           *small, "--checkpoint", str(ck)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # rank 0 alone prints: one model line, one line per epoch, one sample per epoch
    assert out.count("Model(") == 1 and out.count("sample:") == 2, out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch ")] == \
        ["epoch 1", "epoch 2"], out
    # the checkpoint is written once, after save compared both ranks' parameters (as after
    # every epoch): it holds the single-process run's parameters
    saved = rnnfast.load(ck)
    assert saved.epoch == 2
    text = charlm.default_text()[:6000]
    model, _, history = charlm.train(text, hidden=16, batch=4, k1=20, sample_length=0,
                                     epochs=2, dtype=np.float64, progress=False,
                                     log=lambda *a: None)
    for name, p in model.params.items():
        np.testing.assert_allclose(saved.model.params[name], p, rtol=0, atol=1e-10,
                                   err_msg=name)
    assert saved.metadata["history"][-1]["loss"] == pytest.approx(history[-1]["loss"],
                                                                  rel=0, abs=1e-10)
    assert seconds < 60

    # under mpiexec without --distributed: refused, not two runs writing one checkpoint
    proc = subprocess.run([_mpiexec(), "-n", "2", *_rnnfast_command(), "train", *small],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "started by mpiexec with 2 ranks: add --distributed" in proc.stderr, proc.stderr
