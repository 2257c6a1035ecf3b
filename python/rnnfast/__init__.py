"""rnnfast: fast CPU training of recurrent neural networks, with exact, tested gradients.

The time loops of the forward pass and of backpropagation through time run in C++
(``rnnfast._core``: the kernel built for the fastest instruction sets this CPU has, see
``build_info``); ``rnnfast.reference`` holds the NumPy implementation they are tested
against.
"""

__version__ = "0.1.0"

from . import _core  # noqa: F401  (first: the kernel for this CPU, or an ImportError saying why)
from ._platform import build_info, cache_info, empty_cache, get_num_threads, set_cache_limit, \
    set_num_threads
from . import checkpoint, clip, diagnostics, experiments, init, losses, optim, reference, \
    tasks, train  # noqa: E402
from ._platform import threads_from_env  # noqa: E402
from ._recurrent import ForwardCache  # noqa: E402
from ._checkpointed import CheckpointCache  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .embedding import Embedding  # noqa: E402
from .gru import GRU  # noqa: E402
from .interop import from_torch  # noqa: E402
from .linear import Linear  # noqa: E402
from .lstm import LSTM  # noqa: E402
from .model import Model  # noqa: E402
from .rnn import RNN  # noqa: E402
from .train import evaluate, fit, train_sequence  # noqa: E402

__all__ = ["RNN", "LSTM", "GRU", "Linear", "Embedding", "Model", "ForwardCache", "CheckpointCache", "fit", "evaluate",
           "train_sequence", "save", "load", "from_torch", "checkpoint", "clip", "diagnostics",
           "experiments", "init", "losses", "optim", "reference", "tasks", "train",
           "set_num_threads", "get_num_threads", "set_cache_limit", "empty_cache", "cache_info",
           "build_info", "__version__"]

if threads_from_env() is not None:
    set_num_threads(threads_from_env())
