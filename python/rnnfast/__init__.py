"""rnnfast: fast CPU training of recurrent neural networks, with exact, tested gradients.

The time loops of the forward pass and of backpropagation through time run in C++
(``rnnfast._core``); ``rnnfast.reference`` holds the NumPy implementation they are tested
against.
"""

__version__ = "0.1.0"

from . import checkpoint, clip, diagnostics, experiments, init, losses, optim, reference, \
    tasks, train
from ._recurrent import ForwardCache
from .checkpoint import load, save
from .gru import GRU
from .interop import from_torch
from .linear import Linear
from .lstm import LSTM
from .model import Model
from .rnn import RNN
from .train import evaluate, fit, train_sequence

__all__ = ["RNN", "LSTM", "GRU", "Linear", "Model", "ForwardCache", "fit", "evaluate",
           "train_sequence", "save", "load", "from_torch", "checkpoint", "clip", "diagnostics",
           "experiments", "init",
           "losses", "optim", "reference", "tasks", "train", "__version__"]
