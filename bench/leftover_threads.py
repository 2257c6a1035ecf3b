"""How a step of rnnfast at 2 threads fares right after something else ran for 20 ms: the
question behind bench.py's QUIET_S (the wait before each repeat with more than one thread).

    python bench/leftover_threads.py [--cell GRU] [--rounds 15] [--threads 1 2]

For each "before" (a sleep, a busy wait, 512² float32 numpy matmuls, PyTorch and JAX
steps of the same cell when installed), each round runs it for 20 ms and then times 40
consecutive rnnfast training steps at the online config (1, 100, 64, 64); prints the median
and fastest of the rounds' means. Thread counts are set as bench.py sets them (the
environment variables before numpy is imported), so run it as its own process.
"""

import argparse
import os
import statistics
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="GRU", choices=["RNN", "LSTM", "GRU"])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    n_env = max(a.threads)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(n_env)
    import numpy as np
    import rnnfast

    B, T, D, H = 1, 100, 64, 64
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32)
    model = getattr(rnnfast, a.cell)(D, H, dtype=np.float32, seed=0)

    def ours():
        _, _, cache = model.forward(x)
        model.backward(cache, dy)

    def busy():
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass

    m = rng.standard_normal((512, 512)).astype(np.float32)
    befores = {"sleep": lambda: time.sleep(0.02), "busy wait": busy,
               "numpy 512² matmul": lambda: m @ m}
    try:
        import torch
        torch.set_num_threads(n_env)
        tm = getattr(torch.nn, a.cell)(D, H, batch_first=True)
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
        befores["torch step"] = lambda: tm(tx)[0].backward(tdy)
    except ImportError:
        print("torch not installed: skipped", file=sys.stderr)

    for n in a.threads:
        rnnfast.set_num_threads(n)
        for name, before in befores.items():
            means = []
            for _ in range(a.rounds):
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 0.02:
                    before()
                t0 = time.perf_counter()
                for _ in range(40):
                    ours()
                means.append((time.perf_counter() - t0) / 40)
            med, best = statistics.median(means) * 1e3, min(means) * 1e3
            print(f"{a.cell} threads={n} after {name:18s}: median {med:.3f} ms, "
                  f"fastest {best:.3f} ms")


if __name__ == "__main__":
    main()
