"""Compare two builds of rnnfast step by step, forward and backward timed apart.

    python bench/paired_steps.py CELL THREADS PAIRS [B T D H] --against DIR
    e.g. python bench/paired_steps.py LSTM 2 40 16 1000 32 64 --against /tmp/old

DIR must hold a copy of the other build's package renamed ``rnnfast_old`` (its ``_core``
extension included), as for ``bench/online_overhead.py --against``. The installed rnnfast
is "new". Both run in one process, one training step each in turn (the order alternates),
PAIRS times: the two steps of a pair are a fraction of a second apart, so the ratio of each
pair sees the same machine, and the median of those ratios is steadier on a noisy machine
than the ratio of two medians. Prints both builds' median forward and backward times in ms
and the median of the pairs' ratios (new / old: below 1, the new build is faster).
Default config: the long one, (16, 1000, 32, 64).
"""

import argparse
import importlib
import sys
import time

import numpy as np


def timed_step(model, x, dy):
    t0 = time.perf_counter()
    _, _, cache = model.forward(x)
    t1 = time.perf_counter()
    model.backward(cache, dy)
    return t1 - t0, time.perf_counter() - t1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cell", choices=("RNN", "LSTM", "GRU"))
    p.add_argument("threads", type=int)
    p.add_argument("pairs", type=int)
    p.add_argument("dims", type=int, nargs="*", metavar="B T D H", default=[16, 1000, 32, 64])
    p.add_argument("--against", required=True, metavar="DIR")
    args = p.parse_args(argv)
    if len(args.dims) != 4:
        p.error(f"give all four of B T D H, or none; got {args.dims}")
    B, T, D, H = args.dims
    sys.path.insert(0, args.against)
    packages = {"new": importlib.import_module("rnnfast"),
                "old": importlib.import_module("rnnfast_old")}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32)
    models = {}
    for name, pkg in packages.items():
        pkg.set_num_threads(args.threads)
        models[name] = getattr(pkg, args.cell)(D, H, seed=0)
        for _ in range(2):  # warm-up: the array cache, the helper thread
            timed_step(models[name], x, dy)
    times = {"new": [], "old": []}
    for i in range(args.pairs):
        for name in ("new", "old") if i % 2 == 0 else ("old", "new"):
            times[name].append(timed_step(models[name], x, dy))
    new, old = (np.array(times[n]) * 1e3 for n in ("new", "old"))
    ratio = new / old
    total = new.sum(axis=1) / old.sum(axis=1)
    print(f"{args.cell}, {args.threads} thread(s), (B, T, D, H) = {(B, T, D, H)}, "
          f"{args.pairs} pairs")
    for name, t in (("new", new), ("old", old)):
        print(f"  {name}: forward {np.median(t[:, 0]):.3f} ms, "
              f"backward {np.median(t[:, 1]):.3f} ms")
    print(f"  new / old, median of the pairs: forward {np.median(ratio[:, 0]):.3f}, "
          f"backward {np.median(ratio[:, 1]):.3f}, step {np.median(total):.3f}")


if __name__ == "__main__":
    main()
