"""The ``rnnfast`` command (also ``python -m rnnfast``)."""

import argparse
import os
import sys
import time

import numpy as np


def _train(args):
    from . import charlm

    if args.text:
        with open(args.text, encoding="utf-8", errors="replace") as f:
            text = f.read()
    else:
        text = charlm.default_text()
    if args.max_chars:
        text = text[:args.max_chars]
    if args.resume and not args.checkpoint:
        raise SystemExit("rnnfast train: --resume needs --checkpoint PATH")
    ranks = _launched_ranks()
    if ranks > 1 and not args.distributed:
        # N independent copies would each train alone and overwrite one another's checkpoint
        raise SystemExit(f"rnnfast train: started by mpiexec with {ranks} ranks: add "
                         f"--distributed to train one model data-parallel over them")
    charlm.train(
        text, cell=args.cell, hidden=args.hidden, layers=args.layers,
        embedding_dim=args.embedding_dim, dropout=args.dropout,
        bidirectional=args.bidirectional, batch=args.batch,
        k1=args.k1, k2=args.k2, optimizer=args.optimizer, lr=args.lr, clip_norm=args.clip_norm,
        clip_value=args.clip_value, epochs=args.epochs, seed=args.seed,
        dtype=np.dtype(args.dtype), checkpoint_path=args.checkpoint, resume=args.resume,
        sample_length=args.sample_length, temperature=args.temperature,
        progress=not args.no_progress, distributed=args.distributed)


def _launched_ranks():
    """The number of ranks mpiexec says it started (1 without it), read from the launchers'
    environment variables so that a plain run never imports mpi4py or starts MPI."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):  # MPICH and Intel MPI; Open MPI
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return 1


def _experiment(args):
    from . import experiments

    start = time.perf_counter()
    experiments.EXPERIMENTS[args.name](quick=args.quick, out=args.out)
    print(f"rnnfast experiment {args.name}: {time.perf_counter() - start:.1f} s"
          f"{'' if args.out is None else f'; figures in {args.out}'}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="rnnfast", description="Fast CPU training of recurrent networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", help="train a character-level language model and print samples",
        description="Train a character-level language model with truncated BPTT and print "
                    "samples after every epoch. Without --text it learns the text of "
                    "Python's help topics (pydoc_data, ~465 KB, shipped with CPython).")
    t.add_argument("--text", metavar="FILE", help="a UTF-8 text file to learn")
    t.add_argument("--max-chars", type=int, default=0, help="use only the first N characters")
    t.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="lstm")
    t.add_argument("--hidden", type=int, default=128, help="hidden units per layer")
    t.add_argument("--layers", type=int, default=1, help="stacked recurrent layers")
    t.add_argument("--embedding-dim", type=int, default=32,
                   help="length of the learned vector each character is read as")
    t.add_argument("--dropout", type=float, default=0.0,
                   help="dropout between stacked layers, in training (needs --layers >= 2)")
    t.add_argument("--bidirectional", action="store_true",
                   help="refused: a language model must not read the characters it predicts "
                        "(listed so that the reason is given)")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--batch", type=int, default=16, help="parallel streams of text")
    t.add_argument("--k1", type=int, default=32, help="update every k1 characters")
    t.add_argument("--k2", type=int, default=None,
                   help="backpropagate through k2 >= k1 characters (default k1)")
    t.add_argument("--optimizer", choices=["sgd", "adagrad", "rmsprop", "adam", "adamw"],
                   default="adam")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--clip-norm", type=float, default=5.0,
                   help="clip gradients by global norm (0: off)")
    t.add_argument("--clip-value", type=float, default=None, help="clip gradients by value")
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", metavar="PATH",
                   help="save model and optimiser here after every epoch")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    t.add_argument("--sample-length", type=int, default=300)
    t.add_argument("--temperature", type=float, default=0.8)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of `mpiexec -n N rnnfast train "
                        "--distributed` (needs pip install \"rnnfast[mpi]\"): the streams "
                        "are shared out, rank 0 prints and writes the checkpoint")
    t.set_defaults(func=_train)

    e = sub.add_parser(
        "experiment", help="run a classic BPTT experiment: print its table, save figures",
        description="The classic experiments of rnnfast.experiments: 'vanishing' (adding "
                    "problem, tanh RNN vs IRNN vs LSTM vs GRU), 'exploding' (clipping by norm, "
                    "by value, per step), 'truncation' (truncated BPTT against a dependency "
                    "of known span). Each takes a few minutes on 2 cores; --quick, seconds.")
    e.add_argument("name", choices=["vanishing", "exploding", "truncation"])
    e.add_argument("--quick", action="store_true", help="a tiny version that runs in seconds")
    e.add_argument("--out", metavar="DIR", default="experiment_figures",
                   help="directory for the PNG figures (default: experiment_figures)")
    e.set_defaults(func=_experiment)

    # Listed here for --help; its own options are parsed by rnnfast.bench (see main).
    sub.add_parser("bench", add_help=False,
                   help="time one training step against the NumPy reference, PyTorch and "
                        "JAX (rnnfast bench --help)")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from . import bench
        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "clip_norm", None) == 0:
        args.clip_norm = None
    try:
        args.func(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"rnnfast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
