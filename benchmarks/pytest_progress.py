"""pytest plugin for gpu_check.sh (``-p benchmarks.pytest_progress``): print each failure's
traceback the moment it happens, so a run stopped by its time limit still shows why."""

from __future__ import annotations

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        print(f"\n--- FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n", flush=True)
