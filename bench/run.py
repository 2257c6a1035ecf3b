"""Benchmark one training step of rnnfast against its NumPy reference, PyTorch and JAX
(and, with --suite torch, a PyTorch training step with rnnfast.torch's cell against torch.nn's).

    python bench/run.py [--suite default|bidirectional|torch] [--configs ...] [--cells ...]
                        [--threads 1 2] [--repeats N] [--json out.json] [--plot out.png]
                        [--quick]

A thin wrapper: the harness is rnnfast.bench (importable, and what `rnnfast bench` will call).
See bench/README.md for how it measures and for the results on the development machine.
"""

import sys

from rnnfast.bench import main

if __name__ == "__main__":
    sys.exit(main())
