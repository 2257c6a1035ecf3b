"""The classic BPTT experiments: vanishing and exploding gradients, and truncation.

Each prints a table and saves its figures (matplotlib: pip install "rnnfast[plot]"); the
same functions run behind ``rnnfast experiment NAME``. See docs/bptt.md for the results.

    python examples/experiments.py [vanishing|exploding|truncation ...] [--quick] [--out DIR]
"""

import argparse

from rnnfast import experiments


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[[], *experiments.EXPERIMENTS],
                        help="which to run (default: all three)")
    parser.add_argument("--quick", action="store_true", help="smoke runs in seconds: a budget too small to show the effects")
    parser.add_argument("--out", default="experiment_figures", help="directory for PNGs")
    args = parser.parse_args()
    for name in args.names or list(experiments.EXPERIMENTS):
        print(f"\n== {name} ==")
        experiments.EXPERIMENTS[name](quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
