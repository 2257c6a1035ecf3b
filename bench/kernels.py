"""The price of an older CPU: the same training step with each kernel of this build.

One worker process per kernel (RNNFAST_KERNEL names it; python/rnnfast/_kernels.py), all
alive at once and each asked in turn, round robin, for a few timed repeats of the same step
(one layer's forward and backward, float32, the default suite's step: rnnfast.bench), so that
the machine's drift falls on every kernel alike. Times are comparable within a run, not with
bench/run.py's, which runs one process at a time. Prints the median time per kernel and its
ratio to the fastest kernel, per config and cell; --json keeps everything.

    python bench/kernels.py                                    # every config, cell, kernel
    python bench/kernels.py --configs online small --threads 2 --json out.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time



def worker():
    """Serve requests from stdin: one JSON line (config, cell, repeats) -> one line of times."""
    import gc

    import numpy as np

    import rnnfast
    from rnnfast import _core, bench
    rnnfast.set_num_threads(int(os.environ["RNNFAST_BENCH_THREADS"]))
    print(json.dumps({"kernel": rnnfast.build_info()["kernel"]}), flush=True)
    steps = {}
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["config"], req["cell"])
        if key not in steps:
            steps.clear()  # one row at a time: large rows' caches are hundreds of MB
            B, T, D, H = bench.CONFIGS[req["config"]]
            rng = np.random.default_rng(1)
            x = rng.standard_normal((B, T, D), dtype=np.float32)
            dy = rng.standard_normal((B, T, H), dtype=np.float32)
            step, _ = bench._make_rnnfast(req["cell"], B, T, D, H, x, dy, "cpp", False)
            step()
            t0 = time.perf_counter()
            step()
            warm = time.perf_counter() - t0
            steps[key] = (step, max(1, int(bench.MIN_TIMED / max(warm, 1e-9))))
        step, inner = steps[key]
        times = []
        gc.disable()
        for _ in range(req["repeats"]):
            t0 = time.perf_counter()
            for _ in range(inner):
                step()
            times.append((time.perf_counter() - t0) / inner)
        gc.enable()
        _core._rest_helper()  # its spinning helper thread must not run into the next turn
        print(json.dumps({"times": times}), flush=True)


def _start(kernel, threads):
    from rnnfast import bench
    env = dict(os.environ, **bench.thread_env(threads), RNNFAST_KERNEL=kernel,
               RNNFAST_BENCH_THREADS=str(threads))
    # Pinned to the same cores as bench/run.py's workers: unpinned, a step moved between the
    # cores whenever another process woke, and read up to 1.5x slower.
    proc = subprocess.Popen([sys.executable, __file__, "--worker"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            preexec_fn=bench._pin(threads))
    assert json.loads(proc.stdout.readline())["kernel"] == kernel
    return proc


def _ask(proc, **req):
    proc.stdin.write(json.dumps(req) + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())["times"]


def main(argv=None):
    import rnnfast
    from rnnfast import bench
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(bench.DEFAULT_CONFIGS),
                   choices=list(bench.CONFIGS))
    p.add_argument("--cells", nargs="+", default=list(bench.CELLS), choices=list(bench.CELLS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="round-robin rounds (default 5)")
    p.add_argument("--budget", type=float, default=3.0,
                   help="seconds per kernel per row and round, at most (default 3)")
    p.add_argument("--json", help="write every time measured here")
    args = p.parse_args(argv)

    info = rnnfast.build_info()
    kernels = [k for k in info["kernels"]
               if set(dict((n, isa) for n, _, isa in rnnfast._kernels.kernels())[k])
               <= set(info["cpu"])]
    workers = {k: _start(k, args.threads) for k in kernels}
    result = {"date": time.strftime("%Y-%m-%d"), "commit": bench._git_head(),
              "machine": bench._machine(), "threads": args.threads, "kernels": kernels,
              "cpu": info["cpu"], "loadavg_start": bench._loadavg(), "rows": []}
    print(f"{result['machine']['cpu']}, {args.threads} thread(s), commit {result['commit']}; "
          f"median of {args.rounds} rounds round robin, ms per step, ratio = time / fastest kernel's")
    print(f"{'config':8} {'cell':5} " + " ".join(f"{k:>22}" for k in kernels))
    try:
        for cfg in args.configs:
            for cell in args.cells:
                times = {k: [] for k in kernels}
                # The first answer also warms the step; its time sets the repeats per round.
                first = {k: _ask(w, config=cfg, cell=cell, repeats=1)[0]
                         for k, w in workers.items()}
                for r in range(args.rounds):
                    order = kernels[r % len(kernels):] + kernels[:r % len(kernels)]
                    for k in order:
                        n = max(1, min(5, int(args.budget / max(first[k], 1e-9))))
                        times[k] += _ask(workers[k], config=cfg, cell=cell, repeats=n)
                med = {k: statistics.median(t) for k, t in times.items()}
                best = min(med.values())
                result["rows"].append({"config": cfg, "cell": cell, "dims": bench.CONFIGS[cfg],
                                       "times": times, "median_s": med})
                print(f"{cfg:8} {cell:5} " + " ".join(
                    f"{bench._fmt_time(med[k]):>12} ({med[k] / best:4.2f}x)" for k in kernels),
                    flush=True)
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait()
    result["loadavg_end"] = bench._loadavg()
    print(f"load average {result['loadavg_start'][0]:.2f} at start, "
          f"{result['loadavg_end'][0]:.2f} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
