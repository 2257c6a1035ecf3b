"""Re-run the numbered claims of README.md and docs/*.md and report how far they drifted.

Every number the documentation quotes from running something of this repository is
registered below with the text that quotes it, the command that prints it, how to read it
from that command's output (or from the bench/results file the text cites) and how far it
may move before the text is wrong:

    python tools/claims.py                  # run everything: 5-10 minutes on 2 cores
    python tools/claims.py --quick          # only the commands that take under ~30 s
    python tools/claims.py --only adding    # the claims whose name contains "adding"
    python tools/claims.py --list           # the registry, running nothing
    python tools/claims.py --keep out/      # keep the outputs; a second run reads them again

Each claim ends as OK, DRIFT (beyond its tolerance), INFO (a time or a speed beyond its wide
tolerance: these depend on the machine and its load, so they are reported, never failed),
SKIP (an optional package is missing, or the command is slow under --quick), MISSING (its
text is no longer in the document) or ERROR (the command failed or printed no such number).
The exit status is 1 when any claim ends as DRIFT, MISSING or ERROR: a number changed in
the text must be changed here, and a claim removed from the text must be removed here.

A command runs once for all the claims read from its output, in the repository's root with
a temporary directory for whatever it writes. Benchmarks are never re-run: a ratio quoted
from bench/results is checked against the file it cites.
"""

import argparse
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "bench/results/"
NUMBER = r"(-?[0-9][0-9,]*\.?[0-9]*(?:e[-+]?[0-9]+)?)"


# ---------------------------------------------------------------------------------------------
# The commands. `seconds` is the time on the repository's 2-core machine; --quick skips those
# above QUICK_SECONDS. `needs` lists optional modules: without them the claims are skipped.
# `{tmp}` is replaced by a fresh temporary directory.

QUICK_SECONDS = 30


@dataclass
class Command:
    argv: str
    seconds: float
    needs: tuple = ()


SNIPPET_CACHE_NBYTES = """\
import numpy as np, rnnfast
model = rnnfast.RNN(input_size=2, hidden_size=32, seed=0)
x = np.random.default_rng(0).standard_normal((8, 100, 2), dtype=np.float32)
y, h_n, cache = model.forward(x)
dy = np.zeros_like(y); dy[:, -1] = 1.0
dx, dh0, grads, norms = model.backward(cache, dy, return_grad_norms=True)
print(cache.nbytes, norms.shape)
"""

SNIPPET_GRADIENT_FLOW = """\
import rnnfast
from rnnfast import diagnostics
from rnnfast.tasks import adding_problem
x, y = adding_problem(100, 100, seed=0)
model = rnnfast.Model(rnnfast.RNN(2, 32, seed=0), rnnfast.Linear(32, 1, seed=1))
print(diagnostics.gradient_flow(model, x, y, loss="mse_last").summary())
"""

SNIPPET_TRUNCATED = """\
import rnnfast
from rnnfast.tasks import delayed_recall
x, y = delayed_recall(20, 100, delay=10, seed=0)
model = rnnfast.Model(rnnfast.GRU(1, 16, seed=0), rnnfast.Linear(16, 1, seed=1))
opt = rnnfast.optim.Adam(model.params, lr=1e-2)
out = rnnfast.train_sequence(model, opt, x, y, loss="mse", k1=15, k2=15, clip_norm=1.0)
print("updates", out["updates"])
"""

# The models of docs/distributed.md's "Predicted scaling": bench/mpi_scaling.py's medium and
# large configs, Model(LSTM(D, H), Linear(H, 10)).
SNIPPET_MPI_SIZES = """\
import rnnfast
for name, D, H in (("medium", 128, 256), ("large", 256, 512)):
    model = rnnfast.Model(rnnfast.LSTM(D, H), rnnfast.Linear(H, 10))
    n = sum(p.size for p in model.params.values())
    print(name, "parameters", n, "bytes", 8 * (n + 2))
"""


def python_snippet(code):
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


COMMANDS = {
    "train": Command("rnnfast train --no-progress", 25),
    "quickstart": Command("python examples/quickstart.py", 10),
    "adding-gru": Command("python examples/adding_problem.py --cell gru --no-progress", 60),
    "adding-lstm": Command("python examples/adding_problem.py --cell lstm --no-progress", 90),
    "text-classifier": Command("python examples/text_classifier.py --no-progress", 25),
    "text-classifier-uni": Command(
        "python examples/text_classifier.py --unidirectional --no-progress", 30),
    "torch-drop-in": Command("python examples/torch_drop_in.py --threads 2", 45,
                             needs=("torch",)),
    "digits": Command("python examples/digits_classifier.py --no-progress", 30,
                      needs=("sklearn",)),
    "vanishing": Command("rnnfast experiment vanishing --out {tmp}", 47),
    "exploding": Command("rnnfast experiment exploding --out {tmp}", 5),
    "truncation": Command("rnnfast experiment truncation --out {tmp}", 20),
    "bptt-cache": Command(python_snippet(SNIPPET_CACHE_NBYTES), 2),
    "bptt-flow": Command(python_snippet(SNIPPET_GRADIENT_FLOW), 3),
    "bptt-truncated": Command(python_snippet(SNIPPET_TRUNCATED), 3),
    "mpi-sizes": Command(python_snippet(SNIPPET_MPI_SIZES), 2),
    "leak-test": Command("python -m pytest -p no:cacheprovider -q -s "
                         "tests/test_hardening.py::test_10000_calls_leave_resident_memory_flat",
                         30),
}


# ---------------------------------------------------------------------------------------------
# How a claim is read and judged.
#
# `quoted` is the number as the text writes it ("2.17", "40,000", "0.58-0.70" for a range,
# several separated by spaces for a row of a table); a number agrees with it when, rounded to
# the quoted number's last digit, it is within the tolerance. `tol`: ("exact",) for counts,
# ("rel", r) or ("abs", a) for losses and accuracies, ("info", r) for times and speeds,
# ("below",) for a bound the text promises ("below 0.01").
# `read` is a regex with one group per quoted number, applied to the command's output or the
# cited file; `pick` chooses among its matches ("first", "last", or "range": the smallest and
# the largest of every match, for a quoted range); or a function of the text for what a regex
# cannot read alone.

@dataclass
class Claim:
    name: str
    doc: str
    snippet: str
    quoted: str
    tol: tuple
    run: str = None          # a key of COMMANDS
    source: str = None       # or a file of the repository, read instead of running anything
    read: object = None      # a regex, or a function of the text returning a list of floats
    pick: str = "first"
    wall: bool = False       # the command's own wall time, in seconds, is the number
    note: str = ""


def parse_quoted(quoted):
    """The numbers of a quoted string and the size of their last digit's unit."""
    parts = re.split(r"\s+|(?<=[0-9])[–-](?=[0-9])", quoted.strip())
    values, units = [], []
    for part in parts:
        clean = part.replace(",", "").replace("\u2009", "")
        if not clean:
            continue
        values.append(float(clean))
        units.append(10.0 ** Decimal(clean).as_tuple().exponent)
    return values, units


def is_range(quoted):
    return bool(re.search(r"[0-9][–-][0-9]", quoted))


def to_float(text):
    return float(text.replace(",", "").replace(" ", ""))


def judge(claim, measured):
    """(drift as a fraction, within tolerance) of measured numbers against the quoted ones."""
    quoted, units = parse_quoted(claim.quoted)
    if is_range(claim.quoted) and len(measured) == 1:
        # one number against a range: how far it falls outside, measured from the nearer end
        lo, hi = quoted
        quoted, units = [min(max(measured[0], lo), hi)], [max(units)]
    if len(measured) != len(quoted):
        raise ValueError(f"read {len(measured)} numbers for {len(quoted)} quoted")
    kind = claim.tol[0]
    worst, ok = 0.0, True
    for q, unit, m in zip(quoted, units, measured):
        rounding = unit / 2 + 1e-12 * max(1.0, abs(q))
        off = abs(m - q)
        drift = (m - q) / q if q else (m - q)
        if abs(drift) > abs(worst):
            worst = drift
        if kind == "below":
            ok = ok and m < q
            continue
        if kind == "exact":
            allowed = rounding
        elif kind == "abs":
            allowed = rounding + claim.tol[1]
        else:  # rel, info
            allowed = rounding + claim.tol[1] * abs(q)
        ok = ok and off <= allowed
    return worst, ok


def extract(claim, text):
    if callable(claim.read):
        return [float(v) for v in claim.read(text)]
    matches = re.findall(claim.read, text, re.MULTILINE)
    if not matches:
        raise ValueError(f"no match for {claim.read!r}")
    rows = [[to_float(g) for g in (m if isinstance(m, tuple) else (m,))] for m in matches]
    if claim.pick == "range":
        flat = [v for row in rows for v in row]
        return [min(flat), max(flat)]
    return rows[0] if claim.pick == "first" else rows[-1]


# ---------------------------------------------------------------------------------------------
# Reading bench/results files: the tables `python bench/run.py` writes, one section per
# thread count ("threads=N ..."), one row per config, cell and implementation.

BENCH_ROW = re.compile(r"^(\w+)\s+(\w+)\s+(\S+)\s+([0-9.]+)\s+([0-9.]+)%\s+\d+\s+\d+\s+[0-9.]+"
                       r"\s+[0-9.]+%\s+[0-9.]+\s+([0-9.]+)\s*$")


def bench_table(text):
    """{(threads, config, cell, impl): (median ms, time over rnnfast's)} of a bench .txt."""
    rows, threads = {}, None
    for line in text.splitlines():
        head = re.match(r"^threads=(\d+)", line)
        if head:
            threads = int(head.group(1))
            continue
        row = BENCH_ROW.match(line)
        if row and threads is not None:
            config, cell, impl, ms, _, ratio = row.groups()
            rows[threads, config, cell, impl] = (float(ms), float(ratio))
    return rows


def bench_noise(threads):
    def read(text):
        sections = re.split(r"^threads=", text, flags=re.MULTILINE)
        for section in sections[1:]:
            if section.startswith(f"{threads} "):
                return [float(re.search(r"noise: IQR/median median ([0-9.]+)%", section)[1])]
        raise ValueError(f"no threads={threads} section")
    return read


def peer_row(config, cell, *columns):
    """Numbers of one row of README's benchmark table: for each (threads, what), rnnfast's
    median ms, the best peer's time over rnnfast's, or the NumPy reference's."""
    def read(text):
        rows, out = bench_table(text), []
        for threads, what in columns:
            if what == "ms":
                out.append(rows[threads, config, cell, "rnnfast"][0])
            elif what == "peer":
                out.append(min(rows[threads, config, cell, impl][1] for impl in ("torch", "jax")
                               if (threads, config, cell, impl) in rows))
            else:
                out.append(rows[threads, config, cell, what][1])
        return out
    return read


def rows_ahead(threads):
    """How many rows of a bench .txt rnnfast leads the best of PyTorch and JAX on, of all."""
    def read(text):
        best = {}
        for (n, config, cell, impl), (_, ratio) in bench_table(text).items():
            if n == threads and impl in ("torch", "jax"):
                best[config, cell] = min(ratio, best.get((config, cell), ratio))
        return [sum(r > 1 for r in best.values()), len(best)]
    return read


def ratio_range(threads, configs, cells, impl):
    """The smallest and largest of one implementation's time over rnnfast's."""
    def read(text):
        rows = bench_table(text)
        values = [rows[threads, c, cell, impl][1] for c in configs for cell in cells]
        return [min(values), max(values)]
    return read


def kernel_ratios(level, configs=None):
    """bench/kernels.py's table: the smallest and largest ratio of one level's kernel (as
    printed: time over the fastest kernel's)."""
    def read(text):
        values = []
        for line in text.splitlines():
            cols = re.findall(r"([0-9.]+) \(([0-9.]+)x\)", line)
            if len(cols) != 3 or (configs and line.split()[0] not in configs):
                continue
            index = {"x86-64": 0, "x86-64-v3": 1, "x86-64-v4": 2}[level]
            values.append(float(cols[index][1]))
        return [min(values), max(values)]
    return read


def bidirectional_row(config, cell):
    """README's bidirectional table: one run's 2-thread ms, best peer's ratio, bi@2/uni@1."""
    def read(text):
        rows = bench_table(text)
        peer = min(rows[2, config, cell, impl][1] for impl in ("torch", "jax"))
        alone = re.search(rf"^{config}\s+{cell}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)",
                          text.split("rnnfast alone")[1], re.MULTILINE)
        return [rows[2, config, cell, "rnnfast"][0], peer, float(alone[1])]
    return read


def mpi_row(config, *indexes):
    """bench/mpi_scaling.py's table: the numbers after the config's (B, T, D, H)."""
    def read(text):
        line = re.search(rf"^{config}\s+\([^)]*\)(.*)$", text, re.MULTILINE)[1]
        numbers = [float(v) for v in line.split()]
        return [numbers[i] for i in indexes]
    return read


def mpi_model(model, block, bandwidth):
    """A row of the predicted-scaling tables: "efficiency" (percent) or "batch" (for 90 %)."""
    def read(text):
        part = text.split(f"\n{model}: ")[1]
        part = part.split("efficiency at")[1] if block == "efficiency" else \
            part.split("per-rank batch for 90 %")[1]
        line = re.search(rf"^\s*{bandwidth}\s+(.*)$", part, re.MULTILINE)[1]
        return [float(v.rstrip("%")) for v in line.split()]
    return read


def mpi_t_step(model):
    def read(text):
        line = re.search(rf"^{model}: bytes \d+, t_step\(b\) ms per rank \((.*)\)", text,
                         re.MULTILINE)[1]
        return [float(v) for v in re.findall(r"b=\d+: ([0-9.]+)", line)]
    return read


def table_numbers(text):
    """The numbers of a Markdown table row's cells, in order (units and labels dropped)."""
    text = re.sub(r"(?<=[0-9]) (?=[0-9]{3}\b)", "", text)  # 89 800: one number
    return " ".join(re.findall(r"[0-9][0-9,]*(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?", text))


# ---------------------------------------------------------------------------------------------
# The registry.

R = "README.md"
BPTT = "docs/bptt.md"
DIST = "docs/distributed.md"
EFABAF8 = RESULTS + "2026-11-26-efabaf8-b.txt"
AVX512 = RESULTS + "2026-12-06-e244c37.txt"  # the default suite on the AVX-512 Xeon
TORCH_STEP = RESULTS + "2026-12-05-93b1ff9-torch-step.txt"
KERNELS = RESULTS + "2026-12-05-6368346-kernels.txt"
MPI = RESULTS + "2026-12-05-e7d4cba-mpi-scaling.txt"


CLAIMS = [
    # ---- README: rnnfast train (the character model) ---------------------------------------
    Claim("readme/train/val-bits", R, "validation 2.17 then 1.91 bits/char", "2.17 1.91",
          ("rel", 0.02), run="train",
          read=lambda t: [float(v) for v in re.findall(r"validation ([0-9.]+) bits/char", t)]),
    Claim("readme/train/chars-per-s", R, "94,000–99,000 characters/s", "94,000–99,000",
          ("info", 0.25), run="train", read=r"([0-9,]+) chars/s", pick="range"),
    Claim("readme/train/seconds", R, "characters/s, 10 s", "10", ("info", 0.25),
          run="train", wall=True),
    # ---- README: the examples table ----------------------------------------------------------
    Claim("readme/quickstart/mse", R, "(MSE 1.0 → below 0.01)", "0.01", ("below",),
          run="quickstart", read=r"held-out MSE ([0-9.]+)",
          note="a bound: the held-out MSE must be below it"),
    Claim("readme/adding-gru/test-mse", R, "test MSE 0.0002 after its 12 epochs", "0.0002",
          ("abs", 0.0002), run="adding-gru", read=r"^test MSE ([0-9.]+) vs baseline"),
    Claim("readme/adding-gru/epochs", R, "test MSE 0.0002 after its 12 epochs", "12",
          ("exact",), run="adding-gru", read=r"^epoch +([0-9]+) ", pick="last"),
    Claim("readme/adding-lstm/test-mse", R, "then test MSE 0.0003 after 12", "0.0003",
          ("abs", 0.0003), run="adding-lstm", read=r"^test MSE ([0-9.]+) vs baseline"),
    Claim("readme/adding-lstm/plateau-epochs", R, "a plateau at 0.167 for 7 epochs", "7",
          ("exact",), run="adding-lstm",
          read=lambda t: [sum(1 for v in re.findall(r"test MSE ([0-9.]+)  \(", t)
                              if float(v) > 0.15)],
          note="epochs whose test MSE stays above 0.15"),
    Claim("readme/text-classifier/accuracy", R, "test accuracy 0.751 (229/305)", "0.751",
          ("abs", 0.015), run="text-classifier", read=r"^test accuracy ([0-9.]+) \(",
          note="moves with the kernel: 0.708 with x86-64-v3, 0.751 with x86-64-v4, on one CPU"),
    Claim("readme/text-classifier/correct", R, "test accuracy 0.751 (229/305)", "229",
          ("abs", 5), run="text-classifier", read=r"^test accuracy [0-9.]+ \(([0-9]+)/"),
    Claim("readme/text-classifier/test-size", R, "test accuracy 0.751 (229/305)", "305",
          ("exact",), run="text-classifier",
          read=r"^test accuracy [0-9.]+ \([0-9]+/([0-9]+)\)"),
    Claim("readme/text-classifier/baseline", R, "against 0.197 for the majority package",
          "0.197", ("exact",), run="text-classifier",
          read=r"against ([0-9.]+) for always naming"),
    Claim("readme/text-classifier/seconds", R, "16 s of training", "16", ("info", 0.25),
          run="text-classifier", read=r"trained in ([0-9.]+) s"),
    Claim("readme/text-classifier-uni/accuracy", R, "unidirectional LSTM of the same size: 0.61",
          "0.61", ("abs", 0.015), run="text-classifier-uni",
          read=r"^test accuracy ([0-9.]+) \("),
    Claim("readme/torch-drop-in/seconds", R, "20.7 s against 7.5 s for 4 epochs",
          "20.7 7.5", ("info", 0.25), run="torch-drop-in",
          read=lambda t: [float(v) for v in re.findall(r": test accuracy [0-9.]+, trained in "
                                                        r"([0-9.]+) s", t)]),
    Claim("readme/torch-drop-in/accuracy", R, "4 epochs at 2 threads, test accuracy 0.725 and "
          "0.721", "0.725 0.721", ("abs", 0.015), run="torch-drop-in",
          read=lambda t: [float(v) for v in re.findall(r": test accuracy ([0-9.]+),", t)]),
    Claim("readme/torch-drop-in/seconds-intro", R, "20.7 s against 7.5 s on that Xeon",
          "20.7 7.5", ("info", 0.25), run="torch-drop-in",
          read=lambda t: [float(v) for v in re.findall(r": test accuracy [0-9.]+, trained in "
                                                        r"([0-9.]+) s", t)]),
    Claim("readme/torch-drop-in/accuracy-intro", R, "threads, test accuracy 0.725 and 0.721.\n",
          "0.725 0.721", ("abs", 0.015), run="torch-drop-in",
          read=lambda t: [float(v) for v in re.findall(r": test accuracy ([0-9.]+),", t)]),
    Claim("readme/digits/accuracy", R, "test accuracy 0.994 (357/359) after 30 epochs",
          "0.994", ("abs", 0.006), run="digits", read=r"^test accuracy ([0-9.]+) \("),
    Claim("readme/digits/counts", R, "test accuracy 0.994 (357/359) after 30 epochs",
          "357 359", ("abs", 2), run="digits",
          read=r"^test accuracy [0-9.]+ \(([0-9]+)/([0-9]+)\)"),
    Claim("readme/digits/epochs", R, "test accuracy 0.994 (357/359) after 30 epochs",
          "30", ("exact",), run="digits", read=r"^epoch +([0-9]+) ", pick="last"),
    # ---- README: benchmark numbers, from the result files they cite --------------------------
    # README points to bench/README.md's "A PyTorch training step", whose first run this is
    Claim("readme/bench/torch-step-online", R, "took\n4.0× (RNN), 8.6× (GRU) and 1.4× (LSTM)",
          "4.0 8.6 1.4", ("exact",), source=TORCH_STEP,
          read=lambda t: [bench_table(t)[2, "online", c, "torch.nn"][1]
                          for c in ("RNN", "GRU", "LSTM")]),
    Claim("readme/bench/torch-step-small", R, "1.7× (RNN), 1.6× (GRU)\nand 0.67× (LSTM) at the "
          "small", "1.7 1.6 0.67", ("exact",), source=TORCH_STEP,
          read=lambda t: [bench_table(t)[2, "small", c, "torch.nn"][1]
                          for c in ("RNN", "GRU", "LSTM")]),
    Claim("readme/bench/torch-step-medium", R, "and 1.0–1.4× at medium", "1.0–1.4",
          ("exact",), source=TORCH_STEP,
          read=ratio_range(2, ["medium"], ["RNN", "LSTM", "GRU"], "torch.nn")),
    Claim("readme/bench/kernel-v3", R, "x86-64-v3 takes 1.23–1.80× and", "1.23–1.80",
          ("exact",), source=KERNELS, read=kernel_ratios("x86-64-v3")),
    Claim("readme/bench/kernel-baseline", R, "the baseline 3.0–5.4× the", "3.0–5.4",
          ("exact",), source=KERNELS, read=kernel_ratios("x86-64")),
    Claim("readme/bench/large-lstm-threads", R, "0.76 s against 1.44 s on one", "0.76 1.44",
          ("exact",), source=EFABAF8,
          read=lambda t: [bench_table(t)[n, "large", "LSTM", "rnnfast"][0] / 1000
                          for n in (2, 1)]),
    Claim("readme/bench/avx512-noise", R, "1-thread rows,\nIQR/median 4.6 %", "4.6",
          ("exact",), source=AVX512, read=bench_noise(1)),
    Claim("readme/bench/avx512-rows-ahead", R, "best peer on 13 of the 15 rows", "13 15",
          ("exact",), source=AVX512,
          read=rows_ahead(1)),
    Claim("readme/bench/avx512-torch-lstm", R, "(its time 0.95 and 0.95 of rnnfast's)",
          "0.95 0.95", ("exact",), source=AVX512,
          read=lambda t: [bench_table(t)[1, c, "LSTM", "torch"][1] for c in ("small", "large")]),
    Claim("readme/bench/noise", R, "4.7 % at 1 thread, 13.9 % at 2", "4.7 13.9", ("exact",),
          source=EFABAF8, read=lambda t: bench_noise(1)(t) + bench_noise(2)(t)),
    Claim("readme/bench/long-lstm-torch-a", R, "took 80.6 ms, then\n52.7 ms", "80.6",
          ("exact",), source=RESULTS + "2026-11-26-18f9bf2.txt",
          read=lambda t: [bench_table(t)[2, "long", "LSTM", "torch"][0]]),
    Claim("readme/bench/long-lstm-torch-b", R, "took 80.6 ms, then\n52.7 ms", "52.7",
          ("exact",), source=RESULTS + "2026-11-26-18f9bf2-b.txt",
          read=lambda t: [bench_table(t)[2, "long", "LSTM", "torch"][0]]),
]

# README's benchmark table, row by row, against the run it names.
for _row in [
    "| online (1, 100, 64, 64) | RNN | 0.12 | 2.25 (JAX) | 0.10 | 3.68 (JAX) | 48.1 |",
    "| online (1, 100, 64, 64) | LSTM | 0.46 | 1.87 (JAX) | 0.33 | 3.02 (JAX) | 42.6 |",
    "| online (1, 100, 64, 64) | GRU | 0.35 | 1.96 (JAX) | 0.27 | 3.15 (JAX) | 50.1 |",
    "| small (32, 100, 64, 128) | RNN | 7.15 | 1.37 (JAX) | 4.40 | 2.34 (JAX) | 2.5 |",
    "| small (32, 100, 64, 128) | LSTM | 27.76 | 1.16 (PyTorch) | 17.02 | 1.16 (PyTorch) | 2.4 |",
    "| small (32, 100, 64, 128) | GRU | 22.14 | 2.01 (PyTorch) | 12.43 | 3.11 (PyTorch) | 2.6 |",
    "| medium (64, 100, 128, 256) | RNN | 47.71 | 1.37 (PyTorch) | 26.15 | 1.79 (PyTorch) | 1.5 |",
    "| medium (64, 100, 128, 256) | LSTM | 195.84 | 1.22 (PyTorch) | 103.40 | 1.31 (PyTorch) | 1.5 |",
    "| medium (64, 100, 128, 256) | GRU | 142.93 | 1.31 (PyTorch) | 80.35 | 1.89 (PyTorch) | 1.6 |",
    "| large (64, 200, 256, 512) | RNN | 356.71 | 1.21 (PyTorch) | 206.61 | 1.32 (PyTorch) | 1.3 |",
    "| large (64, 200, 256, 512) | LSTM | 1438.61 | 1.20 (PyTorch) | 761.19 | 1.24 (PyTorch) | 1.6 |",
    "| large (64, 200, 256, 512) | GRU | 1084.41 | 1.29 (PyTorch) | 592.02 | 1.34 (PyTorch) | 1.7 |",
    "| long (16, 1000, 32, 64) | RNN | 10.51 | 1.88 (JAX) | 6.89 | 3.02 (JAX) | 6.7 |",
    "| long (16, 1000, 32, 64) | LSTM | 38.43 | 2.03 (PyTorch) | 21.97 | 3.11 (PyTorch) | 6.4 |",
    "| long (16, 1000, 32, 64) | GRU | 31.03 | 3.22 (JAX) | 21.08 | 4.09 (JAX) | 7.3 |",
]:
    _cells = [c.strip() for c in _row.strip("|").split("|")]
    _config, _cell = _cells[0].split()[0], _cells[1]
    CLAIMS.append(Claim(
        f"readme/bench/table/{_config}-{_cell}", R, _row,
        " ".join(c.split()[0] for c in _cells[2:]), ("exact",), source=EFABAF8,
        read=peer_row(_config, _cell, (1, "ms"), (1, "peer"), (2, "ms"), (2, "peer"),
                      (1, "numpy"))))

# README's bidirectional table: each cell holds the first run and, in brackets, the second.
for _row in [
    "| online (1, 100, 64, 64) | LSTM | 0.66 [0.70] | 4.96 [4.68] (JAX) | 1.51 [1.48] |",
    "| online (1, 100, 64, 64) | GRU | 0.51 [0.64] | 3.98 [3.97] (JAX) | 1.57 [1.81] |",
    "| small (32, 100, 64, 128) | LSTM | 33.03 [34.16] | 1.60 [1.45] (PyTorch) | 1.08 [1.29] |",
    "| small (32, 100, 64, 128) | GRU | 31.10 [26.74] | 2.84 [2.92] (JAX) | 1.39 [1.09] |",
    "| medium (64, 100, 128, 256) | LSTM | 206.84 [208.52] | 1.23 [1.19] (PyTorch) | 1.09 [1.07] |",
    "| medium (64, 100, 128, 256) | GRU | 165.00 [114.83] | 1.61 [1.67] (PyTorch) | 1.27 [1.35] |",
]:
    _cells = [c.strip() for c in _row.strip("|").split("|")]
    _config, _cell = _cells[0].split()[0], _cells[1]
    _numbers = [re.findall(r"[0-9.]+", c)[:2] for c in _cells[2:]]
    for _run, _suffix in ((0, ""), (1, "-b")):
        CLAIMS.append(Claim(
            f"readme/bench/bidirectional{_suffix}/{_config}-{_cell}", R, _row,
            " ".join(n[_run] for n in _numbers), ("exact",),
            source=RESULTS + f"2026-12-06-c6eb99f-bidirectional{_suffix}.txt",
            read=bidirectional_row(_config, _cell)))

CLAIMS += [
    # ---- docs/bptt.md ----------------------------------------------------------------------
    Claim("bptt/cache-nbytes", BPTT, "# 109824 (1, 100)", "109824 1 100", ("exact",),
          run="bptt-cache", read=r"^([0-9]+) \(([0-9]+), ([0-9]+)\)"),
    Claim("bptt/gradient-flow", BPTT, "from 0.00953 at the loss to 0 at t = 0 (x0.551 per step)",
          "0.00953 0 0.551", ("rel", 0.01), run="bptt-flow",
          read=r"from ([0-9.e-]+) at the loss to ([0-9.e-]+) at t = 0 \(x([0-9.]+) per step\)"),
    Claim("bptt/gradient-flow-sigma", BPTT, "sigma_max(W_hh) = 1.05, spectral radius = 0.598",
          "1.05 0.598", ("rel", 0.01), run="bptt-flow",
          read=r"sigma_max\(W_hh\) = ([0-9.]+), spectral radius = ([0-9.]+)"),
    Claim("bptt/gradient-flow-prose", BPTT, "(σ_max = 1.05 with PyTorch's default "
          "initialisation) and\nyet the gradient falls by ×0.55 per step", "1.05 0.55",
          ("exact",), run="bptt-flow",
          read=lambda t: [float(re.search(r"sigma_max\(W_hh\) = ([0-9.]+)", t)[1]),
                          float(re.search(r"\(x([0-9.]+) per step\)", t)[1])]),
    Claim("bptt/truncated-updates", BPTT, "# 7 windows: 7 updates", "7", ("exact",),
          run="bptt-truncated", read=r"^updates ([0-9]+)"),
    Claim("bptt/vanishing/seconds", BPTT, "rnnfast experiment vanishing            # 47 s",
          "47", ("info", 0.25), run="vanishing", wall=True),
    Claim("bptt/exploding/seconds", BPTT, "rnnfast experiment exploding            # 3 s",
          "3", ("info", 0.5), run="exploding", wall=True),
    Claim("bptt/truncation/seconds", BPTT, "rnnfast experiment truncation           # 9 s",
          "9", ("info", 0.25), run="truncation", wall=True),
]

# docs/bptt.md's experiment tables: the same rows as the command prints (test MSE and decay
# within a few per cent: a kernel other than the one that made the table rounds differently,
# and training amplifies it; the seconds informational).
for _row, _numbers in [
    ("50 | tanh RNN", "0.1673 | no | 0.555 | 0.675 | 1.0"),
    ("50 | IRNN", "0.1632 | no | 0.995 | 1.018 | 1.1"),
    ("50 | LSTM", "0.0093 | yes | 0.808 | 0.957 | 2.5"),
    ("50 | GRU", "0.0010 | yes | 0.608 | 0.985 | 2.0"),
    ("100 | tanh RNN", "0.1646 | no | 0.551 | 0.520 | 1.6"),
    ("100 | IRNN", "0.1667 | no | 0.997 | 1.005 | 1.9"),
    ("100 | LSTM", "0.1671 | no | 0.828 | 0.820 | 4.0"),
    ("100 | GRU", "0.0008 | yes | 0.598 | 0.979 | 3.1"),
    ("200 | tanh RNN", "0.1630 | no | 0.552 | 0.492 | 12.7"),
    ("200 | IRNN", "0.1642 | no | 0.999 | 0.999 | 3.5"),
    ("200 | LSTM", "0.1672 | no | 0.841 | 0.849 | 8.7"),
    ("200 | GRU", "0.0010 | yes | 0.593 | 0.992 | 6.0"),
]:
    _cells = [c.strip() for c in _numbers.split("|")]
    _snippet = f"| {_row} | {_numbers} |"
    _key = _row.replace(" | ", "-").replace(" ", "")
    _pattern = (rf"^\|\s*{_row.split(' | ')[0]}\s*\|\s*{re.escape(_row.split(' | ')[1])}\s*\|"
                rf"\s*{NUMBER}\s*\|\s*\w+\s*\|\s*{NUMBER}\s*\|\s*{NUMBER}\s*\|\s*{NUMBER}")
    CLAIMS.append(Claim(f"bptt/vanishing/{_key}/mse", BPTT, _snippet, _cells[0],
                        ("abs", 0.005), run="vanishing",
                        read=lambda t, p=_pattern: [float(re.search(p, t, re.M)[1])]))
    CLAIMS.append(Claim(f"bptt/vanishing/{_key}/decay", BPTT, _snippet,
                        f"{_cells[2]} {_cells[3]}", ("rel", 0.03), run="vanishing",
                        read=lambda t, p=_pattern: [float(v) for v in re.search(p, t, re.M)
                                                    .groups()[1:3]]))
    CLAIMS.append(Claim(f"bptt/vanishing/{_key}/seconds", BPTT, _snippet, _cells[4],
                        ("info", 0.5), run="vanishing",
                        read=lambda t, p=_pattern: [float(re.search(p, t, re.M)[4])]))



def vanishing_column(cell, column, Ts=(50, 100, 200)):
    """One column (0 test MSE, 1 decay at initialisation, 2 after training) of the vanishing
    table's rows for a cell, at the given T."""
    def read(text):
        values = []
        for T in Ts:
            row = re.search(rf"^\|\s*{T}\s*\|\s*{re.escape(cell)}\s*\|\s*{NUMBER}\s*\|\s*\w+"
                            rf"\s*\|\s*{NUMBER}\s*\|\s*{NUMBER}", text, re.MULTILINE)
            values.append(float(row[column + 1]))
        return values
    return read


def span(read):
    def read_range(text):
        values = read(text)
        return [min(values), max(values)]
    return read_range


# docs/bptt.md's reading of the vanishing table, in its prose.
CLAIMS += [
    Claim("bptt/vanishing/prose/tanh-decay-trained", BPTT, "decay (0.49–0.68)", "0.49–0.68",
          ("rel", 0.03), run="vanishing", read=span(vanishing_column("tanh RNN", 2))),
    Claim("bptt/vanishing/prose/irnn-decay-200", BPTT, "over 200 steps (decay 1.000)", "1.000",
          ("rel", 0.01), run="vanishing", read=vanishing_column("IRNN", 2, Ts=(200,))),
    Claim("bptt/vanishing/prose/gru-decay-init", BPTT, "decaying gradient (×0.6 per step)",
          "0.6", ("exact",), run="vanishing", read=vanishing_column("GRU", 1, Ts=(200,))),
    Claim("bptt/vanishing/prose/gru-decay-trained", BPTT, "all 200 steps (decay 0.99)", "0.99",
          ("exact",), run="vanishing", read=vanishing_column("GRU", 2, Ts=(200,))),
    Claim("bptt/vanishing/prose/lstm-decay-init", BPTT, "at initialisation (×0.8–0.84)",
          "0.8–0.84", ("rel", 0.01), run="vanishing", read=span(vanishing_column("LSTM", 1))),
]

for _label, _numbers in [
    ("no clipping", "1 | 119 | 0.7994 | nan | 144"),
    ("clip global norm 1", "120 | 0 | 0.171 | 0.1608 | 4.54e+03"),
    ("clip value 0.01", "120 | 0 | 0.472 | 0.7816 | 148"),
    ("per-step clip 0.1", "1 | 119 | 0.7994 | nan | 144"),
]:
    _cells = [c.strip() for c in _numbers.split("|")]
    _snippet = f"| {_label} | {_numbers} |"
    _pattern = rf"^\|\s*{re.escape(_label)}\s*\|" + "".join([r"\s*([^|]+?)\s*\|"] * 5)
    _key = _label.replace(" ", "-")
    CLAIMS.append(Claim(f"bptt/exploding/{_key}/updates", BPTT, _snippet,
                        f"{_cells[0]} {_cells[1]}", ("exact",), run="exploding",
                        read=lambda t, p=_pattern: [float(v) for v in
                                                    re.search(p, t, re.M).groups()[:2]]))
    _finite = [i for i in (2, 3, 4) if _cells[i] != "nan"]
    CLAIMS.append(Claim(f"bptt/exploding/{_key}/losses", BPTT, _snippet,
                        " ".join(_cells[i] for i in _finite), ("rel", 0.03), run="exploding",
                        read=lambda t, p=_pattern, f=_finite: [
                            float(re.search(p, t, re.M)[i + 1]) for i in f]))


def exploding_column(label, column):
    """A number of the exploding table's row: 0 updates ... 4 max_grad_norm."""
    def read(text):
        row = re.search(rf"^\|\s*{re.escape(label)}\s*\|" + r"\s*([^|]+?)\s*\|" * 5, text,
                        re.MULTILINE)
        return [float(row[column + 1])]
    return read


CLAIMS += [
    Claim("bptt/exploding/prose/global-norm-max", BPTT, "reached a norm of\n  4500", "4500",
          ("rel", 0.03), run="exploding", read=exploding_column("clip global norm 1", 4)),
    Claim("bptt/exploding/prose/value-test-mse", BPTT, "(test MSE 0.78, noisy loss)", "0.78",
          ("rel", 0.03), run="exploding", read=exploding_column("clip value 0.01", 3)),
    Claim("bptt/exploding/prose/first-update-norm", BPTT, "(gradient norm\n  144)", "144",
          ("rel", 0.03), run="exploding", read=exploding_column("no clipping", 4)),
    Claim("bptt/truncation/prose/k10-updates", BPTT, "learns nothing in 3000 updates", "3000",
          ("exact",), run="truncation",
          read=lambda t: [float(re.search(r"^\|\s*10\s*\|\s*\w+\s*\|\s*([0-9]+)", t,
                                          re.MULTILINE)[1])]),
]

for _k, _numbers in [
    ("5", "no | 6000 | 1.0000 | no | 1.7"),
    ("10", "no | 3000 | 0.9998 | no | 1.1"),
    ("11", "yes | 3000 | 0.3504 | no | 1.1"),
    ("15", "yes | 2100 | 0.0012 | yes | 0.9"),
    ("20", "yes | 1500 | 0.0445 | yes | 0.6"),
    ("100", "yes | 300 | 0.2008 | no | 0.3"),
]:
    _cells = [c.strip() for c in _numbers.split("|")]
    _snippet = f"| {_k} | {_numbers} |"
    _pattern = (rf"^\|\s*{_k}\s*\|\s*\w+\s*\|\s*([0-9]+)\s*\|\s*([0-9.]+)\s*\|\s*\w+\s*\|"
                rf"\s*([0-9.]+)")
    CLAIMS.append(Claim(f"bptt/truncation/k{_k}/updates", BPTT, _snippet, _cells[1], ("exact",),
                        run="truncation",
                        read=lambda t, p=_pattern: [float(re.search(p, t, re.M)[1])]))
    CLAIMS.append(Claim(f"bptt/truncation/k{_k}/mse", BPTT, _snippet, _cells[2], ("rel", 0.05),
                        run="truncation",
                        read=lambda t, p=_pattern: [float(re.search(p, t, re.M)[2])]))
    CLAIMS.append(Claim(f"bptt/truncation/k{_k}/seconds", BPTT, _snippet, _cells[4],
                        ("info", 0.5), run="truncation",
                        read=lambda t, p=_pattern: [float(re.search(p, t, re.M)[3])]))

CLAIMS += [
    # ---- docs/memory.md ---------------------------------------------------------------------
    Claim("memory/leak-test-growth", "docs/memory.md", "**0.00–0.1 MiB** of growth", "0.00–0.1",
          ("abs", 1.0), run="leak-test", read=r"RSS growth over 10,000 forward/backward calls: "
          r"([0-9.]+) MiB", note="a leak would grow by far more than the allowance"),
]

# docs/distributed.md: the all-reduce's share of the 2-rank step, from the same table.
CLAIMS += [
    Claim("distributed/overlap/ar-alone-share", DIST, "1.5 % (small),\n0.6 % (medium) and 0.4 % "
          "(large)", "1.5 0.6 0.4", ("exact",), source=MPI,
          read=lambda t: [100 * mpi_row(c, 9)(t)[0] / mpi_row(c, 5)(t)[0]
                          for c in ("small", "medium", "large")]),
    Claim("distributed/overlap/ar-step-share", DIST, "(15 %, 8.8 % and\n2.5 % of the step)",
          "15 8.8 2.5", ("exact",), source=MPI,
          read=lambda t: [100 * mpi_row(c, 7)(t)[0] / mpi_row(c, 5)(t)[0]
                          for c in ("small", "medium", "large")]),    Claim("distributed/overlap/wait", DIST, "3.3 ms against 0.31 (small),\n1.25 against 1.34 "
          "(medium), 6.0 against 4.2 (large)", "3.3 0.31 1.25 1.34 6.0 4.2", ("exact",),
          source=RESULTS + "2026-12-05-15a12a6-mpi-overlap.txt",
          read=lambda t: [float(v) for pair in re.findall(
              r"allreduce ([0-9.]+) .*?Wait ([0-9.]+)\)", t) for v in pair[::-1]]),
    Claim("distributed/overlap/noise", DIST, "(−6.3 % to +15.7 %)", "6.3 15.7", ("exact",),
          source=RESULTS + "2026-12-05-15a12a6-mpi-overlap.txt",
          read=lambda t: (lambda v: [-min(v), max(v)])(
              [float(x) for x in re.findall(r"\(([+-][0-9.]+) % of serial\)", t)])),
    Claim("distributed/overlap/medium", DIST, "took 75.81 ms, less than the same\nbackward "
          "alone (87.09 ms)", "75.81 87.09", ("exact",),
          source=RESULTS + "2026-12-05-15a12a6-mpi-overlap.txt",
          read=lambda t: [float(re.search(r"medium.*?overlap ([0-9.]+)", t, re.S)[1]),
                          float(re.search(r"medium.*?backward ([0-9.]+)", t, re.S)[1])]),
    Claim("distributed/overlap/cluster-share", DIST, "leaves the reduction 1–4 % of the step "
          "at 10 Gb/s", "1–4", ("exact",), source=MPI,
          read=lambda t: (lambda effs: [100 - max(effs), 100 - min(effs)])(
              mpi_model("medium", "efficiency", "10 Gb/s")(t)
              + mpi_model("large", "efficiency", "10 Gb/s")(t))),
]

# docs/memory.md's checkpointed-BPTT table and README's summary of it, against the JSON file
# bench/checkpoint_memory.py wrote.
CHECKPOINT = RESULTS + "2026-12-05-a6042d7-checkpoint-memory.json"


def checkpoint_row(B, L, T):
    """The numbers of one table row after (B, L, T): MiB and seconds of the full cache and of
    "auto", the memory saved (%), the time ratio, then MiB and seconds of each peer that ran."""
    def read(text):
        rows = {(r["impl"], r["B"], r["layers"], r["T"]): r for r in json.loads(text)["rows"]}
        full, auto = rows["full", B, L, T], rows["auto", B, L, T]
        out = [full["held_bytes"] / 2**20, full["time_s"], auto["held_bytes"] / 2**20,
               auto["time_s"], 100 * (1 - auto["held_bytes"] / full["held_bytes"]),
               auto["time_s"] / full["time_s"]]
        for peer in ("torch", "jax"):
            r = rows[peer, B, L, T]
            if "held_bytes" in r:
                out += [r["held_bytes"] / 2**20, r["time_s"]]
        return out
    return read


_MEMORY_TEXT = (ROOT / "docs/memory.md").read_text(encoding="utf-8")
for _line in re.findall(r"^\| (?:1|16) \| [12] \| [0-9,]+ \| .*$", _MEMORY_TEXT, re.M):
    _cells = [c.strip() for c in _line.strip("|").split("|")]
    _B, _L, _T = int(_cells[0]), int(_cells[1]), int(_cells[2].replace(",", ""))
    _quoted = " ".join(n for c in _cells[3:] for n in re.findall(r"[0-9][0-9,.]*", c))
    CLAIMS.append(Claim(f"memory/checkpoint/B{_B}-L{_L}-T{_T}", "docs/memory.md", _line,
                        _quoted, ("exact",), source=CHECKPOINT,
                        read=checkpoint_row(_B, _L, _T)))
CLAIMS += [
    Claim("readme/checkpoint/summary", R, "14.0 MiB beyond the user's arrays, against 5.7 GiB "
          "with the full cache and 9.8 GiB in\n  PyTorch, in 1.23× the full cache's time",
          "14.0 5.7 9.8 1.23", ("exact",), source=CHECKPOINT,
          read=lambda t: (lambda r: [r[2], r[0] / 1024, r[6] / 1024, r[5]])(
              checkpoint_row(1, 2, 1_000_000)(t))),
]

# docs/distributed.md: the scaling measurements, against the file that holds them.
CLAIMS += [
    Claim("distributed/sizes/medium", DIST, "Medium: 397 834 parameters, 3 182 688 bytes",
          "397834 3182688", ("exact",), run="mpi-sizes",
          read=r"^medium parameters ([0-9]+) bytes ([0-9]+)"),
    Claim("distributed/sizes/large", DIST, "large: 1 582 090 parameters, 12 656 736 bytes",
          "1582090 12656736", ("exact",), run="mpi-sizes",
          read=r"^large parameters ([0-9]+) bytes ([0-9]+)"),
    Claim("distributed/mpi/per-round-summary", DIST, "134 % and\n113 %", "134 113",
          ("exact",), source=MPI, read=lambda t: [100 * mpi_row(c, 2)(t)[0]
                                                   for c in ("medium", "large")]),
]


def mpi_per_round(config):
    """2x1 over 1x2 throughput, in percent, in each round of the JSON file."""
    def read(text):
        rounds = json.loads(text)["by_round"]
        return [100 * r["2x1"][config]["timesteps_per_s"] / r["1x2"][config]["timesteps_per_s"]
                for r in rounds]
    return read


def mpi_spread(*columns, over=("small", "medium", "large")):
    """The smallest and largest of a ratio of the table's columns (indexes after the config's
    (B, T, D, H)) over the configs."""
    def read(text):
        values = []
        for config in over:
            numbers = mpi_row(config, *columns)(text)
            values.append(numbers[0] / numbers[1] if len(numbers) == 2 else numbers[0])
        return [min(values), max(values)]
    return read


CLAIMS += [
    Claim("distributed/mpi/per-round/medium", DIST, "(per round: medium 146, 126, 150 %;",
          "146 126 150", ("exact",), source=MPI.replace(".txt", ".json"),
          read=mpi_per_round("medium")),
    Claim("distributed/mpi/per-round/large", DIST, "large 114, 116, 96 %)", "114 116 96",
          ("exact",), source=MPI.replace(".txt", ".json"), read=mpi_per_round("large")),
    Claim("distributed/mpi/bare-allreduce", DIST, "(shared memory: 0.5–1.8 ms", "0.5–1.8",
          ("exact",), source=MPI, read=mpi_spread(10, over=("medium", "large"))),
    Claim("distributed/mpi/ddp-over-2x1", DIST, "faster still (1.3–1.6× rnnfast's 2×1)",
          "1.3–1.6", ("exact",), source=MPI, read=mpi_spread(3, 1)),
    Claim("distributed/mpi/allreduce-share", DIST, "all-reduce alone is under 2 % of", "2",
          ("below",), source=MPI,
          read=lambda t: [100 * mpi_spread(9, 5)(t)[1]],
          note="allreduce_grads alone over the 2x1 step, at the largest share"),
]

for _row in [
    "| small (32, 100, 64, 128) | 89 800 | 156 100 | 1.74 | 201 800 | 0.80 MB |",
    "| medium (64, 100, 128, 256) | 32 900 | 44 200 | 1.34 | 69 700 | 3.18 MB |",
    "| large (64, 200, 256, 512) | 11 600 | 13 100 | 1.13 | 18 500 | 12.66 MB |",
]:
    _cells = [c.strip() for c in _row.strip("|").split("|")]
    _config = _cells[0].split()[0]
    CLAIMS.append(Claim(f"distributed/mpi/throughput/{_config}", DIST, _row,
                        " ".join(_cells[i].replace(" ", ",") for i in (1, 2, 4)), ("abs", 50),
                        source=MPI, read=mpi_row(_config, 0, 1, 3),
                        note="timesteps/s, quoted to the hundred"))
    CLAIMS.append(Claim(f"distributed/mpi/ratio-buffer/{_config}", DIST, _row,
                        f"{_cells[3]} {_cells[5].split()[0]}", ("exact",), source=MPI,
                        read=mpi_row(_config, 2, 11)))
for _row in [
    "| small | 35.6 | 20.5 | 17.0 | 3.0 | 0.5 | 0.3 | 0.2 |",
    "| medium | 194.3 | 144.8 | 123.0 | 12.8 | 1.9 | 0.9 | 0.5 |",
    "| large | 1107.3 | 978.3 | 916.6 | 24.5 | 8.3 | 3.7 | 1.8 |",
]:
    _cells = [c.strip() for c in _row.strip("|").split("|")]
    CLAIMS.append(Claim(f"distributed/mpi/parts/{_cells[0]}", DIST, _row, " ".join(_cells[1:]),
                        ("exact",), source=MPI, read=mpi_row(_cells[0], 4, 5, 6, 7, 8, 9, 10)))
for _model, _numbers in [("medium", "33.6 | 63.0 | 126.2 | 275.4"),
                         ("large", "261.4 | 482.7 | 942.2 | 1898.0")]:
    CLAIMS.append(Claim(f"distributed/mpi/t-step/{_model}", DIST,
                        f"| {_model} t_step (ms) | {_numbers} |", " ".join(_numbers.split(" | ")),
                        ("exact",), source=MPI, read=mpi_t_step(_model)))
for _model, _bandwidth, _efficiency, _batch in [
    ("medium", "10 Gb/s", "98.0 | 97.0 | 96.5 | 96.3 | 96.2 | 96.1 | 96.0 | 96.0",
     "6 | 9 | 10 | 11 | 12 | 12 | 12 | 12"),
    ("medium", "25 Gb/s", "99.2 | 98.8 | 98.6 | 98.4 | 98.4 | 98.3 | 98.3 | 98.3",
     "3 | 4 | 4 | 5 | 5 | 5 | 5 | 5"),
    ("medium", "100 Gb/s", "99.8 | 99.7 | 99.6 | 99.6 | 99.5 | 99.5 | 99.5 | 99.5",
     "1 | 1 | 2 | 2 | 2 | 2 | 2 | 2"),
    ("large", "10 Gb/s", "98.9 | 98.4 | 98.1 | 98.0 | 98.0 | 97.9 | 97.9 | 97.9",
     "3 | 5 | 5 | 6 | 6 | 6 | 6 | 6"),
    ("large", "25 Gb/s", "99.6 | 99.4 | 99.2 | 99.2 | 99.2 | 99.1 | 99.1 | 99.1",
     "2 | 2 | 2 | 3 | 3 | 3 | 3 | 3"),
    ("large", "100 Gb/s", "99.9 | 99.8 | 99.8 | 99.8 | 99.8 | 99.8 | 99.8 | 99.8",
     "1 | 1 | 1 | 1 | 1 | 1 | 1 | 1"),
]:
    _key = f"{_model}-{_bandwidth.split()[0]}G"
    _percent = " | ".join(f"{v} %" for v in _efficiency.split(" | "))
    CLAIMS.append(Claim(f"distributed/mpi/efficiency/{_key}", DIST,
                        f"| {_model} | {_bandwidth} | {_percent} |",
                        " ".join(_efficiency.split(" | ")),
                        ("exact",), source=MPI, read=mpi_model(_model, "efficiency", _bandwidth)))
    CLAIMS.append(Claim(f"distributed/mpi/batch-for-90/{_key}", DIST,
                        f"| {_model} | {_bandwidth} | {_batch} |", " ".join(_batch.split(" | ")),
                        ("exact",), source=MPI, read=mpi_model(_model, "batch", _bandwidth)))


# ---------------------------------------------------------------------------------------------

def snippet_count(claim):
    return (ROOT / claim.doc).read_text(encoding="utf-8").count(claim.snippet)


def check_registry(claims):
    """Problems of the registry itself, found without running anything: a snippet not in its
    document exactly once, or one that does not contain the numbers it quotes."""
    problems = []
    names = set()
    for claim in claims:
        if claim.name in names:
            problems.append(f"{claim.name}: registered twice")
        names.add(claim.name)
        count = snippet_count(claim)
        if count != 1:
            problems.append(f"{claim.name}: snippet found {count} times in {claim.doc}: "
                            f"{claim.snippet!r}")
        in_snippet = set(parse_quoted(table_numbers(claim.snippet))[0])
        missing = [v for v in parse_quoted(claim.quoted)[0] if v not in in_snippet]
        if missing:
            problems.append(f"{claim.name}: quoted {missing} not in its snippet")
        if (claim.run is None) == (claim.source is None):
            problems.append(f"{claim.name}: needs either a command or a source file")
        if claim.run is not None and claim.run not in COMMANDS:
            problems.append(f"{claim.name}: no command {claim.run!r}")
        if claim.source is not None and not (ROOT / claim.source).is_file():
            problems.append(f"{claim.name}: no file {claim.source}")
    return problems


def shown(command):
    text = command.argv
    return text if len(text) < 70 else text.split("-c ")[0] + "-c '<snippet in claims.py>'"


def list_registry(claims):
    for claim in claims:
        where = f"$ {shown(COMMANDS[claim.run])}" if claim.run else f"file {claim.source}"
        tol = " ".join(str(t) for t in claim.tol)
        print(f"{claim.name}\n    {claim.doc}: {claim.snippet!r}\n    quoted {claim.quoted} "
              f"({tol})  from {where}" + (f"\n    {claim.note}" if claim.note else ""))
    print(f"\n{len(claims)} claims, {len({c.run for c in claims if c.run})} commands, "
          f"{len({c.source for c in claims if c.source})} result files")


def run_command(key, command, keep=None):
    """(output, wall seconds) of a command. With `keep`, a directory: the output kept there by
    an earlier run is read instead of running the command again, and a new one is kept."""
    kept = Path(keep) / f"{key}.out" if keep else None
    if kept and kept.is_file():
        text = kept.read_text(encoding="utf-8")
        seconds = re.search(r"^# wall ([0-9.]+) s$", text, re.MULTILINE)
        return text, float(seconds[1]) if seconds else float("nan")
    print(f"running {key} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="claims-") as tmp:
        argv = shlex.split(command.argv.replace("{tmp}", tmp))
        # this interpreter's rnnfast, whatever the PATH holds
        if argv[0] == "python":
            argv[0] = sys.executable
        elif argv[0] == "rnnfast":
            argv[:1] = [sys.executable, "-m", "rnnfast"]
        start = time.perf_counter()
        # a hung command fails its claims instead of stopping the report
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                              timeout=max(600, 10 * command.seconds))
        seconds = time.perf_counter() - start
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"exit status {done.returncode}: {text.strip()[-300:]}")
    if kept:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(f"{text}\n# wall {seconds:.2f} s\n", encoding="utf-8")
    return text, seconds


def missing_modules(command):
    return [m for m in command.needs if importlib.util.find_spec(m) is None]


def format_numbers(values):
    return " ".join(f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}" for v in values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the registry, run nothing")
    parser.add_argument("--only", metavar="PATTERN",
                        help="only the claims whose name, document or command contains it")
    parser.add_argument("--quick", action="store_true",
                        help=f"skip the commands that take over {QUICK_SECONDS} s")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep each command's output in DIR, and reuse the outputs already "
                             "there instead of running their commands again")
    args = parser.parse_args(argv)

    claims = [c for c in CLAIMS if not args.only or args.only in c.name or args.only in c.doc
              or (c.run and args.only in c.run) or (c.source and args.only in c.source)]
    if not claims:
        parser.error(f"no claim matches {args.only!r}")
    problems = check_registry(claims)
    if args.list:
        list_registry(claims)
        for problem in problems:
            print(f"REGISTRY: {problem}")
        return 1 if problems else 0

    outputs, failures = {}, 0
    rows = []
    for claim in claims:
        status, measured, drift = None, "", ""
        if snippet_count(claim) != 1:
            status = "MISSING"
        elif claim.run:
            command = COMMANDS[claim.run]
            lacking = missing_modules(command)
            if lacking:
                status, measured = "SKIP", f"needs {', '.join(lacking)}"
            elif args.quick and command.seconds > QUICK_SECONDS:
                status, measured = "SKIP", f"--quick (~{command.seconds:.0f} s)"
            elif claim.run not in outputs:
                try:
                    outputs[claim.run] = run_command(claim.run, command, args.keep)
                except Exception as e:  # noqa: BLE001  (a failed command fails its claims)
                    outputs[claim.run] = e
        if status is None:
            try:
                if claim.run:
                    result = outputs[claim.run]
                    if isinstance(result, Exception):
                        raise result
                    text, seconds = result
                else:
                    text, seconds = (ROOT / claim.source).read_text(encoding="utf-8"), None
                values = [seconds] if claim.wall else extract(claim, text)
                worst, ok = judge(claim, values)
                measured, drift = format_numbers(values), f"{100 * worst:+.1f}%"
                if claim.tol[0] == "info":
                    status = "OK" if ok else "INFO"
                else:
                    status = "OK" if ok else "DRIFT"
            except Exception as e:  # noqa: BLE001
                status, measured = "ERROR", (str(e).splitlines() or [repr(e)])[0][:70]
        if status in ("DRIFT", "MISSING", "ERROR"):
            failures += 1
        rows.append((claim.name, claim.quoted.replace("\n", " "), measured, drift, status))

    widths = [max(len(r[i]) for r in rows + [("claim", "quoted", "measured", "drift", "")])
              for i in range(4)]
    header = ("claim", "quoted", "measured", "drift", "status")
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    counts = {s: sum(1 for r in rows if r[4] == s) for s in
              ("OK", "DRIFT", "INFO", "SKIP", "MISSING", "ERROR")}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for problem in problems:
        print(f"REGISTRY: {problem}")
    return 1 if failures or problems else 0


if __name__ == "__main__":
    sys.exit(main())
