"""Time one training step (forward + backward) of RNN, LSTM and GRU at the online config,
where the Python layer around the C++ calls is a large share of a step.

    python bench/online_overhead.py [--steps 2000] [--rounds 7] [--config 1 100 64 64]
    python bench/online_overhead.py --against OTHER_DIR   # e.g. a copy of an older rnnfast

With ``--against DIR``, DIR must hold a copy of the package renamed ``rnnfast_old`` (its
``_core`` extension included); both are timed in the same process, round by round in turn,
so that drift of a noisy machine hits both alike. Prints the median per-step time over the
rounds, each round being the mean of ``--steps`` steps.
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--config", type=int, nargs=4, default=[1, 100, 64, 64],
                   metavar=("B", "T", "D", "H"))
    p.add_argument("--against", metavar="DIR")
    p.add_argument("--no-check-finite", action="store_true")
    a = p.parse_args()
    B, T, D, H = a.config
    packages = {"new": importlib.import_module("rnnfast")}
    if a.against:
        sys.path.insert(0, a.against)
        packages["old"] = importlib.import_module("rnnfast_old")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32)
    for cell in ("RNN", "LSTM", "GRU"):
        models = {k: getattr(pkg, cell)(D, H, seed=0, check_finite=not a.no_check_finite)
                  for k, pkg in packages.items()}
        for m in models.values():
            step_time(m, x, dy, 200)  # warm-up
        times = {k: [] for k in models}
        for _ in range(a.rounds):
            for k, m in models.items():
                times[k].append(step_time(m, x, dy, a.steps))
        line = ", ".join(f"{k} {np.median(t) * 1e6:7.1f} us" for k, t in times.items())
        if a.against:
            line += f", new/old {np.median(times['new']) / np.median(times['old']):.3f}"
        print(f"{cell:5s} (B, T, D, H) = {tuple(a.config)}: {line}", flush=True)


if __name__ == "__main__":
    main()
