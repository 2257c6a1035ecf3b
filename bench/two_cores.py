"""Do this machine's two cores run two equal single-threaded steps as fast as one alone?

    python bench/two_cores.py [--configs online small medium] [--cells LSTM GRU] [--rounds N]

The bound behind "a bidirectional layer at 2 threads within 1.2x of a unidirectional layer at
1 thread": rnnfast runs the two directions side by side, one thread each, so its step can be
no faster than two unidirectional steps run at once, one per core, in two processes (no
Python, no GIL, no handoff between them). Two worker processes, each pinned to its own core
with its own unidirectional layer (the harness's weights and data) at 1 thread; rounds
alternate "core 0 alone", "core 1 alone", and "both at once" (started together at a barrier).
Prints the medians over rounds and "both / alone": the slower of the two together over core
0 alone, per round, median. Near 1: the second core is free and whole; above, the machine
(a shared host, shared caches or memory bandwidth) is what costs.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

MODES = ("alone0", "alone1", "both")


def _worker(core, cell, cfg, barrier, rounds, queue):
    os.sched_setaffinity(0, [core])
    import gc

    import rnnfast
    from rnnfast import bench
    rnnfast.set_num_threads(1)
    step = bench._row_steps(cell, bench.CONFIGS[cfg], ["rnnfast"], 1)["rnnfast"]
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    step()
    inner = max(1, int(bench.MIN_TIMED / (time.perf_counter() - t0)))  # as the harness
    gc.disable()
    times = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in MODES:
            barrier.wait()
            if mode != "both" and mode != f"alone{core}":  # the other core's turn alone
                barrier.wait()
                continue
            t0 = time.perf_counter()
            for _ in range(inner):
                step()
            times[mode].append((time.perf_counter() - t0) / inner)
            if mode != "both":
                barrier.wait()
    queue.put((core, times))


def measure(cell, cfg, rounds):
    """{"alone0", "alone1", "both0", "both1", "both"} -> median seconds per step."""
    barrier, queue = mp.Barrier(2), mp.Queue()
    procs = [mp.Process(target=_worker, args=(c, cell, cfg, barrier, rounds, queue))
             for c in (0, 1)]
    for p in procs:
        p.start()
    out = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
    med = statistics.median
    return {"alone0": med(out[0]["alone0"]), "alone1": med(out[1]["alone1"]),
            "both0": med(out[0]["both"]), "both1": med(out[1]["both"]),
            "both": med(max(a, b) for a, b in zip(out[0]["both"], out[1]["both"])),
            "ratio": med(max(a, b) / s for a, b, s in zip(out[0]["both"], out[1]["both"],
                                                          out[0]["alone0"]))}


def main(argv=None):
    from rnnfast import bench
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["online", "small", "medium"],
                   choices=list(bench.CONFIGS))
    p.add_argument("--cells", nargs="+", default=["LSTM", "GRU"], choices=list(bench.CELLS))
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args(argv)
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        p.error("needs Linux and two cores")
    print(f"{'config':<7} {'cell':<5} {'alone0 ms':>10} {'alone1 ms':>10} {'both0 ms':>10} "
          f"{'both1 ms':>10} {'both/alone':>10}")
    for cfg in a.configs:
        for cell in a.cells:
            r = measure(cell, cfg, a.rounds)
            print(f"{cfg:<7} {cell:<5} " + " ".join(f"{r[k] * 1e3:10.3f}" for k in
                                                    ("alone0", "alone1", "both0", "both1"))
                  + f" {r['ratio']:10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
