"""Shared fixtures: every test that takes ``backend`` runs once per installed CPU backend."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import settings

from sinklabel.kernels import available_backends, get_kernel
from sinklabel.kernels._base import WrappingKernel
from sinklabel.sources import CallableSource, Source

CPU_BACKENDS = [name for name in available_backends() if name != "cupy"]
#: The installed backends that take NumPy arrays (numpy always, numba where it runs).
NUMPY_BACKENDS = [name for name in CPU_BACKENDS if "numpy" in get_kernel(name).libraries]


def requires(backend: str) -> pytest.MarkDecorator:
    """Skip where ``backend`` cannot run: the suite runs on whichever backends are available
    (a plain ``pip install sinklabel`` has only numpy)."""
    return pytest.mark.skipif(backend not in CPU_BACKENDS,
                              reason=f"the {backend} backend is not available here")


def backend_params(*names: str) -> list:
    """``names`` as test parameters, each skipping where its backend cannot run."""
    return [pytest.param(name, marks=requires(name)) for name in names]

# Property tests replay the same examples on every run, so that CI and the README's test
# command pass or fail alike wherever they run; ``--hypothesis-profile=explore`` draws new
# examples on each run instead, to search for failures.
settings.register_profile("replay", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("replay")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Name of a backend that takes NumPy arrays or CPU tensors on this machine."""
    return request.param


@contextmanager
def threads(library: str, count: int) -> Iterator[None]:
    """``count`` threads of ``library`` ("torch" or "numba") inside the block, the caller's
    number again after it."""
    module = importlib.import_module(library)
    previous = module.get_num_threads()
    module.set_num_threads(count)
    try:
        yield
    finally:
        module.set_num_threads(previous)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The development machines run many jobs on two cores; torch's thread pool then spends
    its time waiting for itself (30x slower on small inputs). Results do not depend on the
    thread count."""
    with threads("torch", 1):
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def to_backend(array: np.ndarray, backend: str):
    """The NumPy test input in the array library that ``backend`` takes (CPU).

    Tensors share the array's memory and strides (Fortran order, row or column steps), so
    layout tests reach the backend; read-only arrays are copied, as torch cannot share them.
    """
    if backend == "torch":
        import torch

        return torch.from_numpy(array if array.flags.writeable else array.copy())
    return array


def to_host(array) -> np.ndarray:
    """Any backend's output as a NumPy array, for comparison with oracles."""
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


def changing_source(scores, change, library: str = "numpy") -> CallableSource:
    """A function source returning ``change(block, rng, pass)`` (a pass begins at row 0): a
    model whose output drifts, or is rounded differently, from pass to pass. ``block`` is a
    view of ``scores``: a change made in place must copy it first."""
    passes = []
    rng = np.random.default_rng(0)

    def fn(start, stop):
        passes.append(start == 0)
        return change(scores[start:stop], rng, sum(passes))

    dtype = scores.dtype if library == "numpy" else str(scores.dtype).removeprefix("torch.")
    return CallableSource(fn, tuple(scores.shape), dtype, library=library)


class ForwardingKernel(WrappingKernel):
    """A kernel wrapper that adds nothing: the abstract operations go straight to the inner
    kernel, the rest is the base's (which forwards too)."""

    def best(self, chunk, f, lam):
        return self.inner.best(chunk, f, lam)

    def slack(self, chunk, f, lam):
        return self.inner.slack(chunk, f, lam)

    def soft(self, chunk, f, lam):
        return self.inner.soft(chunk, f, lam)

    def gather(self, chunk, labels):
        return self.inner.gather(chunk, labels)

    def to_numpy(self, x):
        return self.inner.to_numpy(x)

    def empty_labels(self, n, like):
        return self.inner.empty_labels(n, like)

    def empty_rows(self, n, like):
        return self.inner.empty_rows(n, like)


class PastTheEnd(Source):
    """A hand-written source, read in order only, that goes wrong after its last block:
    ``ending`` "extra rows" yields ten rows beyond N, any other raises OSError."""

    def __init__(self, scores: np.ndarray, ending: str):
        self.scores, self.ending = scores, ending
        self.shape, self.dtype, self.library = scores.shape, "float32", "numpy"

    def chunks(self, rows: int):
        n = self.shape[0]
        for start in range(0, n, rows):
            yield start, min(n, start + rows), self.scores[start:start + rows]
        if self.ending == "extra rows":
            yield n, n + 10, self.scores[:10]
        else:
            raise OSError("after the end")


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter, with ``env`` added to this one's environment,
    for what only a new process shows (import-time settings, forks, aborts); its exit status
    must be 0. Returns what it printed."""
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, **(env or {})},
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout
