import pytest

import support
from rnnfast import _core


@pytest.fixture(autouse=True, scope="session")
def poisoned_buffers():
    """Every output and workspace of the compiled path starts as NaN in the whole suite.

    Outputs and workspaces are uninitialised memory, often reused from the block cache
    (cpp/buffers.hpp); any element the C++ code reads before writing would turn a parity or
    gradient check into NaN here.
    """
    _core._set_cache_poison(True)
    yield
    _core._set_cache_poison(False)


def pytest_terminal_summary(terminalreporter):
    if not support.WORST:
        return
    terminalreporter.section("worst relative errors seen")
    for (check, dtype), err in sorted(support.WORST.items()):
        terminalreporter.write_line(f"{check:<40} {dtype:<8} {err:.3e}")
