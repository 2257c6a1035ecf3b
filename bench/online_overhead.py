"""Time one training step (forward + backward) of RNN, LSTM and GRU at the online config,
where the Python layer around the C++ calls is a large share of a step.

    python bench/online_overhead.py [--steps 2000] [--rounds 7] [--config 1 100 64 64]
    python bench/online_overhead.py --against OTHER_DIR   # e.g. a copy of an older rnnfast
    python bench/online_overhead.py --config 16 1000 32 64 --steps 20 --threads 2 --against DIR

With ``--against DIR``, DIR must hold a copy of the package renamed ``rnnfast_old`` (its
``_core`` extension included); both are timed in the same process, round by round in turn,
so that drift of a noisy machine hits both alike (the order alternates between rounds).
Prints the median per-step time over the rounds, each round being the mean of ``--steps``
steps, their ratio, the median and IQR of the rounds' own ratios, and the ratio of the fastest
rounds. Any config works (``--config``, ``--threads``, ``--cells``), not only online.
To make DIR: copy an installed ``rnnfast`` package directory to ``DIR/rnnfast_old``.

With ``--python-only`` the models' compiled layer calls are replaced by stubs that return a
result computed beforehand, so that what is timed is the Python layer alone (the finiteness
scans of ``check_finite`` included, since they are not layer calls); this is steadier than
the difference of two whole steps on a noisy machine. One layer only.
"""

import argparse
import importlib
import sys
import time

import numpy as np


def step_time(model, x, dy, steps):
    fwd, bwd = model.forward, model.backward
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, cache = fwd(x)
        bwd(cache, dy)
    return (time.perf_counter() - t0) / steps


def stub_layer_calls(model, x, dy):
    """Make the model's one layer call per pass return, at once, what it returned for (x, dy)."""
    results = {}

    def recording(key, fn):
        def call(*args, **kwargs):
            results[key] = fn(*args, **kwargs)
            return results[key]
        return call

    real = model._forward_fn, model._backward_fn
    model._forward_fn, model._backward_fn = (recording("f", real[0]), recording("b", real[1]))
    _, _, cache = model.forward(x)
    model.backward(cache, dy)
    model._forward_fn = lambda *args: results["f"]
    model._backward_fn = lambda *args, **kwargs: results["b"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--config", type=int, nargs=4, default=[1, 100, 64, 64],
                   metavar=("B", "T", "D", "H"))
    p.add_argument("--against", metavar="DIR")
    p.add_argument("--no-check-finite", action="store_true")
    p.add_argument("--python-only", action="store_true")
    p.add_argument("--threads", type=int, help="rnnfast.set_num_threads for every package")
    p.add_argument("--cells", nargs="+", default=["RNN", "LSTM", "GRU"])
    a = p.parse_args()
    B, T, D, H = a.config
    packages = {"new": importlib.import_module("rnnfast")}
    if a.against:
        sys.path.insert(0, a.against)
        packages["old"] = importlib.import_module("rnnfast_old")
    if a.threads is not None:
        for pkg in packages.values():
            pkg.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32)
    for cell in a.cells:
        models = {k: getattr(pkg, cell)(D, H, seed=0, check_finite=not a.no_check_finite)
                  for k, pkg in packages.items()}
        for m in models.values():
            if a.python_only:
                stub_layer_calls(m, x, dy)
            step_time(m, x, dy, max(5, min(200, a.steps)))  # warm-up
        times = {k: [] for k in models}
        for r in range(a.rounds):
            # Each round times both, in alternating order, so a round's ratio compares two
            # neighbouring moments of the machine.
            for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
                times[k].append(step_time(models[k], x, dy, a.steps))
        line = ", ".join(f"{k} {np.median(t) * 1e6:7.1f} us" for k, t in times.items())
        if a.against:
            ratios = np.array(times["new"]) / np.array(times["old"])
            q1, q3 = np.percentile(ratios, [25, 75])
            line += (f", new/old {np.median(times['new']) / np.median(times['old']):.3f}"
                     f" (per round: median {np.median(ratios):.3f}, IQR {q1:.3f}-{q3:.3f};"
                     f" fastest/fastest {min(times['new']) / min(times['old']):.3f})")
        print(f"{cell:5s} (B, T, D, H) = {tuple(a.config)}: {line}", flush=True)


if __name__ == "__main__":
    main()
