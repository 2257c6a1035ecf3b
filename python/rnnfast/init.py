"""Initialisations beyond PyTorch's default, applied in place to a recurrent model's params.

- ``identity``: the IRNN of Le, Jaitly & Hinton (2015) — a ReLU RNN whose recurrent weights
  start as a (scaled) identity and whose biases start at zero, so the state is carried
  unchanged until learning says otherwise.
- ``orthogonal``: each gate's (H, H) block of ``weight_hh`` a random orthogonal matrix, whose
  singular values are all 1: gradients neither shrink nor grow through W_hh at the start.
- ``forget_bias``: the LSTM forget gate's bias set high (Jozefowicz, Zaremba & Sutskever
  2015: 1.0), so the cell starts by remembering.

Each returns the model, so ``model = init.identity(RNN(..., nonlinearity="relu"))`` reads.
"""

import numpy as np


def _layers(model):
    return range(model.num_layers)


def identity(model, scale=1.0, input_std=None, seed=None):
    """``weight_hh_l{k} = scale * I`` and every bias 0, for every layer.

    Parameters
    ----------
    model : RNN
        Usually with ``nonlinearity="relu"`` (the IRNN). Changed in place.
    scale : float, default 1.0
    input_std : float, optional
        When given, the input weights are redrawn from N(0, input_std**2), as Le et al. do
        with 0.001; otherwise they keep their initialisation.
    seed : int, optional
        Seeds that draw.

    Returns
    -------
    RNN
        ``model``.
    """
    if getattr(model, "gates", None) != 1:
        raise TypeError(f"identity initialisation is for RNN models (one gate), got "
                        f"{type(model).__name__}")
    rng = np.random.default_rng(seed)
    for k in _layers(model):
        w_hh = model.params[f"weight_hh_l{k}"]
        w_hh[...] = scale * np.eye(model.hidden_size)
        if input_std is not None:
            w_ih = model.params[f"weight_ih_l{k}"]
            w_ih[...] = rng.normal(0.0, input_std, size=w_ih.shape)
        if model.bias:
            model.params[f"bias_ih_l{k}"][...] = 0
            model.params[f"bias_hh_l{k}"][...] = 0
    return model


def orthogonal(model, gain=1.0, seed=None):
    """Every gate's (H, H) block of ``weight_hh_l{k}`` drawn as ``gain`` times a random
    orthogonal matrix (QR of a Gaussian matrix, signs fixed so the draw is uniform).

    Parameters
    ----------
    model : RNN, LSTM or GRU
        Changed in place.
    gain : float, default 1.0
    seed : int, optional

    Returns
    -------
    RNN, LSTM or GRU
        ``model``.
    """
    rng = np.random.default_rng(seed)
    H = model.hidden_size
    for k in _layers(model):
        w_hh = model.params[f"weight_hh_l{k}"]
        for g in range(model.gates):
            q, r = np.linalg.qr(rng.standard_normal((H, H)))
            w_hh[g * H:(g + 1) * H] = gain * q * np.sign(np.diag(r))
    return model


def forget_bias(model, value=1.0):
    """Set the LSTM's forget-gate bias to ``value``.

    ``bias_ih``'s f slice is set to ``value`` and ``bias_hh``'s to 0, so that their sum, the
    effective bias, is ``value``.

    Parameters
    ----------
    model : LSTM
        Built with ``bias=True``; changed in place.
    value : float, default 1.0

    Returns
    -------
    LSTM
        ``model``.
    """
    if getattr(model, "gates", None) != 4:
        raise TypeError(f"forget_bias is for LSTM models, got {type(model).__name__}")
    if not model.bias:
        raise ValueError("forget_bias needs a model built with bias=True")
    H = model.hidden_size
    f = slice(H, 2 * H)  # gate order i, f, g, o
    for k in _layers(model):
        model.params[f"bias_ih_l{k}"][f] = value
        model.params[f"bias_hh_l{k}"][f] = 0
    return model
