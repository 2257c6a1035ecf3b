"""rnnfast: fast CPU training of recurrent neural networks, with exact, tested gradients.

The time loops of the forward pass and of backpropagation through time run in C++
(``rnnfast._core``); ``rnnfast.reference`` holds the NumPy implementation they are tested
against.
"""

__version__ = "0.1.0"

from . import clip, losses, optim, reference
from ._recurrent import ForwardCache
from .linear import Linear
from .rnn import RNN

__all__ = ["RNN", "Linear", "ForwardCache", "clip", "losses", "optim", "reference",
           "__version__"]
