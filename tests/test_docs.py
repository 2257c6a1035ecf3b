"""The Python code in README.md, docs/*.md and the API reference runs as written.

Every ```python block of the Markdown files and every ``.. code-block:: python`` of
docs/api/*.rst runs on its own, in a new interpreter, in an empty temporary directory (a
block that saves a checkpoint writes it there), and must exit cleanly. Blocks of other
languages (bash) are not run. A block that continues the text around it, using a name the
text defines but the block does not, is given that name by a short prelude below; a block
that cannot run here at all is skipped with its reason. Both lists name the block by a line
of its code, and an entry that no longer matches any block fails, so that neither list
outlives the text it describes. No block is slow: each runs in a few seconds at most.

The examples in the docstrings, which the API reference shows, run as doctests.
"""

import doctest
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "docs" / "api").glob("*.rst"))]

# ```python ... ``` at any indentation (blocks inside list items are indented), up to the
# closing fence at the same indentation.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
# reStructuredText: ``.. code-block:: python``, a blank line, then the indented body up to the
# first line indented less.
RST_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block:: python[ \t]*\n(?:[ \t]*:.*\n)*"
                       r"[ \t]*\n(?P<body>(?:(?P=indent)[ \t]+.*\n|[ \t]*\n)+)", re.MULTILINE)

# Generous: the slowest block takes about 4 s here (most of it importing torch).
TIMEOUT = 60

# What docs/distributed.md's later blocks take from the training script before them: its
# model, optimiser, schedule, data and the checkpoint it saved. Without mpiexec they run in a
# world of one rank, where fit(distributed=True) and rnnfast.distributed act as one process.
DISTRIBUTED_SCRIPT = """\
import mpi4py  # the blocks call MPI
import numpy as np
import rnnfast
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 10, 8), dtype=np.float32)
targets = rng.integers(0, 10, size=(32, 10))  # a class per step
data = (x, targets)
batches = [(x[:16], targets[:16]), (x[16:], targets[16:])]
model = rnnfast.Model(rnnfast.LSTM(8, 16, seed=0), rnnfast.Linear(16, 10, seed=1))
opt = rnnfast.optim.Adam(model.params, lr=5e-3)
sched = rnnfast.optim.StepLR(opt, step_size=5)
rnnfast.save("run.npz", model, opt, schedule=sched, epoch=1)
"""

# (document, a line of the block) -> code run before the block: the names the surrounding
# text has defined, small enough to keep the block fast.
PRELUDES = {
    ("README.md", "rnn = rnnfast.torch.LSTM(64, 128"):
        "import torch\n"
        "x = torch.randn(4, 10, 64)  # the script's input, (B, T, 64)\n",
    ("README.md", "model = rnnfast.Model(rnnfast.GRU(8, 64, seed=0)"):
        "import numpy as np\n"
        "import rnnfast\n"
        "rng = np.random.default_rng(0)\n"
        "x_train = rng.standard_normal((64, 12, 8), dtype=np.float32)  # (N, T, 8)\n"
        "y_train = rng.integers(0, 10, size=64)  # one class per sequence\n"
        "x_test, y_test = x_train[:16], y_train[:16]\n",
    ("README.md", "clf = rnnfast.Model(rnnfast.LSTM(64, 128"):
        "import rnnfast\n",
    ("docs/bptt.md", "flow = diagnostics.gradient_flow(model, x, y"):
        "import rnnfast\n",
    ("docs/bptt.md", "x, y = delayed_recall(20, 100, delay=10"):
        "import rnnfast\n",
    ("docs/distributed.md", "def checkpoint(epoch, logs):"): DISTRIBUTED_SCRIPT,
    ("docs/distributed.md", 'ck = rnnfast.load("run.npz", distributed=True)'): DISTRIBUTED_SCRIPT,
    ("docs/distributed.md", "dist.broadcast_params(model.params)"): DISTRIBUTED_SCRIPT,
}

# (document, a line of the block) -> why it is not run.
SKIPS = {
    ("docs/distributed.md", "x, y, xv, yv = ..."):
        "fragment: the outline of a script, whose data (x, y, xv, yv = ...) is the reader's",
}


def blocks():
    """(document relative to the root, line of the fence, code) for every python block."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for m in (RST_BLOCK if path.suffix == ".rst" else FENCE).finditer(text):
            line = text.count("\n", 0, m.start("body"))  # the line before the code
            found.append((path.relative_to(ROOT).as_posix(), line, textwrap.dedent(m["body"])))
    return found


BLOCKS = blocks()


def entry(table, doc, code):
    """The entry of ``table`` for this block, or None."""
    for (where, marker), value in table.items():
        if where == doc and marker in code:
            return value
    return None


@pytest.mark.parametrize("doc, line, code", BLOCKS,
                         ids=[f"{doc}:{line}" for doc, line, _ in BLOCKS])
def test_code_block_runs(doc, line, code, tmp_path):
    reason = entry(SKIPS, doc, code)
    if reason is not None:
        pytest.skip(f"{doc}:{line}: {reason}")
    prelude = entry(PRELUDES, doc, code) or ""
    # Optional dependencies, as in the rest of the suite: without them the block is skipped.
    for module in ("torch", "mpi4py", "matplotlib"):
        if re.search(rf"^\s*(import|from) (rnnfast\.)?{module}\b", prelude + code, re.MULTILINE) \
                and importlib.util.find_spec(module) is None:
            pytest.skip(f"{doc}:{line}: needs {module}, which is not installed")
    env = dict(os.environ, MPLBACKEND="Agg")
    # A prelude and its block share one namespace, as the text around them intends. Blank
    # lines put the block's first line at its line in the document, so that a traceback's
    # line numbers are the document's.
    source = prelude + "\n" * max(line - prelude.count("\n"), 0) + code
    result = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (
        f"the block at {doc}:{line} failed:\n{code}\n--- stderr:\n{result.stderr[-3000:]}")


@pytest.mark.parametrize("table", ["PRELUDES", "SKIPS"])
def test_every_entry_names_a_block(table):
    entries = globals()[table]
    stale = [key for key in entries
             if not any(doc == key[0] and key[1] in code for doc, _, code in BLOCKS)]
    assert not stale, f"{table} names blocks that no longer exist: {stale}"


def test_blocks_were_found():
    # A change to the fence pattern or the layout that finds nothing would pass silently.
    docs = {doc for doc, _, _ in BLOCKS}
    assert {"README.md", "docs/bptt.md", "docs/api/checkpoints.rst"} <= docs


DOCTEST_MODULES = ["rnnfast", "rnnfast._recurrent", "rnnfast.rnn", "rnnfast.lstm", "rnnfast.gru",
                   "rnnfast.linear", "rnnfast.embedding", "rnnfast.model", "rnnfast.losses",
                   "rnnfast.optim", "rnnfast.clip", "rnnfast.init", "rnnfast.checkpoint",
                   "rnnfast.diagnostics", "rnnfast.experiments", "rnnfast.tasks", "rnnfast.train",
                   "rnnfast.distributed", "rnnfast.interop", "rnnfast._platform",
                   "rnnfast.reference", "rnnfast.torch"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    if name == "rnnfast.torch":
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # an example that saves a checkpoint writes it here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
    assert result.failed == 0, f"{result.failed} of the examples in {name} failed: see the " \
                               f"captured output"
