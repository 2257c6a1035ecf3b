import support


def pytest_terminal_summary(terminalreporter):
    if not support.WORST:
        return
    terminalreporter.section("worst relative errors seen")
    for (check, dtype), err in sorted(support.WORST.items()):
        terminalreporter.write_line(f"{check:<40} {dtype:<8} {err:.3e}")
