"""Smoke test of the benchmark harness on its tiny config: structure, never timings."""

import json
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


def test_flops_formula():
    # LSTM: 3 x 2·B·T·(D+H)·4H
    assert bench.step_flops("LSTM", 64, 200, 256, 512) == 3 * 2 * 64 * 200 * 768 * 4 * 512
    assert bench.step_flops("RNN", 1, 1, 1, 1) == 12
    assert bench.step_flops("GRU", 1, 1, 1, 1) == 36


def test_thread_env_limits_every_peer():
    env = bench.thread_env(1)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert env[k] == "1"
    assert "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]


@pytest.mark.parametrize("kw, match", [({"configs": ["huge"]}, "unknown config"),
                                       ({"cells": ["TCN"]}, "unknown cell"),
                                       ({"impls": ["tf"]}, "unknown implementation"),
                                       ({"threads": [0]}, "threads must lie")])
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


def test_cpu_check_names_what_is_missing():
    from rnnfast import _platform
    assert _platform.missing_cpu_features(["AVX2", "FMA", "SSE4_2"], {"sse4_2", "fma"}) == \
        ["AVX2"]
    flags = _platform._cpu_flags()
    if flags is not None:  # the CPU that runs the tests runs the module it built
        assert _platform.missing_cpu_features(rnnfast.build_info()["isa"], flags) == []


def test_cpu_check_raises_import_error_on_an_older_cpu(monkeypatch):
    from rnnfast import _platform
    if not rnnfast.build_info()["isa"]:
        pytest.skip("this build needs nothing beyond the compiler's baseline")
    monkeypatch.setattr(_platform, "_cpu_flags", lambda: {"sse", "sse2"})
    with pytest.raises(ImportError, match="RNNFAST_ARCH=none") as e:
        _platform.check_cpu()
    assert "AVX2" in str(e.value) or "SSE3" in str(e.value)


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
