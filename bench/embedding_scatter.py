"""The scatter-add of Embedding's backward, ``dweight[ids[n]] += dy[n]``, done several ways.

    python bench/embedding_scatter.py [--repeats 7] [--zipf]

Prints, per (B, T, V, E) and dtype, the best of ``--repeats`` times of each method in ms,
whether it equals ``np.add.at`` bit for bit, its largest error relative to a float64 sum, and
whether two runs on the same input agree bit for bit. ``--zipf`` draws the ids from a
Zipf-like law (a few very frequent tokens, as in text) instead of uniformly.

Letters: B = batch, T = timesteps, V = rows of the table (num_embeddings), E = embedding_dim,
N = B·T ids.
"""

import argparse
import time

import numpy as np

CONFIGS = ((32, 100, 4000, 128), (64, 200, 30000, 256))


def add_at(ids, dy, V):
    """The reference: an unbuffered add, one row per id, in the order of ids."""
    dw = np.zeros((V, dy.shape[1]), dy.dtype)
    np.add.at(dw, ids, dy)
    return dw


def add_at_flat(ids, dy, V):
    """``np.add.at`` on the flat table with one index per element (NumPy's 1-D fast path)."""
    E = dy.shape[1]
    dw = np.zeros(V * E, dy.dtype)
    np.add.at(dw, (ids[:, None] * E + np.arange(E)).ravel(), dy.ravel())
    return dw.reshape(V, E)


def sort_reduceat(ids, dy, V):
    """Rows grouped by id with a stable sort, each group summed by ``np.add.reduceat``."""
    dw = np.zeros((V, dy.shape[1]), dy.dtype)
    if ids.size:
        order = np.argsort(ids, kind="stable")
        ids_sorted = ids[order]
        starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]])
        dw[ids_sorted[starts]] = np.add.reduceat(dy[order], starts, axis=0)
    return dw


def bincount_columns(ids, dy, V):
    """One ``np.bincount`` per column of dy (E calls, each a float64 sum in the order of ids)."""
    dyt = np.ascontiguousarray(dy.T)
    dw = np.empty((dy.shape[1], V), dy.dtype)
    for e, column in enumerate(dyt):
        dw[e] = np.bincount(ids, weights=column, minlength=V)
    return dw.T.copy()


def bincount_flat(ids, dy, V):
    """One ``np.bincount`` over the flat table, one bin per (row, column)."""
    E = dy.shape[1]
    flat = (ids[:, None] * E + np.arange(E)).ravel()
    return np.bincount(flat, weights=dy.ravel(), minlength=V * E).reshape(V, E) \
        .astype(dy.dtype, copy=False)


def onehot_sparse(ids, dy, V):
    """A sparse one-hot (V, N) matrix times dy (SciPy, not an rnnfast dependency)."""
    import scipy.sparse

    n = ids.size
    onehot = scipy.sparse.csr_matrix((np.ones(n, dy.dtype), (ids, np.arange(n))), shape=(V, n))
    return np.asarray(onehot @ dy)


METHODS = (add_at, add_at_flat, sort_reduceat, bincount_columns, bincount_flat, onehot_sparse)


def best_time(fn, args, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def draw_ids(rng, N, V, zipf):
    if not zipf:
        return rng.integers(0, V, size=N)
    # P(rank r) ∝ 1 / r, the ranks shuffled over the vocabulary
    p = 1.0 / np.arange(1, V + 1)
    return rng.permutation(V)[rng.choice(V, size=N, p=p / p.sum())]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--zipf", action="store_true")
    args = parser.parse_args(argv)
    try:
        import scipy  # noqa: F401
        methods = METHODS
    except ImportError:
        methods = METHODS[:-1]
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}; ids {'Zipf-like' if args.zipf else 'uniform'}; "
          f"best of {args.repeats}")
    print(f"{'(B, T, V, E)':<22} {'dtype':<8} {'method':<17} {'ms':>8}  "
          f"{'== add.at':>9}  {'rel err':>8}  repeatable")
    for B, T, V, E in CONFIGS:
        ids = draw_ids(rng, B * T, V, args.zipf)
        for dtype in (np.float32, np.float64):
            dy = rng.standard_normal((B * T, E)).astype(dtype)
            ref = add_at(ids, dy, V)
            exact = add_at(ids, dy.astype(np.float64), V)
            scale = np.abs(exact).max()
            for fn in methods:
                got = fn(ids, dy, V)
                same = np.array_equal(got, ref)
                err = np.abs(got - exact).max() / scale
                again = np.array_equal(got, fn(ids, dy, V))
                ms = 1e3 * best_time(fn, (ids, dy, V), args.repeats)
                print(f"{str((B, T, V, E)):<22} {np.dtype(dtype).name:<8} {fn.__name__:<17} "
                      f"{ms:8.2f}  {str(same):>9}  {err:8.1e}  {again}")


if __name__ == "__main__":
    main()
