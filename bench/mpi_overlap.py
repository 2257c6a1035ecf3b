"""What overlapping the gradient all-reduce with backward would save, on this machine's MPI.

    python bench/mpi_overlap.py [--config medium] [--repeats 15]

Starts itself under ``mpiexec -n 2`` (from the mpich wheel of the ``mpi`` extra), one thread
per rank. Each rank holds the float64 gradient buffer of one LSTM layer of the config
(``allreduce_grads``'s packing: 4H·(D + H + 2) values) and the cache of that layer's forward
over its half of the batch, and times, after a barrier each time:

- ``backward``: the layer's backward alone;
- ``allreduce``: a blocking ``Allreduce`` of the buffer alone;
- ``serial``: backward, then the blocking ``Allreduce`` (what rnnfast does);
- ``overlap``: ``Iallreduce`` started, then backward, then ``Wait`` (what overlap would do,
  layer k's reduction against layer k − 1's backward), and the ``Wait``'s own time.

Printed: rank 0's medians, and the saving serial − overlap. If the non-blocking reduction
advanced while backward ran, ``Wait`` would take less than ``allreduce``.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {"small": (32, 100, 64, 128), "medium": (64, 100, 128, 256),
           "large": (64, 200, 256, 512)}


def worker(config, repeats):
    import numpy as np
    from mpi4py import MPI

    import rnnfast
    rnnfast.set_num_threads(1)
    comm = MPI.COMM_WORLD
    B, T, D, H = CONFIGS[config]
    b = B // comm.Get_size()
    model = rnnfast.LSTM(D, H, seed=0)
    rng = np.random.default_rng(comm.Get_rank())
    x = rng.standard_normal((b, T, D), dtype=np.float32)
    y, _, cache = model.forward(x)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    buf = np.ones(4 * H * (D + H + 2), np.float64)

    def timed(fn):
        comm.Barrier()
        start = time.perf_counter()
        extra = fn()
        return time.perf_counter() - start, extra

    def overlapped():
        req = comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        model.backward(cache, dy)
        start = time.perf_counter()
        req.Wait()
        return time.perf_counter() - start

    def serial():
        model.backward(cache, dy)
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    runs = {"backward": lambda: model.backward(cache, dy),
            "allreduce": lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM),
            "serial": serial, "overlap": overlapped}
    times = {k: [] for k in runs}
    waits = []
    for _ in range(2):  # warm-up
        for fn in runs.values():
            timed(fn)
    for _ in range(repeats):
        for name, fn in runs.items():  # interleaved: drift falls on every variant alike
            t, extra = timed(fn)
            times[name].append(t)
            if name == "overlap":
                waits.append(extra)
    if comm.Get_rank() == 0:
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        wait = statistics.median(waits) * 1e3
        print(f"{config} (B, T, D, H) = {CONFIGS[config]}, 2 ranks x 1 thread, "
              f"{buf.nbytes / 1e6:.2f} MB buffer; medians of {repeats}, ms")
        print(f"  backward {med['backward']:.2f}   allreduce {med['allreduce']:.3f}   "
              f"serial {med['serial']:.2f}   overlap {med['overlap']:.2f} "
              f"(of which Wait {wait:.3f})")
        print(f"  saving serial - overlap: {med['serial'] - med['overlap']:+.3f} ms "
              f"({100 * (med['serial'] - med['overlap']) / med['serial']:+.2f} % of serial)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=CONFIGS, default="medium")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.config, args.repeats)
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    subprocess.run(["mpiexec", "-n", "2", sys.executable, os.path.abspath(__file__), "--worker",
                    "--config", args.config, "--repeats", str(args.repeats)], env=env,
                   check=True)


if __name__ == "__main__":
    main()
