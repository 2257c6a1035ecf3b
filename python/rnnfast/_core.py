"""The compiled core: the kernel module that ``_kernels.load`` chooses for this CPU.

Every ``from . import _core`` in the package gets that module itself (it replaces this one in
``sys.modules`` while being imported), so its functions are called with no indirection.
"""

import sys

from ._kernels import load as _load

sys.modules[__name__] = _load()
