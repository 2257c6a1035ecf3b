"""Train a small RNN by hand with rnnfast's forward/backward API.

The task: read a sequence of random numbers and, at every step t, output the number seen
three steps earlier (x_{t-3}); the first three steps have no target. A memoryless model can
do no better than predicting 0, which scores a mean-squared error of about 1.0 here.

The read-out (y_t = W_out h_t + b_out), the loss and plain SGD with momentum are written out
in NumPy below, to show what the model's ``forward`` / ``backward`` give and take.

    python examples/quickstart.py [--steps 600] [--seed 0]
"""

import argparse
import time

import numpy as np

import rnnfast

DELAY = 3


def batch(rng, B, T):
    x = rng.standard_normal((B, T, 1)).astype(np.float32)
    target = np.zeros((B, T), np.float32)
    target[:, DELAY:] = x[:, :-DELAY, 0]
    return x, target


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    B, T, H = 32, 40, 32
    model = rnnfast.RNN(1, H, seed=args.seed)  # tanh, float32, the C++ path
    w_out = np.zeros(H, np.float32)
    b_out = np.float32(0.0)
    params = {**model.params, "w_out": w_out}
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    lr, momentum, max_norm = 0.05, 0.9, 1.0

    print(f"{model}\nlearning to output x[t-{DELAY}]; predicting 0 scores MSE ~1.0")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, target = batch(rng, B, T)
        h, _, cache = model.forward(x)                      # h: (B, T, H)
        pred = h @ w_out + b_out                            # (B, T)
        err = (pred - target)[:, DELAY:]
        loss = float(np.mean(err * err))

        dpred = np.zeros_like(pred)                         # dL/dpred, mean over B*(T-DELAY)
        dpred[:, DELAY:] = 2 * err / err.size
        grads = {"w_out": np.einsum("bt,bth->h", dpred, h)}
        db_out = dpred.sum()
        _, _, model_grads = model.backward(cache, dpred[:, :, None] * w_out)  # dL/dh
        grads.update(model_grads)

        norm = np.sqrt(sum(float((g * g).sum()) for g in grads.values()) + db_out ** 2)
        scale = min(1.0, max_norm / (norm + 1e-12))         # clip by global norm
        for k, g in grads.items():                          # SGD with momentum, in place
            velocity[k] *= momentum
            velocity[k] += g * scale
            params[k] -= lr * velocity[k]
        b_out -= lr * db_out * scale

        if step == 1 or step % 100 == 0:
            print(f"step {step:5d}  loss {loss:.4f}")
    seconds = time.perf_counter() - start
    x, target = batch(np.random.default_rng(args.seed + 1), 256, T)
    pred = model(x)[0] @ w_out + b_out
    test = float(np.mean((pred - target)[:, DELAY:] ** 2))
    print(f"held-out MSE {test:.4f} (baseline ~1.0) after {args.steps} steps in {seconds:.1f} s")


if __name__ == "__main__":
    main()
