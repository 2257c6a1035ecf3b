"""Smoke test of the benchmark harness on its tiny config: structure, never timings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rnnfast
from rnnfast import bench

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"median_s", "iqr_over_median", "repeats", "min_s", "throughput", "gflops",
          "ceiling_fraction", "peak_mib"}


def test_quick_run_has_every_field(tmp_path):
    out = tmp_path / "out.json"
    png = tmp_path / "out.png"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
            "--impls", "rnnfast", "numpy", "--json", str(out)]
    try:
        import matplotlib  # noqa: F401
        argv += ["--plot", str(png)]
    except ImportError:
        png = None
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "x rnnfast" in proc.stdout and "matmul ceiling" in proc.stdout
    result = json.loads(out.read_text())
    assert [r["threads"] for r in result["runs"]] == [1]
    run = result["runs"][0]
    assert run["ceiling_gflops"] > 0
    assert run["build"] == rnnfast.build_info()
    cells = [c for c in bench.CELLS if getattr(rnnfast, c, None) is not None]
    assert [row["cell"] for row in run["rows"]] == cells
    for row in run["rows"]:
        assert (row["B"], row["T"], row["D"], row["H"]) == bench.CONFIGS["quick"]
        assert row["flops"] == bench.step_flops(row["cell"], *bench.CONFIGS["quick"])
        assert set(row["impls"]) == {"rnnfast", "numpy"}
        for r in row["impls"].values():
            assert FIELDS <= set(r)
            assert r["repeats"] >= bench.MIN_REPEATS and r["median_s"] > 0
    if png is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bench/summary.py reads the same file into the targets' table
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "summary.py"), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| quick |")]
    assert [line.split(" | ")[1] for line in table] == cells
    assert all("(torch)" not in line and "(jax)" not in line for line in table)  # no peers run


def test_bidirectional_suite_runs_end_to_end(tmp_path):
    # The suite on the tiny config, one cell, the two implementations that are always there;
    # at 2 threads where the machine has them, which is where the pairs are timed.
    out = tmp_path / "bi.json"
    threads = ["1", "2"] if (os.cpu_count() or 1) >= 2 else ["1"]
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--suite",
            "bidirectional", "--cells", "GRU", "--impls", "rnnfast", "numpy", "--threads",
            *threads, "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "one bidirectional layer" in proc.stdout
    result = json.loads(out.read_text())
    assert result["suite"] == "bidirectional"
    dims = bench.CONFIGS["quick"]
    for run in result["runs"]:
        [row] = run["rows"]
        assert row["bidirectional"] and row["cell"] == "GRU"
        assert row["flops"] == bench.step_flops("GRU", *dims, directions=2)
        assert set(row["impls"]) == {"rnnfast", "numpy"}
        assert all(FIELDS <= set(r) for r in row["impls"].values())
        assert row["impls"]["rnnfast"]["peak_mib"] is not None or bench._rss_kib() is None
        if run["threads"] == 1:
            assert "pairs" not in run  # a pair needs 2 threads
            continue
        [pair] = run["pairs"]
        assert set(pair["impls"]) == {"uni@1", "bi@1", "bi@2"}
        assert pair["impls"]["uni@1"]["gflops"] * pair["impls"]["uni@1"]["median_s"] == \
            pytest.approx(bench.step_flops("GRU", *dims) / 1e9)
        assert "bi@2/uni@1" in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "summary.py"), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    if threads == ["1"]:
        assert "no run at 2 threads" in proc.stdout
        return
    [row] = [line for line in lines if line.startswith("| quick | GRU |") and "uni@1" not in line
             and line.count("|") == 12]
    assert row.split(" | ")[-1] in ("yes |", "no |")
    assert "– | not measured" in row  # no peer ran
    said = [line for line in lines if line.startswith("- ")]
    assert len(said) == 3 and "not measured" in said[0] and "not measured" in said[1]
    assert "hold" in said[2]  # the pair's target is said to hold or not, with its ratio


_STEPS_AGREE = """
import numpy as np
from rnnfast import bench
have, _ = bench._available(["torch", "jax"])
impls = ["rnnfast", "numpy"] + [i for i in ("torch", "jax") if have[i]]
steps = bench._row_steps("LSTM", (3, 7, 5, 4), impls, 1, bidirectional=True)
dx = {"rnnfast": steps["rnnfast"]()[0], "numpy": steps["numpy"]()[0]}
if "torch" in steps:
    dx["torch"] = steps["torch"]()[0].numpy()
if "jax" in steps:
    _, (_, dx["jax"]) = steps["jax"]()
for name, d in dx.items():
    np.testing.assert_allclose(np.asarray(d), dx["numpy"], rtol=1e-4, atol=1e-5, err_msg=name)
print("agree:", sorted(dx))
"""


def test_bidirectional_steps_agree():
    # Every implementation's bidirectional step computes the same dx: the peers are timed on
    # the same work as rnnfast (torch.nn with bidirectional=True, JAX's two scans). The LSTM
    # only: JAX compiles for a second or so per cell, and the reverse scan is the same code.
    # In a process of its own: JAX's threads would stay in this one, and a later test that
    # forks would then be warned of a deadlock.
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _STEPS_AGREE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "rnnfast" in out.stdout and "numpy" in out.stdout


def test_torch_suite_runs_end_to_end(tmp_path):
    # The suite on the tiny config, one cell, both implementations of the PyTorch training
    # step, at 1 and 2 threads where the machine has them (its targets are stated at 2).
    pytest.importorskip("torch")
    out = tmp_path / "torch.json"
    threads = ["1", "2"] if (os.cpu_count() or 1) >= 2 else ["1"]
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--suite", "torch",
            "--cells", "GRU", "--threads", *threads, "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert f"Embedding(V={bench.VOCAB}, D)" in proc.stdout
    result = json.loads(out.read_text())
    assert result["suite"] == "torch"
    dims = bench.CONFIGS["quick"]
    for run in result["runs"]:
        [row] = run["rows"]
        assert row["cell"] == "GRU" and row["model"] == {"vocab": bench.VOCAB,
                                                          "optimizer": "Adam"}
        assert row["flops"] == bench.model_flops("GRU", *dims)
        assert set(row["impls"]) == set(bench.MODEL_IMPLS)
        assert all(FIELDS <= set(r) for r in row["impls"].values())
        assert "pairs" not in run
    assert "x rnnfast" in proc.stdout and "rnnfast.torch" in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "summary.py"), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("| quick | GRU | 2 |") for line in lines) == \
        len(threads) + (threads == ["1", "2"])  # a table per thread count, and the targets'
    said = [line for line in lines if line.startswith("- ")]
    if threads == ["1"]:
        assert "no run at 2 threads" in proc.stdout
    else:  # quick has B = 2: no target applies, and the summary says so
        assert len(said) == 3 and all("no such row" in line for line in said)
        assert any(line.endswith("| no target |") for line in lines)


def test_torch_suite_targets():
    # The targets as stated: at batch 1 3x for every cell; from B = 16 on 2x for the RNN and
    # the GRU, 1.3x for the LSTM; none in between.
    assert [bench.model_target(c, 1) for c in bench.CELLS] == [3.0, 3.0, 3.0]
    assert [bench.model_target(c, 16) for c in bench.CELLS] == [2.0, 1.3, 2.0]
    assert [bench.model_target(c, B) for c in ("RNN", "LSTM") for B in (2, 15, 64)] == \
        [None, None, 2.0, None, None, 1.3]
    assert bench.model_flops("RNN", 1, 1, 1, 1, 1) == 12 + 6


_MODEL_STEPS_AGREE = """
import numpy as np
import torch
from rnnfast import bench
for cell in bench.CELLS:
    steps = bench._model_steps(cell, bench.CONFIGS["quick"], bench.MODEL_IMPLS, 1, vocab=11)
    ours, ref = steps["rnnfast.torch"], steps["torch.nn"]
    assert type(ref.model.cell) is getattr(torch.nn, cell)
    assert type(ours.model.cell).__module__ == "rnnfast.torch"
    a, b = ours.model.state_dict(), ref.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # same start
    for k in range(3):  # three steps, Adam's updates in between
        la, lb = ours(), ref()
        np.testing.assert_allclose(la.item(), lb.item(), rtol=1e-5, err_msg=f"{cell} loss {k}")
        pa = dict(ours.model.named_parameters())
        for name, p in ref.model.named_parameters():
            np.testing.assert_allclose(pa[name].grad.numpy(), p.grad.numpy(), rtol=1e-4,
                                       atol=1e-6, err_msg=f"{cell} {name}.grad {k}")
            np.testing.assert_allclose(pa[name].detach().numpy(), p.detach().numpy(),
                                       rtol=1e-4, atol=1e-6, err_msg=f"{cell} {name} {k}")
print("agree")
"""


def test_torch_suite_steps_agree():
    # The two implementations of the torch suite's training step compute the same losses,
    # gradients and Adam updates from the same weights and tokens: rnnfast.torch's cell is
    # timed on the same work as torch.nn's. In a process of its own: the steps set torch's
    # and rnnfast's thread counts, and rnnfast.torch follows torch's only until the latter.
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-c", _MODEL_STEPS_AGREE], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "agree" in out.stdout


def test_flops_formula():
    # LSTM: 3 x 2·B·T·(D+H)·4H
    assert bench.step_flops("LSTM", 64, 200, 256, 512) == 3 * 2 * 64 * 200 * 768 * 4 * 512
    assert bench.step_flops("RNN", 1, 1, 1, 1) == 12
    assert bench.step_flops("GRU", 1, 1, 1, 1) == 36
    assert bench.step_flops("GRU", 1, 1, 1, 1, directions=2) == 72


def test_thread_env_limits_every_peer():
    env = bench.thread_env(1)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert env[k] == "1"
    assert "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]


@pytest.mark.parametrize("kw, match", [({"configs": ["huge"]}, "unknown config"),
                                       ({"cells": ["TCN"]}, "unknown cell"),
                                       ({"impls": ["tf"]}, "unknown implementation"),
                                       ({"threads": [0]}, "threads must lie"),
                                       ({"suite": "all"}, "unknown suite")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        bench.run(**{"configs": ["quick"], **kw})


def test_threads_round_trip():
    n = rnnfast.get_num_threads()
    try:
        rnnfast.set_num_threads(1)
        assert rnnfast.get_num_threads() == 1
    finally:
        rnnfast.set_num_threads(n)
    with pytest.raises(ValueError, match="n must be an int"):
        rnnfast.set_num_threads(0)


def _libc():
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "malloc_trim") or bench._rss_kib() is None:
        pytest.skip("needs glibc and /proc")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc, ctypes


def test_peak_memory_counts_heap_pages_an_earlier_step_freed(monkeypatch):
    # A step that fills 16 MiB of heap blocks (each below any mmap threshold) and frees them,
    # leaving them under a block of its own so that free() cannot give them back. Run twice,
    # the second run reuses the first's resident pages: only the trim makes them count.
    libc, ctypes = _libc()
    n, size = 1024, 16384

    def step():
        blocks = [libc.malloc(size) for _ in range(n)]
        for p in blocks:
            ctypes.memset(p, 1, size)
        pin = libc.malloc(size)
        for p in blocks:
            libc.free(p)
        return pin

    step()
    assert bench._peak_step_mib(step, "numpy") >= 0.9 * n * size / 2**20
    monkeypatch.setattr(bench, "_release_free_heap", lambda: False)
    assert bench._peak_step_mib(step, "numpy") < 0.1 * n * size / 2**20  # the failure mode
