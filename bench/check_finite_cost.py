"""What check_finite=True costs in one training step (forward + backward), per cell.

The same model is timed with the check on and off, alternately, so that drift of the machine
hits both alike, and in turn first and second, since the one run just after the other can be
faster or slower for reasons of its own (where the allocator finds memory, while the previous
step's cache is still alive); medians after a warm-up. Prints the relative cost.

    python bench/check_finite_cost.py [--repeats 3500] [--config 1 100 64 64]
"""

import argparse
import time

import numpy as np

import rnnfast


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3500)
    p.add_argument("--config", type=int, nargs=4, default=[1, 100, 64, 64],
                   metavar=("B", "T", "D", "H"))
    a = p.parse_args()
    B, T, D, H = a.config
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32)
    for cell in ("RNN", "LSTM", "GRU"):
        model = getattr(rnnfast, cell)(D, H, seed=0)
        times = {True: [], False: []}
        for i in range(a.repeats + 300):
            for check in ((True, False) if i % 2 else (False, True)):
                model.check_finite = check
                t0 = time.perf_counter()
                _, _, cache = model.forward(x)
                model.backward(cache, dy)
                if i >= 300:  # warm-up
                    times[check].append(time.perf_counter() - t0)
        on, off = (np.median(times[c]) * 1e6 for c in (True, False))
        print(f"{cell:5s} (B, T, D, H) = {tuple(a.config)}: check on {on:8.1f} us, "
              f"off {off:8.1f} us, cost {100 * (on / off - 1):+.1f} %")


if __name__ == "__main__":
    main()
