"""Data-parallel LSTM training over MPI on this machine's two cores: 1 rank x 2 threads
against 2 ranks x 1 thread, the gradient all-reduce alone, and PyTorch DDP as a peer.

    python bench/mpi_scaling.py [--configs small medium large] [--repeats N] [--no-torch]
                                [--json PATH] [--txt PATH]

The driver starts one worker per setup, each a fresh process:

- ``1x2``: ``python bench/mpi_scaling.py --worker``, no mpiexec, OMP_NUM_THREADS=2 and
  ``rnnfast.set_num_threads(2)``; the whole global batch of B rows on one rank.
- ``2x1``: ``mpiexec -n 2 python bench/mpi_scaling.py --worker``, OMP_NUM_THREADS=1 and
  ``rnnfast.set_num_threads(1)``; each rank takes its half of the global batch
  (``rnnfast.distributed.shard``), so the global batch is the same B rows.
- ``ddp``: ``torch.nn.LSTM`` + ``torch.nn.Linear`` under ``DistributedDataParallel``
  (gloo, 2 processes, ``torch.set_num_threads(1)``), each process half the batch.

One training step is the loop of docs/distributed.md's hand-written example, with the pieces
of ``rnnfast.distributed`` (not ``fit``, so that its parts can be timed apart):
``model.forward`` on this rank's rows, ``losses.cross_entropy(reduction="sum")``,
``model.backward``, ``distributed.allreduce_grads(grads, loss, terms)`` (one float64
``Allreduce`` of every gradient and the two scalars), the division by the global number of
terms, and ``optim.Adam.step``. Model: ``Model(LSTM(D, H), Linear(H, 10))``, float32,
input (B, T, D) normal, targets per step in 10 classes. Two untimed steps, then ``repeats``
timed steps (each preceded by a barrier in the 2-rank run, so that every rank starts it
together); the step's time is rank 0's, the median over repeats. Throughput: B·T global
timesteps per step time. The parts (compute = forward + loss + backward, all-reduce,
Adam step) are timed within the same steps.

The all-reduce alone: ``allreduce_grads`` on the model's gradients, and a bare
``comm.Allreduce`` of the same float64 buffer, each called ``ar_calls`` times after a barrier,
median per call; bytes = 8 x (number of parameters + 2).

The three setups run in turn, ``--rounds`` times (3); each figure is the median over rounds.
In the first round's 2-rank run, each rank also times compute + Adam (no all-reduce) at the
per-rank batches ``--sweep`` (8 16 32 64) of medium and large, both ranks at once: the t_step
of the ring all-reduce model of N machines (``t_allreduce``, ``_predict``) printed after the
table and stored as ``model`` in the JSON; docs/distributed.md, "Scaling", explains it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {"small": (32, 100, 64, 128), "medium": (64, 100, 128, 256),
           "large": (64, 200, 256, 512)}  # (B, T, D, H), as rnnfast.bench.CONFIGS
CLASSES = 10
HERE = os.path.abspath(__file__)


def _repeats(cfg, repeats):
    return max(3, repeats // 2) if cfg == "large" else repeats


def _rnnfast_worker(configs, repeats, ar_calls, sweep=(), sweep_configs=()):
    import numpy as np

    import rnnfast
    from rnnfast import distributed as dist
    n = dist.size()
    r = dist.rank()
    rnnfast.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    comm = dist.world() if n > 1 else None
    out = {}
    for cfg in configs:
        B, T, D, H = CONFIGS[cfg]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((B, T, D)).astype(np.float32)
        y = rng.integers(0, CLASSES, (B, T))
        model = rnnfast.Model(rnnfast.LSTM(D, H, seed=0), rnnfast.Linear(H, CLASSES, seed=1))
        opt = rnnfast.optim.Adam(model.params, lr=1e-3)
        dist.broadcast_params(model.params)
        mine = dist.shard(B)
        xs, ys = np.ascontiguousarray(x[mine]), y[mine]

        def step():
            t0 = time.perf_counter()
            o, _, cache = model.forward(xs)
            value, dlogits = rnnfast.losses.cross_entropy(o, ys, reduction="sum")
            _, _, grads = model.backward(cache, dlogits)
            t1 = time.perf_counter()
            value, terms = dist.allreduce_grads(grads, value, ys.size)
            t2 = time.perf_counter()
            for g in grads.values():
                g /= terms
            opt.step(grads)
            t3 = time.perf_counter()
            return t3 - t0, t1 - t0, t2 - t1, t3 - t2, grads

        for _ in range(2):
            *_, grads = step()
        rows = []
        for _ in range(_repeats(cfg, repeats)):
            dist.barrier()
            rows.append(step()[:4])
        med = [statistics.median(c) for c in zip(*rows)]
        nparams = sum(g.size for g in grads.values())
        rec = {"B": B, "T": T, "D": D, "H": H, "ranks": n, "rows_per_rank": xs.shape[0],
               "repeats": len(rows), "step_s": med[0], "compute_s": med[1],
               "allreduce_in_step_s": med[2], "adam_s": med[3],
               "timesteps_per_s": B * T / med[0], "params": nparams,
               "allreduce_bytes": 8 * (nparams + 2)}
        if n > 1:
            MPI = dist.require_mpi()
            ts = []
            dist.barrier()
            for _ in range(ar_calls):
                t0 = time.perf_counter()
                dist.allreduce_grads(grads, 1.0, 2.0)
                ts.append(time.perf_counter() - t0)
            buf = np.zeros(nparams + 2)
            tb = []
            dist.barrier()
            for _ in range(ar_calls):
                t0 = time.perf_counter()
                comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                tb.append(time.perf_counter() - t0)
            rec.update(allreduce_grads_s=statistics.median(ts),
                       allreduce_bare_s=statistics.median(tb), ar_calls=ar_calls)
        if n > 1 and cfg in sweep_configs:
            # per-rank compute + Adam (no all-reduce) at other per-rank batches, both ranks
            # at once, one thread each: t_step(b) of the scaling model
            sw = {}
            for b in sweep:
                xb = np.ascontiguousarray(np.resize(x, (b, T, D)))
                yb = np.resize(y, (b, T))
                m2 = rnnfast.Model(rnnfast.LSTM(D, H, seed=0), rnnfast.Linear(H, CLASSES, seed=1))
                o2 = rnnfast.optim.Adam(m2.params, lr=1e-3)

                def cstep():
                    t0 = time.perf_counter()
                    o, _, cache = m2.forward(xb)
                    value, dlogits = rnnfast.losses.cross_entropy(o, yb, reduction="sum")
                    _, _, g2 = m2.backward(cache, dlogits)
                    for g in g2.values():
                        g /= yb.size
                    o2.step(g2)
                    return time.perf_counter() - t0
                cstep()
                ts = []
                for _ in range(3):
                    dist.barrier()
                    ts.append(cstep())
                sw[str(b)] = statistics.median(ts)
            rec["compute_adam_by_rank_batch_s"] = sw
        # every rank's parts, for the per-rank compute time
        allrec = comm.gather(rec, root=0) if comm is not None else [rec]
        if r == 0:
            rec["per_rank_compute_s"] = [a["compute_s"] for a in allrec]
            out[cfg] = rec
    if r == 0:
        print("RESULT " + json.dumps(out), flush=True)


def _ddp_proc(rank, configs, repeats, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    out = {}
    for cfg in configs:
        B, T, D, H = CONFIGS[cfg]
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, T, D, generator=g)
        y = torch.randint(0, CLASSES, (B, T), generator=g)
        lo, hi = B * rank // 2, B * (rank + 1) // 2
        xs, ys = x[lo:hi].contiguous(), y[lo:hi].contiguous()
        net = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(D, H, batch_first=True),
                                   "head": torch.nn.Linear(H, CLASSES)})

        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, v):
                return self.net["head"](self.net["lstm"](v)[0])

        model = DDP(M())
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xs).reshape(-1, CLASSES),
                                                     ys.reshape(-1))
            loss.backward()  # DDP all-reduces (averages) the gradients in buckets here
            opt.step()
            return time.perf_counter() - t0

        for _ in range(2):
            step()
        ts = []
        for _ in range(_repeats(cfg, repeats)):
            tdist.barrier()
            ts.append(step())
        out[cfg] = {"step_s": statistics.median(ts), "repeats": len(ts),
                    "timesteps_per_s": B * T / statistics.median(ts)}
    if rank == 0:
        queue.put(out)
    tdist.destroy_process_group()


def _median_rounds(rounds):
    """Each numeric field: the median over rounds (lists and dicts: the first round's)."""
    out = {}
    for setup in rounds[0]:
        have = [r[setup] for r in rounds if setup in r]
        out[setup] = {}
        for cfg in have[0]:
            rec = dict(have[0][cfg])
            for k, v in rec.items():
                if isinstance(v, float):
                    rec[k] = statistics.median(h[cfg][k] for h in have)
            if "step_s" in rec:
                rec["timesteps_per_s"] = rec["B"] * rec["T"] / rec["step_s"] if "B" in rec \
                    else statistics.median(h[cfg]["timesteps_per_s"] for h in have)
            rec["rounds"] = len(have)
            out[setup][cfg] = rec
    return out


LATENCY_S = 20e-6
NODES = (2, 4, 8, 16, 32, 64, 128, 256)
GBPS = (10, 25, 100)


def t_allreduce(nbytes, n, gbps, latency=LATENCY_S):
    """Ring all-reduce: 2(N-1)/N x bytes / bandwidth + latency x log2 N."""
    import math
    return 2 * (n - 1) / n * nbytes / (gbps * 1e9 / 8) + latency * math.log2(n)


def _t_step(sweep, b):
    """Per-rank compute + Adam at per-rank batch b: linear between the measured batches,
    and beyond them proportional to b at the nearest end's time per row."""
    pts = sorted((int(k), v) for k, v in sweep.items())
    if b <= pts[0][0]:
        return pts[0][1] * b / pts[0][0]
    if b >= pts[-1][0]:
        return pts[-1][1] * b / pts[-1][0]
    for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
        if b0 <= b <= b1:
            return t0 + (t1 - t0) * (b - b0) / (b1 - b0)


def _predict(two, configs):
    out = {"latency_s": LATENCY_S, "nodes": NODES, "gbps": GBPS}
    for cfg in configs:
        rec = two[cfg]
        sweep = rec.get("compute_adam_by_rank_batch_s")
        if not sweep:
            continue
        b0 = rec["rows_per_rank"]
        ts = _t_step(sweep, b0)
        eff, b90 = {}, {}
        for g in GBPS:
            for n in NODES:
                tar = t_allreduce(rec["allreduce_bytes"], n, g)
                eff[f"{g}/{n}"] = ts / (ts + tar)
                b = 1  # smallest per-rank batch with t_step(b) >= 9 t_ar
                while _t_step(sweep, b) < 9 * tar and b < 1 << 20:
                    b += 1
                b90[f"{g}/{n}"] = b
        out[cfg] = {"bytes": rec["allreduce_bytes"], "rank_batch": b0, "t_step_s": ts,
                    "t_step_by_rank_batch_s": sweep, "efficiency": eff, "batch_for_90": b90}
    return out


def _model_table(model):
    lines = [f"ring all-reduce model: t_ar = 2(N-1)/N * bytes / bandwidth + "
             f"{model['latency_s'] * 1e6:.0f} us * log2 N; efficiency = t_step / (t_step + t_ar)"]
    head = "".join(f"{n:>7}" for n in model["nodes"])
    for cfg in ("small", "medium", "large"):
        m = model.get(cfg)
        if not m:
            continue
        sw = ", ".join(f"b={k}: {v * 1e3:.1f}" for k, v in m["t_step_by_rank_batch_s"].items())
        lines.append(f"{cfg}: bytes {m['bytes']}, t_step(b) ms per rank ({sw})")
        lines.append(f"  efficiency at per-rank batch {m['rank_batch']} "
                     f"(t_step {m['t_step_s'] * 1e3:.1f} ms)   N ={head}")
        for g in model["gbps"]:
            lines.append(f"  {g:>4} Gb/s{'':<38}" + "".join(
                f"{m['efficiency'][f'{g}/{n}'] * 100:>6.1f}%" for n in model["nodes"]))
        lines.append(f"  per-rank batch for 90 %{'':<30}N ={head}")
        for g in model["gbps"]:
            lines.append(f"  {g:>4} Gb/s{'':<38}" + "".join(
                f"{m['batch_for_90'][f'{g}/{n}']:>7}" for n in model["nodes"]))
    return "\n".join(lines)


def _run(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")


def _env(threads):
    env = dict(os.environ)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[v] = str(threads)
    return env


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--repeats", type=int, default=9, help="timed steps (large: half, >= 3)")
    ap.add_argument("--ar-calls", type=int, default=50)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of the three setups in turn; the medians over rounds")
    ap.add_argument("--sweep", type=int, nargs="*", default=[8, 16, 32, 64],
                    help="per-rank batches of the 2-rank compute-time sweep")
    ap.add_argument("--sweep-configs", nargs="*", default=["medium", "large"])
    ap.add_argument("--json")
    ap.add_argument("--txt")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return _rnnfast_worker(a.configs, a.repeats, a.ar_calls, a.sweep, a.sweep_configs)
    if a.ddp_worker:
        import torch.multiprocessing as tmp
        ctx = tmp.get_context("spawn")
        q = ctx.Queue()
        procs = [ctx.Process(target=_ddp_proc, args=(r, a.configs, a.repeats, 29517, q))
                 for r in range(2)]
        for p in procs:
            p.start()
        res = q.get()
        for p in procs:
            p.join()
        print("RESULT " + json.dumps(res), flush=True)
        return None

    t_start = time.time()
    base = [sys.executable, HERE, "--configs", *a.configs, "--repeats", str(a.repeats),
            "--ar-calls", str(a.ar_calls)]
    sweep = ["--sweep", *map(str, a.sweep), "--sweep-configs", *a.sweep_configs]
    rounds = []
    for i in range(a.rounds):
        rr = {"1x2": _run(base + ["--worker"], _env(2)),
              "2x1": _run(["mpiexec", "-n", "2"] + base + ["--worker"]
                          + (sweep if i == 0 else []), _env(1))}
        if not a.no_torch:
            try:
                rr["ddp"] = _run(base + ["--ddp-worker"], _env(1))
            except Exception as e:  # torch missing or gloo failing: the row is skipped
                print(f"torch DDP skipped: {e}", file=sys.stderr)
        rounds.append(rr)
    res = _median_rounds(rounds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=os.path.dirname(HERE)).stdout.strip()
    lines = [f"rnnfast {commit}, LSTM float32 + Linear(H, {CLASSES}), cross-entropy, Adam; "
             f"global batch B, 2 cores; medians",
             f"{'config':<8}{'(B, T, D, H)':<20}{'1x2 ts/s':>11}{'2x1 ts/s':>11}{'2x1/1x2':>9}"
             f"{'DDP ts/s':>11}{'1x2 step':>10}{'2x1 step':>10}{'compute':>9}{'ar(step)':>9}"
             f"{'adam':>8}{'ar alone':>10}{'ar bare':>9}{'MB':>7}"]
    for cfg in a.configs:
        one, two = res["1x2"][cfg], res["2x1"][cfg]
        ddp = res.get("ddp", {}).get(cfg)
        two["ratio_to_1x2"] = two["timesteps_per_s"] / one["timesteps_per_s"]
        ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
        lines.append(
            f"{cfg:<8}{str((one['B'], one['T'], one['D'], one['H'])):<20}"
            f"{one['timesteps_per_s']:>11.0f}{two['timesteps_per_s']:>11.0f}"
            f"{two['ratio_to_1x2']:>9.3f}"
            f"{(format(ddp['timesteps_per_s'], '.0f') if ddp else '-'):>11}"
            f"{ms(one['step_s']):>10}{ms(two['step_s']):>10}{ms(two['compute_s']):>9}"
            f"{ms(two['allreduce_in_step_s']):>9}{ms(two['adam_s']):>8}"
            f"{ms(two['allreduce_grads_s']):>10}{ms(two['allreduce_bare_s']):>9}"
            f"{two['allreduce_bytes'] / 1e6:>7.2f}")
    lines.append("times in ms; step/compute/ar(step)/adam: rank 0's parts of the 2x1 step; "
                 "ar alone: allreduce_grads; ar bare: comm.Allreduce of the float64 buffer")
    table = "\n".join(lines)
    print(table)
    model = _predict(res["2x1"], a.configs)
    table += "\n\n" + _model_table(model)
    print("\n" + _model_table(model))
    doc = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "configs": {c: CONFIGS[c] for c in a.configs}, "repeats": a.repeats,
           "ar_calls": a.ar_calls, "rounds": a.rounds, "wall_s": time.time() - t_start,
           "results": res, "by_round": rounds, "model": model}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    if a.txt:
        with open(a.txt, "w") as f:
            f.write(table + "\n")
    return doc


if __name__ == "__main__":
    main()
