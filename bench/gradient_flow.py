"""The cost of ``rnnfast.diagnostics.gradient_flow`` against a plain forward + backward.

    python bench/gradient_flow.py [--repeats 50] [--B 32 --T 100 --D 64 --H 128]

For every cell, a ``Model`` (recurrent + Linear read-out to 1 output, float32, loss
``mse_last``) is timed three ways, interleaved repeat by repeat so that machine noise falls
on all alike: ``plain`` (forward, the loss, backward), ``gradient_flow`` (the whole call:
the same plus return_grad_norms and the spectral numbers of W_hh) and ``flow, no spectral``
(``spectral_numbers=False``). Prints the medians and the overheads over plain.
"""

import argparse
import time

import numpy as np

import rnnfast
from rnnfast import diagnostics
from rnnfast.train import sequence_loss

CELLS = {"rnn_tanh": (rnnfast.RNN, {"nonlinearity": "tanh"}), "lstm": (rnnfast.LSTM, {}),
         "gru": (rnnfast.GRU, {})}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("B", 32), ("T", 100), ("D", 64), ("H", 128), ("repeats", 50)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.B, args.T, args.D)).astype(np.float32)
    y = rng.standard_normal((args.B, 1)).astype(np.float32)
    print(f"B = {args.B}, T = {args.T}, D = {args.D}, H = {args.H}, float32, median of "
          f"{args.repeats}")
    print(f"{'cell':10s} {'plain ms':>9s} {'flow ms':>9s} {'overhead':>9s} "
          f"{'no-spectral ms':>15s} {'overhead':>9s}")
    for cell, (cls, extra) in CELLS.items():
        model = rnnfast.Model(cls(args.D, args.H, seed=0, **extra),
                              rnnfast.Linear(args.H, 1, seed=1))

        def plain():
            out, _, cache = model.forward(x)
            _, dout = sequence_loss("mse_last", out, y)
            model.backward(cache, dout)

        variants = {"plain": plain,
                    "flow": lambda: diagnostics.gradient_flow(model, x, y),
                    "flow_nospec": lambda: diagnostics.gradient_flow(
                        model, x, y, spectral_numbers=False)}
        times = {k: [] for k in variants}
        for f in variants.values():
            f()  # warm up
        for _ in range(args.repeats):
            for k, f in variants.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        print(f"{cell:10s} {med['plain']:9.2f} {med['flow']:9.2f} "
              f"{100 * (med['flow'] / med['plain'] - 1):+8.1f}% {med['flow_nospec']:15.2f} "
              f"{100 * (med['flow_nospec'] / med['plain'] - 1):+8.1f}%")


if __name__ == "__main__":
    main()
