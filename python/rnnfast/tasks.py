"""Synthetic tasks with known answers, for examples, experiments and tests."""

import numpy as np

from . import _checks

#: MSE of always predicting the mean (1.0) on the adding problem: Var(u1 + u2) = 2/12.
ADDING_BASELINE_MSE = 1 / 6


def adding_problem(n, T, seed=None, dtype=np.float32):
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    Each sequence has T steps of two features: a value drawn from U(0, 1) and a marker that is
    1 at exactly two steps — one in the first half, one in the second — and 0 elsewhere. The
    target is the sum of the two marked values. Predicting the mean, 1.0, scores an MSE of
    1/6 ≈ 0.167 (``ADDING_BASELINE_MSE``); beating it means carrying a value across up to T
    steps.

    Parameters
    ----------
    n : int
        Number of sequences.
    T : int
        Steps per sequence, at least 2.
    seed : int, optional
    dtype : numpy dtype, default float32

    Returns
    -------
    x : ndarray (n, T, 2)
    y : ndarray (n, 1)
    """
    n = _checks.positive_int(n, "n")
    T = _checks.positive_int(T, "T")
    if T < 2:
        raise ValueError(f"T must be at least 2 (one marker in each half), got {T}")
    rng = np.random.default_rng(seed)
    x = np.zeros((n, T, 2), dtype=dtype)
    x[:, :, 0] = rng.uniform(0, 1, size=(n, T))
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    rows = np.arange(n)
    x[rows, first, 1] = 1
    x[rows, second, 1] = 1
    y = (x[rows, first, 0] + x[rows, second, 0])[:, None].astype(dtype)
    return x, y


def delayed_recall(n, T, delay, seed=None, dtype=np.float32):
    """Recall the input from exactly ``delay`` steps back: a dependency of known span.

    Each step's input is a random sign, +1 or -1; the target at step t is the input at step
    t - delay (0 for t < delay, where there is nothing to recall). Predicting 0 scores an MSE
    of 1 on the steps t >= delay; getting it right needs the state to carry each sign for
    ``delay`` steps, which truncated BPTT can learn only when its window spans them.

    Parameters
    ----------
    n : int
        Number of sequences.
    T : int
        Steps per sequence.
    delay : int
        How many steps back each target looks.
    seed : int, optional
    dtype : numpy dtype, default float32

    Returns
    -------
    x : ndarray (n, T, 1)
    y : ndarray (n, T, 1)
    """
    n = _checks.positive_int(n, "n")
    T = _checks.positive_int(T, "T")
    delay = _checks.positive_int(delay, "delay")
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-1.0, 1.0], dtype=dtype), size=(n, T, 1))
    y = np.zeros_like(x)
    y[:, delay:] = x[:, :T - delay]
    return x, y
