"""The targets, read off one run of bench/run.py: a Markdown table per thread count.

    python bench/summary.py bench/results/2026-11-26-efabaf8-b.json

Per (config, cell): rnnfast's median, how many times faster it is than the best of PyTorch
and JAX (and which) and than its NumPy reference, the fraction of the matmul ceiling it
reached, and its peak memory against PyTorch's. Ratios above 1 favour rnnfast.

A run of ``--suite bidirectional`` also gets the bidirectional targets, each said to hold or
not: at 2 threads, rnnfast faster than the best of PyTorch and JAX by at least 1.3x on every
row and 3x at online; rnnfast's bidirectional layer at 2 threads within 1.2x the time of its
unidirectional layer at 1 thread (the pairs, timed in one process).

A run of ``--suite torch`` gets instead, per thread count, torch.nn's and rnnfast.torch's
training-step medians and their ratio (torch.nn's over rnnfast.torch's), then its targets at
2 threads, each said to hold or not: ≥ 3× for every cell at batch 1; from B = 16 on ≥ 2× for
the RNN and the GRU and ≥ 1.3× for the LSTM (``rnnfast.bench.model_target``).
"""

import json
import sys

from rnnfast.bench import model_target

PEERS = ("torch", "jax")
BI_THREADS = 2  # the bidirectional targets are stated at 2 threads
VS_PEERS, VS_PEERS_ONLINE = 1.3, 3.0  # x the best of PyTorch and JAX, at least
BI_OVER_UNI = 1.2  # bidirectional at 2 threads / unidirectional at 1 thread, at most


def rows(run):
    for row in run["rows"]:
        impls = row["impls"]
        ours = impls["rnnfast"]
        peers = {p: impls[p]["median_s"] for p in PEERS if p in impls}
        best = min(peers, key=peers.get) if peers else None
        yield {
            "config": row["config"], "cell": row["cell"], "ms": ours["median_s"] * 1e3,
            "best": best, "vs_best": peers[best] / ours["median_s"] if best else None,
            "vs_numpy": (impls["numpy"]["median_s"] / ours["median_s"]
                         if "numpy" in impls else None),
            "ceiling": ours["ceiling_fraction"],
            "mib": ours["peak_mib"],
            "torch_mib": impls["torch"]["peak_mib"] if "torch" in impls else None,
        }


def fmt(v, spec, none="–"):
    return none if v is None else format(v, spec)


def table(run):
    lines = [f"threads = {run['threads']}, matmul ceiling {run['ceiling_gflops']:.1f} GFLOP/s",
             "",
             "| config | cell | rnnfast ms | × best peer | × NumPy ref | ceiling | peak MiB (torch) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows(run):
        peer = f"{fmt(r['vs_best'], '.2f')} ({r['best']})" if r["best"] else "–"
        lines.append(
            f"| {r['config']} | {r['cell']} | {r['ms']:.2f} | {peer} | "
            f"{fmt(r['vs_numpy'], '.1f')} | {fmt(r['ceiling'] and 100 * r['ceiling'], '.0f')} % | "
            f"{fmt(r['mib'], '.1f')} ({fmt(r['torch_mib'], '.1f')}) |")
    return "\n".join(lines)


def verdict(ok):
    return "**holds**" if ok else "**does not hold**"


def bidirectional_targets(result):
    """Markdown: every bidirectional target per row with its numbers, then one line each."""
    run = next((r for r in result["runs"] if r["threads"] == BI_THREADS), None)
    if run is None:
        return f"Bidirectional targets: no run at {BI_THREADS} threads in this file."
    lines = [f"Bidirectional targets, {BI_THREADS} threads", "",
             "| config | cell | rnnfast ms | best peer ms | × best peer | needed | holds | "
             f"uni@1 ms | bi@{BI_THREADS} ms | bi@{BI_THREADS} / uni@1 | holds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    pairs = {(p["config"], p["cell"]): p["impls"] for p in run.get("pairs", [])}
    peer_ok, pair_ok = {}, {}
    for row, r in zip(run["rows"], rows(run)):
        key = (r["config"], r["cell"])
        need = VS_PEERS_ONLINE if r["config"] == "online" else VS_PEERS
        if r["best"]:
            peer_ok[key] = (r["vs_best"], need, r["vs_best"] >= need)
            peer = (f"{row['impls'][r['best']]['median_s'] * 1e3:.2f} ({r['best']}) | "
                    f"{r['vs_best']:.2f} | ≥ {need:g} | {'yes' if peer_ok[key][2] else 'no'}")
        else:
            peer = "– | – | – | not measured"
        p = pairs.get(key)
        if p:
            uni, bi = p["uni@1"]["median_s"], p[f"bi@{BI_THREADS}"]["median_s"]
            pair_ok[key] = (bi / uni, bi / uni <= BI_OVER_UNI)
            pair = (f"{uni * 1e3:.2f} | {bi * 1e3:.2f} | {bi / uni:.2f} | "
                    f"{'yes' if pair_ok[key][1] else 'no'}")
        else:
            pair = "– | – | – | not measured"
        lines.append(f"| {r['config']} | {r['cell']} | {r['ms']:.2f} | {peer} | {pair} |")

    def said(name, found, ratio):
        if not found:
            return f"- {name}: not measured in this file."
        misses = [f"{c} {cell} {v[0]:.2f}" for (c, cell), v in found.items() if not v[-1]]
        values = [v[0] for v in found.values()]
        return (f"- {name}: {verdict(not misses)} ({ratio} {min(values):.2f}–{max(values):.2f}"
                + (f"; misses: {', '.join(misses)}" if misses else "") + ").")
    online = {k: v for k, v in peer_ok.items() if k[0] == "online"}
    others = {k: v for k, v in peer_ok.items() if k[0] != "online"}
    peers = "the best of PyTorch and JAX"
    lines += ["",
              said(f"≥ {VS_PEERS:g}× {peers}, every row but online", others, "×"),
              said(f"≥ {VS_PEERS_ONLINE:g}× {peers} at online", online, "×"),
              said(f"bidirectional at {BI_THREADS} threads ≤ {BI_OVER_UNI:g}× unidirectional "
                   "at 1 thread", pair_ok, "ratio")]
    return "\n".join(lines)


MODEL_THREADS = 2  # the torch suite's targets are stated at 2 threads


def model_table(run):
    """Markdown: the torch suite's medians at one thread count, and the ratio with its IQRs."""
    lines = [f"threads = {run['threads']}: one training step, Embedding → cell → Linear, "
             "cross-entropy, backward, Adam", "",
             "| config | cell | B | torch.nn ms | rnnfast.torch ms | × | IQR/med (torch.nn, "
             "rnnfast.torch) | peak MiB (torch.nn, rnnfast.torch) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in run["rows"]:
        nn, rt = row["impls"].get("torch.nn"), row["impls"].get("rnnfast.torch")
        ms = lambda r: fmt(r and r["median_s"] * 1e3, ".2f")  # noqa: E731
        iqr = lambda r: fmt(r and r["iqr_over_median"] * 100, ".1f", "–") + " %"  # noqa: E731
        mib = lambda r: fmt(r and r["peak_mib"], ".1f")  # noqa: E731
        ratio = nn["median_s"] / rt["median_s"] if nn and rt else None
        lines.append(f"| {row['config']} | {row['cell']} | {row['B']} | {ms(nn)} | {ms(rt)} | "
                     f"{fmt(ratio, '.2f')} | {iqr(nn)}, {iqr(rt)} | {mib(nn)}, {mib(rt)} |")
    return "\n".join(lines)


def model_targets(result):
    """Markdown: the torch suite's targets at 2 threads, per row with its numbers, then one
    line per target."""
    run = next((r for r in result["runs"] if r["threads"] == MODEL_THREADS), None)
    if run is None:
        return f"torch-suite targets: no run at {MODEL_THREADS} threads in this file."
    lines = [f"torch-suite targets, {MODEL_THREADS} threads (× = torch.nn's step time over "
             "rnnfast.torch's)", "",
             "| config | cell | B | torch.nn ms | rnnfast.torch ms | × | needed | holds |",
             "|---|---|---|---|---|---|---|---|"]
    found = {"online": {}, "RNN/GRU": {}, "LSTM": {}}
    for row in run["rows"]:
        nn, rt = row["impls"].get("torch.nn"), row["impls"].get("rnnfast.torch")
        need = model_target(row["cell"], row["B"])
        if not (nn and rt):
            lines.append(f"| {row['config']} | {row['cell']} | {row['B']} | – | – | – | "
                         f"{fmt(need, 'g')} | not measured |")
            continue
        ratio = nn["median_s"] / rt["median_s"]
        ok = None if need is None else ratio >= need
        lines.append(f"| {row['config']} | {row['cell']} | {row['B']} | "
                     f"{nn['median_s'] * 1e3:.2f} | {rt['median_s'] * 1e3:.2f} | {ratio:.2f} | "
                     f"{'–' if need is None else f'≥ {need:g}'} | "
                     f"{'no target' if ok is None else 'yes' if ok else 'no'} |")
        if need is not None:
            group = "online" if row["B"] == 1 else "LSTM" if row["cell"] == "LSTM" else "RNN/GRU"
            found[group][(row["config"], row["cell"])] = (ratio, ok)

    def said(name, rows):
        if not rows:
            return f"- {name}: no such row measured in this file."
        misses = [f"{c} {cell} {v[0]:.2f}" for (c, cell), v in rows.items() if not v[1]]
        values = [v[0] for v in rows.values()]
        return (f"- {name}: {verdict(not misses)} (× {min(values):.2f}–{max(values):.2f}"
                + (f"; misses: {', '.join(misses)}" if misses else "") + ").")
    lines += ["",
              said("≥ 2× for RNN and GRU at every config with B ≥ 16", found["RNN/GRU"]),
              said("≥ 1.3× for the LSTM at every config with B ≥ 16", found["LSTM"]),
              said("≥ 3× for all three at batch 1", found["online"])]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        result = json.load(f)
    m = result["machine"]
    print(f"{result['date']}, {m['cpu']}, {m['cores']} cores: `python bench/{result['command']}`\n")
    if result.get("suite") == "torch":
        print("\n\n".join(model_table(run) for run in result["runs"]))
        print("\n" + model_targets(result))
        return 0
    print("\n\n".join(table(run) for run in result["runs"]))
    if result.get("suite") == "bidirectional":
        print("\n" + bidirectional_targets(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
