"""The adding problem: carry two marked numbers across T steps and output their sum.

Each input step holds a number from U(0, 1) and a marker; exactly two steps are marked. The
target, read at the last step, is the sum of the two marked numbers. Always answering 1.0
scores a mean-squared error of 1/6 ≈ 0.167; a model that beats it clearly has learned to
remember across up to T steps — hard for a tanh RNN, routine for an LSTM or a GRU.

    python examples/adding_problem.py [--cell lstm] [--T 100] [--epochs 12]
"""

import argparse

import rnnfast
from rnnfast.tasks import ADDING_BASELINE_MSE, adding_problem


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="lstm")
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--train", type=int, default=10000, help="training sequences")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    x, y = adding_problem(args.train, args.T, seed=args.seed)
    x_test, y_test = adding_problem(2000, args.T, seed=args.seed + 1)
    cell = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[args.cell]
    model = rnnfast.Model(cell(2, args.hidden, seed=args.seed),
                          rnnfast.Linear(args.hidden, 1, seed=args.seed + 1))
    if args.cell == "lstm":  # start by remembering (Jozefowicz et al. 2015)
        rnnfast.init.forget_bias(model.recurrent, 1.0)
    opt = rnnfast.optim.Adam(model.params, lr=args.lr)
    print(f"{model}\nadding problem, T = {args.T}: predicting the mean scores MSE "
          f"{ADDING_BASELINE_MSE:.3f}")
    history = rnnfast.fit(model, opt, (x, y), epochs=args.epochs, batch_size=50,
                          loss="mse_last", clip_norm=1.0, validation=(x_test, y_test),
                          seed=args.seed, progress=not args.no_progress)
    for h in history:
        print(f"epoch {h['epoch']:3d}  train MSE {h['loss']:.4f}  test MSE {h['val_loss']:.4f}"
              f"  ({h['timesteps_per_second']:,.0f} timesteps/s)")
    final = history[-1]["val_loss"]
    verdict = "learned" if final < ADDING_BASELINE_MSE / 10 else "not learned"
    print(f"test MSE {final:.4f} vs baseline {ADDING_BASELINE_MSE:.3f}: {verdict}")


if __name__ == "__main__":
    main()
