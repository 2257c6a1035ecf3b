"""Text classification: which standard-library package does a docstring come from?

The data are real text that ships with every CPython: the docstrings (of modules, classes and
functions) in the source of nine packages of the standard library, read with ``ast`` (nothing
is imported, nothing downloaded). Each docstring is cut into word and punctuation tokens; a
model reads its token ids and names the package it was written for: asyncio, email, http,
importlib, logging, multiprocessing, unittest, urllib or xml. Some are easy ("Return the
logger's level"), many are not ("Return True if the object is closed."), and http and urllib
share much of their vocabulary.

The model is one expression: token ids -> Embedding -> 2-layer bidirectional LSTM with
dropout between the layers -> each direction's last state -> Linear -> 9 classes, trained with
``rnnfast.fit`` on padded sequences with their lengths, validated every epoch (early stopping
keeps the best epoch), and tested once at the end against the majority-class baseline.

    python examples/text_classifier.py [--unidirectional] [--pool mean] [--threads 2]

The numbers depend a little on the Python version (its docstrings differ from release to
release); the ``--seed`` fixes everything else.
"""

import argparse
import ast
import collections
import importlib.util
import os
import re
import time
import warnings

import numpy as np

import rnnfast

PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest",
            "urllib", "xml")
PAD, UNKNOWN = 0, 1  # token ids reserved before the vocabulary's words
TOKEN = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")  # identifiers split at '_' and '.'
DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def tokens(text):
    return TOKEN.findall(text.lower())


def package_docstrings(package):
    """Every docstring in the source of a standard-library ``package`` (its tests left out),
    in a fixed order: files sorted by path, nodes in the order ``ast.walk`` visits them."""
    spec = importlib.util.find_spec(package)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the standard-library package {package!r} was not found")
    root = spec.submodule_search_locations[0]
    docs = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in ("test", "tests", "__pycache__"))
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                source = f.read()
            with warnings.catch_warnings():
                # A newer Python may warn about an old escape sequence in that source; the
                # docstrings are what we read, not the code's health.
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(source)
            docs += [doc for node in ast.walk(tree) if isinstance(node, DOCUMENTED)
                     and (doc := ast.get_docstring(node))]
    return docs


def load_samples(max_tokens, min_tokens=4):
    """(token lists, labels): each docstring's first ``max_tokens`` tokens and its package.

    A token sequence found in two packages is dropped (its label is ambiguous), and one found
    twice in a package is kept once, so that no test sample is also a training sample.
    """
    owners = collections.defaultdict(set)
    for label, package in enumerate(PACKAGES):
        for doc in package_docstrings(package):
            seq = tuple(tokens(doc)[:max_tokens])
            if len(seq) >= min_tokens:
                owners[seq].add(label)
    samples = [(list(seq), labels.pop()) for seq, labels in owners.items() if len(labels) == 1]
    return [s for s, _ in samples], np.array([y for _, y in samples], dtype=np.int64)


def build_vocabulary(token_lists, min_count=2):
    """Token -> id for the tokens seen ``min_count`` times or more (ids from 2: 0 pads, 1 is
    every other token), most frequent first."""
    counts = collections.Counter(t for seq in token_lists for t in seq)
    kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
    return {t: i for i, t in enumerate(kept, start=2)}


def encode(token_lists, labels, vocab):
    """``(ids, labels, lengths)`` as ``rnnfast.fit`` takes them: ids (N, T) padded with PAD to
    the longest sequence T, labels (N,), lengths (N,)."""
    lengths = np.array([len(seq) for seq in token_lists], dtype=np.int64)
    ids = np.full((len(token_lists), int(lengths.max())), PAD, dtype=np.int64)
    for row, seq in zip(ids, token_lists):
        row[:len(seq)] = [vocab.get(t, UNKNOWN) for t in seq]
    return ids, labels, lengths


def split(token_lists, labels, seed, fractions=(0.7, 0.15)):
    """Seeded train / validation / test split: three (token lists, labels) pairs."""
    order = np.random.default_rng(seed).permutation(len(labels))
    cut1 = int(fractions[0] * len(order))
    cut2 = cut1 + int(fractions[1] * len(order))
    return [([token_lists[i] for i in part], labels[part])
            for part in (order[:cut1], order[cut1:cut2], order[cut2:])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64, help="units per direction and layer")
    parser.add_argument("--dropout", type=float, default=0.3, help="between the two layers")
    parser.add_argument("--unidirectional", action="store_true",
                        help="one direction instead of two, for comparison")
    parser.add_argument("--pool", choices=["last", "mean"], default="last")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="read at most the first N tokens of a docstring")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--patience", type=int, default=4,
                        help="stop after N epochs without a better validation loss")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for the recurrent layers: 2 runs the two directions "
                             "side by side (default: rnnfast's, OMP_NUM_THREADS or 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model, 300 samples and 2 epochs: seconds, for the tests")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.embedding_dim, args.hidden, args.max_tokens, args.epochs = 16, 16, 24, 2
    if args.threads is not None:
        rnnfast.set_num_threads(args.threads)

    start = time.perf_counter()
    token_lists, labels = load_samples(args.max_tokens)
    if args.quick:
        keep = np.random.default_rng(args.seed).permutation(len(labels))[:300]
        token_lists, labels = [token_lists[i] for i in keep], labels[keep]
    (train_tokens, train_y), (valid_tokens, valid_y), (test_tokens, test_y) = \
        split(token_lists, labels, args.seed)
    vocab = build_vocabulary(train_tokens)  # from the training split only
    train = encode(train_tokens, train_y, vocab)
    valid = encode(valid_tokens, valid_y, vocab)
    test_ids, _, test_lengths = encode(test_tokens, test_y, vocab)
    print(f"{len(labels)} docstrings of {len(PACKAGES)} packages "
          f"({time.perf_counter() - start:.1f} s to read): {len(train_y)} to train, "
          f"{len(valid_y)} to validate, {len(test_y)} to test; {len(vocab) + 2} token ids; "
          f"median length {int(np.median(train[2]))} tokens, at most {args.max_tokens}")

    directions = 1 if args.unidirectional else 2
    model = rnnfast.Model(
        rnnfast.LSTM(args.embedding_dim, args.hidden, num_layers=2,
                     bidirectional=directions == 2, dropout=args.dropout, seed=args.seed),
        rnnfast.Linear(directions * args.hidden, len(PACKAGES), seed=args.seed + 1),
        embedding=rnnfast.Embedding(len(vocab) + 2, args.embedding_dim, padding_idx=PAD,
                                    seed=args.seed + 2),
        pool=args.pool)
    print(f"{model}: {sum(p.size for p in model.params.values()):,} parameters")

    opt = rnnfast.optim.Adam(model.params, lr=args.lr)
    start = time.perf_counter()
    history = rnnfast.fit(model, opt, train, epochs=args.epochs, batch_size=32,
                          loss="cross_entropy", clip_norm=5.0, validation=valid,
                          patience=args.patience, seed=args.seed,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - start
    for h in history:
        print(f"epoch {h['epoch']:2d}  train loss {h['loss']:.3f}  validation loss "
              f"{h['val_loss']:.3f}  validation accuracy {h['val_accuracy']:.3f}")

    logits, _ = model(test_ids, lengths=test_lengths)  # inference: no dropout
    predicted = logits.argmax(axis=1)
    accuracy = float(np.mean(predicted == test_y))
    print("test accuracy per package: " + ", ".join(
        f"{package} {np.mean(predicted[test_y == k] == k):.2f}"
        for k, package in enumerate(PACKAGES) if np.any(test_y == k)))
    majority = int(np.argmax(np.bincount(train_y)))  # what a guesser that saw train names
    baseline = float(np.mean(test_y == majority))
    print(f"test accuracy {accuracy:.3f} ({int(np.sum(predicted == test_y))}/{len(test_y)}) "
          f"against {baseline:.3f} for always naming the most frequent package "
          f"({PACKAGES[majority]}) and {1 / len(PACKAGES):.3f} for a uniform guess; "
          f"trained in {seconds:.1f} s")
    return {"test_accuracy": accuracy, "baseline": baseline, "seconds": seconds,
            "history": history}


if __name__ == "__main__":
    main()
