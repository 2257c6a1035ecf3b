"""Does a training step's speed depend on where the parameters lie in memory?

    python bench/alignment.py [--cell LSTM] [--dims 1 100 64 64] [--rounds 400]
    python bench/alignment.py --against DIR   # the build in DIR/rnnfast_old instead

NumPy aligns arrays to 16 bytes, an AVX-512 packet is 64, so a parameter array starts 0, 16,
32 or 48 bytes past a cache-line boundary, as it happens. This builds one model per placement
(every parameter 0 or 16 bytes past a boundary, or only weight_hh / weight_ih / the biases
moved) with the same values, and times their steps round robin, one thread, the order
reversed every round; prints the median forward and backward time of each in µs. The
results themselves are the same bit for bit (tests/test_parity.py checks that); this is about
time only. Default: the online config, where backward's recurrent product is a GEMV that
reads weight_hh once per step. DIR for --against is made as for bench/online_overhead.py.
"""

import argparse
import importlib
import sys
import time

import numpy as np

from rnnfast.bench import at_offset  # the installed build's, also with --against


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", choices=("RNN", "LSTM", "GRU"), default="LSTM")
    p.add_argument("--dims", type=int, nargs=4, metavar=("B", "T", "D", "H"),
                   default=[1, 100, 64, 64])
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--against", metavar="DIR")
    args = p.parse_args(argv)
    if args.against:
        sys.path.insert(0, args.against)
    rnnfast = importlib.import_module("rnnfast_old" if args.against else "rnnfast")
    B, T, D, H = args.dims
    rnnfast.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32)
    placements = {"all at 0": {}, "all at 16": {"*": 16}, "weight_hh at 16": {"weight_hh_l0": 16},
                  "weight_ih at 16": {"weight_ih_l0": 16},
                  "biases at 16": {"bias_ih_l0": 16, "bias_hh_l0": 16}}
    models = {}
    for name, offsets in placements.items():
        model = getattr(rnnfast, args.cell)(D, H, dtype=np.float32, seed=0)
        for k in list(model.params):
            model.params[k] = at_offset(model.params[k], offsets.get(k, offsets.get("*", 0)))
        models[name] = model
    times = {name: [] for name in models}
    warm = max(1, args.rounds // 20)
    for r in range(args.rounds + warm):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            t0 = time.perf_counter()
            _, _, cache = models[name].forward(x)
            t1 = time.perf_counter()
            models[name].backward(cache, dy)
            t2 = time.perf_counter()
            if r >= warm:
                times[name].append((t1 - t0, t2 - t1))
    print(f"{args.cell}, (B, T, D, H) = {(B, T, D, H)}, 1 thread, {args.rounds} rounds; "
          f"kernel {rnnfast._kernels.loaded()[0]}, {rnnfast.__name__} from "
          f"{rnnfast.__file__.rsplit('/', 2)[0]}")
    for name, t in times.items():
        t = np.array(t) * 1e6
        print(f"  {name:<16} forward {np.median(t[:, 0]):7.0f} µs  "
              f"backward {np.median(t[:, 1]):7.0f} µs")


if __name__ == "__main__":
    main()
