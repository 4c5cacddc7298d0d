"""Shared pytest hooks."""


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # Tests that build a report (e.g. test_kernels_compile's ptxas table) append
    # (title, text) to config.gpudl_reports; printing it here puts it in the log
    # even when the test passes and its output is captured.
    for title, text in getattr(config, "gpudl_reports", []):
        terminalreporter.write_sep("-", title)
        terminalreporter.write_line(text)
