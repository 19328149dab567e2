"""pytest-benchmark suite settings: sizes behind ``--bench-size``, backends found at run time.

Run with ``pytest benchmarks/ --benchmark-only`` (tiny sizes, a smoke run fit for CI) or add
``--bench-size large`` for sizes worth timing. Files named ``bench_*.py`` are collected here.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from sinklabel.datasets import make_scores
from sinklabel.kernels import available_backends, get_kernel

from ._methods import place, placements

#: (N, K) per ``--bench-size``, and how many timed rounds each case gets.
SIZES = {"tiny": [(1_000, 10)], "large": [(200_000, 1_000), (1_000_000, 100)]}
ROUNDS = {"tiny": 2, "large": 3}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-size", choices=sorted(SIZES), default="tiny",
                     help="problem sizes of the benchmark suite (tiny: a CI smoke run)")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect bench_*.py here unless pytest already does: the ini file's patterns, or the
    file named on the command line (``pytest benchmarks/bench_cpu.py``), which pytest
    collects whatever its name; a second collection would run every benchmark twice."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)
            and "bench_*.py" not in parent.config.getini("python_files")):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "size" in metafunc.fixturenames:
        sizes = SIZES[metafunc.config.getoption("--bench-size")]
        metafunc.parametrize("size", sizes, ids=[f"{n}x{k}" for n, k in sizes])
    if "target" in metafunc.fixturenames:
        targets = [(backend, library, device)
                   for backend in available_backends()
                   for library, device in placements()
                   if library in get_kernel(backend).libraries]
        metafunc.parametrize("target", targets,
                             ids=[f"{b}-{lib}-{dev}" for b, lib, dev in targets])


@pytest.fixture
def rounds(request: pytest.FixtureRequest) -> int:
    return ROUNDS[request.config.getoption("--bench-size")]


@cache
def host_scores(n: int, k: int, regime: str, dtype: str) -> np.ndarray:
    """Generated scores, made once per session and shared by every backend."""
    scores = make_scores(n, k, regime=regime, dtype=np.dtype(dtype)).scores
    scores.setflags(write=False)
    return scores


def on_target(host: np.ndarray, target: tuple[str, str, str]):
    """``host`` in the library and on the device the target backend takes."""
    _, library, device = target
    return place(host, library, device)
