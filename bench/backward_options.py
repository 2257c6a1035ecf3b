"""The cost of backward's per-step options (clip_per_step, return_grad_norms).

    python bench/backward_options.py [--repeats 200] [--B 32 --T 100 --D 64 --H 128]

Times ``model.backward`` alone (one forward, its cache reused) in float32 for every cell, the
variants interleaved repeat by repeat so that machine noise falls on all of them alike, and
prints the median of each and its overhead over plain backward. The threshold 1.0 clips most
steps at these sizes. An rnnfast without the options (an older build) times plain only.
"""

import argparse
import json
import time

import numpy as np

import rnnfast

VARIANTS = {
    "plain": {},
    "grad_norms": {"return_grad_norms": True},
    "clip": {"clip_per_step": 1.0},
    "clip+grad_norms": {"clip_per_step": 1.0, "return_grad_norms": True},
}
CELLS = {"rnn_tanh": (rnnfast.RNN, {"nonlinearity": "tanh"}), "lstm": (rnnfast.LSTM, {}),
         "gru": (rnnfast.GRU, {})}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("B", 32), ("T", 100), ("D", 64), ("H", 128), ("repeats", 200)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--plain-only", action="store_true", help="time plain backward only")
    args = ap.parse_args()
    variants = {"plain": {}} if args.plain_only else VARIANTS
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.B, args.T, args.D)).astype(np.float32)
    dy = rng.standard_normal((args.B, args.T, args.H)).astype(np.float32)
    results = {}
    for cell, (cls, extra) in CELLS.items():
        model = cls(args.D, args.H, dtype=np.float32, seed=0, check_finite=False, **extra)
        _, _, cache = model.forward(x)
        times = {v: [] for v in variants}
        for _ in range(5):  # warm up
            for options in variants.values():
                model.backward(cache, dy, **options)
        for _ in range(args.repeats):
            for v, options in variants.items():
                t0 = time.perf_counter()
                model.backward(cache, dy, **options)
                times[v].append(time.perf_counter() - t0)
        med = {v: float(np.median(t)) for v, t in times.items()}
        results[cell] = med
        line = "  ".join(f"{v} {1e3 * m:7.3f} ms ({100 * (m / med['plain'] - 1):+5.1f}%)"
                         for v, m in med.items())
        print(f"{cell:<9} {line}")
    print(json.dumps({"B": args.B, "T": args.T, "D": args.D, "H": args.H,
                      "repeats": args.repeats, "median_seconds": results}))


if __name__ == "__main__":
    main()
