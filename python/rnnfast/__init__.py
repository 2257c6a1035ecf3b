"""rnnfast: fast CPU training of recurrent neural networks, with exact, tested gradients.

The time loops of the forward pass and of backpropagation through time run in C++
(``rnnfast._core``); ``rnnfast.reference`` holds the NumPy implementation they are tested
against.
"""

__version__ = "0.1.0"

from . import reference
from ._recurrent import ForwardCache
from .gru import GRU
from .lstm import LSTM
from .rnn import RNN

__all__ = ["RNN", "LSTM", "GRU", "ForwardCache", "reference", "__version__"]
