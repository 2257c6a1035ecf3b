"""Benchmark of one training step against the NumPy reference, PyTorch and JAX.

One *step* is what training a recurrent layer costs apart from the optimiser: the forward
pass over the whole sequence, backpropagation through time, and the gradients of every weight
and of the input. Letters: B = batch, T = timesteps, D = input features, H = hidden units,
G = gates per cell (RNN 1, LSTM 4, GRU 3).

How it measures (the choices, so that the numbers can be trusted):

- **Threads.** Each thread count runs in its own worker subprocess (``python -m rnnfast.bench
  --worker``), started with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
  VECLIB_MAXIMUM_THREADS and NUMEXPR_NUM_THREADS = n, and, at n = 1, XLA_FLAGS limiting
  JAX/XLA to one intra-op thread; the worker is pinned to n cores (sched_setaffinity, set
  before the interpreter starts), and calls ``torch.set_num_threads(n)`` and
  ``rnnfast.set_num_threads(n)``. Env vars read at import are the only reliable way to set
  OpenBLAS and XLA, hence one process per thread count; the affinity makes the count hold
  even for a library that ignores its variable.
- **Time.** Every implementation is warmed up (JAX is compiled by that first call, so compile
  time is excluded), then the implementations are called in turn, round robin, so that drift
  of the machine hits all alike. The median over repeats is reported, with the spread as
  IQR / median. An implementation whose warm-up step takes long (the NumPy reference at big
  configs) gets fewer repeats, never fewer than ``MIN_REPEATS``: its row says how many. A
  step shorter than ``MIN_TIMED`` (20 ms) is timed as the mean of a loop of consecutive steps
  that fills it, and the garbage collector is off while timing (see ``_measure``).
- **FLOPs.** A step counts 3 × 2·B·T·(D+H)·G·H: the forward products, and twice as many in
  backward (input and weight gradients); elementwise work is not counted.
- **Ceiling.** float32 ``numpy.matmul`` of two 1024×1024 matrices, same threads, same run,
  measured at the start and at the end of each worker; fractions are of the higher of the two.
- **Peak memory.** Measured apart from the timing, in one process per implementation (1
  thread) that imports only that implementation: after two warm-up steps (for JAX: none, its
  step is compiled ahead of time and XLA keeps its buffers after a first run), Linux's peak
  resident set (VmHWM) is reset (``/proc/self/clear_refs``) just before one step and read just
  after, three times; the row reports the largest peak minus the resident set before that
  step (the failure mode of this measure is reading low), i.e. what the step
  itself added at its worst moment: outputs, caches, gradients and workspaces, whatever
  allocator made them (NumPy, C++, PyTorch, XLA). Inputs and weights exist beforehand and are
  not counted. The process runs with a fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_) so
  that large blocks go back to the system when freed, and the heap's free pages are given
  back (glibc's ``malloc_trim``) before each measured step, so that an earlier step's freed
  pages cannot hide this step's needs (without the trim PyTorch's step read 0.0 MiB at "long"
  RNN, and 6.9 instead of 22.1 MiB at "small" GRU). With PyTorch or JAX in the same process
  that no longer held (another implementation's peak read up to 2.5x lower), hence the
  separate processes. Where /proc is
  missing the column is empty. rnnfast's array cache (``rnnfast.set_cache_limit``) is emptied
  before each measured step, so the step allocates all it needs afresh, as the others do.

- **Suites.** ``--suite bidirectional`` times one bidirectional layer per row (PyTorch:
  ``bidirectional=True``; JAX: a forward scan and a reversed one) and, in each worker of 2
  threads or more, rnnfast alone as pairs: a unidirectional layer at 1 thread against the
  bidirectional layer at 1 thread and at the worker's count, round robin in one process
  (``_pair_steps``). Each worker records its load average and which compiled module it ran.
  ``--suite torch`` times a whole PyTorch training step per row instead of one layer: a
  next-token model Embedding(V, D) → cell(D, H, batch_first=True) → Linear(H, V) with V =
  ``VOCAB``, cross-entropy over every step, ``loss.backward()`` and ``torch.optim.Adam``'s
  step, once with torch.nn's cell ("torch.nn") and once with rnnfast.torch's ("rnnfast.torch"),
  from the same initial weights on the same tokens (``_model_steps``). Its GFLOP/s count the
  cell's products and the Linear's (``model_flops``).

Speed claims come only from this harness, as ratios within one run. It is never a timed test.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {  # name -> (B, T, D, H)
    "online": (1, 100, 64, 64),
    "small": (32, 100, 64, 128),
    "medium": (64, 100, 128, 256),
    "large": (64, 200, 256, 512),
    "long": (16, 1000, 32, 64),
    "quick": (2, 6, 3, 4),  # CI smoke test: seconds, not a measurement
}
DEFAULT_CONFIGS = ("online", "small", "medium", "large", "long")
CELLS = ("RNN", "LSTM", "GRU")
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
IMPLS = ("rnnfast", "numpy", "torch", "jax")
# The torch suite's two implementations of one training step: rnnfast.torch's cell, the
# reference of its rows (as "rnnfast" is of the others), and torch.nn's.
MODEL_IMPLS = ("rnnfast.torch", "torch.nn")
REFS = ("rnnfast", "rnnfast.torch")  # what "x rnnfast" divides by, whichever a row has
# The torch suite's vocabulary: a character-level model's (ASCII fits in 128), the kind of
# model small recurrent nets are trained as. The head's products are V / ((D + H)·G) of the
# cell's: 1/12 (medium LSTM) to 1 (online RNN) at the bench configs, real work but not the
# step's bulk; a word model's V of 10 000 would make them 6–80 times the cell's, and the step
# would time a softmax that is the same whichever cell runs.
VOCAB = 128
MIN_REPEATS = 3
SLOW_BUDGET = 4.0  # seconds of timed steps granted to a slow implementation per row
MIN_TIMED = 0.02  # seconds: shorter steps are timed in loops that fill this (see _measure)
QUIET_S = 0.12  # seconds of busy waiting before each repeat with > 1 thread (see _measure)
# What a run measures when its configs and cells are not given: ``--suite NAME``. A suite's
# rows are one layer each, bidirectional or not; "pairs" adds, in every worker of 2 threads or
# more, rnnfast alone timed round robin as a unidirectional layer at 1 thread and a
# bidirectional one at 1 thread and at the worker's count (see ``_pair_steps``); "model"
# rows are a whole PyTorch training step each (see ``_model_steps``); "impls" are the
# implementations a suite can run (all of them unless ``--impls`` narrows it).
SUITES = {
    "default": {"configs": DEFAULT_CONFIGS, "cells": CELLS, "bidirectional": False,
                "pairs": False, "model": False, "impls": IMPLS},
    "bidirectional": {"configs": ("online", "small", "medium"), "cells": ("LSTM", "GRU"),
                      "bidirectional": True, "pairs": True, "model": False, "impls": IMPLS},
    "torch": {"configs": ("online", "small", "medium"), "cells": CELLS, "bidirectional": False,
              "pairs": False, "model": True, "impls": MODEL_IMPLS},
}


def at_offset(a, offset):
    """A copy of ``a`` whose data start ``offset`` bytes past a 64-byte boundary: where an
    array lies must not change a result (tests/test_parity.py), and may change a step's time
    (bench/alignment.py)."""
    import numpy as np
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def step_flops(cell, B, T, D, H, directions=1):
    """3 × 2·B·T·(D+H)·G·H per direction: forward products, and twice that in backward."""
    return directions * 3 * 2 * B * T * (D + H) * GATES[cell] * H


def model_flops(cell, B, T, D, H, V=VOCAB):
    """A torch-suite step: the cell's ``step_flops`` and the Linear head's 3 × 2·B·T·H·V
    (forward, and the weight and input gradients); the embedding, the cross-entropy and Adam
    are not counted."""
    return step_flops(cell, B, T, D, H) + 3 * 2 * B * T * H * V


def thread_env(n):
    """Environment variables that hold every peer to n threads (read at import time)."""
    env = {k: str(n) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["XLA_FLAGS"] = flags.strip()
    return env


# -- the worker: everything below runs inside one subprocess per thread count ---------------

def _rss_kib():
    """(VmRSS, VmHWM) in KiB from /proc/self/status, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            d = dict(line.split(":", 1) for line in f if ":" in line)
        return int(d["VmRSS"].split()[0]), int(d["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def _release_free_heap():
    """Give the heap's free pages back to the system (glibc's malloc_trim); False elsewhere.

    Blocks under the mmap threshold come from the heap, and glibc keeps freed heap pages
    resident: a step whose many small blocks were freed by the step before would reuse them
    unseen, and its peak would read low (PyTorch's RNN at "long" read 0.0 MiB with a 3.9 MiB
    output). Trimmed first, every page a step touches is counted, for every implementation.
    """
    try:
        import ctypes
        import ctypes.util
        name = ctypes.util.find_library("c")
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return False
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def _peak_step_mib(step, impl):
    """What one call of ``step`` adds to the resident set at its peak, in MiB (or None)."""
    if impl in REFS:
        # Blocks that rnnfast's array cache kept from the last step would already count in
        # the resident set before this one, and it would read low.
        import rnnfast
        rnnfast.empty_cache()
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
    except OSError:
        return None
    before = _rss_kib()
    out = step()
    after = _rss_kib()
    del out
    if before is None or after is None:
        return None
    return max(max(after) - before[0], 0) / 1024


def _matmul_ceiling(repeats):
    """GFLOP/s of float32 numpy.matmul on 1024×1024, median of repeats after warm-up."""
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 1024), dtype=np.float32)
    c = np.empty_like(a)
    for _ in range(3):
        np.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2 * 1024**3 / statistics.median(times) / 1e9


def _make_rnnfast(cell, B, T, D, H, x, dy, backend, bidirectional):
    import rnnfast
    cls = getattr(rnnfast, cell)
    kw = {"nonlinearity": "tanh"} if cell == "RNN" else {}
    model = cls(D, H, seed=0, backend=backend, bidirectional=bidirectional, **kw)

    def step():
        _, _, cache = model.forward(x)
        return model.backward(cache, dy)
    return step, model.params


def _make_torch(cell, B, T, D, H, x, dy, params, threads, bidirectional):
    import torch
    torch.set_num_threads(threads)
    kw = {"nonlinearity": "tanh"} if cell == "RNN" else {}
    mod = getattr(torch.nn, cell)(D, H, batch_first=True, bidirectional=bidirectional, **kw)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            p.copy_(torch.from_numpy(params[name]))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    plist = list(mod.parameters())

    def step():
        xt.grad = None
        for p in plist:
            p.grad = None
        y, _ = mod(xt)
        y.backward(dyt)
        return xt.grad, [p.grad for p in plist]
    return step


def _jax_layer(cell, jnp, lax):
    """y = layer(params, x) for one layer in jax.numpy, PyTorch's equations and gate order."""
    sig = lambda v: 1 / (1 + jnp.exp(-v))  # noqa: E731

    def layer(p, x, reverse=False):
        w_ih, w_hh, b_ih, b_hh = p
        a = jnp.swapaxes(x @ w_ih.T + b_ih, 0, 1)  # (T, B, G*H): the input projection at once
        B, H = x.shape[0], w_hh.shape[1]
        h0 = jnp.zeros((B, H), x.dtype)

        if cell == "RNN":
            def f(h, a_t):
                h = jnp.tanh(a_t + h @ w_hh.T + b_hh)
                return h, h
            init = h0
        elif cell == "LSTM":
            def f(hc, a_t):
                h, c = hc
                i, fg, g, o = jnp.split(a_t + h @ w_hh.T + b_hh, 4, axis=-1)
                c = sig(fg) * c + sig(i) * jnp.tanh(g)
                h = sig(o) * jnp.tanh(c)
                return (h, c), h
            init = (h0, h0)
        else:
            def f(h, a_t):
                ri, zi, ni = jnp.split(a_t, 3, axis=-1)
                rh, zh, nh = jnp.split(h @ w_hh.T + b_hh, 3, axis=-1)
                r, z = sig(ri + rh), sig(zi + zh)
                n = jnp.tanh(ni + r * nh)
                h = (1 - z) * n + z * h
                return h, h
            init = h0
        _, ys = lax.scan(f, init, a, reverse=reverse)
        return jnp.swapaxes(ys, 0, 1)
    return layer


def _make_jax(cell, B, T, D, H, x, dy, params, threads, bidirectional):
    import jax
    import jax.numpy as jnp
    from jax import lax
    layer = _jax_layer(cell, jnp, lax)
    suffixes = ("l0", "l0_reverse") if bidirectional else ("l0",)
    p = tuple(tuple(jnp.asarray(params[f"{n}_{sfx}"])
                    for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
              for sfx in suffixes)

    def model(p, x):
        if not bidirectional:
            return layer(p[0], x)
        # A forward scan and a scan over the reversed sequence (lax.scan's reverse=True: no
        # flipped copies, and each output lands at its own t), joined as torch.nn does.
        return jnp.concatenate([layer(p[0], x), layer(p[1], x, reverse=True)], axis=-1)

    xj, dyj = jnp.asarray(x), jnp.asarray(dy)
    # The vector-Jacobian product with dy, as backward(cache, dy) computes.
    grad = jax.jit(jax.value_and_grad(lambda p, x, dy: jnp.sum(model(p, x) * dy),
                                      argnums=(0, 1)))
    grad = grad.lower(p, xj, dyj).compile()  # ahead of time: no step pays for compiling

    def step():
        return jax.block_until_ready(grad(p, xj, dyj))
    return step


def _available(impls):
    """Which of the optional peers asked for import here, and a note for each that does not."""
    have, notes = {"rnnfast": True, "numpy": True}, {}
    for name in ("torch", "jax"):
        if name not in impls:
            continue
        try:
            __import__(name)
            have[name] = True
        except ImportError as e:
            have[name] = False
            notes[name] = f"{name} not installed ({e}); skipped. pip install 'rnnfast[bench]'"
    return have, notes


def _versions(have):
    import numpy as np
    import rnnfast
    v = {"python": platform.python_version(), "numpy": np.__version__,
         "rnnfast": rnnfast.__version__}
    for name in ("torch", "jax"):
        if have.get(name):
            v[name] = sys.modules[name].__version__
    return v


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                   "filepath")} for i in threadpool_info()]


def _row_steps(cell, dims, impls, threads, bidirectional=False):
    """name -> step() for each implementation, all with the same weights, x and dy."""
    import numpy as np
    B, T, D, H = dims
    N = 2 if bidirectional else 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, D), dtype=np.float32)
    dy = rng.standard_normal((B, T, N * H), dtype=np.float32)
    steps = {}
    ref_step, params = _make_rnnfast(cell, B, T, D, H, x, dy, "cpp", bidirectional)
    for impl in impls:
        if impl == "rnnfast":
            steps[impl] = ref_step
        elif impl == "numpy":
            steps[impl], _ = _make_rnnfast(cell, B, T, D, H, x, dy, "numpy", bidirectional)
        elif impl == "torch":
            steps[impl] = _make_torch(cell, B, T, D, H, x, dy, params, threads, bidirectional)
        elif impl == "jax":
            steps[impl] = _make_jax(cell, B, T, D, H, x, dy, params, threads, bidirectional)
    return steps


def _pair_steps(cell, dims, threads):
    """rnnfast alone: {"uni@1", "bi@1", "bi@<threads>"} -> step(), each setting rnnfast's
    thread count before it runs (inside the timed loop: a 35 ns check per step, and a 0.7 µs
    call at the first step of a repeat, where the count changes).

    The target "a bidirectional layer at 2 threads within 1.2× of a unidirectional one at 1
    thread" compares two thread counts: timed in one process, round robin, so that it is a
    paired comparison rather than one across workers run minutes apart; bi@1 says what
    running the two directions side by side gains.
    """
    import rnnfast
    from . import _core

    def at(n, step):
        def run():
            if _core.get_num_threads() != n:
                rnnfast.set_num_threads(n)
            return step()
        return run
    uni = _row_steps(cell, dims, ["rnnfast"], 1)["rnnfast"]
    bi = _row_steps(cell, dims, ["rnnfast"], threads, bidirectional=True)["rnnfast"]
    return {"uni@1": at(1, uni), "bi@1": at(1, bi), f"bi@{threads}": at(threads, bi)}


def _model_steps(cell, dims, impls, threads, vocab=VOCAB, lr=1e-3):
    """name -> step() for the torch suite: one training step of Embedding(V, D) → cell(D, H,
    batch_first=True) → Linear(H, V) on next-token prediction, with torch.nn's cell
    ("torch.nn") or rnnfast.torch's ("rnnfast.torch").

    A step is what a PyTorch training loop runs: ``zero_grad`` (set_to_none), the forward
    pass, cross-entropy over all B·T positions (mean), ``loss.backward()`` and
    ``torch.optim.Adam``'s step (its defaults: lr aside, as a user writes it); it returns the
    loss (a 0-d tensor). Both models start from the same weights (torch.nn's initialisation
    under ``torch.manual_seed(0)``, loaded into the other by ``load_state_dict``) and see the
    same tokens (B, T + 1) drawn once; each has its own Adam. Each step function carries its
    model and optimiser as ``step.model`` and ``step.optimizer``.
    """
    import torch

    import rnnfast
    import rnnfast.torch as rtorch
    torch.set_num_threads(threads)
    rnnfast.set_num_threads(threads)  # rnnfast.torch follows torch's count; said explicitly
    B, T, D, H = dims
    tokens = torch.randint(vocab, (B, T + 1), generator=torch.Generator().manual_seed(1))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].reshape(-1).contiguous()

    class Model(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            kw = {"nonlinearity": "tanh"} if cell == "RNN" else {}
            self.embedding = torch.nn.Embedding(vocab, D)
            self.cell = getattr(module, cell)(D, H, batch_first=True, **kw)
            self.head = torch.nn.Linear(H, vocab)

        def forward(self, tokens):
            y, _ = self.cell(self.embedding(tokens))
            return self.head(y)

    torch.manual_seed(0)
    weights = Model(torch.nn).state_dict()
    steps = {}
    for impl in impls:
        if impl not in MODEL_IMPLS:
            raise ValueError(f"the torch suite runs {', '.join(MODEL_IMPLS)}, not {impl!r}")
        model = Model(torch.nn if impl == "torch.nn" else rtorch)
        model.load_state_dict(weights)
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets)
            loss.backward()
            opt.step()
            return loss.detach()
        step.model, step.optimizer = model, opt
        steps[impl] = step
    return steps


def _suite_steps(spec, cell, dims, impls, threads):
    """The steps of one row of the suite ``spec`` describes: a layer's or a whole model's."""
    if spec.get("model"):
        return _model_steps(cell, dims, impls, threads)
    return _row_steps(cell, dims, impls, threads, spec["bidirectional"])


def memory_worker(spec):
    """Peak memory of one step for ONE implementation, every row: {"config/cell": MiB}.

    Each implementation gets a process of its own, because a peer in the same process
    changed what another's step appeared to add (the allocators of PyTorch and XLA change
    how freed memory is returned); memory does not depend on the thread count.
    """
    import rnnfast
    impl = spec["impl"]
    have, _ = _available(["torch"] if spec.get("model") else [impl])
    peaks = {}
    if not have.get("torch" if spec.get("model") else impl):
        return peaks
    for cfg in spec["configs"]:
        for cell in spec["cells"]:
            if getattr(rnnfast, cell, None) is None:
                continue
            step = _suite_steps(spec, cell, CONFIGS[cfg], [impl], 1)[impl]
            if impl != "jax":  # JAX is compiled already; XLA keeps buffers after a first run
                step()
                step()
            # The failure mode of this measure is reading low (a freed page reused), so
            # the largest of three readings.
            reads = [_peak_step_mib(step, impl) for _ in range(3)]
            peaks[f"{cfg}/{cell}"] = None if None in reads else max(reads)
            del step
    return peaks


def worker(spec):
    """Run every (config, cell) row at one thread count; returns a JSON-able dict."""
    threads = spec["threads"]
    import rnnfast
    if hasattr(rnnfast, "set_num_threads"):
        rnnfast.set_num_threads(threads)
    model = spec.get("model", False)
    if model:  # both implementations of a model step are PyTorch's
        have, notes = _available(["torch"])
        wanted = list(spec["impls"]) if have["torch"] else []
        if not have["torch"]:
            notes["torch"] += " (the torch suite needs it: no rows)"
    else:
        have, notes = _available(spec["impls"])
        wanted = [i for i in spec["impls"] if have.get(i)]
    out = {"threads": threads, "notes": notes, "versions": _versions(have),
           "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else None,
           "ceiling_start_gflops": _matmul_ceiling(spec["ceiling_repeats"]), "rows": []}
    # Measured again at the end; the rows use the higher of the two, the conservative choice
    # on a machine whose load changes (a fraction of the lower would flatter us).
    out["ceiling_gflops"] = out["ceiling_start_gflops"]
    out["build"] = getattr(rnnfast, "build_info", lambda: None)()
    out["core_sha256"] = _core_sha256()
    out["loadavg_start"] = _loadavg()
    bi = spec["bidirectional"]
    pairs = spec["pairs"] and threads >= 2
    if pairs:
        out["pairs"] = []
    for cfg in spec["configs"]:
        dims = CONFIGS[cfg]
        for cell in spec["cells"]:
            if getattr(rnnfast, cell, None) is None:
                out["notes"][cell] = f"rnnfast has no {cell} yet; skipped"
                continue
            if not wanted:
                continue
            steps = _suite_steps(spec, cell, dims, wanted, threads)
            flops = (model_flops(cell, *dims) if model
                     else step_flops(cell, *dims, directions=2 if bi else 1))
            row = _measure(cfg, cell, dims, steps, spec["repeats"], threads,
                           dict.fromkeys(steps, flops))
            row["bidirectional"] = bi
            if model:
                row["model"] = {"vocab": VOCAB, "optimizer": "Adam"}
            out["rows"].append(row)
            del steps
            if pairs:
                steps = _pair_steps(cell, dims, threads)
                flops = {k: step_flops(cell, *dims, directions=1 if k.startswith("uni") else 2)
                         for k in steps}
                out["pairs"].append(_measure(cfg, cell, dims, steps, spec["repeats"], threads,
                                             flops))
                rnnfast.set_num_threads(threads)
    out["ceiling_end_gflops"] = _matmul_ceiling(spec["ceiling_repeats"])
    out["ceiling_gflops"] = max(out["ceiling_start_gflops"], out["ceiling_end_gflops"])
    out["loadavg_end"] = _loadavg()
    for row in out["rows"] + out.get("pairs", []):
        for r in row["impls"].values():
            r["ceiling_fraction"] = r["gflops"] / out["ceiling_gflops"]
    out["blas"] = _blas_info()
    return out


def _core_sha256():
    """The first 12 hex digits of the compiled module's SHA-256: which build a worker ran
    (a rebuild between two workers of one run would otherwise go unseen)."""
    import hashlib

    from . import _core
    with open(_core.__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def _loadavg():
    """The 1-, 5- and 15-minute load averages, or None where the system has none."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def _measure(cfg, cell, dims, steps, repeats, threads, flops):
    """Warm up, then time round robin; one row per implementation (``flops``: name ->
    FLOPs of its step).

    A repeat is one step, or for a step shorter than ``MIN_TIMED`` seconds the mean of as
    many consecutive steps as fill it: a single sub-millisecond step, timed alone right after
    another implementation's, measured mostly that one's wake of cold caches and the garbage
    collector's passes (an online RNN step read 0.50 ms that way against ~0.12 ms in a loop).
    The garbage collector is off while timing, for every implementation alike.

    With more than one thread, each repeat starts after ``QUIET_S`` seconds of busy waiting:
    the threads an implementation leaves spinning after its turn would otherwise run through
    the next one's. numpy's OpenBLAS workers spin for about 0.1 s after a threaded product, and
    with two cores they took one from whichever implementation came next (rnnfast's online
    GRU step at 2 threads: 0.38–0.44 ms after a sleep, 0.50–0.74 ms right after a 512² numpy
    matmul, slower than on one thread; JAX's online LSTM step read 2.6 ms in a run without
    this wait, 1.3–1.7 ms in three runs with it). Busy, because after 0.12 s of sleep this
    VM's cores came back slow: rnnfast alone, online LSTM at 2 threads, 0.50–0.58 ms after
    sleeps against 0.41–0.45 after busy waits or none.
    """
    from . import _core
    quiet = QUIET_S if threads > 1 else 0.0
    target, inner = {}, {}
    for name, step in steps.items():
        step()
        t0 = time.perf_counter()
        step()
        warm = time.perf_counter() - t0
        target[name] = max(MIN_REPEATS, min(repeats, int(SLOW_BUDGET / max(warm, 1e-9))))
        inner[name] = max(1, int(MIN_TIMED / max(warm, 1e-9)))
    times = {name: [] for name in steps}
    gc.collect()
    gc.disable()
    try:
        while any(len(times[n]) < target[n] for n in steps):
            for name, step in steps.items():
                if len(times[name]) < target[name]:
                    if quiet:  # a busy wait: see the docstring
                        t_end = time.perf_counter() + quiet
                        while time.perf_counter() < t_end:
                            pass
                    t0 = time.perf_counter()
                    for _ in range(inner[name]):
                        out = step()
                    times[name].append((time.perf_counter() - t0) / inner[name])
                    del out
                    # rnnfast's helper thread (cpp/helper.hpp) spins a while after its last
                    # task: not into the next implementation's turn, whose core it would take.
                    _core._rest_helper()
            gc.collect()  # between rounds, outside the timed loops
    finally:
        gc.enable()
    B, T, D, H = dims
    impls = {}
    for name, step in steps.items():
        ts = sorted(times[name])
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [med, med, med]
        impls[name] = {
            "median_s": med, "iqr_over_median": (q[2] - q[0]) / med, "repeats": len(ts),
            "min_s": ts[0], "steps_per_repeat": inner[name], "throughput": B * T / med,
            "gflops": flops[name] / med / 1e9,
            "ceiling_fraction": None,  # set by worker once the ceiling is final
            "peak_mib": None,  # from memory_worker
        }
    return {"config": cfg, "cell": cell, "B": B, "T": T, "D": D, "H": H, "threads": threads,
            "flops": max(flops.values()),  # a pair's: its bidirectional step's
            "impls": impls}


# -- the driver ------------------------------------------------------------------------------

def run(configs=None, cells=None, threads=(1, 2), impls=None, repeats=15,
        ceiling_repeats=20, progress=None, suite="default"):
    """Run the benchmark, one worker subprocess per thread count; returns the result dict.

    ``suite`` names an entry of ``SUITES``: the configs, cells and implementations it runs
    when they are None, whether its layers are bidirectional, whether it times the pairs
    (``_pair_steps``), and whether its rows are whole PyTorch training steps
    (``_model_steps``).
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    what = SUITES[suite]
    configs = what["configs"] if configs is None else configs
    cells = what["cells"] if cells is None else cells
    impls = what["impls"] if impls is None else impls
    for c in configs:
        if c not in CONFIGS:
            raise ValueError(f"unknown config {c!r}; choose from {', '.join(CONFIGS)}")
    for c in cells:
        if c not in CELLS:
            raise ValueError(f"unknown cell {c!r}; choose from {', '.join(CELLS)}")
    for i in impls:
        if i not in what["impls"]:
            raise ValueError(f"unknown implementation {i!r} for suite {suite!r}; choose from "
                             f"{', '.join(what['impls'])}")
    cpus = os.cpu_count() or 1
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(),
              "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
              "suite": suite, "git": _git_head(), "runs": []}
    for n in threads:
        if n < 1 or n > cpus:
            raise ValueError(f"threads must lie in [1, {cpus}] on this machine, got {n}")
    for n in threads:
        spec = {"threads": n, "configs": list(configs), "cells": list(cells),
                "impls": list(impls), "repeats": repeats, "ceiling_repeats": ceiling_repeats,
                "bidirectional": what["bidirectional"], "pairs": what["pairs"],
                "model": what["model"]}
        if progress:
            progress(f"threads={n}: {len(configs)} config(s) x {len(cells)} cell(s) ...")
        result["runs"].append(_spawn(spec))
    for impl in impls:
        if progress:
            progress(f"peak memory of {impl} (a process of its own) ...")
        spec = {"mode": "memory", "impl": impl, "threads": 1, "configs": list(configs),
                "cells": list(cells), "bidirectional": what["bidirectional"],
                "model": what["model"]}
        peaks = _spawn(spec)
        for run_ in result["runs"]:
            for row in run_["rows"]:
                if impl in row["impls"]:
                    row["impls"][impl]["peak_mib"] = peaks.get(f"{row['config']}/{row['cell']}")
    return result


def _spawn(spec):
    env = dict(os.environ, **thread_env(spec["threads"]))
    if spec.get("mode") == "memory":
        # See "Peak memory" above. Only there: timed steps run with glibc's defaults, as in a
        # user's process (forcing every block over 128 KiB through mmap made every step of
        # every implementation pay for fresh zeroed pages: +25–35 % for rnnfast at "long").
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 17)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "out.json")
        cmd = [sys.executable, "-m", "rnnfast.bench", "--worker", json.dumps(spec), path]
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, preexec_fn=_pin(spec["threads"]))
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark worker for threads={spec['threads']} failed:\n"
                               f"{proc.stderr[-4000:]}")
        with open(path) as f:
            return json.load(f)


def _pin(n):
    """A preexec_fn that pins the worker to the first n of our cores (None off Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:n]
    return lambda: os.sched_setaffinity(0, cpus)


def _git_head():
    """``git rev-parse --short HEAD`` of the checkout this module lives in, "+dirty" when its
    tracked files differ from HEAD; None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                              capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, text=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "system": platform.platform()}


# -- reporting -------------------------------------------------------------------------------

def _fmt_time(s):
    return f"{s * 1e3:9.2f}" if s < 10 else f"{s * 1e3:9.0f}"


def format_table(result):
    """The result as a text table: one line per (config, cell, threads, implementation).

    "x rnnfast" is that implementation's median divided by rnnfast's: how many times faster
    rnnfast is (below 1: slower).
    """
    lines = [f"rnnfast bench  {result['date']}  {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores"]
    for run in result["runs"]:
        n = run["threads"]
        b = run.get("build") or {}
        lines.append("")
        lines.append(f"threads={n}  matmul ceiling {run['ceiling_gflops']:.1f} GFLOP/s "
                     f"(float32 numpy 1024x1024; {run['ceiling_start_gflops']:.1f} at start, "
                     f"{run['ceiling_end_gflops']:.1f} at end)  rnnfast build: "
                     f"kernel={b.get('kernel', b.get('arch', '?'))} openmp={b.get('openmp', '?')}")
        if run.get("core_sha256"):
            load = run.get("loadavg_start"), run.get("loadavg_end")
            lines.append(f"_core sha256 {run['core_sha256']}" + (
                f"  load average {load[0][0]:.2f} at start, {load[1][0]:.2f} at end"
                if None not in load else ""))
        if any(row.get("bidirectional") for row in run["rows"]):
            lines.append("every row: one bidirectional layer, y (B, T, 2H); GFLOP/s count "
                         "both directions")
        model = next((row["model"] for row in run["rows"] if row.get("model")), None)
        if model:
            lines.append(f"every row: one training step of Embedding(V={model['vocab']}, D) -> "
                         f"cell(D, H) -> Linear(H, V), cross-entropy at every step, backward, "
                         f"{model['optimizer']}; the cell rnnfast.torch's or torch.nn's; "
                         "GFLOP/s count the cell and the Linear")
        for note in run["notes"].values():
            lines.append(f"  note: {note}")
        w = max([8] + [len(name) for row in run["rows"] for name in row["impls"]])
        head = (f"{'config':<7} {'cell':<5} {'impl':<{w}} {'median ms':>9} {'IQR/med':>7} "
                f"{'rep':>3} {'steps*B/s':>10} {'GFLOP/s':>7} {'ceil%':>6} {'peak MiB':>8} "
                f"{'x rnnfast':>9}")
        lines.append(head)
        lines.append("-" * len(head))
        for row in run["rows"]:
            ref = _ref(row)
            for name, r in row["impls"].items():
                ratio = f"{r['median_s'] / ref['median_s']:9.2f}" if ref else f"{'':>9}"
                peak = f"{r['peak_mib']:8.1f}" if r["peak_mib"] is not None else f"{'':>8}"
                lines.append(
                    f"{row['config']:<7} {row['cell']:<5} {name:<{w}} {_fmt_time(r['median_s'])} "
                    f"{r['iqr_over_median'] * 100:6.1f}% {r['repeats']:>3} "
                    f"{r['throughput']:10.0f} {r['gflops']:7.2f} "
                    f"{r['ceiling_fraction'] * 100:5.1f}% {peak} {ratio}")
        _noise_line(lines, run["rows"])
        if run.get("pairs"):
            lines += _pairs_table(run)
    return "\n".join(lines)


def _ref(row):
    """The row's rnnfast entry, the one "x rnnfast" divides by (None if it has none)."""
    return next((row["impls"][k] for k in REFS if k in row["impls"]), None)


def model_target(cell, B):
    """The torch suite's target at 2 threads, torch.nn's step time over rnnfast.torch's:
    3 at batch 1 for every cell; from B = 16 on 2 for the RNN and the GRU, 1.3 for the LSTM;
    None (no target) in between."""
    if B == 1:
        return 3.0
    if B >= 16:
        return 1.3 if cell == "LSTM" else 2.0
    return None


def _noise_line(lines, rows):
    noise = [r["iqr_over_median"] for row in rows for r in row["impls"].values()]
    if noise:
        lines.append(f"noise: IQR/median median {statistics.median(noise) * 100:.1f}%, "
                     f"worst {max(noise) * 100:.1f}%")


def _pairs_table(run):
    """The pairs of a worker (``_pair_steps``) as text lines: medians and their ratios."""
    n = run["threads"]
    bi_n = f"bi@{n}"
    lines = ["", f"rnnfast alone, one process, round robin: unidirectional layer at 1 thread "
                 f"(uni@1), bidirectional at 1 (bi@1) and at {n} threads ({bi_n})"]
    head = (f"{'config':<7} {'cell':<5} {'uni@1 ms':>9} {'bi@1 ms':>9} {bi_n + ' ms':>9} "
            f"{bi_n + '/uni@1':>11} {'bi@1/' + bi_n:>10} {'IQR/med':>7}")
    lines += [head, "-" * len(head)]
    for row in run["pairs"]:
        t = {k: r["median_s"] for k, r in row["impls"].items()}
        worst = max(r["iqr_over_median"] for r in row["impls"].values())
        lines.append(f"{row['config']:<7} {row['cell']:<5} {_fmt_time(t['uni@1'])} "
                     f"{_fmt_time(t['bi@1'])} {_fmt_time(t[bi_n])} "
                     f"{t[bi_n] / t['uni@1']:11.2f} {t['bi@1'] / t[bi_n]:10.2f} "
                     f"{worst * 100:6.1f}%")
    _noise_line(lines, run["pairs"])
    return lines


def plot(result, path):
    """Bar chart of rnnfast's speed-up over each peer (log scale), one panel per thread count,
    and one of the pairs' bi@n / uni@1 per worker that timed them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = result["runs"]
    paired = [run for run in runs if run.get("pairs")]
    panels = len(runs) + len(paired)
    fig, axes = plt.subplots(panels, 1, figsize=(11, 3.6 * panels), squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        rows = [r for r in run["rows"] if _ref(r) is not None]
        names = IMPLS + MODEL_IMPLS
        peers = [p for p in names if p not in REFS and any(p in r["impls"] for r in rows)]
        width = 0.8 / max(len(peers), 1)
        for k, peer in enumerate(peers):
            xs, hs = [], []
            for i, r in enumerate(rows):
                if peer in r["impls"]:
                    xs.append(i + k * width)
                    hs.append(r["impls"][peer]["median_s"] / _ref(r)["median_s"])
            ax.bar(xs, hs, width, label=f"vs {peer}")
        ax.axhline(1, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks([i + width * (len(peers) - 1) / 2 for i in range(len(rows))])
        ax.set_xticklabels([f"{r['config']}\n{r['cell']}" for r in rows], fontsize=8)
        ax.set_ylabel("rnnfast speed-up (x)")
        model = any(r.get("model") for r in rows)
        if model and run["threads"] == 2:  # the targets are stated at 2 threads
            marks = [(i, model_target(r["cell"], r["B"])) for i, r in enumerate(rows)]
            marks = [(i, t) for i, t in marks if t is not None]
        if model and run["threads"] == 2 and marks:
            ax.plot([i for i, _ in marks], [t for _, t in marks], "r_", ms=22, mew=2,
                    label="target")
        if model:
            what = "Embedding -> cell -> Linear, cross-entropy, Adam (rnnfast.torch's cell)"
        else:
            layer = ("bidirectional layer" if any(r.get("bidirectional") for r in rows)
                     else "layer")
            what = f"one {layer}"
        ax.set_title(f"one training step of {what}, float32, {run['threads']} thread(s)")
        ax.legend(fontsize=8)
    for ax, run in zip(axes[len(runs):, 0], paired):
        bi_n = f"bi@{run['threads']}"
        rows = run["pairs"]
        ax.bar(range(len(rows)), [r["impls"][bi_n]["median_s"] / r["impls"]["uni@1"]["median_s"]
                                  for r in rows], 0.6)
        ax.axhline(1.2, color="r", lw=0.8, ls="--", label="target 1.2")
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{r['config']}\n{r['cell']}" for r in rows], fontsize=8)
        ax.set_ylabel(f"{bi_n} time / uni@1 time")
        ax.set_title(f"rnnfast: bidirectional layer at {run['threads']} threads against a "
                     "unidirectional one at 1 thread (lower is better)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker_main(argv[1], argv[2])
    p = argparse.ArgumentParser(prog="rnnfast bench", description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=list(SUITES), default="default",
                   help="what to run: 'default' (every config and cell, one-direction "
                        "layers), 'bidirectional' (online, small, medium; LSTM, GRU; "
                        "bidirectional layers, and rnnfast's unidirectional layer at 1 thread "
                        "against its bidirectional one at 2) or 'torch' (online, small, "
                        "medium; every cell; a whole PyTorch training step, Embedding -> cell "
                        "-> Linear + Adam, rnnfast.torch's cell against torch.nn's); "
                        "--configs, --cells and --impls narrow it")
    p.add_argument("--configs", nargs="+", default=None,
                   help=f"from {', '.join(f'{k}={v}' for k, v in CONFIGS.items())} "
                        "as (B, T, D, H); default: the suite's")
    p.add_argument("--cells", nargs="+", default=None, help="default: the suite's")
    p.add_argument("--impls", nargs="+", default=None,
                   help=f"default: the suite's ({' '.join(IMPLS)}; for 'torch' "
                        f"{' '.join(MODEL_IMPLS)})")
    p.add_argument("--threads", nargs="+", type=int, default=None, help="default: 1 2")
    p.add_argument("--repeats", type=int, default=15, help="timed steps per implementation "
                   f"(slow ones get fewer, at least {MIN_REPEATS})")
    p.add_argument("--json", help="write the full result here")
    p.add_argument("--plot", help="write a PNG of the speed-ups here (needs matplotlib)")
    p.add_argument("--quick", action="store_true",
                   help="the tiny 'quick' config, 3 repeats, 1 thread unless --threads "
                        "says otherwise: a smoke test")
    a = p.parse_args(argv)
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be at least {MIN_REPEATS}")
    if a.quick:
        a.configs, a.repeats, a.threads = ["quick"], MIN_REPEATS, a.threads or [1]
    a.threads = a.threads or [1, 2]
    try:
        result = run(a.configs, a.cells, a.threads, a.impls, a.repeats,
                     ceiling_repeats=5 if a.quick else 20,
                     progress=lambda s: print(s, file=sys.stderr, flush=True), suite=a.suite)
    except ValueError as e:
        p.error(str(e))
    print(format_table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    if a.plot:
        plot(result, a.plot)
    return 0


def _worker_main(spec_json, out_path):
    spec = json.loads(spec_json)
    result = memory_worker(spec) if spec.get("mode") == "memory" else worker(spec)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
