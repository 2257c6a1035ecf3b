"""Issue 5's targets, read off one run of bench/run.py: a Markdown table per thread count.

    python bench/summary.py bench/results/2026-11-25-session2.json

Per (config, cell): rnnfast's median, how many times faster it is than the best of PyTorch
and JAX (and which) and than its NumPy reference, the fraction of the matmul ceiling it
reached, and its peak memory against PyTorch's. Ratios above 1 favour rnnfast.
"""

import json
import sys

PEERS = ("torch", "jax")


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        result = json.load(f)
    m = result["machine"]
    print(f"{result['date']}, {m['cpu']}, {m['cores']} cores: `python bench/{result['command']}`\n")
    print("\n\n".join(table(run) for run in result["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
