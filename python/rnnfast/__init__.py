"""rnnfast: fast CPU training of recurrent neural networks, with exact, tested gradients.

The time loops of the forward pass and of backpropagation through time run in C++
(``rnnfast._core``); ``rnnfast.reference`` holds the NumPy implementation they are tested
against.
"""

__version__ = "0.1.0"

from ._platform import build_info, check_cpu, get_num_threads, set_num_threads

check_cpu()  # before anything loads rnnfast._core: an ImportError, not "illegal instruction"

from . import reference  # noqa: E402
from ._recurrent import ForwardCache  # noqa: E402
from .rnn import RNN  # noqa: E402

__all__ = ["RNN", "ForwardCache", "reference", "__version__",
           "set_num_threads", "get_num_threads", "build_info"]
