"""Sequence classification: read an 8×8 handwritten digit row by row, then name it.

The data are scikit-learn's digits (1,797 images of 8×8 pixels, shipped inside the package,
so nothing is downloaded). Each image becomes a sequence of 8 steps of 8 pixels; a GRU reads
it and a linear read-out of its last state gives the class (many-to-one, cross-entropy).

    pip install scikit-learn
    python examples/digits_classifier.py [--cell gru] [--epochs 30]
"""

import argparse

import numpy as np

import rnnfast


def load_digits_as_sequences(seed):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (N, 8 rows = T, 8 pixels = D), in [0, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="gru")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    train, test = load_digits_as_sequences(args.seed)
    cell = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[args.cell]
    model = rnnfast.Model(cell(8, args.hidden, seed=args.seed),
                          rnnfast.Linear(args.hidden, 10, seed=args.seed + 1))
    opt = rnnfast.optim.Adam(model.params, lr=args.lr)
    print(f"{model}\n{len(train[0])} training and {len(test[0])} test images, read row by row")
    history = rnnfast.fit(model, opt, train, epochs=args.epochs, batch_size=32,
                          loss="cross_entropy_last", validation=test, seed=args.seed,
                          progress=not args.no_progress)
    for h in history[:: max(1, len(history) // 10)] + history[-1:]:
        print(f"epoch {h['epoch']:3d}  train loss {h['loss']:.4f}  test loss {h['val_loss']:.4f}"
              f"  test accuracy {h['val_accuracy']:.3f}")
    print(f"test accuracy {history[-1]['val_accuracy']:.3f} "
          f"({round(history[-1]['val_accuracy'] * len(test[0]))}/{len(test[0])})")


if __name__ == "__main__":
    main()
