"""Moving models between rnnfast and PyTorch: weights copied, never shared.

rnnfast's parameters already carry PyTorch's names, shapes and gate order (the README's
"Parameter names"), so a conversion is a copy of every array under the same name. PyTorch is
optional: it is imported inside the functions here, and only when one of them is called.

- ``from_torch(module)``: ``torch.nn.RNN`` (tanh or relu), ``LSTM`` or ``GRU`` -> ``rnnfast.RNN``,
  ``LSTM`` or ``GRU``;
- ``Recurrent.to_torch()`` (so ``model.to_torch()`` on any of the three) -> the torch module;
- ``Linear.from_torch(module)`` and ``Linear.to_torch()`` for ``torch.nn.Linear``.

Letters: H = hidden units, D = input features, L = layers, G = gates per cell.
"""

import numpy as np

from .gru import GRU
from .linear import Linear
from .lstm import LSTM
from .rnn import RNN

INSTALL_HINT = ('pip install torch==2.13.0 (prefer a CPU-only build of it) or '
                'pip install "rnnfast[torch]"')

# torch's mode (RNNBase.mode) -> (rnnfast class name, extra constructor arguments)
_MODES = {
    "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
    "RNN_RELU": ("RNN", {"nonlinearity": "relu"}),
    "LSTM": ("LSTM", {}),
    "GRU": ("GRU", {}),
}


def _torch(what):
    """``import torch``, or an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{what} needs PyTorch, which is not installed; install it with "
                          f"{INSTALL_HINT}") from e
    return torch


def _torch_dtypes(torch):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _module_dtype(torch, module, kind):
    """The numpy dtype of the module's parameters: all float32 or all float64."""
    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) != 1:
        found = ", ".join(sorted(str(d) for d in dtypes)) or "no parameters"
        raise TypeError(f"the {kind}'s parameters must all share one dtype, float32 or float64; "
                        f"found {found}")
    (dtype,) = dtypes
    to_numpy = {t: n for n, t in _torch_dtypes(torch).items()}
    if dtype not in to_numpy:
        raise TypeError(f"rnnfast models are float32 or float64, but the {kind}'s parameters "
                        f"are {dtype}; convert the module first, e.g. module.float() or "
                        f"module.double()")
    return to_numpy[dtype]


def _copy_in(params, module, names):
    """Copy each named tensor of ``module`` into the rnnfast array of the same name."""
    for name in names:
        tensor = getattr(module, name)
        dst = params[name]
        if tuple(tensor.shape) != dst.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {dst.shape}")
        # force=True: detached, on the CPU, conjugate and negative bits resolved.
        dst[...] = tensor.numpy(force=True)


def _copy_out(torch, module, params):
    """Copy every rnnfast array into the torch parameter of the same name (no sharing)."""
    names = [name for name, _ in module.named_parameters()]
    if sorted(names) != sorted(params):
        raise ValueError(f"parameter names differ: torch has {sorted(names)}, rnnfast has "
                         f"{sorted(params)}")
    with torch.no_grad():
        for name, p in module.named_parameters():
            a = params[name]
            # from_numpy warns on read-only arrays; copy_ copies either way.
            p.copy_(torch.from_numpy(a if a.flags.writeable else a.copy()))
    return module


def from_torch(module, backend="cpp"):
    """An rnnfast model with the weights of a PyTorch recurrent module (copied, not shared).

    Parameters
    ----------
    module : torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU
        Any ``num_layers``, ``bias`` on or off, ``nonlinearity`` tanh or relu for the RNN,
        ``batch_first`` either way, ``bidirectional`` either way, any ``dropout`` (applied by
        the rnnfast model's ``forward``, as by torch's in ``train()`` mode; never by its
        inference call, as torch's in ``eval()`` mode), any ``proj_size`` for the LSTM. Its parameters must all be float32 or all float64 (on any
        device; they are copied to the CPU); the rnnfast model takes that dtype.
    backend : {"cpp", "numpy"}, default "cpp"
        The rnnfast model's backend.

    Returns
    -------
    rnnfast.RNN, rnnfast.LSTM or rnnfast.GRU
        Computing the same function. rnnfast models are always batch-first: inputs are
        (B, T, D) even when ``module.batch_first`` is False (where torch takes (T, B, D)).
        The state is (num_directions * num_layers, B, H) in both, in the same order, and
        ``(h, c)`` for the LSTM (h with proj_size units when it projects). Dropout's masks
        are rnnfast's own draws, not torch's.

    Raises
    ------
    ImportError
        When PyTorch is not installed.
    TypeError
        When ``module`` is not one of the three torch modules (for ``torch.nn.Linear`` use
        ``rnnfast.Linear.from_torch``), or its parameters are not float32 or float64.

    Notes
    -----
    PyTorch's packed sequences (``pack_padded_sequence(..., enforce_sorted=False)``) match
    rnnfast's ``lengths``: outputs past a length are zero and the final state is the state after
    the last valid step. PyTorch refuses a length of 0; rnnfast accepts it (the state passes
    through unchanged).
    """
    torch = _torch("rnnfast.from_torch")
    if isinstance(module, torch.nn.Linear):
        raise TypeError("from_torch takes a torch.nn.RNN, LSTM or GRU; for a torch.nn.Linear "
                        "use rnnfast.Linear.from_torch(module)")
    if not isinstance(module, (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)) \
            or getattr(module, "mode", None) not in _MODES:
        raise TypeError(f"from_torch takes a torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU, got "
                        f"{type(module).__module__}.{type(module).__qualname__}")
    dtype = _module_dtype(torch, module, f"torch.nn.{type(module).__name__}")

    name, extra = _MODES[module.mode]
    if module.proj_size:
        extra = {**extra, "proj_size": module.proj_size}
    cls = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}[name]
    model = cls(module.input_size, module.hidden_size, num_layers=module.num_layers,
                bias=bool(module.bias), bidirectional=bool(module.bidirectional),
                dropout=float(module.dropout), dtype=dtype, backend=backend, **extra)
    _copy_in(model.params, module, list(model.params))
    return model


def recurrent_to_torch(model):
    """``model.to_torch()`` for RNN, LSTM and GRU: see ``Recurrent.to_torch``."""
    torch = _torch(f"{type(model).__name__}.to_torch")
    model._layer_params()  # refuses params of the wrong shape or dtype, naming them
    kw = {"num_layers": model.num_layers, "bias": model.bias, "batch_first": True,
          "bidirectional": model.bidirectional, "dropout": model.dropout,
          "dtype": _torch_dtypes(torch)[model.dtype]}
    if isinstance(model, RNN):
        cls, kw["nonlinearity"] = torch.nn.RNN, model.nonlinearity
    elif isinstance(model, LSTM):
        cls, kw["proj_size"] = torch.nn.LSTM, model.proj_size
    elif isinstance(model, GRU):
        cls = torch.nn.GRU
    else:
        raise TypeError(f"to_torch converts rnnfast RNN, LSTM and GRU models, got "
                        f"{type(model).__name__}")
    module = cls(model.input_size, model.hidden_size, **kw)
    return _copy_out(torch, module, model.params)


def linear_from_torch(module):
    """``rnnfast.Linear.from_torch``: see there."""
    torch = _torch("rnnfast.Linear.from_torch")
    if not isinstance(module, torch.nn.Linear):
        raise TypeError(f"Linear.from_torch takes a torch.nn.Linear, got "
                        f"{type(module).__module__}.{type(module).__qualname__}")
    dtype = _module_dtype(torch, module, "torch.nn.Linear")
    layer = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                   dtype=dtype)
    _copy_in(layer.params, module, list(layer.params))
    return layer


def linear_to_torch(layer):
    """``rnnfast.Linear.to_torch``: see there."""
    torch = _torch("Linear.to_torch")
    layer._checked_params()
    module = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias,
                             dtype=_torch_dtypes(torch)[layer.dtype])
    return _copy_out(torch, module, layer.params)
