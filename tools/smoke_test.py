"""Check an installed rnnfast: the kernel this CPU got, a few training steps of an LSTM, and
the compiled loops against the NumPy reference. Run by tools/build_wheel.sh on the built
wheel and by cibuildwheel on every release wheel (pyproject.toml); needs numpy only.

    python tools/smoke_test.py
"""

import numpy as np

import rnnfast


def main():
    info = rnnfast.build_info()
    print(f"rnnfast {rnnfast.__version__} from {rnnfast.__file__}")
    print(f"kernel {info['kernel']} of {', '.join(info['kernels'])}; this CPU: "
          f"{' '.join(info['cpu']) or 'baseline'}")

    rng = np.random.default_rng(0)
    B, T, D, H, C = 8, 20, 5, 32, 4
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    targets = (np.cumsum(x[..., 0], axis=1) > 0).astype(np.int64) + 2 * (x[..., 1] > 0)
    model = rnnfast.Model(rnnfast.LSTM(D, H, dtype=np.float32, seed=0),
                          rnnfast.Linear(H, C, dtype=np.float32, seed=1))
    optimizer = rnnfast.optim.Adam(model.params, lr=0.02)
    losses = [rnnfast.train_sequence(model, optimizer, x, targets)["loss"] for _ in range(30)]
    print(f"30 Adam steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses

    fast = rnnfast.GRU(D, H, num_layers=2, dtype=np.float64, seed=3)
    slow = rnnfast.GRU(D, H, num_layers=2, dtype=np.float64, seed=3, backend="numpy")
    x64 = x.astype(np.float64)
    (y, _, cache), (y_ref, _, cache_ref) = fast.forward(x64), slow.forward(x64)
    dy = rng.normal(size=y.shape)
    grads, grads_ref = fast.backward(cache, dy)[2], slow.backward(cache_ref, dy)[2]
    worst = max(np.abs(a - b).max() / np.abs(b).max()
                for a, b in [(y, y_ref)] + [(grads[k], grads_ref[k]) for k in grads])
    print(f"compiled against reference (GRU, 2 layers, float64): worst relative error {worst:.1e}")
    assert worst <= 1e-10, worst
    print("smoke test passed")


if __name__ == "__main__":
    main()
