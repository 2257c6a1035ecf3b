"""Checkpointed BPTT: peak memory and time of one training step against the sequence's length.

    python bench/checkpoint_memory.py                      # the whole table (about 20 min)
    python bench/checkpoint_memory.py --T 1000 10000 --batch 1 --layers 1 --impls full auto
    python bench/checkpoint_memory.py --json out.json --plot out.png

A step is forward and backward of an LSTM stack (float32, D = 32 inputs, H = 128 units,
zero initial state) against a fixed random dy: rnnfast with the full cache (``full``) and with
``checkpoint="auto"`` (``auto``, segments of ceil(sqrt(T)) steps rounded up to the kernels'
unit, reported as segment_steps), ``torch.nn.LSTM``
(``torch``: autograd, oneDNN) and a ``jax.lax.scan`` LSTM under ``jax.value_and_grad``
(``jax``). Every (impl, T, batch, layers) runs in a process of its own, on one thread (each
library told so, XLA included), so that one run's freed memory and pools cannot lower
another's peak.

Memory: the process's peak resident set during the step (Linux's VmHWM, reset just before the
step through /proc/self/clear_refs) minus its resident set just before it, when x and dy
(the user's) exist already; printed with the step's outputs y (the user's) and, for rnnfast,
dx subtracted, so the number is what the library itself holds. torch and jax are given x
without requires_grad (no dx), as a training script's input.

A configuration is not started when the user's own x, y and dy, or a full cache by formula
(24 bytes per (b, t, unit) and layer, docs/memory.md), would not fit in --mem-limit (default:
80 % of MemAvailable): the table says so. Memory is that of the process's first step (later
ones reuse what earlier ones freed). Times are those of warm steps (the median of --repeats
up to T = 10,000, one step up to 100,000), and past T = 100,000 that of the first step, page
faults included (a full cache's first touch of its GiBs is part of it); compare them within
a run and a row, as ratios.
"""

import argparse
import json
import os
import subprocess
import sys
import time

D, H = 32, 128
IMPLS = ("full", "auto", "torch", "jax")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)


def _step_maker(impl, B, T, L, x, dy):
    """() -> (y, dx or None): one forward and backward; built before anything is measured."""
    import numpy as np

    if impl in ("full", "auto"):
        import rnnfast
        rnnfast.set_num_threads(1)
        model = rnnfast.LSTM(D, H, num_layers=L, seed=0)
        checkpoint = "auto" if impl == "auto" else None

        def step():
            y, _, cache = model.forward(x, checkpoint=checkpoint)
            step.segment_steps = getattr(cache, "segment_steps", None)
            dx, _, _ = model.backward(cache, dy)
            return y, dx
        return step
    if impl == "torch":
        import torch
        torch.set_num_threads(1)
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(D, H, num_layers=L, batch_first=True)
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)

        def step():
            lstm.zero_grad(set_to_none=True)
            y, _ = lstm(xt)
            y.backward(dyt)
            return y.detach().numpy(), None
        return step
    import jax
    import jax.numpy as jnp
    from jax import lax

    from rnnfast import bench
    layer = bench._jax_layer("LSTM", jnp, lax)
    rng = np.random.default_rng(0)
    params = tuple(tuple(jnp.asarray(rng.uniform(-0.1, 0.1, shape).astype(np.float32))
                         for shape in ((4 * H, D if k == 0 else H), (4 * H, H), (4 * H,), (4 * H,)))
                   for k in range(L))

    def model(p, x):
        for p_k in p:
            x = layer(p_k, x)
        return x

    xj, dyj = jnp.asarray(x), jnp.asarray(dy)

    def loss(p, x, dy):
        y = model(p, x)
        return jnp.sum(y * dy), y

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params, xj, dyj).compile()

    def step():
        (_, y), g = grad(params, xj, dyj)
        jax.block_until_ready(g)
        return np.asarray(y), None
    return step


def child(impl, B, T, L, repeats):
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D), dtype=np.float32)
    dy = rng.standard_normal((B, T, H), dtype=np.float32)
    step = _step_maker(impl, B, T, L, x, dy)
    # Memory from the process's first step: later steps reuse what earlier ones freed
    # (rnnfast's block cache, malloc's arenas), which the step needed all the same.
    before = _rss_bytes()
    _reset_peak()
    start = time.perf_counter()
    y, dx = step()
    times = [time.perf_counter() - start]
    peak = _peak_bytes() - before
    if T <= 100_000:  # then warm steps: the median of `repeats`, or one past 10,000 steps
        times = []
        for _ in range(repeats if T <= 10_000 else 1):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    outputs = y.nbytes + (0 if dx is None else dx.nbytes)
    times.sort()
    print(json.dumps({"time_s": times[len(times) // 2], "peak_bytes": peak,
                      "outputs_bytes": outputs, "held_bytes": peak - outputs,
                      "segment_steps": getattr(step, "segment_steps", None)}))


def _mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 << 30


def _too_big(impl, B, T, L, limit):
    user = B * T * (D + 2 * H) * 4
    if user > limit / 2:
        return f"the user's x, y and dy alone take {user / 2**30:.1f} GiB"
    if impl in ("full", "torch", "jax"):
        cache = B * T * L * 6 * H * 4  # the LSTM's cache by formula (docs/memory.md)
        if user + cache > limit:
            return f"a full cache would take ~{cache / 2**30:.1f} GiB"
    return None


def _env():
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mem-limit", type=float, default=None, help="GiB (default: 80%% of "
                        "MemAvailable)")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        impl, B, T, L, repeats = args.child
        child(impl, int(B), int(T), int(L), int(repeats))
        return
    limit = (args.mem_limit * 2**30) if args.mem_limit else 0.8 * _mem_available()
    rows = []
    print(f"LSTM D={D} H={H}, float32, 1 thread; MiB held by the library during one step "
          f"(beyond x, dy, y and dx), and the step's time in s")
    print(f"{'T':>9} {'B':>3} {'L':>2}  " + "  ".join(f"{i:>18}" for i in args.impls))
    for L in args.layers:
        for B in args.batch:
            for T in args.T:
                cells = []
                for impl in args.impls:
                    row = {"impl": impl, "T": T, "B": B, "layers": L}
                    reason = _too_big(impl, B, T, L, limit)
                    if reason:
                        row["skipped"] = reason
                        cells.append(f"{'not run':>18}")
                    else:
                        proc = subprocess.run(
                            [sys.executable, __file__, "--child", impl, str(B), str(T), str(L),
                             str(args.repeats)], capture_output=True, text=True, env=_env())
                        if proc.returncode < 0:  # SIGKILL: the kernel's out-of-memory killer
                            row["failed"] = f"killed by signal {-proc.returncode}"
                            cells.append(f"{'killed':>18}")
                        elif proc.returncode != 0:
                            row["failed"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
                            cells.append(f"{'failed':>18}")
                        else:
                            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                            cells.append(f"{row['held_bytes'] / 2**20:9.1f} {row['time_s']:8.3f}")
                    rows.append(row)
                print(f"{T:>9} {B:>3} {L:>2}  " + "  ".join(cells), flush=True)
    for row in rows:
        if "skipped" in row or "failed" in row:
            print(f"  {row['impl']} T={row['T']} B={row['B']} L={row['layers']}: "
                  f"{row.get('skipped') or 'failed: ' + row['failed']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"D": D, "H": H, "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted({(r["B"], r["layers"]) for r in rows})
    fig, axes = plt.subplots(2, len(keys), figsize=(4 * len(keys), 6.5), squeeze=False)
    for c, (B, L) in enumerate(keys):
        for impl in IMPLS:
            pts = [r for r in rows if r["impl"] == impl and r["B"] == B and r["layers"] == L
                   and "held_bytes" in r]
            if not pts:
                continue
            pts.sort(key=lambda r: r["T"])
            Ts = [r["T"] for r in pts]
            axes[0, c].loglog(Ts, [max(r["held_bytes"], 1 << 16) / 2**20 for r in pts], "o-",
                              label=impl)
            axes[1, c].loglog(Ts, [r["time_s"] for r in pts], "o-", label=impl)
        axes[0, c].set_title(f"B = {B}, {L} layer{'s' if L > 1 else ''}")
        axes[0, c].set_ylabel("MiB held during the step")
        axes[1, c].set_ylabel("step time, s")
        axes[1, c].set_xlabel("T")
        axes[0, c].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
