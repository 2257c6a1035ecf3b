"""The ``rnnfast`` command (also ``python -m rnnfast``)."""

import argparse
import math
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
    ranks = _launched_ranks()
    if ranks > 1 and not args.distributed:
        # N independent copies would each train alone and overwrite one another's checkpoint
        raise SystemExit(f"rnnfast train: started by mpiexec with {ranks} ranks: add "
                         f"--distributed to train one model data-parallel over them")
    charlm.train(
        text, cell=args.cell, hidden=args.hidden, layers=args.layers,
        embedding_dim=args.embedding_dim, dropout=args.dropout,
        bidirectional=args.bidirectional, batch=args.batch,
        k1=args.k1, k2=args.k2, bptt_checkpoint=args.bptt_checkpoint, optimizer=args.optimizer, lr=args.lr, clip_norm=args.clip_norm,
        clip_value=args.clip_value, epochs=args.epochs, seed=args.seed,
        dtype=np.dtype(args.dtype), checkpoint_path=args.checkpoint, resume=args.resume,
        sample_length=args.sample_length, temperature=args.temperature,
        progress=not args.no_progress, distributed=args.distributed)


def _warn_unused_on_resume(parser, args):
    """--resume continues the checkpoint's model and optimiser: name the options given on the
    command line that disagree with it, rather than train something other than what the
    command line reads as."""
    from . import checkpoint

    try:
        ck = checkpoint.load(args.checkpoint)
    except (OSError, ValueError):
        return  # charlm.train loads it again and reports what is wrong with it
    model, rec = ck.model, ck.model.recurrent
    saved = {"cell": type(rec).__name__.lower(), "hidden": rec.hidden_size,
             "layers": rec.num_layers, "dropout": rec.dropout, "dtype": rec.dtype.name,
             "embedding_dim": None if model.embedding is None else model.embedding.embedding_dim,
             "optimizer": ck.optimizer_state["type"].lower() if ck.optimizer_state else None,
             "lr": ck.optimizer_state["lr"] if ck.optimizer_state else None}
    unused = [f"--{dest.replace('_', '-')} {getattr(args, dest)}" for dest, value in saved.items()
              if getattr(args, dest) != parser.get_default(dest) and value is not None
              and getattr(args, dest) != value]
    if unused:
        print(f"rnnfast train: --resume continues the checkpoint's model and optimiser; not "
              f"used: {', '.join(unused)}", file=sys.stderr)



def _check_train(parser, args):
    """The checks argparse cannot make one option at a time, made before the text is read:
    every mistake here would otherwise surface only once training has started or ended."""
    if args.k2 is not None and args.k2 < args.k1:
        parser.error(f"argument --k2: must be >= --k1 {args.k1} (backpropagate through at "
                     f"least the k1 characters that take the loss), got {args.k2}")
    if args.resume and not args.checkpoint:
        parser.error("argument --resume: needs --checkpoint PATH, the checkpoint to continue "
                     "from")
    if args.resume and not os.path.isfile(args.checkpoint):
        parser.error(f"argument --resume: expected a checkpoint at --checkpoint "
                     f"{args.checkpoint!r}, found none (leave out --resume to start a new "
                     f"one there)")
    if args.resume:
        _warn_unused_on_resume(parser, args)
    if args.checkpoint and not args.distributed:
        # (under mpiexec rank 0 alone writes it, and checks it itself before training)
        from . import checkpoint
        try:
            checkpoint.check_writable(args.checkpoint, "argument --checkpoint:")
        except OSError as e:
            parser.error(str(e))


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help, except where there is none to show (None, a flag
    that is off) or its help says it in words."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or \
                "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _number(kind, low, *, above=False, below=None):
    """An argparse type: a ``kind`` (int or float) >= ``low`` (> ``low`` with ``above``;
    and < ``below`` when given), refused with argparse's own error naming the option."""
    bound = (f"> {low}" if above else f">= {low}") + ("" if below is None else f" and < {below}")
    noun = "an integer" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} {bound}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if above else value >= low)
                and (below is None or value < below)):
            raise argparse.ArgumentTypeError(f"expected {noun} {bound}, got {text}")
        return value

    return parse


def _segment(text):
    """An argparse type for --bptt-checkpoint: 'auto' or an integer >= 1."""
    if text == "auto":
        return text
    try:
        return _number(int, 1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}") \
            from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="rnnfast", description="Fast CPU training of recurrent networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", help="train a character-level language model and print samples",
        formatter_class=_HelpFormatter,
        description="Train a character-level language model with truncated BPTT and print "
                    "samples after every epoch. Without --text it learns the text of "
                    "Python's help topics (pydoc_data, ~465 KB, shipped with CPython). "
                    "Losses are in bits per character.")
    t.add_argument("--text", metavar="FILE", help="a UTF-8 text file to learn")
    t.add_argument("--max-chars", type=_number(int, 0), default=0, metavar="N",
                   help="use only the first N characters (0: all of them)")
    t.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="lstm",
                   help="the recurrent cell")
    t.add_argument("--hidden", type=_number(int, 1), default=128, help="hidden units per layer")
    t.add_argument("--layers", type=_number(int, 1), default=1, help="stacked recurrent layers")
    t.add_argument("--embedding-dim", type=_number(int, 1), default=32,
                   help="length of the learned vector each character is read as")
    t.add_argument("--dropout", type=_number(float, 0, below=1), default=0.0,
                   help="dropout between stacked layers, in training (needs --layers >= 2)")
    t.add_argument("--bidirectional", action="store_true",
                   help="refused: a language model must not read the characters it predicts "
                        "(listed so that the reason is given)")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="the model's floating-point type")
    t.add_argument("--batch", type=_number(int, 1), default=16,
                   help="parallel streams of text")
    t.add_argument("--k1", type=_number(int, 1), default=32,
                   help="update every k1 characters")
    t.add_argument("--k2", type=_number(int, 1), default=None,
                   help="backpropagate through k2 >= k1 characters (default: k1)")
    t.add_argument("--bptt-checkpoint", type=_segment, default=None, metavar="K|auto",
                   help="checkpointed BPTT inside each window of k2 characters: keep the "
                        "state every K steps and recompute the rest in backward ('auto': "
                        "K = sqrt(k2)); the same gradient in less memory (default: off)")
    t.add_argument("--optimizer", choices=["sgd", "adagrad", "rmsprop", "adam", "adamw"],
                   default="adam", help="the optimiser")
    t.add_argument("--lr", type=_number(float, 0, above=True), default=3e-3,
                   help="learning rate")
    t.add_argument("--clip-norm", type=_number(float, 0), default=5.0,
                   help="clip gradients by global norm (0: off)")
    t.add_argument("--clip-value", type=_number(float, 0, above=True), default=None,
                   help="clip gradients by value (default: off)")
    t.add_argument("--epochs", type=_number(int, 1), default=2, metavar="N",
                   help="epochs to train in this run; with --resume, N more after the "
                        "checkpoint's (a checkpoint of 4 epochs and --epochs 2 train epochs "
                        "5 and 6)")
    t.add_argument("--seed", type=int, default=0,
                   help="seeds the initial weights and the samples")
    t.add_argument("--checkpoint", metavar="PATH",
                   help="save model and optimiser here after every epoch (its directory "
                        "must exist)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint at --checkpoint, with its model, and "
                        "save there again")
    t.add_argument("--sample-length", type=_number(int, 0), default=300, metavar="N",
                   help="characters to sample after every epoch (0: none)")
    t.add_argument("--temperature", type=_number(float, 0, above=True), default=0.8,
                   help="sampling temperature: lower is more conservative")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of `mpiexec -n N rnnfast train "
                        "--distributed` (needs pip install \"rnnfast[mpi]\"): the streams "
                        "are shared out, rank 0 prints and writes the checkpoint")
    t.set_defaults(func=_train, check=lambda args: _check_train(t, args))

    e = sub.add_parser(
        "experiment", help="run a classic BPTT experiment: print its table, save figures",
        formatter_class=_HelpFormatter,
        description="The classic experiments of rnnfast.experiments: 'vanishing' (adding "
                    "problem, tanh RNN vs IRNN vs LSTM vs GRU), 'exploding' (clipping by norm, "
                    "by value, per step), 'truncation' (truncated BPTT against a dependency "
                    "of known span). On 2 cores 'vanishing' takes a few minutes, the "
                    "others seconds.")
    e.add_argument("name", choices=["vanishing", "exploding", "truncation"],
                   help="the experiment")
    e.add_argument("--quick", action="store_true",
                   help="a smoke run in seconds: it checks that the experiment runs end to "
                        "end, on a budget too small to show its effect (its table and "
                        "figures are not the result: run without --quick for that)")
    e.add_argument("--out", metavar="DIR", default="experiment_figures",
                   help="directory for the PNG figures")
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
    if hasattr(args, "check"):
        args.check(args)
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
