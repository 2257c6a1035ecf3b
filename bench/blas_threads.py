"""NumPy's BLAS threads in an rnnfast training step: CPU time over wall time, and the step's
time on an idle machine and beside one busy process.

    python bench/blas_threads.py [--configs issue online medium] [--threads 1 2] [--rounds 5]
                                 [--variants none env limit-n limit-1] [--no-busy] [--no-spin]

A step is forward, cross-entropy, backward, the global gradient norm and an Adam update of
``Model(LSTM(D, H), Linear(H, D))``, at the configs (B, T, D, H): issue (16, 32, 103, 128),
online (1, 100, 64, 64), medium (64, 100, 128, 256). Variants, each in a process of its own
(OpenBLAS reads its environment once, at load):

- none:    rnnfast's read-out products without any limit (NumPy's BLAS at its own default,
           one thread per core);
- env:     the same under OPENBLAS_NUM_THREADS=1 (the whole process: the bound to reach);
- limit-n: the products inside ``rnnfast._blas.limited()`` at n BLAS threads;
- limit-1: the same at 1 BLAS thread, whatever n (what rnnfast ships).

Every round starts one process per variant, in turn, so that drift on a shared machine hits
all variants alike; each process times ``--repeats`` runs of ``--seconds`` each and reports
their medians. With busy rounds (the default), each round is run again beside a child
``python -c "while True: pass"``, killed at the end of the round. Printed: the medians over
rounds of the step's wall time, of CPU/wall (process CPU time, all its threads, over wall
time), of the CPU time per step (what a step costs the machine, the least disturbed by other
work on it), and each variant's wall time over ``none``'s in the same round (median of the
per-round ratios). The 1-min load average before and after the run (which counts the run's
own processes) tells how busy the machine was.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {"issue": (16, 32, 103, 128), "online": (1, 100, 64, 64),
           "medium": (64, 100, 128, 256)}
VARIANTS = ("none", "env", "limit-n", "limit-1")


def _worker(variant, configs, threads, repeats, seconds):
    """Runs in the child: prints one JSON line of
    {config: {n: (wall ms per step, cpu/wall, CPU ms per step)}}."""
    import numpy as np

    import rnnfast
    from rnnfast import _blas
    if variant in ("none", "env"):
        _blas.LIMITED = contextlib.nullcontext()  # linear.py looks it up at every call
    else:
        if variant == "limit-n":
            _blas.blas_threads = rnnfast.get_num_threads
    out = {}
    for cfg in configs:
        B, T, D, H = CONFIGS[cfg]
        rng = np.random.default_rng(0)
        model = rnnfast.Model(rnnfast.LSTM(D, H, seed=0), rnnfast.Linear(H, D, seed=1))
        opt = rnnfast.optim.Adam(model.params, lr=1e-4)
        x = rng.standard_normal((B, T, D)).astype(np.float32)
        y = rng.integers(0, D, (B, T))

        def step():
            logits, _, cache = model.forward(x)
            _, dlogits = rnnfast.losses.cross_entropy(logits, y)
            _, _, grads = model.backward(cache, dlogits)
            rnnfast.clip.global_norm(grads)
            opt.step(grads)

        out[cfg] = {}
        for n in threads:
            rnnfast.set_num_threads(n)
            for _ in range(3):
                step()
            walls, ratios, cpus = [], [], []
            for _ in range(repeats):
                c0, w0 = time.process_time(), time.perf_counter()
                k = 0
                while time.perf_counter() - w0 < seconds:
                    step()
                    k += 1
                c1, w1 = time.process_time(), time.perf_counter()
                walls.append((w1 - w0) / k * 1e3)
                ratios.append((c1 - c0) / (w1 - w0))
                cpus.append((c1 - c0) / k * 1e3)
            out[cfg][n] = (statistics.median(walls), statistics.median(ratios),
                           statistics.median(cpus))
    print(json.dumps(out))


def _spin(sleeps=(0.01, 0.03, 0.1, 0.3)):
    """How long OpenBLAS's threads stay busy after a product: the process's CPU/wall over a
    sleep of each length right after a 512 x 512 float32 product at NumPy's default thread
    count (the main thread sleeps, so all CPU time is theirs). Median of 5."""
    import numpy as np
    m = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    out = {}
    for s in sleeps:
        ratios = []
        for _ in range(5):
            time.sleep(0.6)  # longer than any spin: start from sleeping threads
            m @ m
            c0, w0 = time.process_time(), time.perf_counter()
            time.sleep(s)
            ratios.append((time.process_time() - c0) / (time.perf_counter() - w0))
        out[s] = statistics.median(ratios)
    return out


def _run(variant, a):
    env = dict(os.environ)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(k, None)
    if variant == "env":
        env["OPENBLAS_NUM_THREADS"] = "1"
    cmd = [sys.executable, __file__, "--worker", variant, "--configs", *a.configs,
           "--threads", *map(str, a.threads), "--repeats", str(a.repeats),
           "--seconds", str(a.seconds)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return {cfg: {int(n): v for n, v in d.items()}
            for cfg, d in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.25)
    p.add_argument("--no-busy", action="store_true", help="skip the rounds beside a busy process")
    p.add_argument("--no-spin", action="store_true", help="skip the spin measurement")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return _worker(a.worker, a.configs, a.threads, a.repeats, a.seconds)

    load_before = os.getloadavg()[0]  # others' work on a shared machine shows here
    loads = ["idle"] + ([] if a.no_busy else ["busy"])
    results = {ld: {v: [] for v in a.variants} for ld in loads}  # per round
    for r in range(a.rounds):
        for ld in loads:
            busy = None
            if ld == "busy":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                for v in a.variants:
                    results[ld][v].append(_run(v, a))
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)

    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {os.cpu_count()} CPUs  rounds={a.rounds} "
          f"repeats={a.repeats}x{a.seconds}s  python {sys.version.split()[0]}  1-min load "
          f"average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    import numpy as np
    import threadpoolctl
    for info in threadpoolctl.threadpool_info():  # imports numpy: after the children ran
        if info["user_api"] == "blas":
            print(f"# numpy {np.__version__}: {info['internal_api']} {info['version']} "
                  f"({info['threading_layer']}), {info['num_threads']} threads by default")
    if not a.no_spin:
        print("# CPU/wall of a sleep right after a 512x512 product at NumPy's default threads: "
              + ", ".join(f"{s * 1e3:.0f} ms {r:.2f}" for s, r in _spin().items()))
    print(f"{'load':5s} {'config':7s} {'n':>2s} {'variant':8s} {'ms/step':>9s} "
          f"{'cpu/wall':>9s} {'cpu ms':>9s} {'vs none':>8s}")
    for ld in loads:
        for cfg in a.configs:
            for n in a.threads:
                for v in a.variants:
                    rounds = results[ld][v]
                    ms = statistics.median(x[cfg][n][0] for x in rounds)
                    cw = statistics.median(x[cfg][n][1] for x in rounds)
                    cpu = statistics.median(x[cfg][n][2] for x in rounds)
                    rel = ""
                    if "none" in results[ld]:
                        rel = "{:8.2f}".format(statistics.median(
                            x[cfg][n][0] / y[cfg][n][0]
                            for x, y in zip(rounds, results[ld]["none"])))
                    print(f"{ld:5s} {cfg:7s} {n:2d} {v:8s} {ms:9.3f} {cw:9.2f} {cpu:9.3f} {rel}")


if __name__ == "__main__":
    main()
