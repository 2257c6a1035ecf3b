"""The NumPy reference against central finite differences, in float64.

The loss is L = sum(y * R) + sum(state_n * S) for fixed random R and S, so the gradients sent
into backward are dy = R and dstate = S; every parameter, dx and every part of dstate0 is
checked element by element. Relative error = max |numeric - analytic| / max |analytic| <= 1e-6.
"""

import numpy as np
import pytest

from support import CELLS, as_parts, make, numeric_grad, record, rel_err, state_like

EPS = 1e-6
TOL = 1e-6


def _loss(model, x, state, lengths, R, S):
    y, state_n = model(x, state, lengths)
    return float((y * R).sum() + sum((p * s).sum() for p, s in zip(as_parts(state_n), S)))


@pytest.mark.parametrize("config", [
    # B, T, D, H, L, lengths, bias
    (2, 4, 3, 3, 1, None, True),
    (3, 5, 2, 4, 2, [5, 2, 0], True),
    (2, 3, 3, 2, 2, [3, 1], False),
    (3, 4, 3, 2, 3, [4, 1, 3], False),
], ids=["single", "stacked-lengths", "no-bias", "3-layers-lengths-no-bias"])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_gradients_match_finite_differences(cell, config):
    B, T, D, H, L, lengths, bias = config
    rng = np.random.default_rng(11)
    model = make(cell, D, H, L, dtype=np.float64, backend="numpy", seed=4, bias=bias)
    # Larger weights than the default init, so that the gates are away from their linear
    # regime and a wrong derivative of σ or tanh cannot hide.
    for p in model.params.values():
        p *= 3.0
    x = rng.standard_normal((B, T, D))
    state = tuple(p.copy() for p in as_parts(state_like(model, B, rng)))
    R = rng.standard_normal((B, T, H))
    S = tuple(rng.standard_normal(p.shape) for p in state)
    packed = state if model.state_parts > 1 else state[0]

    y, state_n, cache = model.forward(x, packed, lengths)
    dx, dstate0, grads = model.backward(cache, R, S if model.state_parts > 1 else S[0])

    def f():
        return _loss(model, x, packed, lengths, R, S)

    checks = {name: (model.params[name], grads[name]) for name in model.params}
    checks["x"] = (x, dx)
    for i, (p, d) in enumerate(zip(state, as_parts(dstate0))):
        checks[f"state[{i}]"] = (p, d)
    for name, (arr, analytic) in checks.items():
        numeric = numeric_grad(f, arr, EPS)
        assert np.abs(numeric).max() > 0 or name == "x", f"{name}: no gradient to check"
        err = rel_err(analytic, numeric)
        record(f"gradcheck {cell}", np.float64, err)
        assert err <= TOL, f"{name}: relative error {err:.3e}"
