"""Seeing BPTT: how the gradient flows back through time, and what W_hh says about it.

``gradient_flow`` runs one forward and one backward with ``return_grad_norms=True`` and
reports, per layer and per timestep, ||dL/dh_t||: the total gradient reaching the hidden
state at step t. With the loss on the last step only, plotted against the distance T - 1 - t
from the loss, a straight line on a log axis falling to the right is a vanishing gradient; a
line rising is an exploding one.

Beside the norms it reports the spectral norm (largest singular value) and spectral radius
(largest ``|eigenvalue|``) of every ``weight_hh_l{k}``, whole and per gate block, and the
sufficient condition for vanishing gradients of Pascanu, Mikolov & Bengio (2013, "On the
difficulty of training recurrent neural networks", section 2.2): for h_t = f(W_hh h_{t-1} +
...) with ``|f'| <= gamma``, the Jacobian dh_t/dh_{t-1} = diag(f') W_hh has norm at most
gamma * sigma_max(W_hh), so sigma_max(W_hh) < 1/gamma makes ||dL/dh_t|| shrink
geometrically with the distance from the loss. gamma = 1 for tanh and ReLU, 1/4 for the
logistic sigmoid. The condition is sufficient, not necessary: it can fail while gradients
still vanish (tanh saturating makes f' much smaller than 1).

``plot_gradient_flow`` and ``plot_history`` draw several runs on one figure (matplotlib,
imported only by them: ``pip install "rnnfast[plot]"``).

Letters: B = batch, T = timesteps, H = hidden units, L = layers, G = gates per cell.
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ._recurrent import Recurrent
from .model import Model

#: gamma, the bound on ``|f'|``, of each nonlinearity (Pascanu et al. 2013).
GAMMA = {"tanh": 1.0, "relu": 1.0, "sigmoid": 0.25}

#: The gate blocks of weight_hh, in order, and the nonlinearity each feeds.
GATE_BLOCKS = {
    "RNN": None,  # one block; its nonlinearity is the model's
    "LSTM": (("i", "sigmoid"), ("f", "sigmoid"), ("g", "tanh"), ("o", "sigmoid")),
    "GRU": (("r", "sigmoid"), ("z", "sigmoid"), ("n", "tanh")),
}


def spectral(w):
    """Spectral norm and spectral radius of a matrix, in float64.

    Parameters
    ----------
    w : ndarray (m, n)

    Returns
    -------
    dict
        ``spectral_norm``: the largest singular value, ``numpy.linalg.norm(w, 2)``;
        ``spectral_radius``: the largest ``|eigenvalue|``, or None when ``w`` is not square.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.size == 0:
        return {"spectral_norm": 0.0, "spectral_radius": 0.0 if w.shape[0] == w.shape[1]
                else None}
    norm = float(np.linalg.svd(w, compute_uv=False)[0])
    radius = float(np.abs(np.linalg.eigvals(w)).max()) if w.shape[0] == w.shape[1] else None
    return {"spectral_norm": norm, "spectral_radius": radius}


def vanishing_condition(sigma_max, nonlinearity):
    """Pascanu et al.'s sufficient condition for vanishing gradients, sigma_max < 1/gamma.

    Parameters
    ----------
    sigma_max : float
        The largest singular value of the recurrent matrix.
    nonlinearity : {"tanh", "relu", "sigmoid"}

    Returns
    -------
    dict
        ``gamma`` (the bound on ``|f'|``), ``bound`` (1/gamma), ``sigma_max`` and ``holds``
        (True when sigma_max < bound: the gradient must vanish).
    """
    gamma = GAMMA[nonlinearity]
    bound = 1.0 / gamma
    return {"gamma": gamma, "bound": bound, "sigma_max": float(sigma_max),
            "holds": bool(sigma_max < bound)}


def weight_hh_report(model):
    """The spectral numbers of every layer's ``weight_hh`` and the vanishing condition.

    Parameters
    ----------
    model : RNN, LSTM, GRU or Model

    Returns
    -------
    list of dict, one per layer, with
        ``whole``: ``spectral(weight_hh_l{k})`` (the (G*H, H) matrix: no spectral radius for
        the gated cells, where it is not square);
        ``gates``: gate name -> ``spectral`` of its (H, H) block, plus that block's
        ``vanishing_condition`` under ``"condition"`` (empty for the RNN, whose one block is
        the whole);
        ``condition``: for the RNN, ``vanishing_condition`` of the whole with the model's
        nonlinearity. For the LSTM and GRU it is None: their Jacobian dh_t/dh_{t-1} has an
        additive path (the forget gate, 1 - z) that the bound does not cover, so only the
        per-block conditions are reported, as a hint.
    """
    rec = model.recurrent if isinstance(model, Model) else model
    if not isinstance(rec, Recurrent):
        raise TypeError(f"model must be an rnnfast RNN, LSTM, GRU or Model, got "
                        f"{type(model).__name__}")
    H = rec.hidden_size
    blocks = GATE_BLOCKS.get(type(rec).__name__)
    layers = []
    for k in range(rec.num_layers):
        w = rec.params[f"weight_hh_l{k}"]
        whole = spectral(w)
        gates, condition = {}, None
        if blocks is None:
            condition = vanishing_condition(whole["spectral_norm"], rec.nonlinearity)
        else:
            for g, (name, f) in enumerate(blocks):
                s = spectral(w[g * H:(g + 1) * H])
                gates[name] = {**s, "condition": vanishing_condition(s["spectral_norm"], f)}
        layers.append({"whole": whole, "gates": gates, "condition": condition})
    return layers


@dataclass
class GradientFlow:
    """What ``gradient_flow`` measured. Also readable as a dict (``result["grad_norms"]``).

    Attributes
    ----------
    grad_norms : ndarray (L, T), float64
        ``grad_norms[k, t]`` = ||dL/dh_t|| at layer k, averaged over the sequences running at
        step t (see ``RNN.backward``).
    loss : float or None
        The loss, when ``gradient_flow`` computed it from targets.
    weight_hh : list of dict
        ``weight_hh_report(model)``: spectral norm and radius per layer, whole and per gate,
        and the vanishing condition.
    cell : str
        "RNN (tanh)", "RNN (relu)", "LSTM" or "GRU".
    seconds : float
        How long the ``gradient_flow`` call took.
    """

    grad_norms: np.ndarray
    loss: float | None
    weight_hh: list
    cell: str
    seconds: float = field(default=float("nan"))

    def __getitem__(self, key):
        return getattr(self, key)

    def keys(self):
        """The field names, so that ``dict(result)`` works."""
        return ("grad_norms", "loss", "weight_hh", "cell", "seconds")

    @property
    def distance(self):
        """(T,) the distance in steps from the last step, T - 1 - t, for each t."""
        T = self.grad_norms.shape[1]
        return np.arange(T - 1, -1, -1)

    def decay_per_step(self, layer=-1):
        """The geometric mean factor by which ||dL/dh_t|| changes per step back in time,
        from the last step to the first non-zero one of ``layer``: < 1 vanishing, > 1
        exploding. NaN when fewer than two steps have a non-zero norm."""
        n = self.grad_norms[layer]
        nz = np.flatnonzero((n > 0) & np.isfinite(n))
        if len(nz) < 2:
            return float("nan")
        first, last = nz[0], nz[-1]
        return float((n[first] / n[last]) ** (1.0 / (last - first)))

    def summary(self):
        """A few lines of text: the condition, the spectral norm, the decay per step."""
        lines = [f"{self.cell}: ||dL/dh_t|| from {self.grad_norms[-1, -1]:.3g} at the loss "
                 f"to {self.grad_norms[-1, 0]:.3g} at t = 0 (x{self.decay_per_step():.3g} "
                 f"per step)"]
        for k, layer in enumerate(self.weight_hh):
            c = layer["condition"]
            s = layer["whole"]["spectral_norm"]
            if c is not None:
                lines.append(f"  layer {k}: sigma_max(W_hh) = {s:.3g}, spectral radius = "
                             f"{layer['whole']['spectral_radius']:.3g}; vanishing guaranteed "
                             f"(sigma_max < 1/gamma = {c['bound']:g}): {c['holds']}")
            else:
                gates = ", ".join(f"{g} {v['spectral_norm']:.3g}"
                                  for g, v in layer["gates"].items())
                lines.append(f"  layer {k}: sigma_max(W_hh) = {s:.3g}; per gate: {gates}")
        return "\n".join(lines)


def _cell_name(rec):
    name = type(rec).__name__
    return f"RNN ({rec.nonlinearity})" if name == "RNN" else name


def gradient_flow(model, x, targets=None, loss="mse_last", lengths=None, *, dy=None,
                  state=None, spectral_numbers=True):
    """Per-timestep gradient norms of one forward and backward, and W_hh's spectral numbers.

    Parameters
    ----------
    model : Model, or RNN / LSTM / GRU
        A ``Model`` takes ``targets`` and ``loss``. A bare recurrent model takes ``dy``, the
        gradient with respect to its outputs (B, T, H); given ``targets`` instead, the loss
        is taken on its outputs directly.
    x : ndarray (B, T, D)
    targets : ndarray, optional
        As for ``rnnfast.train.sequence_loss``: (B, C) or (B,) for the ``*_last`` losses,
        (B, T, C) or (B, T) for the per-step ones.
    loss : str, default "mse_last"
        One of ``rnnfast.train.LOSSES``.
    lengths : (B,) ints, optional
    dy : ndarray, optional
        The gradient to send back instead of a loss's (for a ``Model``, with respect to its
        logits).
    state : optional
        The initial state (zeros).
    spectral_numbers : bool, default True
        Compute ``weight_hh`` (an SVD and an eigendecomposition per (H, H) block: negligible
        for H up to a few hundred, about as long as a forward at H = 1024). False leaves
        ``weight_hh`` empty.

    Returns
    -------
    GradientFlow
        With ``grad_norms`` (L, T), ``loss``, ``weight_hh``, ``cell`` and ``seconds`` (the
        time this call took).

    Notes
    -----
    The parameters are not changed. The cost is one forward and one backward with
    ``return_grad_norms=True`` (whose norms add one pass over dL/dh_t, in the C++ loop) plus
    the spectral numbers; see docs/bptt.md for the measured overhead.

    Examples
    --------
    >>> import rnnfast
    >>> from rnnfast.tasks import adding_problem
    >>> model = rnnfast.Model(rnnfast.RNN(2, 16, seed=0), rnnfast.Linear(16, 1, seed=1))
    >>> x, y = adding_problem(8, 50, seed=0)
    >>> flow = rnnfast.diagnostics.gradient_flow(model, x, y)
    >>> flow.grad_norms.shape
    (1, 50)
    """
    from .train import _check_loss, _per_sequence, sequence_loss

    start = time.perf_counter()
    rec = model.recurrent if isinstance(model, Model) else model
    if not isinstance(rec, Recurrent):
        raise TypeError(f"model must be an rnnfast RNN, LSTM, GRU or Model, got "
                        f"{type(model).__name__}")
    if (targets is None) == (dy is None):
        raise ValueError("give exactly one of targets (with loss) or dy")
    if dy is None:
        _check_loss(model, loss)
    out, _, cache = model.forward(x, state, lengths)
    value = None
    if dy is None:
        # A pooled model's logits are one per sequence: its pool has used the lengths.
        value, dy = sequence_loss(loss, out, targets, None if _per_sequence(model) else lengths)
    *_, norms = model.backward(cache, dy, return_grad_norms=True)
    report = weight_hh_report(rec) if spectral_numbers else []
    return GradientFlow(grad_norms=np.asarray(norms, dtype=np.float64), loss=value,
                        weight_hh=report, cell=_cell_name(rec),
                        seconds=time.perf_counter() - start)


# -- plots ------------------------------------------------------------------------------------

def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError('the plots need matplotlib: pip install "rnnfast[plot]"') from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_gradient_flow(results, path, *, layer=-1, title=None):
    """||dL/dh_t|| against the distance from the loss, several runs on one log-scale figure.

    Parameters
    ----------
    results : dict of str to GradientFlow
        Label -> result of ``gradient_flow``; each is one line.
    path : str or path-like
        Where to save the PNG.
    layer : int, default -1
        Which layer's norms to draw (the last, nearest the loss, by default).
    title : str, optional

    Returns
    -------
    path
        As given. Zero norms (steps where no sequence runs) are left out: a log axis has no 0.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        for label, r in results.items():
            n = np.asarray(r["grad_norms"], dtype=np.float64)[layer]
            d = np.arange(len(n) - 1, -1, -1)
            keep = (n > 0) & np.isfinite(n)
            ax.plot(d[keep], n[keep], label=label, lw=1.6)
        ax.set_yscale("log")
        ax.set_xlabel("distance from the loss (steps back in time, T - 1 - t)")
        ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
        ax.set_title(title or "Gradient flow through time")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_history(histories, path, key="loss", *, baseline=None, log=False, title=None):
    """Training curves: ``key`` of each history against its epoch (or update) number.

    Parameters
    ----------
    histories : dict of str to list of dict
        Label -> history as returned by ``rnnfast.fit`` (records with ``epoch`` and ``key``),
        or a list of floats, one per update or epoch.
    path : str or path-like
        Where to save the PNG.
    key : str, default "loss"
        The record field to draw (e.g. "val_loss").
    baseline : float, optional
        Drawn as a dashed horizontal line (e.g. the adding problem's 0.167).
    log : bool, default False
        Log y-axis.
    title : str, optional

    Returns
    -------
    path
        As given. Non-finite values are left out of the curves.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        xlabel = "epoch"
        for label, hist in histories.items():
            if hist and isinstance(hist[0], dict):
                xs = [r.get("epoch", i + 1) for i, r in enumerate(hist)]
                ys = [r.get(key, float("nan")) for r in hist]
            else:
                xs, ys, xlabel = list(range(1, len(hist) + 1)), list(hist), "update"
            ys = [float(v) if v is not None and math.isfinite(v) else float("nan") for v in ys]
            finite = sum(math.isfinite(v) for v in ys)
            ax.plot(xs, ys, label=label, lw=1.6, marker="o" if finite <= 30 else None,
                    ms=3 if len(xs) <= 30 else 5)  # isolated points stay visible
        if baseline is not None:
            ax.axhline(baseline, color="gray", ls="--", lw=1, label=f"baseline {baseline:.3g}")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key)
        ax.set_title(title or f"Training: {key}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
