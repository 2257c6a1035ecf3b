"""Time rnnfast's training step (forward + backward) in a plain loop, for profiling.

    python bench/step_loop.py [CELL] [B,T,D,H] [STEPS] [THREADS]
    e.g. OPENBLAS_NUM_THREADS=1 perf record python bench/step_loop.py LSTM 64,200,256,512 5

Prints the median and the fastest step in ms. Not a comparison: bench/run.py is.
"""

import sys
import time

import numpy as np

import rnnfast


def main(argv):
    cell = argv[0] if argv else "LSTM"
    B, T, D, H = (int(v) for v in argv[1].split(",")) if len(argv) > 1 else (64, 200, 256, 512)
    steps = int(argv[2]) if len(argv) > 2 else 5
    if len(argv) > 3:
        rnnfast.set_num_threads(int(argv[3]))
    rng = np.random.default_rng(0)
    model = getattr(rnnfast, cell)(D, H, dtype=np.float32, seed=0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    dy = rng.standard_normal((B, T, H)).astype(np.float32)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _, _, cache = model.forward(x)
        model.backward(cache, dy)
        times.append(time.perf_counter() - t0)
    print(f"{cell} (B, T, D, H) = {(B, T, D, H)}, {rnnfast.get_num_threads()} thread(s): "
          f"median {np.median(times) * 1e3:.2f} ms, fastest {min(times) * 1e3:.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
